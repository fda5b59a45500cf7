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
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from smolagents.models import ChatMessage, MessageRole

from ..core.errors import AsyncTaskSystemError
from .protocol import (
    ErrorCode,
    InputType,
    RemoteRequest,
    RequestConfig,
    RequestError,
    ResponseContent,
    TokenUsage,
    ToolResultContent,
)

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
]

AgentFactory = Callable[[], Any]
"""A callable returning a *fresh* agent (AsyncAgent or smolagents agent) for each request."""

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer the user's request directly and concisely."
"""System prompt of model-only answers (``use_tools=false``) when the request sets no ``prompt``."""

_MAX_INLINE_FILE_BYTES = 64 * 1024
_MAX_HISTORY_CHARS = 4000
_APPROVAL_KEYWORDS = ("approve", "deny")


class RequestCancelled(AsyncTaskSystemError):
    """The request was cancelled (client gone, time limit, server shutdown): stop working on it."""


class ToolCallDenied(AsyncTaskSystemError):
    """The client denied a tool call; the agent sees this message as the tool's error."""


@dataclass(frozen=True)
class Exchange:
    """One earlier request/answer pair of a connection, shown to later requests as context."""

    user: str
    assistant: str


@dataclass
class ExecutionResult:
    """What a request produced: the response content, token usage, and the exchange to remember."""

    content: ResponseContent
    token_usage: TokenUsage | None = None
    exchange: Exchange | None = None


@dataclass
class RequestHooks:
    """How a running request talks back to its connection (all called from the worker thread)."""

    cancel_event: threading.Event = field(default_factory=threading.Event)
    ask_approval: Callable[[str, Any], tuple[bool, str]] | None = None
    """(tool name, arguments) -> (approved, reason); raises RequestCancelled when the request ends."""
    send_partial: Callable[[str], None] | None = None
    """Send one incremental stream chunk (only set when the client opted in)."""
    on_handle: Callable[[AgentHandle], None] | None = None
    """Told about the agent instance once it exists, so a cancel can interrupt it."""

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise RequestCancelled("request cancelled")


# ------------------------------------------------------------------------------------------- model


class RequestModel:
    """Wraps a smolagents ``Model`` for one request: max_tokens, token usage, cancellation.

    It delegates every other attribute to the wrapped model, so smolagents code that reads
    ``model.model_id`` or checks ``hasattr(model, "generate_stream")`` sees the real model.
    """

    def __init__(self, inner: Any, max_tokens: int | None, hooks: RequestHooks) -> None:
        self._inner = inner
        self._max_tokens = max_tokens
        self._hooks = hooks
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self._counted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._max_tokens is not None:
            kwargs.setdefault("max_tokens", self._max_tokens)
        return kwargs

    def _record(self, usage: Any) -> None:
        if usage is None:
            return
        with self._lock:
            self._counted = True
            self.prompt_tokens += int(getattr(usage, "input_tokens", 0) or 0)
            self.completion_tokens += int(getattr(usage, "output_tokens", 0) or 0)

    def generate(self, messages: list[Any], **kwargs: Any) -> Any:
        self._hooks.check()
        self.calls += 1
        message = self._inner.generate(messages, **self._kwargs(kwargs))
        self._record(getattr(message, "token_usage", None))
        self._hooks.check()
        return message

    def __call__(self, messages: list[Any], **kwargs: Any) -> Any:
        return self.generate(messages, **kwargs)

    def generate_stream(self, messages: list[Any], **kwargs: Any) -> Iterator[Any]:
        self._hooks.check()
        self.calls += 1
        for delta in self._inner.generate_stream(messages, **self._kwargs(kwargs)):
            self._hooks.check()
            self._record(getattr(delta, "token_usage", None))
            yield delta

    def usage(self) -> TokenUsage | None:
        """Summed usage of this request's model calls, or None when the model reported none."""
        with self._lock:
            if not self._counted:
                return None
            return TokenUsage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                total_tokens=self.prompt_tokens + self.completion_tokens,
            )


# ------------------------------------------------------------------------------------------- agent


