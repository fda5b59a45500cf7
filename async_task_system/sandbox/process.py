"""Runs programs as sandboxed subprocesses: the one runner for every process the project starts.

The worker daemon (:mod:`async_task_system.remote.worker`) uses it for the shell and Python scripts a
hub sends (:meth:`ScriptRunner.run`), the tool runtimes (:mod:`async_task_system.runtimes`) for
Node.js scripts, Python tools and native binaries (:meth:`ScriptRunner.run_program`), and the agent
server's code kernels (:meth:`ScriptRunner.start_interactive`), so every process gets the same
treatment under one :class:`RunLimits`:

* argument lists, never a shell string built by us (a script is ``/bin/sh -c SCRIPT`` or
  ``python -u -c SCRIPT``); stdin is ``/dev/null`` unless the caller passes bytes for it;
* isolated (:mod:`.isolation`), else under a supervisor of its own (:mod:`._supervise`): on timeout,
  cancel, the program's end and this process's death *every* descendant is killed (``setsid`` too);
* limits on the whole tree (CPU seconds of all its processes, resident memory, number of processes)
  and per process (``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``, no core dumps); a root runner's
  programs run with no capabilities and ``no_new_privs`` (or as ``user``);
* on timeout and cancel, ``SIGTERM`` to every process of the tree, then after
  :attr:`RunLimits.kill_grace` seconds ``SIGKILL`` to what is left;
* a clean environment: only the variables on an allow-list, plus those the caller sets (and the
  caller's W3C trace context as ``TRACEPARENT`` / ``TRACESTATE``);
* stdout and stderr captured up to a byte cap each (the result says when output was truncated), and
  optionally streamed line by line while the program runs; ``stop_on_overflow`` kills a program
  whose output passes the cap instead of letting it flood until its timeout.

Without cgroups v2 the tree limits are checked every 0.2 s from ``/proc`` (a burst can overshoot for
that long); ``RLIMIT_NPROC`` bounds forks at once. No networking here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..core.compat import TIMEOUT_ERRORS
from .isolation import IsolatedProcess, read_paths
from .stdio_bridge import bridge_command

__all__ = [
    "CappedOutput",
    "DEFAULT_ALLOW_ENV",
    "SCRIPT_LANGUAGES",
    "RunLimits",
    "RunOutcome",
    "ScriptRunner",
    "run_script",
]

SCRIPT_LANGUAGES = ("shell", "python")
"""What :meth:`ScriptRunner.run` runs: ``shell`` (``/bin/sh -c``) and ``python`` (``python -c``)."""

DEFAULT_ALLOW_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
_CHUNK = 65536
_MAX_LINE = 8192

LineCallback = Callable[[str, str], None]
"""``(stream, line)``: ``stream`` is ``"stdout"`` or ``"stderr"``."""
StartCallback = Callable[[float], None]
"""``(unix_time)``: when the program started."""


@dataclass(frozen=True)
class RunLimits:
    """What a script may use and see. ``None`` (or 0 on the CLI) disables the CPU or memory limit."""

    timeout: float = 60.0
    """Seconds, when a run gives none; then the whole process group is killed."""
    max_output_bytes: int = 256 * 1024
    """Bytes of stdout and of stderr kept (and streamed) per script."""
    cpu_seconds: float | None = 300.0
    """``RLIMIT_CPU``: soft limit gives ``SIGXCPU``, the hard one a second later ``SIGKILL``."""
    """Also the CPU seconds of the whole tree (every process the script starts, together)."""
    memory_mb: int | None = 1024
    """``RLIMIT_AS`` in MiB: allocations beyond it fail. Also the resident memory of the whole tree."""
    file_size_mb: int | None = 256
    """``RLIMIT_FSIZE`` in MiB: no file written grows beyond it (``SIGXFSZ``)."""
    max_processes: int | None = 64
    """Processes of the script's tree at once; more, and the whole tree is killed."""
    user: str | None = None
    """Run scripts as this user (name or uid) when the runner is root. ``None``: isolated scripts
    of a root runner run as ``nobody`` with root's file access (the two file-permission
    capabilities, in the run's user namespace only), since the kernel limits no root's processes
    and a root script's fork bomb would outgrow ``max_processes``; unisolated ones as the
    runner's user, with every capability dropped when that is root. Other runners' scripts run
    as their own user."""
    allow_env: tuple[str, ...] = DEFAULT_ALLOW_ENV
    """Variables passed from this process's environment; nothing else is."""
    languages: tuple[str, ...] = SCRIPT_LANGUAGES
    """What scripts :meth:`ScriptRunner.run` may run: ``shell`` and/or ``python`` (programs the
    tool runtimes start are chosen by the runtime, not by this list)."""
    python: str = field(default_factory=lambda: sys.executable or "python3")
    """Interpreter for ``python`` scripts."""
    workdir: str | None = None
    """Working directory of scripts (``None``: this process's)."""
    isolation: bool = True
    """Run every program isolated (see :mod:`.isolation`): no network unless ``network``, the file
    system read-only except a private scratch directory, its own pid namespace. ``False``: the
    programs see what this process sees (``--no-isolation``); where namespaces are unavailable,
    isolated runs fail to start instead."""
    network: bool = False
    """Isolated programs may use the network (this host's, loopback included)."""
    read_paths: tuple[str, ...] = ()
    """More host paths isolated programs may read (the system directories, the interpreter and the
    program's own files are always visible)."""
    write_paths: tuple[str, ...] = ()
    """Host paths isolated programs may write (``workdir`` is one when set)."""
    scratch_mb: int = 64
    """MiB of the private scratch directory (``/scratch``, also ``/tmp``) of an isolated run."""
    kill_grace: float = 2.0
    """Seconds a stopped program (timeout, cancel) has between ``SIGTERM`` and ``SIGKILL``: every
    process of its tree gets ``SIGTERM`` first (a script may trap it to clean up), and what is left
    after the grace period is killed. 0: ``SIGKILL`` at once."""


