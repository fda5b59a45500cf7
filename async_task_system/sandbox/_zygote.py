"""The long-lived supervisor of isolated runs: ``python -I -S _zygote.py FD`` (standard library only).

Started once per process by :mod:`async_task_system.sandbox.isolation` with one end of a
``SOCK_SEQPACKET`` pair as ``FD`` (it ends when that closes: the worker's exit, even by
``SIGKILL``). Two processes:

* the *forker* makes the runs the supervisor asks for: each one a process 1 of fresh namespaces
  made by ``clone(2)`` (see :mod:`._init`) that builds its new root, pivots into it and drops its
  privileges before any request; it hands each to the supervisor with a socket to it. Runs are
  made per *layout* (network or not, the paths bound, the scratch size: what a run's namespaces
  depend on): ``spare`` ready for the default layout and for the last few others used. Preparing
  a run (the ``clone`` of an interpreter, the namespaces, the mounts) is off the path of a
  request, and so is its replacement: asked when the run ends (or once it has run ``poll``
  seconds), so that making it does not compete with a short run for the CPU.
* the *supervisor* takes requests (argv, environment, limits, and the program's stdin, stdout and
  stderr as descriptors), passes each to a ready init, watches the limits of every run's tree
  (CPU seconds, resident memory, processes: one ``/proc`` scan every ``poll`` seconds for all),
  stops runs (``SIGTERM`` to every process of the tree, ``SIGKILL`` to the init after the grace
  period: the kernel then kills the whole namespace) and reports each end.

Messages are JSON, one per packet. To the supervisor: ``{"op": "run", "id": N, "network": bool,
...}`` with three descriptors, ``{"op": "stop", "id": N, "grace": SECONDS}``. From it: first
``{"op": "hello", "isolation": bool, "reason": str}``, then ``{"op": "exit", "id": N, "code":
int|None, "limit": str|None, "message": str|None}`` (with ``{"op": "started", "id": N, "at":
UNIX_TIME}`` before it when the request had ``"notify_start": true``). A run is reported ended
when its init says that it killed and reaped every process of the run, without waiting for the
kernel to tear its namespaces down.
"""

import ctypes
import json
import os
import select
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _init  # noqa: E402
import _supervise  # noqa: E402

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220, "ppc64le": 120, "s390x": 120}
_gil_libc = ctypes.PyDLL(None, use_errno=True)
PACKET = 1 << 22


def clone(flags):
    """``fork`` into new namespaces: ``os.fork`` with ``clone(2)`` flags (3.10 has no ``os.unshare``)."""
    import platform

    number = _CLONE.get(platform.machine())
    if number is None:
        raise OSError(f"clone: unknown machine {platform.machine()}")
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _gil_libc.syscall(ctypes.c_long(number), ctypes.c_ulong(flags | signal.SIGCHLD), 0, 0, 0, 0)
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    number = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(number, f"clone: {os.strerror(number)}")
    return pid


def _flags(conf, network):
    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if not network:
        flags |= CLONE_NEWNET
    if conf.get("userns"):
        flags |= CLONE_NEWUSER
    return flags


def _map_every_id(pid, sock):
    """Map every id to itself in the user namespace of the init ``pid`` (a root zygote only: a
    map of more than one's own id must be written from the parent namespace). The run's programs
    then switch to an unprivileged user (``nobody`` by default) whose processes ``RLIMIT_NPROC``
    counts in this namespace alone; root's it would not count at all."""
    try:
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as handle:
                handle.write("0 0 4294967295")
        sock.send(b"mapped")
    except OSError as exc:
        sock.send(f"could not map the ids of the run's user namespace: {exc}".encode())


