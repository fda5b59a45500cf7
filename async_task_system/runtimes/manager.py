"""RuntimeManager (seed 001 §2.6): one place that routes a call to its runtime by name.

It builds the standard runtimes around **one** :class:`~async_task_system.sandbox.process.RunLimits` and
one :class:`~async_task_system.sandbox.process.ScriptRunner` (the same runner class the fleet worker uses),
so Python, JavaScript and native tools share the limits, and the WASM runtime takes its timeout,
memory and output caps from the same object. An unknown runtime is an error listing the known ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

from ..sandbox.process import RunLimits, ScriptRunner
from .base import BaseRuntime, RuntimeResult, UnknownRuntimeError
from .javascript import JavaScriptRuntime
from .mcp import McpRuntime
from .native import NativeRuntime
from .python import PythonRuntime
from .wasm import WasmRuntime

__all__ = ["RuntimeManager", "default_runtime_manager"]


class RuntimeManager:
    """Runtimes by name: ``python``, ``javascript`` (alias ``js``), ``native``, ``wasm``, ``mcp``,
    and any registered with :meth:`register`.

    Args:
        limits: the limits of every call (default :class:`RunLimits`): timeout, memory, CPU seconds,
            output bytes, environment allow-list, interpreter for Python tools.
        node: the Node.js executable; ``node_permission`` turns on Node's permission model.
    """

    ALIASES = {
        "js": "javascript",
        "node": "javascript",
        "py": "python",
        "wasi": "wasm",
        "webassembly": "wasm",
    }

    def __init__(
        self, limits: RunLimits | None = None, *, node: str = "node", node_permission: bool = False
    ) -> None:
        self.limits = limits if limits is not None else RunLimits()
        self.runner = ScriptRunner(self.limits)
        self._runtimes: dict[str, BaseRuntime] = {}
        for runtime in (
            PythonRuntime(self.runner),
            JavaScriptRuntime(self.runner, node=node, permission=node_permission),
            NativeRuntime(self.runner),
            WasmRuntime(self.limits),
            McpRuntime(self.limits),
        ):
            self.register(runtime)

    def register(self, runtime: BaseRuntime) -> None:
        """Add (or replace) a runtime under its ``get_name()``."""
        self._runtimes[runtime.get_name()] = runtime

    def names(self) -> list[str]:
        """The known runtime names."""
        return sorted(self._runtimes)

    def get_runtime(self, name: str) -> BaseRuntime:
        """The runtime called ``name`` (or an alias); :class:`UnknownRuntimeError` lists the known ones."""
        runtime = self._runtimes.get(self.ALIASES.get(name, name))
        if runtime is None:
            raise UnknownRuntimeError(
                f"unknown runtime {name!r}: known runtimes are {', '.join(self.names())}"
            )
        return runtime

    def available(self) -> dict[str, str | None]:
        """``{name: None or why it cannot run here}`` for every runtime."""
        return {name: runtime.available() for name, runtime in sorted(self._runtimes.items())}

    async def validate(self, runtime_name: str, entry: str) -> bool:
        """True when the runtime exists, can run here, and ``entry`` is usable by it."""
        try:
            return await self.get_runtime(runtime_name).validate(entry)
        except UnknownRuntimeError:
            return False

    async def execute(
        self,
        runtime_name: str,
        entry: str,
        command: str,
        parameters: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> RuntimeResult:
        """Run one call on the named runtime; an unknown runtime is an error result, never an exception."""
        try:
            runtime = self.get_runtime(runtime_name)
        except UnknownRuntimeError as exc:
            return RuntimeResult.failure(runtime_name, "unknown_runtime", str(exc))
        return await runtime.execute(entry, command, parameters or {}, timeout)

    def execute_sync(
        self,
        runtime_name: str,
        entry: str,
        command: str,
        parameters: dict[str, Any] | None = None,
        timeout: float | None = None,
        *,
        stop_with_task: bool = False,
    ) -> RuntimeResult:
        """:meth:`execute` from synchronous code (a tool's ``forward``, a script): runs on the
        package's event loop and blocks this thread until the call ends.

        ``stop_with_task``: when called inside a background task, the call is stopped (its process
        group killed, its module interrupted) the moment that task is cancelled or times out; the
        manager tells us through a listener, nothing polls.
        """
        from ..core.loop import background_loop

        loop = background_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("execute_sync was called on the package's event loop: await execute() there")
        future = asyncio.run_coroutine_threadsafe(
            self.execute(runtime_name, entry, command, parameters, timeout), loop
        )
        remove = _stop_with_current_task(future) if stop_with_task else None
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            return RuntimeResult.failure(
                runtime_name, "cancelled", "the task was cancelled or timed out; the call was stopped"
            )
        except BaseException:
            future.cancel()  # the call's process group (or module) is stopped
            raise
        finally:
            if remove is not None:
                remove()

    def close(self) -> None:
        """Kill every running subprocess call and release every runtime."""
        self.runner.kill_all()
        for runtime in self._runtimes.values():
            runtime.close()

    def __repr__(self) -> str:
        return f"<RuntimeManager {', '.join(self.names())}>"


def _stop_with_current_task(future: concurrent.futures.Future[Any]) -> Callable[[], None] | None:
    """Cancel ``future`` when the background task running this code ends early; returns the
    listener's remover (``None`` outside a task)."""
    from ..core.manager import get_current_task_id, get_task_manager

    task_id = get_current_task_id()
    manager = get_task_manager()
    if task_id is None or manager is None:
        return None

    def on_change(info: Any) -> None:
        if info.id == task_id and info.status.is_terminal:
            future.cancel()

    remove = manager.add_listener(on_change)
    if manager.is_cancel_requested(task_id):
        future.cancel()
    return remove


_default: RuntimeManager | None = None


def default_runtime_manager() -> RuntimeManager:
    """The process-wide manager (default limits) that runtime tools use when given none."""
    global _default
    if _default is None:
        _default = RuntimeManager()
    return _default
