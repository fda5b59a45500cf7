"""The worker daemon (seed 002's executor): ``async-agent worker --hub ws://HOST:PORT --token T --name N``.

It connects to a hub over WebSocket (``ws://``, :class:`~async_task_system.remote.hub.RemoteHub`)
or gRPC (``grpc://``, :class:`~async_task_system.remote.grpc_hub.GrpcHub`; the client lives in
:mod:`.grpc_worker`, imported only for that scheme), registers (name, capabilities, labels,
version, the runtimes it offers), sends heartbeats, and runs what it is sent: shell and Python
scripts through :class:`~async_task_system.sandbox.process.ScriptRunner` (own process group, SIGTERM then
SIGKILL on timeout or cancel, rlimits, clean environment, capped output), and, with
``--tools-dir``, commands of runtime tools (:mod:`async_task_system.runtimes`) whose entry files
lie in that directory. Job execution is the same for both transports: each delivers and takes
:mod:`.protocol` frames (a :class:`Connection`), translating at its edge.

* output lines are streamed back to the hub while a script runs, then its result;
* at most ``--max-concurrent`` scripts at once (default 5); the rest wait their turn, and a
  cancel for one still waiting means it never starts;
* a result is shortened to fit the hub's message limit rather than be refused;
* when the hub goes away, running scripts are killed (the hub has failed them already) and the
  worker reconnects with exponential back-off. A refused token is fatal (exit code 3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._version import __version__
from ..core.compat import TIMEOUT_ERRORS
from ..core.errors import AsyncTaskSystemError
from ..sandbox.process import DEFAULT_ALLOW_ENV, RunLimits, ScriptRunner
from .protocol import (
    LANGUAGES,
    ProtocolError,
    check_execute,
    check_labels,
    decode,
    encode,
    heartbeat_frame,
    log_frame,
    register_frame,
    result_frame,
    started_frame,
)

__all__ = [
    "Connection",
    "ConnectionEnded",
    "EXIT_TOKEN_REFUSED",
    "ScriptRunner",
    "TokenRefused",
    "WorkerConfig",
    "WorkerDaemon",
    "configure_parser",
    "run",
]

logger = logging.getLogger("async_task_system.remote.worker")

EXIT_TOKEN_REFUSED = 3
EXIT_REGISTRATION_FAILED = 4
REMOTE_RUNTIMES = ("python", "javascript", "native", "wasm")
"""The runtimes a worker can offer; it advertises those whose program is present (see :meth:`WorkerConfig.runtimes`)."""


@dataclass
class WorkerConfig:
    """Everything the worker daemon needs; the CLI flags map one to one."""

    hub: str
    token: str
    name: str
    max_concurrent: int = 5
    capabilities: tuple[str, ...] = LANGUAGES
    max_output_bytes: int = 256 * 1024
    cpu_seconds: float | None = 300.0
    memory_mb: int | None = 1024
    file_size_mb: int | None = 256
    max_processes: int | None = 64
    run_as: str | None = None
    allow_env: tuple[str, ...] = DEFAULT_ALLOW_ENV
    python: str = field(default_factory=lambda: sys.executable or "python3")
    workdir: str | None = None
    default_timeout: float = 60.0
    reconnect_initial: float = 0.25
    reconnect_max: float = 30.0
    once: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    tools_dir: str | None = None
    kill_grace: float = 2.0
    version: str = __version__
    isolation: bool = True
    """Scripts run isolated (no network, read-only file system but a scratch directory, own pids)."""
    allow_network: bool = False
    """Isolated scripts may use the network (``--allow-network``)."""

    def limits(self) -> RunLimits:
        """The runner's share of the configuration."""
        return RunLimits(
            timeout=self.default_timeout,
            max_output_bytes=self.max_output_bytes,
            cpu_seconds=self.cpu_seconds,
            memory_mb=self.memory_mb,
            file_size_mb=self.file_size_mb,
            max_processes=self.max_processes,
            user=self.run_as,
            allow_env=tuple(self.allow_env),
            languages=tuple(self.capabilities),
            python=self.python,
            workdir=self.workdir,
            kill_grace=self.kill_grace,
            isolation=self.isolation,
            network=self.allow_network,
        )

    def sandbox_labels(self) -> dict[str, str]:
        """The labels that tell the hub (and ``GET /agents``) how this worker's scripts are isolated:
        ``isolation=on|off`` and ``network=on|off``; requests select by them like any label."""
        network = "on" if self.allow_network or not self.isolation else "off"
        return {"isolation": "on" if self.isolation else "off", "network": network}

    def runtimes(self) -> list[str]:
        """The runtime tools this worker offers: none without ``tools_dir``; else python and native,
        javascript when ``node`` is on PATH, wasm when ``wasmtime`` is installed (found, not imported)."""
        if not self.tools_dir:
            return []
        import importlib.util

        offered = ["python", "native"]
        if shutil.which("node"):
            offered.append("javascript")
        if importlib.util.find_spec("wasmtime") is not None:
            offered.append("wasm")
        return offered


