"""MCP stdio servers as tool runtimes (the ``runtimes`` extra: ``mcp``, ``mcpadapt``).

:class:`McpServer` starts one MCP server (any language) over stdio through smolagents'
``MCPClient`` and exposes its tools as smolagents ``Tool`` objects: pass them to
``create_async_agent(tools=server.tools)`` and the LLM calls them directly or in the background
(``submit_task``) like any tool. ``server.attach(agent)`` stops the server when the agent (its
task manager) shuts down; ``with McpServer(...) as server:`` stops it at the block's end.

The server process runs under the same sandbox supervisor and :class:`RunLimits` as every
subprocess runtime (clean environment with the allow-list, rlimits, its whole process tree killed
when it stops or this process dies). Note ``cpu_seconds`` counts the server's whole life.

:class:`McpRuntime` is the same as a runtime of the :class:`RuntimeManager` (name ``mcp``):
``execute("python server.py", "add", {"a": 1})`` runs the tool ``add`` of that server (the entry is
a command line split like a shell would, but never run by one), starting it on first use and
keeping it until :meth:`McpRuntime.close`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

from ..core.errors import AsyncTaskSystemError, TaskValidationError
from ..sandbox.process import RunLimits, ScriptRunner
from .base import BaseRuntime, RuntimeResult

__all__ = ["McpRuntime", "McpServer", "McpServerError"]

_STDERR_TAIL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stderr_tail.py")


def _exit_status(path: str) -> dict[str, Any] | None:
    """What ``_stderr_tail.py`` wrote when the server exited (exit code, stderr tail), or None."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


class McpServerError(AsyncTaskSystemError, RuntimeError):
    """An MCP server that could not be started (missing program, crashed, or no answer in time)."""


class McpServer:
    """One MCP stdio server and its tools.

    Args:
        command: the program (``"python"``, ``"node"``, a binary) and ``args`` its arguments.
        env: variables added to the clean environment.
        limits: the sandbox limits (default :class:`RunLimits` with no CPU limit: the server lives long).
        structured_output: smolagents' MCP structured output (``outputSchema``, ``structuredContent``).
        start_timeout: seconds the server has to answer the MCP handshake.
        start: start at once (default); else on :meth:`start` or first use of :attr:`tools`.
    """

    def __init__(
        self,
        command: str,
        args: list[str] | tuple[str, ...] = (),
        *,
        env: dict[str, str] | None = None,
        limits: RunLimits | None = None,
        structured_output: bool = True,
        start_timeout: float = 30.0,
        start: bool = True,
    ) -> None:
        self.command = command
        self.args = list(args)
        self.env = dict(env or {})
        self.limits = limits if limits is not None else RunLimits(cpu_seconds=None)
        self.structured_output = structured_output
        self.start_timeout = start_timeout
        self._client: Any = None
        self._tools: list[Any] = []
        self._lock = threading.Lock()
        if start:
            self.start()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._client is not None

    def start(self) -> McpServer:
        """Start the server and read its tools (no-op when running)."""
        with self._lock:
            if self._client is not None:
                return self
            from mcp import StdioServerParameters
            from smolagents import MCPClient

            if shutil.which(self.command) is None:
                raise McpServerError(
                    f"cannot start the MCP server: {self.command!r} was not found (not a path to a program, "
                    "nor a program on PATH)"
                )
            status_dir = tempfile.mkdtemp(prefix="mcp-server-")
            status_file = os.path.join(status_dir, "exit.json")
            # Isolated, the server reaches the status file through a write path (its own directory).
            limits = dataclasses.replace(self.limits, write_paths=(*self.limits.write_paths, status_dir))
            # Isolated, it runs in a scratch directory: a file argument is given by its real path
            # (its directory is then readable there, as a script's is).
            args = [
                os.path.realpath(a) if not a.startswith("-") and os.path.isfile(a) else a for a in self.args
            ]
            argv, env = ScriptRunner(limits).wrap(
                [sys.executable, "-I", "-S", _STDERR_TAIL, status_file, self.command, *args], self.env
            )
            parameters = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
            outcome: dict[str, Any] = {}

            def connect() -> None:
                try:
                    outcome["client"] = MCPClient(
                        parameters,
                        structured_output=self.structured_output,
                        adapter_kwargs={"connect_timeout": self.start_timeout},
                    )
                except BaseException as exc:  # noqa: BLE001 - reported by start() below
                    outcome["error"] = exc

            connecting = threading.Thread(target=connect, name="mcp-connect", daemon=True)
            connecting.start()
            try:
                deadline = time.monotonic() + self.start_timeout + 5.0
                while connecting.is_alive() and time.monotonic() < deadline:
                    connecting.join(0.05)
                    died = _exit_status(status_file)
                    if died is not None and connecting.is_alive():  # it exited before the handshake
                        # the connecting thread gives up at its own connect timeout; nothing waits on it
                        raise McpServerError(self._died_message(died))
                if "error" in outcome or "client" not in outcome:
                    exc = outcome.get("error") or TimeoutError("no answer to the MCP handshake")
                    died = _exit_status(status_file)
                    if died is not None:
                        raise McpServerError(self._died_message(died)) from exc
                    raise McpServerError(
                        f"the MCP server {shlex.join([self.command, *self.args])} did not start: "
                        f"{type(exc).__name__}: {exc} (its stderr is this process's stderr)"
                    ) from exc
                client = outcome["client"]
            finally:
                shutil.rmtree(status_dir, ignore_errors=True)
            self._client = client
            self._tools = list(client.get_tools())
        return self

    @property
    def tools(self) -> list[Any]:
        """The server's tools as smolagents ``Tool`` objects (starts the server if needed)."""
        self.start()
        return list(self._tools)

    def _died_message(self, died: dict[str, Any]) -> str:
        stderr = str(died.get("stderr") or "").strip()
        return (
            f"the MCP server {shlex.join([self.command, *self.args])} exited with code "
            f"{died.get('exit_code')} before answering the MCP handshake; its stderr"
            + (f":\n{stderr}" if stderr else " was empty")
        )

    def tool(self, name: str) -> Any:
        """The tool called ``name``; ``KeyError`` lists the server's tools."""
        for tool in self.tools:
            if tool.name == name:
                return tool
        raise KeyError(
            f"the MCP server {self.command!r} has no tool {name!r}; it has {[t.name for t in self._tools]}"
        )

    def stop(self) -> None:
        """Stop the server (its whole process tree); safe to call twice."""
        with self._lock:
            client, self._client, self._tools = self._client, None, []
        if client is not None:
            client.disconnect()

    def attach(self, owner: Any) -> McpServer:
        """Stop the server when ``owner`` shuts down: an ``AsyncAgent`` (its task manager) or a ``TaskManager``."""
        manager = getattr(owner, "task_manager", owner)
        manager.add_shutdown_callback(self.stop)
        return self

    def __enter__(self) -> McpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<McpServer {shlex.join([self.command, *self.args])} running={self.running}>"