def _spawn_init(conf, stage, layout):
    """One ready run of ``layout``: ``(pid, socket)``; the child never returns."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = clone(_flags(conf, bool(layout.get("network"))))
    if pid != 0 and conf.get("map_by_parent"):
        _map_every_id(pid, ours)
    if pid == 0:
        code = 0
        try:
            _supervise._prctl(_supervise.PR_SET_PDEATHSIG, signal.SIGKILL)
            os.closerange(3, theirs.fileno())
            os.closerange(theirs.fileno() + 1, 1 << 16)
            _init.serve(theirs, conf, stage, layout)
        except BaseException as exc:  # noqa: BLE001 - report and end, whatever it was
            code = 1
            try:
                theirs.send(json.dumps({"error": f"sandbox init failed: {exc!r}"}).encode())
            except OSError:
                pass
        os._exit(code)
    theirs.close()
    return pid, ours


def forker(conf, stage, link, spare):
    """Make the runs the supervisor asks for (``{"key", "layout", "count"}``); ``spare`` of the
    default layout first."""
    _supervise._prctl(_supervise.PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the inits' exits: reaped by the kernel
    key, layout, count = DEFAULT, default_layout(conf), spare
    while True:
        for _ in range(count):
            pid, sock = _spawn_init(conf, stage, layout)
            socket.send_fds(link, [json.dumps({"pid": pid, "key": key}).encode()], [sock.fileno()])
            sock.close()
        data = link.recv(PACKET)
        if not data:
            return
        ask = json.loads(data)
        key, layout, count = ask["key"], ask["layout"], int(ask.get("count", 1))


DEFAULT = "default"
LAYOUTS = 4  # layouts kept ready besides the default one (the most recently used)
PEAK_SECONDS = 30.0  # how long the most runs of a layout at once decide how many inits it keeps


def default_layout(conf):
    return {"network": False, "read_paths": [], "write_paths": [], "scratch_bytes": conf["scratch_bytes"]}


def layout_of(conf, req):
    """What a run's mount and network namespaces depend on: runs of one layout are alike until
    their request, so they can be made ahead of it. Returns ``(key, layout)``."""
    base = set(conf.get("read_paths") or ())
    layout = {
        "network": bool(req.get("network")),
        "read_paths": sorted({p for p in req.get("read_paths") or () if p not in base}),
        "write_paths": sorted(set(req.get("write_paths") or ())),
        "scratch_bytes": int(req.get("scratch_bytes") or conf["scratch_bytes"]),
    }
    if layout == default_layout(conf):
        return DEFAULT, layout
    return json.dumps(layout, sort_keys=True), layout


def _limits(req):
    """The rlimits a run sets on its init (a reused init keeps them)."""
    return json.dumps([req.get(k) for k in ("cpu_seconds", "memory_bytes", "file_bytes", "max_processes")])


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class Pool:
    """The runs of one layout: ready (made, not taken), pending (asked of the forker), waiting
    (requests for which no run was ready)."""

    def __init__(self, layout):
        self.layout = layout
        self.ready = []  # (pid, socket, limits of its last run or None when fresh, CPU seconds)
        self.pending = 0
        self.waiting = []
        self.peak = 0  # most runs of this layout at once lately (see Supervisor.keep)
        self.peak_at = 0.0


class Run:
    def __init__(self, rid, req, key):
        self.id = rid
        self.req = req
        self.key = key
        self.pid = None
        self.sock = None
        self.pidfd = None
        self.status = None
        self.error = None
        self.verdict = None  # (limit, message)
        self.stop_at = None
        self.check_at = 0.0
        self.cpu_base = 0.0  # CPU seconds a reused init counted before this run
        self.refilled = False
        self.gone = False


class Supervisor:
    def __init__(self, ctl, link, conf):
        self.ctl = ctl
        self.link = link
        self.conf = conf
        self.spare = int(conf.get("spare") or 2)
        self.pools = {DEFAULT: Pool(default_layout(conf))}
        self.pools[DEFAULT].pending = self.spare
        self.recent = []  # keys of the other layouts, the most recently used last
        self.runs = {}
        self.by_fd = {}  # the descriptors of the runs going on (init socket, pidfd), watched by epoll
        self.poller = select.epoll()
        for fd in (ctl.fileno(), link.fileno()):
            self.poller.register(fd, select.EPOLLIN)
        self.poll = float(conf.get("poll") or 0.2)
        self.next_check = 0.0

    def ask(self, key, count):
        if count <= 0:
            return
        pool = self.pools[key]
        pool.pending += count
        self.link.send(json.dumps({"key": key, "layout": pool.layout, "count": count}).encode())

    def refill(self, key):
        """Ask for the runs a pool is short of: one per waiting request, plus ``spare`` ready for
        the default layout and the most recently used others."""
        pool = self.pools.get(key)
        if pool is None:
            return
        kept = key == DEFAULT or key in self.recent
        self.ask(key, len(pool.waiting) + (self.spare if kept else 0) - len(pool.ready) - pool.pending)

    def keep(self, key):
        """How many reused inits of a layout to keep ready: as many as its runs at once lately (a
        worker's busy slots), at least ``spare``. The most at once, not the number going on now:
        as a burst of runs ends that number falls to none, and keeping only that many would end
        the inits that the next burst needs (measured: a fresh init for every third run at 8 at
        once). A peak counts for ``PEAK_SECONDS``, then the number going on replaces it."""
        pool = self.pools[key]
        going = sum(1 for run in self.runs.values() if run.key == key)
        if going >= pool.peak or time.monotonic() - pool.peak_at > PEAK_SECONDS:
            pool.peak, pool.peak_at = going, time.monotonic()
        return max(self.spare, pool.peak + 1)

    def send(self, message):
        self.ctl.send(json.dumps(message).encode())

    def take_ready(self):
        data, fds, _f, _a = socket.recv_fds(self.link, 4096, 1)
        if not data:
            raise SystemExit(0)
        info = json.loads(data)
        pool = self.pools.get(info["key"])
        sock = socket.socket(fileno=fds[0])
        if pool is None:  # a layout evicted meanwhile
            _kill(info["pid"])
            sock.close()
            return
        pool.pending = max(0, pool.pending - 1)
        pool.ready.append((info["pid"], sock, None, 0.0))
        self.dispatch(info["key"])

    def use(self, key):
        """Mark a layout used; evict the layouts used longest ago (their ready runs end)."""
        if key == DEFAULT:
            return
        if key in self.recent:
            self.recent.remove(key)
        self.recent.append(key)
        while len(self.recent) > LAYOUTS:
            gone = self.recent.pop(0)
            old = self.pools.get(gone)
            if old is not None and not old.waiting:
                for pid, sock, _limits, _cpu in old.ready:
                    _kill(pid)
                    sock.close()
                del self.pools[gone]

    def take(self, pool, limits):
        """A ready init for a run with ``limits``: one reused after a run with the same rlimits
        (they stay set on it), else a fresh one; reused ones of other limits are ended."""
        fresh = None
        for index, entry in enumerate(pool.ready):
            if entry[2] == limits:
                return pool.ready.pop(index)
            if entry[2] is None and fresh is None:
                fresh = index
        if fresh is not None:
            return pool.ready.pop(fresh)
        for pid, sock, _limits, _cpu in pool.ready:
            _kill(pid)
            sock.close()
        pool.ready = []
        return None

    def dispatch(self, key):
        pool = self.pools[key]
        while pool.ready and pool.waiting:
            run = pool.waiting[0]
            entry = self.take(pool, _limits(run.req))
            if entry is None:
                self.refill(key)
                return
            pool.waiting.pop(0)
            pid, sock, _limits_of_last, run.cpu_base = entry
            run.pid, run.sock = pid, sock
            run.check_at = time.monotonic() + self.poll
            try:
                run.pidfd = os.pidfd_open(pid)
            except OSError:
                run.pidfd = None
            fds = run.req.pop("fds")
            try:
                socket.send_fds(sock, [json.dumps(run.req).encode()], fds)
            except OSError as exc:
                run.error = f"the sandbox of the run is gone: {exc}"
            for fd in fds:
                os.close(fd)
            self.watch(sock.fileno(), run)
            if run.pidfd is not None:
                self.watch(run.pidfd, run)
            if run.stop_at is not None:
                self.stop(run, run.req.get("grace", 0))

    def request(self, data, fds):
        message = json.loads(data)
        if message["op"] == "run":
            key, layout = layout_of(self.conf, message)
            if key not in self.pools:
                self.pools[key] = Pool(layout)
            self.use(key)
            run = Run(message["id"], dict(message, fds=fds), key)
            self.runs[run.id] = run
            pool = self.pools[key]
            pool.waiting.append(run)
            self.keep(key)  # counts this run into the layout's peak
            self.ask(key, len(pool.waiting) - len(pool.ready) - pool.pending)
            self.dispatch(key)
        elif message["op"] == "stop":
            run = self.runs.get(message["id"])
            if run is not None:
                self.stop(run, float(message.get("grace") or 0))

    def stop(self, run, grace):
        if run.verdict is None:
            run.verdict = ("stopped", None)
        if run.pid is None:
            run.stop_at = time.monotonic()
            run.req["grace"] = grace
            return
        if grace > 0 and run.stop_at is None:
            for pid in _supervise._tree(run.pid, _supervise._table()):
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            run.stop_at = time.monotonic() + grace
        else:
            self.kill(run)

    def kill(self, run):
        run.stop_at = run.stop_at or time.monotonic()
        if run.pid is not None and not run.gone:
            try:
                if run.pidfd is not None:
                    signal.pidfd_send_signal(run.pidfd, signal.SIGKILL)
                else:
                    os.kill(run.pid, signal.SIGKILL)
            except OSError:
                pass

    def readable(self, fd):
        run = self.by_fd.get(fd)
        if run is None:
            return
        if fd == run.pidfd:
            run.gone = True
            self.unwatch(fd)
            os.close(fd)
            run.pidfd = None
        else:
            try:
                data = run.sock.recv(PACKET)
            except OSError:
                data = b""
            if data:
                message = json.loads(data)
                if "status" in message:
                    # Sent once the init has killed and reaped every process of the run: the
                    # run is over, whatever the kernel still tears down of its namespaces.
                    run.status = message
                    self.finish(run)
                elif "started" in message:
                    self.send({"op": "started", "id": run.id, "at": message["started"]})
                elif "error" in message:
                    run.error = message["error"]
                return
            self.unwatch(fd)
            run.sock.close()
            run.sock = None
            if run.pidfd is None:
                run.gone = True
        if run.gone and (run.sock is None or run.status is not None or run.error is not None):
            self.finish(run)

    def finish(self, run):
        if self.runs.pop(run.id, None) is None:
            return
        for fd in (run.sock.fileno() if run.sock is not None else None, run.pidfd):
            if fd is not None:
                self.unwatch(fd)
        limit, message = run.verdict or (None, None)
        pool = self.pools.get(run.key)
        again = (
            run.status is not None
            and run.status.get("again")
            and run.verdict is None
            and pool is not None
            and sum(1 for entry in pool.ready if entry[2] is not None) < self.keep(run.key)
        )
        if again:  # the init ended every process of the run and renews its scratch and IPC
            pool.ready.append((run.pid, run.sock, _limits(run.req), float(run.status.get("cpu") or 0)))
            run.sock = None
            run.gone = True
        if run.sock is not None:
            run.sock.close()
            run.sock = None
        if not run.gone:
            self.kill(run)  # an init that reported is ending anyway; one that did not must
            run.gone = True
        if run.pidfd is not None:
            os.close(run.pidfd)
            run.pidfd = None
        code = None
        if run.status is not None:
            code = os.waitstatus_to_exitcode(run.status["status"])
            if run.status.get("scratch_full") and code != 0 and limit is None:
                limit = "disk_limit"
        if limit == "stopped":
            limit = None
        if run.error is not None and limit is None:
            limit, message = "start_error", run.error
        if run.status is None and limit is None:
            limit, message = "start_error", "the sandbox of the run ended before the program did"
        if limit == "cpu_limit":
            code = -signal.SIGXCPU
        self.send({"op": "exit", "id": run.id, "code": code, "limit": limit, "message": message})
        if not run.refilled:
            self.refill(run.key)

    def check_limits(self):
        active = [run for run in self.runs.values() if run.pid is not None and not run.gone]
        if not active:
            return
        now = time.monotonic()
        for run in active:
            if run.stop_at is not None and now >= run.stop_at:
                self.kill(run)
            if not run.refilled and now >= run.check_at:
                run.refilled = True  # a long run: its replacement need not wait for its end
                self.refill(run.key)
        if now < self.next_check or all(now < run.check_at for run in active):
            return  # a run shorter than one poll costs no scan of /proc
        self.next_check = now + self.poll
        table = _supervise._table()
        for run in active:
            if run.verdict is not None or now < run.check_at:
                continue
            req = run.req
            tree = _supervise._tree(run.pid, table)
            processes, memory, cpu = (
                req.get("max_processes"),
                req.get("tree_memory_bytes"),
                req.get("tree_cpu_seconds"),
            )
            if processes and len(tree) > processes:
                run.verdict = ("process_limit", f"more than {processes} processes; all of them were killed")
            elif memory and sum(table[p][2] for p in tree) > memory:
                mib = memory // (1024 * 1024)
                run.verdict = (
                    "memory_limit",
                    f"the processes used more than {mib} MiB together; all of them were killed",
                )
            elif cpu and sum(table[p][1] for p in [run.pid, *tree] if p in table) - run.cpu_base > cpu:
                run.verdict = ("cpu_limit", None)
            if run.verdict is not None:
                self.kill(run)

    def watch(self, fd, run):
        self.by_fd[fd] = run
        self.poller.register(fd, select.EPOLLIN)

    def unwatch(self, fd):
        """Before the descriptor is closed (a closed one leaves epoll by itself, unless duplicated)."""
        if self.by_fd.pop(fd, None) is not None:
            try:
                self.poller.unregister(fd)
            except OSError:
                pass

    def loop(self):
        # epoll, not select: the descriptors of every run going on were passed to the kernel on
        # every wake (about three a run), a cost that grew with a worker's slots.
        ctl, link = self.ctl.fileno(), self.link.fileno()
        while True:
            timeout = self.poll / 4 if any(r.pid for r in self.runs.values()) else -1
            for fd, _events in self.poller.poll(timeout):
                if fd == ctl:
                    data, fds, _f, _a = socket.recv_fds(self.ctl, PACKET, 3)
                    if not data:
                        return
                    self.request(data, fds)
                elif fd == link:
                    self.take_ready()
                else:
                    self.readable(fd)
            self.check_limits()


def main():
    ctl = socket.socket(fileno=int(sys.argv[1]))
    conf = json.loads(os.environ.pop("ASYNC_AGENT_ZYGOTE"))
    conf["scratch_bytes"] = int(conf.get("scratch_bytes") or 64 * 1024 * 1024)
    conf.setdefault("reuse", 64)
    os.setsid()
    _supervise._prctl(_supervise.PR_SET_CHILD_SUBREAPER, 1)
    stage = os.path.join(conf.get("tmp") or "/tmp", f"async-task-sandbox-{os.getpid()}")
    os.mkdir(stage, 0o700)
    link, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    helper = os.fork()
    if helper == 0:
        link.close()
        ctl.close()
        try:
            forker(conf, stage, theirs, int(conf.get("spare") or 2))
        finally:
            os._exit(0)
    theirs.close()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    supervisor = Supervisor(ctl, link, conf)
    try:
        # The probe: the first ready run says whether namespaces and mounts work here.
        data, fds, _f, _a = socket.recv_fds(link, 4096, 1)
        info = json.loads(data)
        probe = socket.socket(fileno=fds[0])
        probe.settimeout(20)
        try:
            answer = json.loads(probe.recv(PACKET) or b'{"error": "the sandbox init ended at once"}')
        except (OSError, ValueError) as exc:
            answer = {"error": str(exc)}
        if "error" in answer:
            supervisor.send({"op": "hello", "isolation": False, "reason": answer["error"]})
            return 0
        probe.settimeout(None)
        supervisor.pools[DEFAULT].pending -= 1
        supervisor.pools[DEFAULT].ready.append((info["pid"], probe, None, 0.0))
        supervisor.send({"op": "hello", "isolation": True, "reason": "namespaces: " + conf["mode"]})
        supervisor.loop()
    finally:
        for run in list(supervisor.runs.values()):
            supervisor.kill(run)
        for pool in supervisor.pools.values():
            for pid, _sock, _limits, _cpu in pool.ready:
                _kill(pid)
        try:
            os.kill(helper, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.rmdir(stage)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