class RunOutcome(NamedTuple):
    """How a script ended. ``result`` holds ``exit_code``, ``stdout``, ``stderr``, ``timed_out``,
    ``cancelled``, ``truncated`` and ``duration`` (only ``exit_code`` when it could not start)."""

    success: bool
    result: dict[str, Any]
    error: str | None
    error_type: str | None
    """When not successful: "timeout", "cancelled", "output_limit" (only with ``stop_on_overflow``)
    or "remote_error" (any other failure: exit code, signal, sandbox limit, could not start)."""


_SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_supervise.py")
_GRACE = 3.0  # seconds the supervisor has to kill the tree before its group is killed outright


def _user_ids(user: str, default: tuple[int, int] | None = None) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if default is None:
            raise
        return default
    return entry.pw_uid, entry.pw_gid


class CappedOutput:
    """Collects one output stream up to a byte cap (``truncated`` past it; ``on_overflow`` is called
    once then) and splits it into lines for streaming. Also the WASM runtime's stdout and stderr."""

    def __init__(
        self,
        name: str,
        cap: int,
        on_line: Callable[[str, str], None] | None,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.cap = cap
        self.on_line = on_line
        self.on_overflow = on_overflow
        self.data = bytearray()
        self.truncated = False
        self.streamed = 0
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room and not self.truncated:
            self.truncated = True
            if self.on_overflow is not None:
                self.on_overflow()
        if self.on_line is None or self.streamed >= self.cap:
            return
        pending = self._partial + chunk
        lines = pending.split(b"\n")
        self._partial = lines.pop()
        while len(self._partial) > _MAX_LINE:  # a line without end: streamed in pieces of _MAX_LINE
            lines.append(self._partial[:_MAX_LINE])
            self._partial = self._partial[_MAX_LINE:]
        for line in lines:
            for start in range(0, max(len(line), 1), _MAX_LINE):
                self._emit(line[start : start + _MAX_LINE])

    def close(self) -> None:
        if self._partial and self.on_line is not None and self.streamed < self.cap:
            self._emit(self._partial)
        self._partial = b""

    def _emit(self, line: bytes) -> None:
        if self.streamed >= self.cap or self.on_line is None:
            return
        self.streamed += len(line) + 1
        self.on_line(self.name, line.decode("utf-8", errors="replace"))

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", errors="replace")


class ScriptRunner:
    """Runs scripts under one set of :class:`RunLimits`; ``cancel`` and ``kill_all`` stop running ones.

    Methods run on one asyncio loop (the caller's); any number of scripts may run at once.
    """

    def __init__(self, limits: RunLimits | None = None) -> None:
        self.limits = limits if limits is not None else RunLimits()
        self._running: dict[str, tuple[asyncio.subprocess.Process, dict[str, bool]]] = {}
        self._keys = itertools.count(1)

    @property
    def running(self) -> int:
        """How many scripts are running now."""
        return len(self._running)

    def _argv(self, language: str, command: str) -> list[str]:
        if language == "python":
            return [self.limits.python, "-u", "-c", command]
        return ["/bin/sh", "-c", command]

    def _sandbox(self, env: dict[str, str]) -> str:
        """The supervisor's configuration (see :mod:`._supervise`)."""
        return json.dumps(self._config(env))

    def _config(self, env: dict[str, str]) -> dict[str, Any]:
        limits = self.limits
        mib = 1024 * 1024
        memory = None if limits.memory_mb is None else int(limits.memory_mb) * mib
        config: dict[str, Any] = {
            "parent": os.getpid(),
            "env": env,
            "cpu_seconds": limits.cpu_seconds,
            "tree_cpu_seconds": limits.cpu_seconds,
            "memory_bytes": memory,
            "tree_memory_bytes": memory,
            "file_bytes": None if limits.file_size_mb is None else int(limits.file_size_mb) * mib,
            "max_processes": limits.max_processes,
            "term_grace": max(0.0, float(limits.kill_grace)),
            "user": _user_ids(str(limits.user)) if limits.user is not None and os.geteuid() == 0 else None,
        }
        return config

    def _request(
        self, argv: list[str], env: dict[str, str], cwd: str | None, network: bool | None
    ) -> dict[str, Any]:
        """An isolated run's request to the supervisor (see :mod:`._zygote`)."""
        config = self._config(env)
        limits = self.limits
        if config["user"] is None and os.geteuid() == 0:
            # nobody with root's file access (see ``RunLimits.user``)
            config.update(user=_user_ids("nobody", default=(65534, 65534)), root_files=True)
        workdir = cwd if cwd is not None else limits.workdir
        writable = [os.path.abspath(path) for path in (*limits.write_paths, *([workdir] if workdir else []))]
        config.update(
            argv=list(argv),
            cwd=os.path.abspath(workdir) if workdir else None,
            network=limits.network if network is None else bool(network),
            read_paths=[*read_paths(argv, limits.python), *(os.path.abspath(p) for p in limits.read_paths)],
            write_paths=writable,
            scratch_bytes=int(limits.scratch_mb) * 1024 * 1024,
        )
        return config

    def _env(self, extra: dict[str, str], trace: dict[str, str]) -> dict[str, str]:
        env = {key: os.environ[key] for key in self.limits.allow_env if key in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(extra)
        # The requester's trace context, as the TRACEPARENT/TRACESTATE environment carriers that
        # OpenTelemetry SDKs and tools read, so an instrumented script joins the agent's trace.
        for key in ("traceparent", "tracestate"):
            if trace.get(key):
                env[key.upper()] = trace[key]
        return env

    def wrap(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
        """``(argv, environment)`` that start ``argv`` with these limits, for code that must start a
        long-lived process itself (an MCP server's stdio client): isolated, through
        :mod:`.stdio_bridge`; else under the supervisor (rlimits, tree limits, death with the thread
        that started it). The program gets the clean environment plus ``env``."""
        environment = self._env(env or {}, {})
        if self.limits.isolation:
            return bridge_command(self.limits, argv, environment)
        return [sys.executable, "-I", "-S", _SUPERVISOR, *argv], {
            "ASYNC_AGENT_SANDBOX": self._sandbox(environment)
        }

    async def run(
        self,
        command: str,
        language: str = "shell",
        *,
        key: str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        trace: dict[str, str] | None = None,
        on_line: LineCallback | None = None,
        on_start: StartCallback | None = None,
    ) -> RunOutcome:
        """Run the script ``command`` in ``language`` (one of ``limits.languages``) to its end.

        See :meth:`run_program` for the other arguments.
        """
        if language not in self.limits.languages:
            return RunOutcome(
                False, {"exit_code": None}, f"this worker does not run {language} commands", "remote_error"
            )
        return await self.run_program(
            self._argv(language, command),
            key=key,
            timeout=timeout,
            env=env,
            trace=trace,
            on_line=on_line,
            on_start=on_start,
            what=f"the {language} process",
        )

    async def run_program(
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        key: str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        trace: dict[str, str] | None = None,
        on_line: LineCallback | None = None,
        cwd: str | None = None,
        stop_on_overflow: bool = False,
        what: str | None = None,
        network: bool | None = None,
        on_start: StartCallback | None = None,
    ) -> RunOutcome:
        """Run the program ``argv`` (looked up on the allowed ``PATH`` when it has no ``/``) to its
        end, its timeout (seconds; default ``limits.timeout``) or :meth:`cancel` with ``key``.

        ``stdin`` is written to the program's standard input (then closed; ``None``: ``/dev/null``);
        ``env`` adds variables to the allowed ones; ``trace`` is a W3C carrier (``traceparent``,
        ``tracestate``); ``on_line(stream, line)`` receives output lines as they appear; ``cwd``
        overrides ``limits.workdir``; ``stop_on_overflow`` kills the program as soon as stdout or
        stderr passes ``limits.max_output_bytes`` (error type ``"output_limit"``); ``what`` names the
        program in error messages; ``network`` (isolated runs) overrides ``limits.network``;
        ``on_start(unix_time)`` is called once the program has really started (after the sandbox
        made it: isolated, when its init spawned it; unisolated, when its supervisor started), not
        when it could not start. Being cancelled (``asyncio.CancelledError``) kills the process
        group and re-raises.
        """
        limits = self.limits
        key = key if key is not None else f"run-{next(self._keys)}"
        timeout = float(timeout or limits.timeout)
        what = what or repr(argv[0])
        started = time.monotonic()
        if on_start is not None:
            on_start, on_line = _started_first(on_start, on_line)
        try:
            process: Any = await self._spawn(argv, stdin is not None, env, trace, cwd, network, on_start)
        except (OSError, KeyError) as exc:
            return RunOutcome(False, {"exit_code": None}, f"could not start {what}: {exc}", "remote_error")
        if on_start is not None and not limits.isolation:
            on_start(time.time())
        flags = {"timed_out": False, "cancelled": False, "overflow": False}
        self._running[key] = (process, flags)

        def overflow() -> None:
            if stop_on_overflow and not flags["overflow"]:
                flags["overflow"] = True
                _stop_soon(process, limits.kill_grace)

        out = CappedOutput("stdout", limits.max_output_bytes, on_line, overflow)
        err = CappedOutput("stderr", limits.max_output_bytes, on_line, overflow)
        assert process.stdout is not None and process.stderr is not None
        pumps = [
            asyncio.ensure_future(_pump(process.stdout, out)),
            asyncio.ensure_future(_pump(process.stderr, err)),
        ]
        feeder = None if stdin is None else asyncio.ensure_future(_feed(process, stdin))
        try:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TIMEOUT_ERRORS:
                flags["timed_out"] = True
                await self.stop(process)
            # Output still buffered in the pipes; bounded, because a grandchild that left the
            # process group could keep a pipe open forever.
            _done, pending = await asyncio.wait(pumps, timeout=2.0)
            for pump in pending:
                pump.cancel()
        except asyncio.CancelledError:
            _stop_soon(process, limits.kill_grace)
            for pump in pumps:
                pump.cancel()
            raise
        finally:
            self._running.pop(key, None)
            if feeder is not None:
                feeder.cancel()
        out.close()
        err.close()
        code = process.returncode
        result: dict[str, Any] = {
            "exit_code": code,
            "stdout": out.text(),
            "stderr": err.text(),
            "timed_out": flags["timed_out"],
            "cancelled": flags["cancelled"],
            "truncated": out.truncated or err.truncated,
            "duration": round(time.monotonic() - started, 6),
        }
        if flags["timed_out"]:
            return RunOutcome(
                False, result, f"timed out after {timeout:g} s; the process group was killed", "timeout"
            )
        if flags["cancelled"]:
            return RunOutcome(False, result, "cancelled; the process group was killed", "cancelled")
        if flags["overflow"]:
            stream = "stdout" if out.truncated else "stderr"
            cap = limits.max_output_bytes
            message = f"{stream} passed the {cap}-byte output cap; the process group was killed"
            return RunOutcome(False, result, message, "output_limit")
        limit = getattr(process, "limit", None)
        if limit == "start_error":
            result["exit_code"] = None
            return RunOutcome(False, result, f"could not start {what}: {process.message}", "remote_error")
        if limit in ("process_limit", "memory_limit"):
            return RunOutcome(False, result, f"sandbox limit: {process.message}", limit)
        if limit == "disk_limit":
            message = f"exit code {code}: the scratch directory is full ({limits.scratch_mb} MiB)"
            return RunOutcome(False, result, message, "disk_limit")
        if code == _SANDBOX_LIMIT and "\nsandbox: " in result["stderr"]:
            reason = result["stderr"].rsplit("\nsandbox: ", 1)[1].strip()
            kind = "process_limit" if "processes;" in reason else "memory_limit"
            return RunOutcome(False, result, f"sandbox limit: {reason}", kind)
        if code == 0:
            return RunOutcome(True, result, None, None)
        if code is not None and code < 0:
            name = _signal_name(-code)
            if (
                name in ("SIGXCPU", "SIGKILL")
                and limits.cpu_seconds
                and (name == "SIGXCPU" or limit == "cpu_limit")
            ):
                return RunOutcome(False, result, f"killed by {name} (CPU time limit)", "cpu_limit")
            if name == "SIGXFSZ":
                return RunOutcome(False, result, f"killed by {name} (file size limit)", "file_size_limit")
            hint = " (CPU time limit)" if name == "SIGKILL" and limits.cpu_seconds else ""
            return RunOutcome(False, result, f"killed by {name}{hint}", "remote_error")
        return RunOutcome(False, result, f"exit code {code}", "remote_error")

    async def start_interactive(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        trace: dict[str, str] | None = None,
        cwd: str | None = None,
        network: bool | None = None,
    ) -> Any:
        """Start the long-lived program ``argv`` (a program the caller talks to, like the code kernel of
        :mod:`async_task_system.runtimes.code_sandbox`) and return it running: ``stdin`` a writer,
        ``stdout``/``stderr`` readers, ``wait()``, ``returncode`` (an :class:`IsolatedProcess`, or the
        supervised asyncio subprocess when unisolated). No timeout, no capture: end it with :meth:`stop`.
        Arguments as in :meth:`run_program`; raises ``OSError`` when it cannot start."""
        return await self._spawn(argv, True, env, trace, cwd, network, None)

    async def stop(self, process: Any, grace: float | None = None) -> None:
        """Stop a program of :meth:`start_interactive` (its whole tree: ``SIGTERM``, ``SIGKILL`` after
        ``grace`` seconds, by default ``limits.kill_grace``) and wait for its end."""
        grace = self.limits.kill_grace if grace is None else max(0.0, grace)
        _stop_soon(process, grace)
        with contextlib.suppress(*TIMEOUT_ERRORS):
            await asyncio.wait_for(process.wait(), grace + _GRACE + 1)
        if process.returncode is None:
            _kill_group(process)
            await process.wait()

    async def _spawn(self, argv: list[str], feed: bool, env: Any, trace: Any, cwd: Any, net: Any, start: Any):
        environment = self._env(env or {}, trace or {})
        if self.limits.isolation:
            return await IsolatedProcess.start(self._request(argv, environment, cwd, net), feed, start)
        return await asyncio.create_subprocess_exec(
            *(sys.executable, "-I", "-S", _SUPERVISOR, *argv),
            stdin=asyncio.subprocess.PIPE if feed else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"ASYNC_AGENT_SANDBOX": self._sandbox(environment)},
            cwd=cwd if cwd is not None else self.limits.workdir,
            start_new_session=True,
        )

    def cancel(self, key: str) -> bool:
        """Kill the process group of the script run with ``key``; False if none is running."""
        entry = self._running.get(key)
        if entry is None:
            return False
        process, flags = entry
        flags["cancelled"] = True
        _stop_soon(process, self.limits.kill_grace)
        return True

    def kill_all(self) -> int:
        """Kill every running script's process group; returns how many."""
        keys = list(self._running)
        for key in keys:
            self.cancel(key)
        return len(keys)


async def run_script(
    command: str,
    language: str = "shell",
    limits: RunLimits | None = None,
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    on_line: LineCallback | None = None,
) -> RunOutcome:
    """Run one script under ``limits`` (defaults: :class:`RunLimits`) and return how it ended."""
    return await ScriptRunner(limits).run(command, language, timeout=timeout, env=env, on_line=on_line)


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    """Write ``data`` to the program's stdin and close it; a program that exits without reading
    it all (a broken pipe) is not an error here."""
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(data)
        await process.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.close()


async def _pump(stream: asyncio.StreamReader, capture: CappedOutput) -> None:
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            return
        capture.feed(chunk)


_SANDBOX_LIMIT = 125  # the supervisor's exit code when a limit of the tree ended the script


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if isinstance(process, IsolatedProcess):
        process.stop(0.0)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _stop_soon(process: asyncio.subprocess.Process, grace: float = 0.0) -> None:
    """Ask the supervisor to stop the script's whole tree (``SIGTERM``, ``SIGKILL`` after ``grace``
    seconds); kill its group outright if it has not ended well after that (the script, as the
    same user, may have stopped the supervisor)."""
    if process.returncode is not None:
        return
    if isinstance(process, IsolatedProcess):
        process.stop(grace)  # the supervisor kills the whole namespace after the grace period
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(process.pid, signal.SIGTERM)
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop().call_later(
            grace + _GRACE, lambda: process.returncode is None and _kill_group(process)
        )


def _started_first(
    on_start: StartCallback, on_line: LineCallback | None
) -> tuple[StartCallback, LineCallback | None]:
    """``on_start`` called once, and before any line (an output line may overtake the sandbox's
    word that the program started: then the line's arrival is the start)."""
    done = [False]

    def start(at: float) -> None:
        if not done[0]:
            done[0] = True
            on_start(at)

    if on_line is None:
        return start, None
    line_callback = on_line

    def line(stream: str, text: str) -> None:
        start(time.time())
        line_callback(stream, text)

    return start, line


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