# ---------------------------------------------------------------------------------------------- connections


class ConnectionEnded(AsyncTaskSystemError):
    """The connection to the hub failed or closed; the daemon reconnects."""


class TokenRefused(AsyncTaskSystemError):
    """The hub refused the token; the daemon exits (:data:`EXIT_TOKEN_REFUSED`)."""


class BadAddress(AsyncTaskSystemError):
    """``--hub`` is not a usable address; the daemon exits with code 2."""


class Connection(Protocol):
    """One connection to a hub, in :mod:`.protocol` frames (each transport translates at its edge)."""

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame; ConnectionEnded or TokenRefused when the connection is gone."""

    async def recv(self) -> dict[str, Any]:
        """The next frame; ProtocolError for one that cannot be read, ConnectionEnded at the end."""

    async def close(self, reason: str) -> None:
        """Close the connection (the worker is stopping)."""

    def size(self, frame: dict[str, Any]) -> int:
        """Bytes ``frame`` takes on the wire (to fit results to the hub's limit)."""


class _WsConnection:
    """A :class:`Connection` over a ``websockets`` client connection: JSON text frames."""

    def __init__(self, ws: Any, closed: type[BaseException]) -> None:
        self.ws = ws
        self._closed = closed

    async def send(self, frame: dict[str, Any]) -> None:
        try:
            await self.ws.send(encode(frame))
        except self._closed as exc:
            raise ConnectionEnded(str(exc)) from None

    async def recv(self) -> dict[str, Any]:
        try:
            raw = await self.ws.recv()
        except self._closed as exc:
            raise ConnectionEnded(str(exc)) from None
        return decode(raw)

    async def close(self, reason: str) -> None:
        await self.ws.close(1001, reason)

    def size(self, frame: dict[str, Any]) -> int:
        return len(encode(frame).encode("utf-8"))


@contextlib.asynccontextmanager
async def ws_connect(config: WorkerConfig) -> AsyncIterator[Connection]:
    """Open a WebSocket connection to ``config.hub`` with the token in ``Authorization``."""
    try:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise BadAddress(
            "the worker needs the websockets library (>= 15): pip install 'async_task_system[remote]'"
        ) from None
    try:
        client = connect(
            config.hub,
            additional_headers={"Authorization": f"Bearer {config.token}"},
            proxy=None,
            open_timeout=10,
            max_size=None,
            close_timeout=2,
        )
        ws = await client.__aenter__()
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise TokenRefused(f"HTTP {status}") from None
        raise ConnectionEnded(f"the hub answered HTTP {status}") from None
    except InvalidURI as exc:
        raise BadAddress(str(exc)) from None
    except ConnectionClosed as exc:
        raise ConnectionEnded(str(exc)) from None
    try:
        yield _WsConnection(ws, ConnectionClosed)
    finally:
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)


def connector(hub: str) -> Any:
    """The connect function for ``hub``'s scheme: ``ws://``/``wss://`` or ``grpc://`` (imported only then)."""
    if hub.startswith("grpc://"):
        from .grpc_worker import grpc_connect

        return grpc_connect
    if hub.startswith(("ws://", "wss://")):
        return ws_connect
    raise BadAddress(f"--hub must start with ws://, wss:// or grpc://, got {hub!r}")


