"""The supervisor of one sandboxed script: ``python -I -S _supervise.py ARGV...``.

Its configuration is JSON in its environment variable ``ASYNC_AGENT_SANDBOX`` (the script's
environment included: never on a command line, which every user can read); the script gets
exactly the environment given there.

Started by :class:`~async_task_system.sandbox.process.ScriptRunner` in a session of its own, it
forks the script and watches the whole tree of processes the script makes, until the tree is gone.
Standard library only, no imports from the package (it starts in a fraction of the time).

* ``PR_SET_PDEATHSIG``: when the worker dies (even by ``SIGKILL``) the supervisor gets ``SIGTERM``.
* ``PR_SET_CHILD_SUBREAPER``: a process of the script whose parent exits (a double fork, a
  ``setsid`` daemon) is re-parented to the supervisor, not to init, so nothing leaves the tree.
* ``SIGTERM`` (timeout, cancel, the worker's death): every process of the tree gets ``SIGTERM``
  and ``term_grace`` seconds to end (a script may trap it to clean up); then, as at the script's
  own end, every process left is killed with ``SIGKILL``, again until none is left, whatever its
  session or group.
* Limits on the whole tree, checked every ``poll`` seconds from ``/proc``: CPU seconds (live
  processes plus all reaped ones), resident memory, number of processes. Over a limit, the tree is
  killed and the supervisor ends as the script would have with ``SIGXCPU`` (CPU) or ``SIGKILL``.
* Per process, in the script before ``exec``: ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``,
  ``RLIMIT_NPROC`` (when running as another user; root ignores it), no core dumps, and when the
  supervisor runs as root every capability dropped (bounding set and ambient) and
  ``no_new_privs``, so a root script can neither read a non-dumpable worker's memory or
  environment nor gain privileges back; with ``user`` set it runs as that user instead.

Exit: the script's exit status (a signal is re-raised); exit code 125 with a line on stderr when a
limit on the number of processes or the memory of the tree ended it.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_libc = ctypes.CDLL(None, use_errno=True)
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _prctl(option, arg=0):
    return _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _table():
    """{pid: (ppid, cpu_seconds_with_reaped_children, rss_bytes)} of every process now."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):
            continue  # a zombie uses nothing; its parent reaps it
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(name)] = (int(fields[1]), ticks / _TICK, int(fields[21]) * _PAGE)
    return table


def _tree(me, table):
    """The pids descending from ``me`` (every depth)."""
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [me]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def _reap():
    """Reap every finished child; returns {pid: status}."""
    done = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done[pid] = status


def _kill_tree(me, first=None):
    """SIGKILL every descendant until none is left; returns the statuses reaped meanwhile."""
    reaped = {}
    if first:
        for pid in first:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for _ in range(1000):
        pids = _tree(me, _table())
        reaped.update(_reap())
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)
    reaped.update(_reap())
    return reaped


def _terminate(me, pid, grace):
    """SIGTERM every process of the tree and wait up to ``grace`` seconds for all to end; returns
    the script's status if it was reaped meanwhile (``_kill_tree`` kills what is left)."""
    if grace <= 0:
        return None
    for target in _tree(me, _table()):
        try:
            os.kill(target, signal.SIGTERM)
        except OSError:
            pass
    status = None
    deadline = time.monotonic() + grace
    while True:
        reaped = _reap()
        if pid in reaped:
            status = reaped[pid]
        if status is not None and not _tree(me, _table()):
            return status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return status
        signal.sigtimedwait({signal.SIGCHLD}, min(remaining, 0.05))


def _child(config, argv):
    """In the forked child: limits, privileges, then exec the script (never returns)."""
    try:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        for kind, key in (
            (resource.RLIMIT_AS, "memory_bytes"),
            (resource.RLIMIT_FSIZE, "file_bytes"),
        ):
            if config.get(key):
                hard = resource.getrlimit(kind)[1]
                value = config[key] if hard == resource.RLIM_INFINITY else min(config[key], hard)
                resource.setrlimit(kind, (value, value))
        if config.get("cpu_seconds"):
            seconds = max(1, int(config["cpu_seconds"] + 0.999))
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
            top = seconds + 1 if hard == resource.RLIM_INFINITY else min(seconds + 1, hard)
            # soft limit -> SIGXCPU, hard limit a second later -> SIGKILL
            resource.setrlimit(resource.RLIMIT_CPU, (min(seconds, top), top))
        user = config.get("user")
        if user is not None:
            uid, gid = int(user[0]), int(user[1])
            if config.get("max_processes"):
                limit = int(config["max_processes"])
                resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        elif os.geteuid() == 0:
            last = 63
            try:
                with open("/proc/sys/kernel/cap_last_cap") as handle:
                    last = int(handle.read())
            except (OSError, ValueError):
                pass
            for cap in range(last + 1):
                _prctl(PR_CAPBSET_DROP, cap)
            _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.execvpe(argv[0], argv, config.get("env") or {})
    except BaseException as exc:  # noqa: BLE001 - report and end the child, whatever it was
        try:
            os.write(2, f"sandbox: could not start the script: {exc}\n".encode())
        finally:
            os._exit(127)


def main():
    config = json.loads(os.environ.pop("ASYNC_AGENT_SANDBOX"))
    argv = sys.argv[1:]
    me = os.getpid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != config["parent"]:
        return 125  # the worker died before the death signal was armed
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    watched = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    pid = os.fork()
    if pid == 0:
        _child(config, argv)
    poll = float(config.get("poll") or 0.2)
    cpu_limit = config.get("tree_cpu_seconds")
    memory_limit = config.get("tree_memory_bytes")
    process_limit = config.get("max_processes")
    status = None
    verdict = None  # (message, signal or None)
    next_check = 0.0
    while True:
        received = signal.sigtimedwait(watched, poll)
        reaped = _reap()
        if pid in reaped:
            status = reaped[pid]
            break
        if received is not None and received.si_signo != signal.SIGCHLD:
            verdict = (None, signal.SIGKILL)  # timeout, cancel, or the worker is gone
            status = _terminate(me, pid, float(config.get("term_grace") or 0))
            break
        now = time.monotonic()
        if (cpu_limit or memory_limit or process_limit) and now >= next_check:
            next_check = now + poll
            table = _table()
            tree = _tree(me, table)
            if process_limit and len(tree) > process_limit:
                verdict = (f"more than {process_limit} processes", None)
            elif memory_limit and sum(table[p][2] for p in tree) > memory_limit:
                verdict = (f"the processes used more than {memory_limit // (1024 * 1024)} MiB together", None)
            elif cpu_limit:
                times = os.times()
                used = times.children_user + times.children_system + sum(table[p][1] for p in tree)
                if used > cpu_limit:
                    verdict = (None, signal.SIGXCPU)
            if verdict is not None:
                break
    reaped = _kill_tree(me, [pid] if status is None else None)
    if status is None:
        status = reaped.get(pid)
    if verdict is not None:
        message, number = verdict
        if message:
            os.write(2, f"\nsandbox: {message}; all of them were killed\n".encode())
            return 125
        _die(number)
    if status is None:
        return 125
    if os.WIFSIGNALED(status):
        _die(os.WTERMSIG(status))
    return os.waitstatus_to_exitcode(status)


def _die(number):
    """End with ``number`` as the script's signal, so the runner reports it the same way."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)
    os._exit(128 + number)


if __name__ == "__main__":
    sys.exit(main())
