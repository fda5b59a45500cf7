"""Isolated runs: the client of the long-lived supervisor :mod:`._zygote` (one per process).

Each run gets fresh pid, mount, IPC, UTS and (unless it may use the network) network namespaces,
a read-only view of the system directories plus the paths it needs, and a private scratch
directory (a bounded tmpfs) as its working directory; see :mod:`._init`. The namespaces are
prepared ahead of the request, so a run costs a message and a ``posix_spawn``, not the start of an
interpreter. Where namespaces are unavailable, :func:`isolation_status` says why.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["IsolationStatus", "isolation_status"]

_ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_zygote.py")
_PACKET = 1 << 22


class IsolationStatus(NamedTuple):
    """Whether runs can be isolated here (``available``) and how, or why not (``reason``)."""

    available: bool
    reason: str


class Zygote:
    """One running supervisor: requests go over a ``SOCK_SEQPACKET`` socket, ends come back on a
    reader thread (so any event loop, in any thread, may run through it)."""

    def __init__(self, spare: int = 2) -> None:
        # A user namespace even for a root worker, whose programs run as an unprivileged user:
        # the kernel never applies RLIMIT_NPROC to root, so a root program's fork bomb would only
        # meet the supervisor's /proc scan, which a machine swamped by its processes runs late.
        root = os.geteuid() == 0
        conf = {
            "userns": True,
            "map_by_parent": root,
            "uid": os.geteuid(),
            "gid": os.getegid(),
            "mode": "user namespace (user, pid, mount, network, IPC, UTS)",
            "tmp": "/tmp" if os.path.isdir("/tmp") else os.getcwd(),
            "spare": spare,
            "read_paths": read_paths([sys.executable], sys.executable),
            "scratch_bytes": 64 * 1024 * 1024,
        }
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid_of_owner = os.getpid()
        self._sock = ours
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[dict[str, Any]]]] = {}
        self._started: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[float], None]]] = {}
        self._hello = threading.Event()
        self.status = IsolationStatus(False, "the sandbox supervisor did not answer")
        self.alive = True
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", _ZYGOTE, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env={"ASYNC_AGENT_ZYGOTE": json.dumps(conf)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        theirs.close()
        threading.Thread(target=self._read, name="sandbox-zygote", daemon=True).start()

    def wait_ready(self, timeout: float = 30.0) -> IsolationStatus:
        self._hello.wait(timeout)
        return self.status

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(_PACKET)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            if message.get("op") == "hello":
                self.status = IsolationStatus(bool(message["isolation"]), str(message["reason"]))
                self._hello.set()
                continue
            if message.get("op") == "started":
                with self._lock:
                    entry = self._started.pop(int(message["id"]), None)
                if entry is not None:
                    _call(entry, float(message["at"]))
                continue
            with self._lock:
                self._started.pop(int(message["id"]), None)
                entry = self._waiting.pop(int(message["id"]), None)
            if entry is not None:
                _resolve(entry, message)
        self.alive = False
        self._hello.set()
        with self._lock:
            left, self._waiting = list(self._waiting.values()), {}
        for entry in left:
            _resolve(entry, {"code": None, "limit": "start_error", "message": "the sandbox supervisor ended"})

    def submit(
        self,
        request: dict[str, Any],
        fds: list[int],
        on_start: Callable[[float], None] | None = None,
    ) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Send one run; the future gets ``{"code", "limit", "message"}`` at its end, and
        ``on_start(unix_time)`` is called on this loop once the program has started."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        rid = next(self._ids)
        with self._lock:
            self._waiting[rid] = (loop, future)
            if on_start is not None:
                self._started[rid] = (loop, on_start)
        message = dict(request, op="run", id=rid, notify_start=on_start is not None)
        try:
            socket.send_fds(self._sock, [json.dumps(message).encode()], fds)
        except OSError as exc:
            with self._lock:
                self._waiting.pop(rid, None)
                self._started.pop(rid, None)
            future.set_result(
                {"code": None, "limit": "start_error", "message": f"the sandbox supervisor is gone: {exc}"}
            )
        return rid, future

    def stop(self, rid: int, grace: float) -> None:
        try:
            self._sock.send(json.dumps({"op": "stop", "id": rid, "grace": grace}).encode())
        except OSError:
            pass


def _resolve(
    entry: tuple[asyncio.AbstractEventLoop, asyncio.Future[dict[str, Any]]], message: dict[str, Any]
) -> None:
    loop, future = entry

    def settle() -> None:
        if not future.done():
            future.set_result(message)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # that loop is closed: nobody waits any more


def _call(entry: tuple[asyncio.AbstractEventLoop, Callable[[float], None]], at: float) -> None:
    loop, callback = entry
    try:
        loop.call_soon_threadsafe(callback, at)
    except RuntimeError:
        pass


_current: Zygote | None = None
_start_lock = threading.Lock()


def zygote() -> Zygote:
    """This process's supervisor of isolated runs, started on first use (again after a fork or its end)."""
    global _current
    with _start_lock:
        if _current is None or not _current.alive or _current.pid_of_owner != os.getpid():
            _current = Zygote()
        return _current


