"""One agent's end of the collaboration protocol: its requests (:mod:`.requesting`) and its handlers (:mod:`.serving`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.manager import TaskManager
from .directory import AgentDirectory, default_directory
from .messages import CollaborationError, CollaborationMessage, Reply
from .requesting import Requester
from .serving import HandlerHost


class CollaborationProtocol(Requester):
    """One agent's end of the collaboration protocol: it serves its handlers and sends requests.

    The requesting half is inherited (:class:`~.requesting.Requester`: ``start_request``,
    ``request_collaboration``, ``ask``, ``cancel_request``); the serving half is ``handlers``
    (a :class:`~.serving.HandlerHost`), whose calls this class offers too.

    Args:
        name: the agent's name in the directory (others send requests to it by this name).
        task_manager: runs the handlers (and ``agent_request`` tasks); an ``AsyncAgent`` is accepted
            too. Default: a new ``TaskManager`` of its own.
        directory: where agents are found (default: :func:`default_directory`); this protocol
            registers itself there under ``name`` unless ``register`` is False.
        inbox_size: requests accepted and not yet answered, at most; more are answered ``busy``.
        max_stuck_handlers: sync handlers still running past their request's deadline, at most.
            A sync handler runs on a thread of its own: at the deadline its task times out, its
            slot and the manager's worker thread are given back, and the handler's thread is left
            to finish (Python cannot stop a thread). While this many are left running, requests for
            sync handlers are answered ``busy`` (handler threads stay bounded: this plus the slots).
    """

    def __init__(
        self,
        name: str,
        task_manager: Any = None,
        directory: AgentDirectory | None = None,
        *,
        inbox_size: int = 64,
        register: bool = True,
        max_stuck_handlers: int = 32,
    ) -> None:
        manager = getattr(task_manager, "task_manager", task_manager)
        super().__init__(name, directory if directory is not None else default_directory())
        self.owns_manager = manager is None
        self.manager: TaskManager = manager if manager is not None else TaskManager(max_workers=8)
        try:  # the serving half: this agent's handlers, run as tasks of its manager
            self.handlers = HandlerHost(
                name, self.manager, inbox_size=inbox_size, max_stuck_handlers=max_stuck_handlers
            )
        except ValueError:
            if self.owns_manager:
                self.manager.shutdown(wait=False, cancel_pending=True)
            raise
        self.manager.extension("collaboration").adopt(self)
        if register:
            self.directory.register(name, self)

    @property
    def inbox_size(self) -> int:
        return self.handlers.inbox_size

    @property
    def max_stuck_handlers(self) -> int:
        return self.handlers.max_stuck_handlers

    @property
    def stuck_handlers(self) -> int:
        """Sync handlers left running past their deadline (their threads end when they return)."""
        return self.handlers.stuck_handlers

    # ------------------------------------------------------------------ serving

    def register_handler(self, tool_name: str, handler: Callable[..., Any], description: str = "") -> None:
        """Serve ``tool_name``: ``handler(**parameters)`` (sync or ``async def``) returns the result.

        It runs as a task of this agent's manager; it may call ``report_progress(fraction,
        message)`` (sent to the requester as PROGRESS) and, if sync, check ``cancellation_requested()``.
        """
        self.handlers.register_handler(tool_name, handler, description)

    def tools(self) -> dict[str, str]:
        """The tools this agent serves, with their descriptions."""
        return self.handlers.tools()

    def deliver(self, message: CollaborationMessage, reply: Reply) -> None:
        """Accept a REQUEST (any thread, never blocks): answered at once if it must be refused, else run as a task."""
        self.handlers.deliver(message, reply)

    def cancel(self, request_id: str) -> None:
        """CANCEL from the requester: cancel the handler's task (its coroutine is cancelled too)."""
        self.handlers.cancel(request_id)

    async def handle_request(self, message: CollaborationMessage) -> CollaborationMessage:
        """The seed's call: run a REQUEST here and return its RESPONSE (PROGRESS messages are dropped)."""
        return await self.handlers.handle_request(message)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Leave the directory, end our open requests (``cancelled``) and shut an own manager down."""
        if self._is_registered():
            self.directory.unregister(self.name)
        super().close()  # our open requests end ``cancelled``
        self.handlers.close()
        if self.owns_manager:
            self.manager.shutdown(wait=False, cancel_pending=True)

    def _is_registered(self) -> bool:
        try:
            return self.directory.resolve(self.name) is self
        except CollaborationError:
            return False

    def __enter__(self) -> CollaborationProtocol:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CollaborationProtocol {self.name!r} tools={sorted(self.tools())}>"
