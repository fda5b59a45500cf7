"""JSON-lines TCP server (seed 003): the agent for any client, in any language.

Start it from the command line (``async-agent serve --remote 127.0.0.1:8080``) or from Python::

    from async_task_system import create_async_agent
    from async_task_system.server import AgentServer, serve

    serve(lambda: create_async_agent(tools=[my_tool], model=my_model), "127.0.0.1:8080")

The factory is called once per request, so every request runs on its own agent instance.
The wire format is in :mod:`async_task_system.server.protocol` and ``docs/protocol.md``.
"""

try:
    import pydantic  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "The JSON-lines server needs pydantic: pip install 'async_task_system[server]'"
    ) from exc

from .agents import AgentFactory, AgentHandle, Exchange, RequestModel
from .protocol import (
    ErrorCode,
    FileInput,
    ImageInput,
    InputType,
    InstructionInput,
    RemoteRequest,
    RemoteResponse,
    RequestConfig,
    ResponseContent,
    TokenUsage,
    ToolCallContent,
    ToolResultContent,
)
from .tcp import AgentServer, RequestRecord, ServerThread, parse_address, serve

__all__ = [
    "AgentFactory",
    "AgentHandle",
    "AgentServer",
    "ErrorCode",
    "Exchange",
    "FileInput",
    "ImageInput",
    "InputType",
    "InstructionInput",
    "RemoteRequest",
    "RemoteResponse",
    "RequestConfig",
    "RequestModel",
    "RequestRecord",
    "ResponseContent",
    "ServerThread",
    "TokenUsage",
    "ToolCallContent",
    "ToolResultContent",
    "parse_address",
    "serve",
]