class AgentHandle:
    """One agent instance from the factory, seen through one interface (AsyncAgent or smolagents)."""

    def __init__(self, obj: Any) -> None:
        from smolagents.agents import MultiStepAgent

        from ..agents.agent import AsyncAgent

        self.owner = obj
        self.task_manager: Any = None
        """The manager the agent's ``submit_task`` uses (an AsyncAgent's), else None."""
        self.owns_task_manager = False
        self._started: list[str] = []  # ids submit_task returned, on a manager the agent does not own
        self._started_lock = threading.Lock()
        if isinstance(obj, AsyncAgent):
            self.agent = obj.agent
            self.is_async_agent = True
            self.task_manager = obj.task_manager
            self.owns_task_manager = obj.owns_task_manager
            submit = self.agent.tools.get("submit_task")
            if submit is not None and not self.owns_task_manager:
                self.agent.tools["submit_task"] = _RecordingTool(submit, self._record_started)
        elif isinstance(obj, MultiStepAgent):
            self.agent = obj
            self.is_async_agent = False
        else:
            raise TypeError(
                "The agent factory must return an AsyncAgent (create_async_agent) or a smolagents agent "
                f"(CodeAgent, ToolCallingAgent), got {type(obj).__name__}"
            )

    @property
    def model(self) -> Any:
        return self.agent.model

    def tools(self) -> dict[str, Any]:
        """The agent's tools by name, without ``final_answer``."""
        return {name: tool for name, tool in self.agent.tools.items() if name != "final_answer"}

    def set_instructions(self, prompt: str) -> None:
        """Replace the agent's custom instructions (an AsyncAgent keeps its async-task guidance)."""
        if self.is_async_agent:
            from ..agents.agent import ASYNC_GUIDANCE

            self.agent.instructions = f"{ASYNC_GUIDANCE}\n{prompt}"
        else:
            self.agent.instructions = prompt

    def gate_tools(self, ask: Callable[[str, Any], None]) -> None:
        """Wrap every tool (not ``final_answer``) so that ``ask(name, arguments)`` runs first.

        ``ask`` raises to stop the call (request cancelled, or the client said no).
        """
        for name, tool in list(self.agent.tools.items()):
            if name != "final_answer":
                self.agent.tools[name] = _GatedTool(tool, ask)

    def on_step(self, callback: Callable[[Any], None]) -> None:
        from smolagents.memory import ActionStep

        self.agent.step_callbacks.register(ActionStep, lambda step, **_: callback(step))

    def run(self, task: str, images: list[Any] | None, max_steps: int | None) -> Any:
        kwargs: dict[str, Any] = {}
        if images:
            kwargs["images"] = images
        if max_steps is not None:
            kwargs["max_steps"] = max_steps
        return self.owner.run(task, **kwargs)

    def interrupt(self) -> None:
        with contextlib.suppress(Exception):
            self.agent.interrupt()

    def _record_started(self, task_id: Any) -> None:
        if isinstance(task_id, str):
            with self._started_lock:
                self._started.append(task_id)

    def background_tasks(self) -> list[str]:
        """Ids of the background tasks this agent started (on a manager it does not own, only
        those its ``submit_task`` started; their dependents follow them when cancelled)."""
        manager = self.task_manager
        if manager is None:
            return []
        if self.owns_task_manager:
            return [info.id for info in manager.list() if not info.status.is_terminal]
        with self._started_lock:
            return list(self._started)

    def cancel_background(self) -> int:
        """Cancel the unfinished background tasks this agent started; returns how many were cancelled.

        A running task is marked cancelled at once (its slot is free, waiters return) and its code
        sees ``cancellation_requested()``; a tool that never checks runs on until it returns.
        """
        return cancel_tasks(self.task_manager, self.background_tasks())

    def close(self) -> None:
        """Release the agent. An AsyncAgent's own manager goes with it: its unfinished tasks are
        cancelled (nothing could read their results any more). Tasks on a shared manager stay."""
        with contextlib.suppress(Exception):
            if self.is_async_agent:
                if self.owns_task_manager:
                    self.cancel_background()
                self.owner.shutdown(wait=False, cancel_pending=True)
            else:
                self.agent.cleanup()


def cancel_tasks(manager: Any, task_ids: Sequence[str]) -> int:
    """Cancel those of ``task_ids`` still unfinished on ``manager``; returns how many were."""
    cancelled = 0
    for task_id in task_ids:
        with contextlib.suppress(LookupError):  # dropped from the records after its result was read
            cancelled += bool(manager.cancel(task_id))
    return cancelled