class McpRuntime(BaseRuntime):
    """The ``mcp`` runtime: entry = the server's command line, command = the tool's name."""

    name = "mcp"

    def __init__(self, limits: RunLimits | None = None, *, start_timeout: float = 30.0) -> None:
        self.limits = limits
        self.start_timeout = start_timeout
        self._servers: dict[str, McpServer] = {}
        self._lock = threading.Lock()

    def available(self) -> str | None:
        """Why MCP servers cannot be used here (packages missing), or ``None``."""
        try:
            import mcp  # noqa: F401
            import mcpadapt  # noqa: F401
        except ImportError:
            return "MCP support is not installed: pip install 'async_task_system[runtimes]'"
        return None

    def problem(self, entry: str) -> str | None:
        """Why ``entry`` is not a command line, or ``None``."""
        try:
            return None if shlex.split(entry) else "the MCP server's command line is empty"
        except ValueError as exc:
            return f"the MCP server's command line {entry!r} cannot be split: {exc}"

    def server(self, entry: str) -> McpServer:
        """The server for ``entry``, started on first use."""
        with self._lock:
            server = self._servers.get(entry)
            if server is None:
                argv = shlex.split(entry)
                limits = self.limits if self.limits is not None else RunLimits(cpu_seconds=None)
                server = self._servers[entry] = McpServer(
                    argv[0], argv[1:], limits=limits, start_timeout=self.start_timeout, start=False
                )
        return server.start()

    async def execute(
        self, entry: str, command: str, parameters: dict[str, Any], timeout: float | None = None
    ) -> RuntimeResult:
        """Call tool ``command`` of the server ``entry``; never raises for the tool's failure."""
        reason = self.available() or self.problem(entry)
        if reason is not None:
            return RuntimeResult.failure(
                self.name, "unavailable" if "install" in reason else "invalid_entry", reason
            )
        started = time.monotonic()
        seconds = float(timeout or (self.limits or RunLimits()).timeout)

        def call() -> Any:
            from ..core.targets import tool_target  # the same argument checks as submit_task

            tool = self.server(entry).tool(command)
            return tool(**tool_target(tool).validate(parameters or {}))

        try:
            value = await asyncio.wait_for(asyncio.to_thread(call), seconds)
        except asyncio.TimeoutError:
            return RuntimeResult.failure(
                self.name, "timeout", f"timed out after {seconds:g} s", duration=seconds
            )
        except KeyError as exc:
            return RuntimeResult.failure(self.name, "invalid_entry", str(exc.args[0]))
        except TaskValidationError as exc:
            return RuntimeResult.failure(self.name, "invalid_arguments", str(exc))
        except McpServerError as exc:
            return RuntimeResult.failure(self.name, "unavailable", str(exc))
        except Exception as exc:  # noqa: BLE001 - the server's or the tool's failure, reported as a result
            duration = round(time.monotonic() - started, 6)
            return RuntimeResult.failure(
                self.name, "tool_error", f"{type(exc).__name__}: {exc}", duration=duration
            )
        return RuntimeResult(
            "success", result=value, runtime=self.name, duration=round(time.monotonic() - started, 6)
        )

    def close(self) -> None:
        """Stop every server this runtime started."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()