def isolation_status(timeout: float = 30.0) -> IsolationStatus:
    """Whether this process can run programs isolated (namespaces work here), and how or why not.
    Starts the supervisor when it is not running yet (blocks up to ``timeout`` seconds)."""
    if sys.platform != "linux":
        return IsolationStatus(False, f"isolation needs Linux namespaces; this is {sys.platform}")
    return zygote().wait_ready(timeout)


def read_paths(argv: list[str], python: str) -> list[str]:
    """Paths a program needs to see besides the system directories: the interpreter's installation
    (a virtual environment and its base), the program and every absolute path argument's directory."""
    found = list(_installation(argv[0] if argv else python, python))
    for item in argv[1:]:
        if item.startswith("/") and "\n" not in item and len(item) < 4096 and os.path.isfile(item):
            path = os.path.dirname(os.path.realpath(item))
            if path not in found and not _system(path):
                found.append(path)
    return found


def _system(path: str) -> bool:
    """Bound anyway (or, for ``/``, never whole)."""
    return path.startswith(("/usr/", "/bin/", "/lib", "/etc/")) or path in ("/usr", "/")


@functools.lru_cache(maxsize=64)
def _installation(program: str, python: str) -> tuple[str, ...]:
    """The installations of ``program`` and ``python`` (asked once per pair: it reads files)."""
    found: list[str] = []

    def add(path: str) -> None:
        if path and path not in found and os.path.exists(path):
            found.append(path)

    for item in {python, program}:
        if "/" not in item:
            continue
        folder = os.path.dirname(os.path.abspath(item))
        if os.path.basename(folder) == "bin":
            add(os.path.dirname(folder))  # a prefix: bin/, lib/, pyvenv.cfg
        real = os.path.dirname(os.path.realpath(item))
        add(os.path.dirname(real) if os.path.basename(real) == "bin" else real)
        if os.path.exists(os.path.join(os.path.dirname(folder), "pyvenv.cfg")):
            with open(os.path.join(os.path.dirname(folder), "pyvenv.cfg")) as handle:
                for line in handle:
                    key, _, value = line.partition("=")
                    if key.strip() == "home":
                        add(os.path.dirname(value.strip()))
    return tuple(path for path in found if not _system(path))


__all__ += ["Zygote", "zygote", "read_paths"]


class IsolatedProcess:
    """A run in the supervisor, shaped like the ``asyncio.subprocess.Process`` the runner knows:
    ``stdout``/``stderr`` stream readers, ``stdin`` (when bytes are fed), ``wait()``, ``returncode``;
    ``stop(grace)`` asks the supervisor to stop the tree; ``limit`` says which limit ended it."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.limit: str | None = None
        self.message: str | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self.stdin: Any = None
        self._zygote: Zygote | None = None
        self._rid = 0
        self._future: asyncio.Future[dict[str, Any]] | None = None

    @classmethod
    async def start(
        cls,
        request: dict[str, Any],
        feed_stdin: bool,
        on_start: Callable[[float], None] | None = None,
    ) -> IsolatedProcess:
        loop = asyncio.get_running_loop()
        self = cls()
        server = zygote()
        status = (
            await loop.run_in_executor(None, server.wait_ready)
            if not server._hello.is_set()
            else server.status
        )
        if not status.available:
            raise OSError(f"isolation is unavailable here: {status.reason}")
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if feed_stdin:
            in_r, in_w = os.pipe()
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY), None
        # The request goes out first: the supervisor and the run's init work while the pipes are
        # wired to this loop (what the program writes meanwhile waits in them).
        self._zygote = server
        try:
            self._rid, self._future = server.submit(request, [in_r, out_w, err_w], on_start)
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        ends = {"stdout": out_r, "stderr": err_r, "stdin": in_w}
        try:
            for name in ("stdout", "stderr", "stdin"):
                fd = ends.pop(name)
                if fd is not None:  # _pipe owns it from here on, also when it fails
                    setattr(self, name, await _pipe(loop, fd, name == "stdin"))
        except BaseException:
            self.stop(0.0)  # the run is under way: end it (its end still comes to the future)
            for fd in ends.values():
                if fd is not None:
                    os.close(fd)
            raise
        return self

    async def wait(self) -> int | None:
        assert self._future is not None
        end = await asyncio.shield(self._future)
        self.limit, self.message = end.get("limit"), end.get("message")
        self.returncode = end.get("code")
        if self.returncode is None:
            self.returncode = -9
        return self.returncode

    def stop(self, grace: float) -> None:
        if self._zygote is not None and (self._future is None or not self._future.done()):
            self._zygote.stop(self._rid, grace)


async def _pipe(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> Any:
    """The stream of one pipe end on ``loop``: a reader, or for ``write`` a writer (closed if it fails)."""
    pipe = os.fdopen(fd, "wb" if write else "rb", 0)
    try:
        if write:
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.streams.FlowControlMixin(loop=loop), pipe
            )
            return asyncio.StreamWriter(transport, protocol, None, loop)
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return reader
    except BaseException:
        pipe.close()
        raise


__all__ += ["IsolatedProcess"]