class _RecordingTool:
    """A tool proxy handing each result to ``record`` (the ids ``submit_task`` returns)."""

    def __init__(self, inner: Any, record: Callable[[Any], None]) -> None:
        self.__dict__["_inner"] = inner
        self.__dict__["_record"] = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__dict__["_inner"](*args, **kwargs)
        self.__dict__["_record"](result)
        return result


class _GatedTool:
    """A tool proxy asking for approval before each call; everything else falls through."""

    def __init__(self, inner: Any, ask: Callable[[str, Any], None]) -> None:
        self.__dict__["_inner"] = inner
        self.__dict__["_ask"] = ask

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inner = self.__dict__["_inner"]
        arguments = {k: v for k, v in kwargs.items() if k != "sanitize_inputs_outputs"}
        if len(args) == 1 and not arguments and isinstance(args[0], dict) and _takes_dict(inner, args[0]):
            arguments = dict(args[0])
        else:
            names = list(getattr(inner, "inputs", {}) or {})
            for i, value in enumerate(args):
                arguments[names[i] if i < len(names) else f"arg{i}"] = value
        self.__dict__["_ask"](getattr(inner, "name", "tool"), arguments)
        return inner(*args, **kwargs)


def _takes_dict(tool: Any, value: dict[str, Any]) -> bool:
    inputs = getattr(tool, "inputs", {}) or {}
    return bool(value) and set(value) <= set(inputs) and len(inputs) != 1


# ------------------------------------------------------------------------------------------ values


