"""The long-lived supervisor of isolated runs: ``python -I -S _zygote.py FD`` (standard library only).

Started once per process by :mod:`async_task_system.sandbox.isolation` with one end of a
``SOCK_SEQPACKET`` pair as ``FD`` (it ends when that closes: the worker's exit, even by
``SIGKILL``). Two processes:

* the *forker* keeps a few runs ready: each one a process 1 of fresh namespaces made by
  ``clone(2)`` (see :mod:`._init`), its new root already built; it hands each to the supervisor
  with a socket to it and replaces each taken. Preparing a run (the ``clone`` of an interpreter,
  the namespaces, the mounts) is off the path of a request.
* the *supervisor* takes requests (argv, environment, limits, and the program's stdin, stdout and
  stderr as descriptors), passes each to a ready init, watches the limits of every run's tree
  (CPU seconds, resident memory, processes: one ``/proc`` scan every ``poll`` seconds for all),
  stops runs (``SIGTERM`` to every process of the tree, ``SIGKILL`` to the init after the grace
  period: the kernel then kills the whole namespace) and reports each end.

Messages are JSON, one per packet. To the supervisor: ``{"op": "run", "id": N, "network": bool,
...}`` with three descriptors, ``{"op": "stop", "id": N, "grace": SECONDS}``. From it: first
``{"op": "hello", "isolation": bool, "reason": str}``, then ``{"op": "exit", "id": N, "code":
int|None, "limit": str|None, "message": str|None}``.
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


def _spawn_init(conf, stage, network, keep):
    """One ready run: ``(pid, socket)``; the child never returns."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = clone(_flags(conf, network))
    if pid == 0:
        code = 0
        try:
            _supervise._prctl(_supervise.PR_SET_PDEATHSIG, signal.SIGKILL)
            os.closerange(3, theirs.fileno())
            os.closerange(theirs.fileno() + 1, 1 << 16)
            _init.serve(theirs, conf, stage)
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
    """Keep ``spare`` runs ready per network mode asked for; one more for each taken."""
    _supervise._prctl(_supervise.PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the inits' exits: reaped by the kernel
    wanted = {False: spare, True: 0}
    while True:
        for network, count in wanted.items():
            while count > 0:
                pid, sock = _spawn_init(conf, stage, network, link)
                socket.send_fds(
                    link, [json.dumps({"pid": pid, "network": network}).encode()], [sock.fileno()]
                )
                sock.close()
                count -= 1
            wanted[network] = 0
        data = link.recv(4096)
        if not data:
            return
        ask = json.loads(data)
        wanted[bool(ask["network"])] += int(ask.get("count", 1))


class Run:
    def __init__(self, rid, req):
        self.id = rid
        self.req = req
        self.pid = None
        self.sock = None
        self.pidfd = None
        self.status = None
        self.error = None
        self.verdict = None  # (limit, message)
        self.stop_at = None
        self.gone = False


class Supervisor:
    def __init__(self, ctl, link, conf):
        self.ctl = ctl
        self.link = link
        self.conf = conf
        self.ready = {False: [], True: []}
        self.waiting = {False: [], True: []}
        self.pending = {False: int(conf.get("spare") or 2) - 1, True: 0}
        self.runs = {}
        self.by_fd = {}
        self.poll = float(conf.get("poll") or 0.2)
        self.next_check = 0.0

    def ask(self, network, count):
        self.pending[network] += count
        self.link.send(json.dumps({"network": network, "count": count}).encode())

    def send(self, message):
        self.ctl.send(json.dumps(message).encode())

    def take_ready(self):
        data, fds, _f, _a = socket.recv_fds(self.link, 4096, 1)
        if not data:
            raise SystemExit(0)
        info = json.loads(data)
        self.pending[info["network"]] = max(0, self.pending[info["network"]] - 1)
        self.ready[info["network"]].append((info["pid"], socket.socket(fileno=fds[0])))
        self.dispatch(info["network"])

    def dispatch(self, network):
        while self.ready[network] and self.waiting[network]:
            pid, sock = self.ready[network].pop(0)
            run = self.waiting[network].pop(0)
            self.ask(network, 1)  # a replacement
            run.pid, run.sock = pid, sock
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
            self.by_fd[sock.fileno()] = run
            if run.pidfd is not None:
                self.by_fd[run.pidfd] = run
            if run.stop_at is not None:
                self.stop(run, run.req.get("grace", 0))

    def request(self, data, fds):
        message = json.loads(data)
        if message["op"] == "run":
            network = bool(message.get("network"))
            run = Run(message["id"], dict(message, fds=fds))
            self.runs[run.id] = run
            self.waiting[network].append(run)
            short = len(self.waiting[network]) - len(self.ready[network]) - self.pending[network]
            if short > 0:
                self.ask(network, short)
            self.dispatch(network)
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
            self.by_fd.pop(fd, None)
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
                    run.status = message
                elif "error" in message:
                    run.error = message["error"]
                return
            self.by_fd.pop(fd, None)
            run.sock.close()
            run.sock = None
            if run.pidfd is None:
                run.gone = True
        if run.gone and (run.sock is None or run.status is not None or run.error is not None):
            self.finish(run)

    def finish(self, run):
        if run.sock is not None:
            self.by_fd.pop(run.sock.fileno(), None)
            run.sock.close()
        self.runs.pop(run.id, None)
        limit, message = run.verdict or (None, None)
        code = None
        if run.status is not None:
            code = os.waitstatus_to_exitcode(run.status["status"])
            if run.status.get("scratch_full") and code != 0 and limit is None:
                limit = "disk_limit"
        if limit == "stopped":
            limit = None
        if run.error is not None and limit is None:
            limit, message = "start_error", run.error
        if limit == "cpu_limit":
            code = -signal.SIGXCPU
        self.send({"op": "exit", "id": run.id, "code": code, "limit": limit, "message": message})

    def check_limits(self):
        active = [run for run in self.runs.values() if run.pid is not None and not run.gone]
        if not active:
            return
        now = time.monotonic()
        for run in active:
            if run.stop_at is not None and now >= run.stop_at:
                self.kill(run)
        if now < self.next_check:
            return
        self.next_check = now + self.poll
        table = _supervise._table()
        for run in active:
            if run.verdict is not None:
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
            elif cpu and sum(table[p][1] for p in [run.pid, *tree] if p in table) > cpu:
                run.verdict = ("cpu_limit", None)
            if run.verdict is not None:
                self.kill(run)

    def loop(self):
        while True:
            waits = [self.ctl, self.link, *self.by_fd]
            timeout = self.poll / 4 if any(r.pid for r in self.runs.values()) else None
            readable, _w, _x = select.select(waits, [], [], timeout)
            for item in readable:
                if item is self.ctl:
                    data, fds, _f, _a = socket.recv_fds(self.ctl, PACKET, 3)
                    if not data:
                        return
                    self.request(data, fds)
                elif item is self.link:
                    self.take_ready()
                else:
                    self.readable(item)
            self.check_limits()


def main():
    ctl = socket.socket(fileno=int(sys.argv[1]))
    conf = json.loads(os.environ.pop("ASYNC_AGENT_ZYGOTE"))
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
        supervisor.ready[info["network"]].append((info["pid"], probe))
        supervisor.send({"op": "hello", "isolation": True, "reason": "namespaces: " + conf["mode"]})
        supervisor.loop()
    finally:
        for run in list(supervisor.runs.values()):
            supervisor.kill(run)
        for pid, _sock in supervisor.ready[False] + supervisor.ready[True]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
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
