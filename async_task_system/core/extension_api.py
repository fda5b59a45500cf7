"""The :class:`~async_task_system.TaskManager` methods that are the public face of an extension:
seed 000's ``create_task`` (the ``conversations`` extension) and its remote API (the ``remote``
extension). Each only hands the call to its extension, loaded on first use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ExtensionMethods"]


class ExtensionMethods:
    """Mixed into :class:`~async_task_system.TaskManager`, which provides :meth:`extension`."""

    def extension(self, name: str) -> Any:
        raise NotImplementedError  # TaskManager's own

    def create_task(
        self,
        prompt: str,
        tools: Sequence[Any] | None = None,
        *,
        model: Any = None,
        agent_factory: Callable[[], Any] | None = None,
        timeout: float | None = None,
        retries: int = 0,
        after: Sequence[str] | None = None,
    ) -> str:
        """Run a fresh agent conversation on ``prompt`` as a background task (seed 000); returns its id.

        A ``CodeAgent`` with ``tools`` (tool objects or registered tool names) on ``model`` (default:
        the ``AsyncAgent``'s, else ``.env``), or ``agent_factory()``. When one of its tools hands work
        away (``remote_execute``), the conversation waits in WAITING_REMOTE holding no thread and
        no slot, and goes on when the answer comes; its final answer is the task's result.
        """
        options = {"timeout": timeout, "retries": retries, "after": after}
        return self.extension("conversations").create_task(prompt, tools, model, agent_factory, options)

    # ------------------------------------------------------------------ seed 000's remote API (the "remote" extension)

    @property
    def remote_manager(self) -> Any:
        """The :class:`~async_task_system.remote.RemoteExecutionManager` of this manager (created on first use)."""
        return self.extension("remote")

    async def suspend_task_for_remote(self, task_id: str, command: str, timeout: float | None = None) -> str:
        """Move a running task to WAITING_REMOTE (its slot is given back), send ``command``; returns the request id."""
        return self.remote_manager.suspend(task_id, command, timeout)

    async def resume_task_with_result(self, task_id: str, result: Any) -> bool:
        """WAITING_REMOTE -> COMPLETED with ``result``; False if the task was not waiting."""
        return self.remote_manager.resume(task_id, result)

    def handle_websocket_response(
        self, request_id: str, success: bool, result: Any = None, error: str | None = None
    ) -> bool:
        """Deliver a remote response (seed 000); safe from any thread; unknown and late ones are ignored."""
        return self.remote_manager.handle_remote_response(request_id, success, result, error)