def to_jsonable(value: Any) -> Any:
    """``value`` if it is JSON, else a readable stand-in (AgentImage -> its file path, others -> str)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        pass
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    to_string = getattr(value, "to_string", None)
    if callable(to_string):
        with contextlib.suppress(Exception):
            return str(to_string())
    return str(value)


def answer_text(value: Any) -> str:
    """The agent's final answer as text (JSON for dicts and lists)."""
    if isinstance(value, str):
        return str(value)
    value = to_jsonable(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def split_chunks(text: str) -> list[str]:
    """Split ``text`` into word-sized chunks that join back to ``text`` exactly."""
    return re.findall(r"\s*\S+|\s+$", text) or ([text] if text else [])


def _short(text: str, limit: int = _MAX_HISTORY_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


# --------------------------------------------------------------------------------------- execution


@dataclass
class _Prepared:
    texts: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    files: list[tuple[str, str | None, str, bytes]] = field(default_factory=list)  # name, type, path, bytes
    instructions: list[Any] = field(default_factory=list)
    folder: str | None = None


DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
"""Pixels of one image (width x height x frames), checked from its header before it is decoded."""
DEFAULT_MAX_REQUEST_PIXELS = 50_000_000
"""Pixels of all the images of one request together."""


@dataclass
class ImageLimits:
    per_image: int = DEFAULT_MAX_IMAGE_PIXELS
    per_request: int = DEFAULT_MAX_REQUEST_PIXELS
    used: int = 0


def _decode_image(raw: bytes, index: int, limits: ImageLimits | None = None) -> Any:
    from PIL import Image, UnidentifiedImageError

    limits = limits if limits is not None else ImageLimits()
    try:
        image = Image.open(io.BytesIO(raw))  # reads the header only
        width, height = image.size
        pixels = width * height * max(1, int(getattr(image, "n_frames", 1) or 1))
        # A small file can hold a huge image (a 657 KB PNG of 169 megapixels took 748 MB to decode).
        if pixels > limits.per_image:
            raise RequestError(
                ErrorCode.PROCESSING_ERROR,
                f"Image #{index + 1} is {width}x{height} ({pixels} pixels with its frames), over the limit of "
                f"{limits.per_image} pixels per image; send a smaller image",
            )
        if limits.used + pixels > limits.per_request:
            raise RequestError(
                ErrorCode.PROCESSING_ERROR,
                f"The images of this request have more than {limits.per_request} pixels together "
                f"(image #{index + 1} is {width}x{height}); send fewer or smaller images",
            )
        limits.used += pixels
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(
            ErrorCode.PROCESSING_ERROR,
            f"Image #{index + 1} is not a readable image ({exc}); send PNG, JPEG, GIF or WebP bytes in base64",
        ) from None
    return image


_MAX_FILENAME_BYTES = 200  # under the 255 of common file systems, with room for a "_2" suffix


def _safe_filename(name: str, index: int, taken: set[str]) -> str:
    base = os.path.basename(name.replace("\\", "/")).strip().lstrip(".")
    base = re.sub(r"[\x00-\x1f]", "_", base) or f"file_{index + 1}"
    if len(base.encode("utf-8")) > _MAX_FILENAME_BYTES:
        stem, ext = os.path.splitext(base)
        ext = ext if len(ext.encode("utf-8")) <= 16 else ""
        room = _MAX_FILENAME_BYTES - len(ext.encode("utf-8"))
        base = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore") + ext
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        stem, ext = os.path.splitext(base)
        candidate = f"{stem}_{n}{ext}"
    taken.add(candidate)
    return candidate


def _prepare(
    leaves: Sequence[InputType], temp_root: str | None, prepared: _Prepared, images: ImageLimits | None = None
) -> _Prepared:
    taken: set[str] = set()
    images = images if images is not None else ImageLimits()
    for leaf in leaves:
        if leaf.Text is not None:
            prepared.texts.append(leaf.Text)
        elif leaf.Image is not None:
            prepared.images.append(_decode_image(leaf.Image.raw, len(prepared.images), images))
        elif leaf.File is not None:
            name = _safe_filename(leaf.File.filename, len(prepared.files), taken)
            try:
                if prepared.folder is None:
                    prepared.folder = tempfile.mkdtemp(prefix="async-agent-request-", dir=temp_root)
                path = os.path.join(prepared.folder, name)
                with open(path, "wb") as handle:
                    handle.write(leaf.File.raw)
            except OSError as exc:  # the message would show the server's folder: say what, not where
                raise RequestError(
                    ErrorCode.PROCESSING_ERROR,
                    f"File #{len(prepared.files) + 1} ({name[:80]!r}) could not be saved: "
                    f"{exc.strerror or type(exc).__name__}",
                ) from None
            prepared.files.append((name, leaf.File.content_type, path, leaf.File.raw))
        elif leaf.Instruction is not None:
            prepared.instructions.append(leaf.Instruction)
    return prepared


def _file_block(prepared: _Prepared) -> str:
    lines = [f"Files attached to this request (saved in the folder {prepared.folder}):"]
    for name, content_type, path, raw in prepared.files:
        lines.append(f"- {name} ({content_type or 'unknown type'}, {len(raw)} bytes) at path {path}")
        if len(raw) <= _MAX_INLINE_FILE_BYTES:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if "\x00" not in text:
                lines.append(f"  Content of {name}:\n```\n{text}\n```")
    return "\n".join(lines)


def _history_block(history: Sequence[Exchange]) -> str:
    lines = ["Earlier exchanges in this conversation, oldest first:"]
    for i, exchange in enumerate(history, 1):
        lines.append(f"[{i}] User: {_short(exchange.user)}")
        lines.append(f"[{i}] Assistant: {_short(exchange.assistant)}")
    return "\n".join(lines)


def _default_task(prepared: _Prepared) -> str:
    if prepared.images and prepared.files:
        return "Describe the attached image(s) and summarize the attached file(s)."
    if prepared.images:
        return "Describe the attached image(s)."
    if prepared.files:
        return "Summarize the attached file(s)."
    return "Summarize the results of the instructions above."


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
    if request.stream and hasattr(model._inner, "generate_stream"):
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
) -> ExecutionResult:
    """Handle one request on a fresh agent; blocking, run in a worker thread.

    Raises :class:`RequestError` for failures to report, :class:`RequestCancelled` when the
    request was cancelled while running.
    """
    config = request.effective_config()
    prepared = _Prepared()
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
            if hooks.on_handle is not None:
                hooks.on_handle(handle)
        return handle

    try:
        prepared = _prepare(request.input.leaves(), temp_root, prepared, image_limits)
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
            user_text = "\n\n".join(prepared.texts) or _default_task(prepared)
            blocks = []
            if instruction_lines:
                blocks.append("Instructions already run for this request:\n" + "\n".join(instruction_lines))
            if prepared.files:
                blocks.append(_file_block(prepared))
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