# ---------------------------------------------------------------------------------------------- daemon


class WorkerDaemon:
    """Connects to the hub, registers, heartbeats, runs requests; reconnects with back-off."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.runner = ScriptRunner(config.limits())
        self.runtimes = config.runtimes()
        self._runtime_manager: Any = None
        self._calls: dict[str, asyncio.Future[Any]] = {}  # runtime calls running, by request id
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._stop = asyncio.Event()
        self._queued = 0
        self._jobs: set[asyncio.Task[None]] = set()
        self._queued_ids: set[str] = set()
        self._cancelled_queued: set[str] = set()
        self._frame_limit: int | None = None  # the hub's max_message_bytes, learned at registration
        self._size: Any = None  # the connection's size of a frame on the wire
        self.answered = 0  # requests answered (a result sent), over all connections

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler on the worker's loop)."""
        self._stop.set()

    async def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        config = self.config
        try:
            connect = connector(config.hub)
        except (BadAddress, ImportError) as exc:
            logger.error("%s", exc)
            return 2
        delay = config.reconnect_initial
        while not self._stop.is_set():
            ended = "the hub closed the connection"  # why a --once worker exits
            try:
                async with connect(config) as connection:
                    code = await self._session(connection)
                    if code is not None:
                        return code
                    delay = config.reconnect_initial
            except TokenRefused as exc:
                logger.error("the hub at %s refused the token (%s); check --token", config.hub, exc)
                return EXIT_TOKEN_REFUSED
            except BadAddress as exc:
                logger.error("bad --hub address: %s", exc)
                return 2
            except (OSError, ConnectionEnded, ProtocolError, *TIMEOUT_ERRORS) as exc:
                ended = f"the connection failed or ended: {exc or type(exc).__name__}"
                logger.warning("connection to %s failed or ended: %s", config.hub, exc or type(exc).__name__)
            except Exception as exc:  # a daemon keeps serving: log it, back off, reconnect
                ended = f"unexpected error: {type(exc).__name__}: {exc}"
                logger.exception("unexpected error in the connection to %s", config.hub)
            finally:
                killed = self.runner.kill_all() + self._cancel_calls()
                if killed:
                    logger.warning("killed %d running script(s): the hub connection ended", killed)
            if config.once and not self._stop.is_set():
                logger.info("--once: %s after %d job(s); exiting", ended, self.answered)
            if config.once or self._stop.is_set():
                break
            wait = delay * (0.5 + random.random() / 2)
            logger.info("reconnecting in %.2f s", wait)
            with contextlib.suppress(*TIMEOUT_ERRORS):
                await asyncio.wait_for(self._stop.wait(), wait)
            delay = min(delay * 2, config.reconnect_max)
        await self._drain_jobs()
        return 0

    async def _drain_jobs(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    def _cancel_calls(self) -> int:
        calls = list(self._calls.values())
        for call in calls:
            call.cancel()
        return len(calls)

    async def _session(self, connection: Connection) -> int | None:
        """One connection: register, then serve frames until it closes. An int return ends the daemon."""
        config = self.config
        await connection.send(
            register_frame(
                config.name,
                list(config.capabilities),
                config.max_concurrent,
                labels={**config.sandbox_labels(), **config.labels},
                worker_version=config.version,
                runtimes=self.runtimes,
            )
        )
        reply = await asyncio.wait_for(connection.recv(), 10)
        if reply.get("type") != "registered":
            if reply.get("error_type") == "name_taken":  # our previous connection is not gone yet
                logger.warning("the hub still has a connection named %r; retrying", config.name)
                return None
            logger.error("the hub refused the registration: %s", reply.get("error", reply))
            return EXIT_REGISTRATION_FAILED
        interval = float(reply.get("heartbeat_interval") or 5.0)
        limit = reply.get("max_message_bytes")
        self._frame_limit = limit if isinstance(limit, int) and limit > 0 else None
        self._size = connection.size
        logger.info("registered with %s as %r", config.hub, config.name)
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send_loop(connection, outbox))
        beats = asyncio.ensure_future(self._heartbeats(outbox, interval))
        stopper = asyncio.ensure_future(self._stop.wait())
        receiver = asyncio.ensure_future(self._receive_loop(connection, outbox))
        try:
            done, _ = await asyncio.wait({sender, receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                await connection.close("worker stopping")
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (sender, beats, stopper, receiver):
                task.cancel()
            await self._drain_jobs()
        return 0 if self._stop.is_set() else None

    async def _receive_loop(self, connection: Connection, outbox: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            try:
                message = await connection.recv()
            except ProtocolError as exc:
                logger.warning("ignored a bad frame from the hub: %s", exc)
                continue
            except ConnectionEnded:
                return
            kind = message.get("type")
            if kind == "execute":
                try:
                    request = check_execute(message)
                except ProtocolError as exc:
                    request_id = message.get("request_id")
                    if isinstance(request_id, str):
                        outbox.put_nowait(result_frame(request_id, False, None, str(exc), "remote_error"))
                    continue
                self._queued_ids.add(request["request_id"])  # now, so a cancel right behind it finds it
                job = asyncio.ensure_future(self._execute(request, outbox))
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)
            elif kind == "cancel":
                self._cancel(str(message.get("request_id")))
            elif kind == "error":
                logger.warning("the hub reported an error: %s", message.get("error"))
            else:
                logger.debug("ignored a %r frame", kind)

    def _cancel(self, request_id: str) -> None:
        call = self._calls.get(request_id)
        if call is not None:
            call.cancel()
        elif not self.runner.cancel(request_id) and request_id in self._queued_ids:
            self._cancelled_queued.add(request_id)  # still waiting for a slot: it will not start

    async def _send_loop(self, connection: Connection, outbox: asyncio.Queue[dict[str, Any]]) -> None:
        # One sender keeps frames in order: a script's log lines always precede its result.
        while True:
            frame = await outbox.get()
            await connection.send(frame)

    async def _heartbeats(self, outbox: asyncio.Queue[dict[str, Any]], interval: float) -> None:
        while True:
            outbox.put_nowait(heartbeat_frame(self.runner.running + len(self._calls), self._queued))
            await asyncio.sleep(interval)

    async def _execute(self, request: dict[str, Any], outbox: asyncio.Queue[dict[str, Any]]) -> None:
        request_id = request["request_id"]
        task_id = request.get("task_id") or request_id

        def on_start(at: float | None = None) -> None:
            # the process has started (the runner calls this before any output line)
            outbox.put_nowait(started_frame(request_id, time.time() if at is None else at, task_id))

        def on_line(stream: str, line: str) -> None:
            limit = self._frame_limit
            if limit is not None and 4 * len(line) > limit - 512 and len(line.encode("utf-8")) > limit - 512:
                line = line.encode("utf-8")[: limit - 512].decode(
                    "utf-8", errors="ignore"
                )  # fit the hub's limit
            outbox.put_nowait(log_frame(request_id, stream, line, task_id))

        waiting = True
        self._queued += 1
        try:
            async with self._slots:
                self._queued -= 1
                self._queued_ids.discard(request_id)
                waiting = False
                try:
                    if request_id in self._cancelled_queued:
                        self._cancelled_queued.discard(request_id)
                        result = {"exit_code": None, "cancelled": True}
                        success, error, error_type = False, "cancelled before it started", "cancelled"
                    elif request.get("runtime") is not None:
                        success, result, error, error_type = await self._run_tool(request, on_start)
                    else:
                        logger.info("running task %s (request %s)", task_id, request_id)
                        success, result, error, error_type = await self.runner.run(
                            request["command"],
                            request["language"],
                            key=request_id,
                            timeout=request.get("timeout"),
                            env=request.get("env"),
                            trace=request.get("trace"),
                            on_line=on_line,
                            on_start=on_start,
                        )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # never leave the hub without an answer
                    logger.exception("running request %s failed", request_id)
                    success, result, error, error_type = False, None, f"worker error: {exc}", "remote_error"
        finally:
            if waiting:
                self._queued -= 1
                self._queued_ids.discard(request_id)
                self._cancelled_queued.discard(request_id)
        if isinstance(result, dict):
            result["worker"] = self.config.name
        outbox.put_nowait(self._fitted_result(request_id, success, result, error, error_type, task_id))
        self.answered += 1

    # ------------------------------------------------------------------ runtime tools

    def _entry_path(self, entry: str) -> str:
        """``entry`` inside ``--tools-dir`` (symlinks resolved), or ValueError saying why not."""
        tools_dir = self.config.tools_dir
        if not tools_dir:
            raise ValueError(
                f"worker {self.config.name!r} runs no runtime tools: it was started without --tools-dir"
            )
        if not entry or "\x00" in entry:
            raise ValueError("the tool's entry must be a non-empty path inside the worker's tools directory")
        root = os.path.realpath(tools_dir)
        path = os.path.realpath(os.path.join(root, entry))
        if os.path.commonpath([root, path]) != root:
            raise ValueError(
                f"entry {entry!r} is outside the worker's tools directory; give a path relative to --tools-dir"
            )
        return path

    async def _run_tool(
        self, request: dict[str, Any], on_start: Any = None
    ) -> tuple[bool, Any, str | None, str | None]:
        """One runtime-tool command; the result is a RuntimeResult dict (``success`` is its ``ok``)."""
        from ..runtimes.base import RuntimeResult

        call = request["runtime"]
        name = call["runtime"]
        try:
            if name not in self.runtimes:
                offered = ", ".join(self.runtimes) or "none (start it with --tools-dir)"
                raise ValueError(
                    f"worker {self.config.name!r} does not offer the {name} runtime (it offers {offered})"
                )
            entry = self._entry_path(call["entry"])
        except ValueError as exc:
            outcome = RuntimeResult.failure(name, "invalid_entry", str(exc))
        else:
            if self._runtime_manager is None:
                from ..runtimes.manager import RuntimeManager

                self._runtime_manager = RuntimeManager(self.runner.limits)
            if on_start is not None:
                on_start()
            job = asyncio.ensure_future(
                self._runtime_manager.execute(
                    name, entry, request["command"], call["parameters"], request.get("timeout")
                )
            )
            self._calls[request["request_id"]] = job
            try:
                await asyncio.wait({job})
            except asyncio.CancelledError:
                job.cancel()
                raise
            finally:
                self._calls.pop(request["request_id"], None)
            if job.cancelled():
                outcome = RuntimeResult.failure(name, "cancelled", "cancelled; the call was stopped")
            else:
                outcome = job.result()
        success = outcome.ok
        return (
            success,
            outcome.to_dict(),
            None if success else outcome.error,
            None if success else "remote_error",
        )

    # ------------------------------------------------------------------ results

    def _fitted_result(
        self,
        request_id: str,
        success: bool,
        result: Any,
        error: str | None,
        error_type: str | None,
        task_id: str | None = None,
    ) -> dict[str, Any]:
        """The result frame, with stdout/stderr shortened (``truncated: true``) until it fits the hub's
        message limit: a refused message would leave the request unanswered until its deadline."""
        frame = result_frame(request_id, success, result, error, error_type, task_id)
        limit = self._frame_limit
        if limit is None or not isinstance(result, dict):
            return frame
        size = self._size
        budget = limit - 1024  # headroom for the envelope
        while size(frame) > budget:
            longest = max(("stdout", "stderr"), key=lambda key: len(result.get(key) or ""))
            text = result.get(longest) or ""
            if not text:
                result = {"exit_code": result.get("exit_code"), "truncated": True, "worker": self.config.name}
                return result_frame(request_id, success, result, error, error_type, task_id)
            result[longest] = text[: len(text) // 2]
            result["truncated"] = True
            frame = result_frame(request_id, success, result, error, error_type, task_id)
        return frame


# ---------------------------------------------------------------------------------------------- secrets


def protect_secret(secret: str) -> list[str]:
    """Keep ``secret`` (the hub token) from the worker's scripts; returns what could not be done.

    * ``PR_SET_DUMPABLE 0``: a process of another user, or of the same user without
      ``CAP_SYS_PTRACE`` (the runner drops every capability of a root worker's scripts), can no
      longer read this process's ``/proc/PID/environ`` or ``/proc/PID/mem`` nor ``ptrace`` it;
    * the secret is overwritten where the kernel keeps the original command line and environment
      (``/proc/PID/cmdline`` is readable by every user, whatever the dumpable flag), and
      ``ASYNC_AGENT_TOKEN`` leaves ``os.environ``.
    """
    problems = []
    os.environ.pop("ASYNC_AGENT_TOKEN", None)
    if not sys.platform.startswith("linux"):
        return ["not Linux: the token stays readable in this process's environment"]
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        problems.append(f"prctl(PR_SET_DUMPABLE, 0) failed: errno {ctypes.get_errno()}")
    needle = secret.encode()
    try:
        with open("/proc/self/stat", "rb") as handle:
            data = handle.read()
        fields = data[data.rfind(b")") + 2 :].split()
        regions = [(int(fields[45]), int(fields[46])), (int(fields[47]), int(fields[48]))]
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            for start, end in regions:
                memory.seek(start)
                block = memory.read(end - start)
                if needle and needle in block:
                    memory.seek(start)
                    memory.write(block.replace(needle, b"*" * len(needle)))
    except (OSError, ValueError, IndexError) as exc:
        problems.append(f"could not scrub the token from the process's arguments and environment: {exc}")
    return problems


# ---------------------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``async-agent worker`` flags."""
    parser.add_argument(
        "--hub",
        required=True,
        help="hub address: ws://127.0.0.1:8765 (WebSocket) or grpc://127.0.0.1:50051 (gRPC)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("ASYNC_AGENT_TOKEN"),
        help="shared secret of the hub (default: $ASYNC_AGENT_TOKEN; prefer the variable or --token-file, "
        "argv is visible to ps until the worker has started)",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        help="read the token from this file (keep it unreadable to the user scripts run as, see --run-as)",
    )
    parser.add_argument(
        "--name", default=socket.gethostname(), help="worker name, unique per hub (default: host name)"
    )
    parser.add_argument("--max-concurrent", type=int, default=5, help="scripts run at once (default 5)")
    parser.add_argument(
        "--capabilities", default=",".join(LANGUAGES), help="comma-separated: shell,python (default both)"
    )
    parser.add_argument(
        "--max-output-bytes",
        type=int,
        default=256 * 1024,
        help="bytes of stdout and of stderr kept per script",
    )
    parser.add_argument(
        "--cpu-seconds", type=float, default=300.0, help="RLIMIT_CPU per script in seconds (0 = no limit)"
    )
    parser.add_argument(
        "--memory-mb", type=int, default=1024, help="RLIMIT_AS per script in MiB (0 = no limit)"
    )
    parser.add_argument(
        "--max-file-mb", type=int, default=256, help="RLIMIT_FSIZE per script in MiB (0 = no limit)"
    )
    parser.add_argument(
        "--max-processes",
        type=int,
        default=64,
        help="processes of one script's tree at once; more and the tree is killed (0 = no limit)",
    )
    parser.add_argument(
        "--run-as",
        default=None,
        help="when the worker runs as root, run scripts as this user (name or uid); without it, a root "
        "worker's scripts run as root with no capabilities",
    )
    parser.add_argument(
        "--allow-env",
        default=",".join(DEFAULT_ALLOW_ENV),
        help="comma-separated variables passed from the worker's environment to scripts",
    )
    parser.add_argument(
        "--workdir", default=None, help="working directory of scripts (default: the current one)"
    )
    parser.add_argument(
        "--python", default=sys.executable or "python3", help="interpreter for python scripts"
    )
    parser.add_argument(
        "--default-timeout", type=float, default=60.0, help="seconds, when a request gives none"
    )
    parser.add_argument(
        "--reconnect-max", type=float, default=30.0, help="longest back-off between reconnects"
    )
    parser.add_argument(
        "--once", action="store_true", help="exit when the connection ends instead of reconnecting"
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label requests can select this worker by, e.g. --label region=eu (repeatable)",
    )
    parser.add_argument(
        "--tools-dir",
        default=None,
        help="directory of runtime tools (JS, native, WASM, Python) this worker runs; entries outside it are "
        "refused; without it the worker offers no runtimes",
    )
    parser.add_argument(
        "--kill-grace",
        type=float,
        default=2.0,
        help="seconds between SIGTERM and SIGKILL when a script is cancelled or times out (default 2)",
    )
    parser.add_argument(
        "--allow-network",
        action="store_true",
        help="isolated scripts may use the network (default: none, not even loopback); label network=on",
    )
    parser.add_argument(
        "--no-isolation",
        action="store_true",
        help="run scripts unisolated (they see this host's files, network and processes); needed where "
        "namespaces are unavailable, else the worker refuses to start",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    capabilities = tuple(c.strip() for c in args.capabilities.split(",") if c.strip())
    unknown = [c for c in capabilities if c not in LANGUAGES]
    if unknown:
        raise SystemExit(f"unknown capabilities {unknown}: use {', '.join(LANGUAGES)}")
    if args.max_concurrent < 1:
        raise SystemExit("--max-concurrent must be at least 1")
    if args.run_as is not None:
        import pwd

        try:
            pwd.getpwuid(int(args.run_as)) if args.run_as.isdigit() else pwd.getpwnam(args.run_as)
        except KeyError:
            raise SystemExit(f"--run-as: no user {args.run_as!r}") from None
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--label {item!r}: use KEY=VALUE")
        labels[key.strip()] = value.strip()
    try:
        check_labels(labels, "--label")
    except ProtocolError as exc:
        raise SystemExit(str(exc)) from None
    if args.tools_dir is not None and not os.path.isdir(args.tools_dir):
        raise SystemExit(f"--tools-dir {args.tools_dir!r} is not a directory")
    if args.kill_grace < 0:
        raise SystemExit("--kill-grace must be 0 or more seconds")
    return WorkerConfig(
        hub=args.hub,
        labels=labels,
        tools_dir=args.tools_dir,
        kill_grace=args.kill_grace,
        token=args.token,
        name=args.name,
        max_concurrent=args.max_concurrent,
        capabilities=capabilities,
        max_output_bytes=args.max_output_bytes,
        cpu_seconds=args.cpu_seconds or None,
        memory_mb=args.memory_mb or None,
        file_size_mb=args.max_file_mb or None,
        max_processes=args.max_processes or None,
        run_as=args.run_as,
        allow_env=tuple(v.strip() for v in args.allow_env.split(",") if v.strip()),
        python=args.python,
        workdir=args.workdir,
        default_timeout=args.default_timeout,
        reconnect_max=args.reconnect_max,
        once=args.once,
        isolation=not getattr(args, "no_isolation", False),
        allow_network=bool(getattr(args, "allow_network", False)),
    )


def run(args: argparse.Namespace) -> int:
    """Run the worker daemon until SIGTERM/SIGINT; the exit code says why it stopped."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s worker %(levelname)s %(message)s",
    )
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                args.token = handle.read().strip()
        except OSError as exc:
            print(f"async-agent worker: cannot read --token-file: {exc.strerror}", file=sys.stderr)
            return 2
    if not args.token:
        print(
            "async-agent worker: a token is required (--token, --token-file or $ASYNC_AGENT_TOKEN)",
            file=sys.stderr,
        )
        return 2
    for problem in protect_secret(args.token):
        logger.warning("%s", problem)
    config = config_from_args(args)
    if config.isolation:
        from ..sandbox.isolation import isolation_status

        status = isolation_status()
        if not status.available:
            print(
                f"async-agent worker: scripts cannot be isolated here ({status.reason}); start with "
                "--no-isolation to run them unisolated (they then see this host's files, network and processes)",
                file=sys.stderr,
            )
            return 2
        network = "with the network" if config.allow_network else "without network"
        logger.info("scripts run isolated (%s), %s", status.reason, network)
    else:
        logger.warning(
            "scripts run UNISOLATED (--no-isolation): they see this host's files, network and processes"
        )

    async def main() -> int:
        daemon = WorkerDaemon(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, daemon.stop)
        return await daemon.run()

    return asyncio.run(main())
