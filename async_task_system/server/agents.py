"""Agent-factory glue: turn one validated request into one run of a fresh agent.

The server never shares an agent between requests (smolagents agents are not thread-safe). For
each request it calls the user's *agent factory* — any callable returning a fresh
:class:`~async_task_system.AsyncAgent` or smolagents agent (``CodeAgent``, ``ToolCallingAgent``)
— and adapts that instance to the request:

* the model is wrapped in :class:`RequestModel`, which applies ``max_tokens``, adds up token
  usage, and stops the run at the next model call once the request is cancelled;
* ``prompt`` replaces the agent's instructions, ``max_tool_try`` bounds its steps;
* with ``ask_before_tool_execution`` every tool is wrapped in a gate that asks the client first.

:func:`execute_request` is synchronous and runs in a worker thread of the server.

The parts live beside it: :mod:`.hooks` (what the run and its connection share), :mod:`.model`
(:class:`RequestModel`), :mod:`.handle` (:class:`AgentHandle`), :mod:`.inputs` (images, files) and
:mod:`.values`; their public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from smolagents.models import ChatMessage, MessageRole

from ..sandbox.process import RunLimits
from .handle import AgentHandle, cancel_tasks
from .hooks import AgentFactory, Exchange, ExecutionResult, RequestCancelled, RequestHooks, ToolCallDenied
from .inputs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    ImageLimits,
    PreparedInputs,
    default_task,
    file_block,
    prepare_inputs,
)
from .model import RequestModel
from .protocol import (
    ErrorCode,
    InputType,  # noqa: F401 (importable from here before the split)
    RemoteRequest,
    RequestConfig,
    RequestError,
    ResponseContent,
    TokenUsage,
    ToolResultContent,
)
from .values import answer_text, split_chunks, to_jsonable

__all__ = [
    "AgentFactory",
    "AgentHandle",
    "Exchange",
    "ExecutionResult",
    "RequestCancelled",
    "RequestHooks",
    "RequestModel",
    "ToolCallDenied",
    "answer_text",
    "approval_decision",
    "execute_request",
    "is_approval",
    "split_chunks",
    "to_jsonable",
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_REQUEST_PIXELS",
    "ImageLimits",
    "cancel_tasks",
]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer the user's request directly and concisely."
"""System prompt of model-only answers (``use_tools=false``) when the request sets no ``prompt``."""

_MAX_HISTORY_CHARS = 4000
_APPROVAL_KEYWORDS = ("approve", "deny")


def _short(text: str, limit: int = _MAX_HISTORY_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def _history_block(history: Sequence[Exchange]) -> str:
    lines = ["Earlier exchanges in this conversation, oldest first:"]
    for i, exchange in enumerate(history, 1):
        lines.append(f"[{i}] User: {_short(exchange.user)}")
        lines.append(f"[{i}] Assistant: {_short(exchange.assistant)}")
    return "\n".join(lines)


def _run_instruction(
    handle: AgentHandle, instruction: Any, hooks: RequestHooks, ask: bool
) -> ToolResultContent:
    tools = handle.tools()
    name = instruction.command
    tool = tools.get(name)
    if tool is None:
        available = ", ".join(sorted(tools)) or "none"
        raise RequestError(
            ErrorCode.PROCESSING_ERROR,
            f"Unknown tool {name!r} in Instruction.command; this agent's tools are: {available}",
        )
    inputs: dict[str, Any] = dict(getattr(tool, "inputs", {}) or {})
    params = instruction.parameters
    if params is None:
        params = {}
    single = next(iter(inputs.values())) if len(inputs) == 1 else None
    if not isinstance(params, dict) or (
        single is not None and single.get("type") == "object" and set(params) - set(inputs)
    ):
        if len(inputs) != 1:
            raise RequestError(
                ErrorCode.PROCESSING_ERROR,
                f"Instruction.parameters for tool {name!r} must be an object with the keys "
                f"{sorted(inputs)}, got {json.dumps(params)[:200]}",
            )
        params = {next(iter(inputs)): params}
    unknown = sorted(set(params) - set(inputs))
    missing = sorted(k for k, spec in inputs.items() if k not in params and not spec.get("nullable"))
    if unknown or missing:
        details = []
        if unknown:
            details.append(f"unknown parameter(s) {unknown}")
        if missing:
            details.append(f"missing parameter(s) {missing}")
        expected = ", ".join(f"{k} ({spec.get('type', 'any')})" for k, spec in inputs.items()) or "none"
        raise RequestError(
            ErrorCode.PROCESSING_ERROR,
            f"Tool {name!r}: {'; '.join(details)}. It takes: {expected}",
        )
    hooks.check()
    if ask:
        approved, reason = _ask(hooks, name, params)
        if not approved:
            raise RequestError(
                ErrorCode.PROCESSING_ERROR,
                f"The client denied running tool {name!r}" + (f": {reason}" if reason else ""),
            )
    try:
        value = tool(**params)
    except RequestCancelled:
        raise
    except Exception as exc:
        raise RequestError(
            ErrorCode.PROCESSING_ERROR, f"Tool {name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    hooks.check()
    return ToolResultContent(name=name, result=to_jsonable(value))


def _ask(hooks: RequestHooks, name: str, arguments: Any) -> tuple[bool, str]:
    if hooks.ask_approval is None:
        return True, ""
    return hooks.ask_approval(name, to_jsonable(arguments))


def _gate(hooks: RequestHooks, ask_client: bool) -> Callable[[str, Any], None]:
    """Before each tool call: stop if the request was cancelled, then ask the client if wanted."""

    def ask(name: str, arguments: Any) -> None:
        hooks.check()
        if not ask_client:
            return
        approved, reason = _ask(hooks, name, arguments)
        if not approved:
            raise ToolCallDenied(
                f"The user denied the call to tool {name!r}"
                + (f" ({reason})" if reason else "")
                + ". Do not call it again; continue without it or explain what you would need."
            )

    return ask


def _model_only(
    model: RequestModel,
    request: RemoteRequest,
    config: RequestConfig,
    task: str,
    images: list[Any],
    history: Sequence[Exchange],
    hooks: RequestHooks,
) -> tuple[str, list[str] | None]:
    def text_message(role: MessageRole, text: str) -> ChatMessage:
        return ChatMessage(role=role, content=[{"type": "text", "text": text}])

    messages = [text_message(MessageRole.SYSTEM, config.prompt or DEFAULT_SYSTEM_PROMPT)]
    for exchange in history:
        messages.append(text_message(MessageRole.USER, exchange.user))
        messages.append(text_message(MessageRole.ASSISTANT, exchange.assistant))
    content: list[dict[str, Any]] = [{"type": "text", "text": task}]
    content.extend({"type": "image", "image": image} for image in images)
    messages.append(ChatMessage(role=MessageRole.USER, content=content))
    if request.stream and hasattr(model.inner, "generate_stream"):
        chunks: list[str] = []
        for delta in model.generate_stream(messages):
            piece = getattr(delta, "content", None)
            if piece:
                chunks.append(piece)
                if hooks.send_partial is not None:
                    hooks.send_partial(piece)
        return "".join(chunks), chunks
    message = model.generate(messages)
    text = message.content if isinstance(message.content, str) else answer_text(message.content or "")
    return text, None


def execute_request(
    factory: AgentFactory,
    request: RemoteRequest,
    history: Sequence[Exchange],
    hooks: RequestHooks,
    *,
    model: Any | None = None,
    temp_root: str | None = None,
    image_limits: ImageLimits | None = None,
    code_limits: RunLimits | None = None,
) -> ExecutionResult:
    """Handle one request on a fresh agent; blocking, run in a worker thread.

    With ``code_limits`` the agent's code steps run in sandboxed kernels under those limits (the
    request's file folder readable), killed when the request ends; ``None`` runs them in this process.

    Raises :class:`RequestError` for failures to report, :class:`RequestCancelled` when the
    request was cancelled while running.
    """
    config = request.effective_config()
    prepared = PreparedInputs()
    handle: AgentHandle | None = None

    def agent() -> AgentHandle:
        nonlocal handle
        if handle is None:
            hooks.check()
            try:
                handle = AgentHandle(factory())
            except TypeError:
                raise
            except Exception as exc:
                raise RequestError(
                    ErrorCode.PROCESSING_ERROR, f"The agent factory failed: {type(exc).__name__}: {exc}"
                ) from None
            if code_limits is not None:
                extra = (prepared.folder,) if prepared.folder else ()
                limits = dataclasses.replace(code_limits, read_paths=(*code_limits.read_paths, *extra))
                try:
                    handle.sandbox_code(limits)
                except Exception as exc:  # the finally below closes the handle
                    raise RequestError(
                        ErrorCode.PROCESSING_ERROR, f"Could not sandbox the agent's code: {exc}"
                    ) from None
            if hooks.on_handle is not None:
                hooks.on_handle(handle)
        return handle

    try:
        prepared = prepare_inputs(request.input.leaves(), temp_root, prepared, image_limits)
        hooks.check()
        ask = bool(config.ask_before_tool_execution)
        contents: list[ResponseContent] = []
        instruction_lines: list[str] = []
        for instruction in prepared.instructions:
            result = _run_instruction(agent(), instruction, hooks, ask)
            contents.append(ResponseContent(ToolResult=result))
            instruction_lines.append(
                f"- {result.name}({json.dumps(to_jsonable(instruction.parameters), ensure_ascii=False)}) returned "
                f"{_short(json.dumps(result.result, ensure_ascii=False, default=str), 2000)}"
            )

        usage: TokenUsage | None = None
        exchange: Exchange | None = None
        if prepared.texts or prepared.images or prepared.files:
            user_text = "\n\n".join(prepared.texts) or default_task(prepared)
            blocks = []
            if instruction_lines:
                blocks.append("Instructions already run for this request:\n" + "\n".join(instruction_lines))
            if prepared.files:
                blocks.append(file_block(prepared))
            context_num = config.max_context_num
            shown = list(history)[-context_num:] if context_num else []
            # ``model`` (the server's) only answers use_tools=false requests; agents keep their own.
            # Without tools and with a server model, no agent instance is needed at all.
            inner_model = model if model is not None and not request.use_tools else agent().model
            request_model = RequestModel(inner_model, config.max_tokens, hooks)
            if request.use_tools:
                handle = agent()
                task_parts = []
                if shown:
                    task_parts.append(_history_block(shown))
                task_parts.extend(blocks)
                if prepared.images:
                    task_parts.append(f"{len(prepared.images)} image(s) are attached to this request.")
                task = "\n\n".join([*task_parts, ("Request:\n" if task_parts else "") + user_text])
                handle.agent.model = request_model
                if config.prompt:
                    handle.set_instructions(config.prompt)
                handle.gate_tools(_gate(hooks, ask))
                if hooks.send_partial is not None:
                    send = hooks.send_partial

                    def on_step(step: Any) -> None:
                        text = getattr(step, "model_output", None)
                        if text:
                            send(f"[step {getattr(step, 'step_number', '?')}] {text}\n")

                    handle.on_step(on_step)
                try:
                    output = handle.run(task, prepared.images or None, config.max_tool_try)
                except RequestCancelled:
                    raise
                except Exception as exc:
                    hooks.check()
                    cause = exc.__cause__ or exc.__context__
                    if isinstance(cause, RequestCancelled):
                        raise RequestCancelled("request cancelled") from None
                    raise RequestError(
                        ErrorCode.PROCESSING_ERROR, f"The agent failed: {type(exc).__name__}: {exc}"
                    ) from None
                hooks.check()
                text = answer_text(output)
                chunks = split_chunks(text) if request.stream else None
            else:
                task = "\n\n".join([*blocks, user_text])
                try:
                    text, chunks = _model_only(
                        request_model, request, config, task, prepared.images, shown, hooks
                    )
                except RequestCancelled:
                    raise
                except Exception as exc:
                    raise RequestError(
                        ErrorCode.PROCESSING_ERROR, f"The model failed: {type(exc).__name__}: {exc}"
                    ) from None
                if request.stream and chunks is None:
                    chunks = split_chunks(text)
            usage = request_model.usage()
            contents.append(
                ResponseContent(Stream=chunks) if chunks is not None else ResponseContent(Text=text)
            )
            exchange = Exchange(user=user_text, assistant=text)

        if not contents:
            raise RequestError(
                ErrorCode.PROCESSING_ERROR, "The request has no input to process (empty Multi)"
            )
        content = ResponseContent(Multi=contents) if request.input.Multi is not None else contents[0]
        return ExecutionResult(content=content, token_usage=usage, exchange=exchange)
    finally:
        if handle is not None:
            if hooks.cancel_event.is_set():  # also what it started after the cancel was seen
                handle.cancel_background()
            handle.close()
        if prepared.folder is not None:
            shutil.rmtree(prepared.folder, ignore_errors=True)
        for image in prepared.images:  # decoded pixels go now, not when the last reference does
            with contextlib.suppress(Exception):
                image.close()
        prepared.images.clear()


def is_approval(request: RemoteRequest) -> bool:
    """Whether ``request`` is shaped like an approve/deny answer to a pending ToolCall."""
    instruction = request.input.Instruction
    return instruction is not None and instruction.command in _APPROVAL_KEYWORDS


def approval_decision(request: RemoteRequest) -> tuple[bool, str]:
    """(approved, reason) of an approve/deny Instruction."""
    instruction = request.input.Instruction
    assert instruction is not None
    params = instruction.parameters if isinstance(instruction.parameters, dict) else {}
    return instruction.command == "approve", str(params.get("reason", "") or "")
