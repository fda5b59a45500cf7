"""The ``remote_execute`` tool (:mod:`.execute_tool`) and :func:`attach_remote`, which wires remote execution into an agent.

See :class:`~.execute_tool.RemoteExecuteTool` for how the tool behaves by where it is called.
"""

from __future__ import annotations

from typing import Any

from ..core.manager import TaskManager
from .execute_tool import REMOTE_GUIDANCE, RemoteExecuteTool

__all__ = ["RemoteExecuteTool", "attach_remote", "REMOTE_GUIDANCE"]


def attach_remote(
    target: Any,
    *,
    hub: bool = True,
    token: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    transport: str = "ws",
    **hub_options: Any,
) -> Any:
    """Wire remote execution into an ``AsyncAgent`` (or a bare ``TaskManager``) and start a hub.

    Registers the ``remote`` target (so ``submit_task`` lists it), adds the ``remote_execute``
    tool to the agent, and with ``hub=True`` starts a hub on ``host:port`` (port 0 picks a free one)
    that workers join with ``token``: ``transport="ws"`` a :class:`~async_task_system.remote.hub.RemoteHub`,
    ``"grpc"`` a :class:`~async_task_system.remote.grpc_hub.GrpcHub`. Returns the
    started hub, or ``None`` with ``hub=False``. The hub stops when the manager shuts down
    (after its tasks are waited for); ``hub.stop()`` stops it earlier.
    """
    manager: TaskManager = getattr(target, "task_manager", target)
    if not isinstance(manager, TaskManager):
        raise TypeError(f"attach_remote expects an AsyncAgent or a TaskManager, got {type(target).__name__}")
    _ = manager.remote_manager
    agent = getattr(target, "agent", None)
    if agent is not None and hasattr(agent, "tools"):
        agent.tools[RemoteExecuteTool.name] = RemoteExecuteTool(manager)
        instructions = getattr(agent, "instructions", None) or ""
        if REMOTE_GUIDANCE not in instructions:
            agent.instructions = f"{instructions}\n{REMOTE_GUIDANCE}" if instructions else REMOTE_GUIDANCE
    if not hub:
        return None
    if transport == "grpc":
        from .grpc_hub import GrpcHub as hub_class
    elif transport == "ws":
        from .hub import RemoteHub as hub_class
    else:
        raise ValueError(f"transport must be 'ws' or 'grpc', got {transport!r}")
    started = hub_class(manager, host=host, port=port, token=token, **hub_options).start()
    manager.add_shutdown_callback(started.stop)
    return started
