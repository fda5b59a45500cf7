"""The wire format of seed 003's JSON-lines protocol, as pydantic v2 models.

Every message is one JSON object on one line (``\\n``-terminated, UTF-8). The shapes follow seed
``003-remote-jsonl-protocol.md`` to the letter: tagged unions are objects with exactly one key
(``{"Text": "..."}``, ``{"Image": {...}}``), the way Rust's serde writes an enum. A few optional
*extension* fields (``token``, ``config.timeout``, ``config.incremental_stream``, ``error_code``,
``partial``) are documented in ``docs/protocol.md``; a client that ignores them loses nothing,
and a response only carries ``error_code`` / ``partial`` when they apply.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from ..core.errors import AsyncTaskSystemError

# Strict scalar types: JSON ``"yes"`` or ``"5"`` is not a boolean or a number (an int is a float).
StrictFloat = Annotated[float, Strict()]

__all__ = [
    "ErrorCode",
    "ImageInput",
    "InstructionInput",
    "FileInput",
    "InputType",
    "RequestConfig",
    "RemoteRequest",
    "ToolCallContent",
    "ToolResultContent",
    "ResponseContent",
    "TokenUsage",
    "RemoteResponse",
    "RequestError",
    "decode_base64",
    "parse_request",
    "format_validation_error",
    "encode_response",
    "error_response",
]


class ErrorCode(str, Enum):
    """The error codes of seed 003; a failed response's ``error`` text starts with one of them."""

    PARSE_ERROR = "parse_error"
    """The line is not JSON, or not a valid ``RemoteRequest`` (the message says which field is wrong)."""
    PROCESSING_ERROR = "processing_error"
    """The request was valid but handling it failed (agent error, unknown tool, unreadable image...)."""
    CONNECTION_ERROR = "connection_error"
    """The connection itself is refused or ends: missing/wrong token, line over the size limit, shutdown."""
    TIMEOUT_ERROR = "timeout_error"
    """The request ran past its time limit; its work was cancelled."""


class RequestError(AsyncTaskSystemError):
    """A failure to report to the client as a :class:`RemoteResponse` with ``code``."""

    def __init__(self, code: ErrorCode, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(;[^,]*)?;base64,", re.IGNORECASE)


def decode_base64(data: str) -> bytes:
    """Decode standard base64 (whitespace and a ``data:...;base64,`` prefix are tolerated)."""
    text = _DATA_URL.sub("", data.strip(), count=1)
    text = "".join(text.split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64 ({exc}); encode the bytes with standard base64") from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _OneOf(_Model):
    """An externally tagged union: exactly one of the fields is set; serialised without the others."""

    @model_validator(mode="after")
    def _exactly_one(self) -> _OneOf:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            names = ", ".join(type(self).model_fields)
            got = ", ".join(chosen) or "none"
            raise ValueError(f"must have exactly one of the keys {names} (got {got})")
        return self

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {key: value for key, value in data.items() if getattr(self, key, None) is not None}

    @property
    def kind(self) -> str:
        """The name of the key that is set (``"Text"``, ``"Image"``, ...)."""
        for name in type(self).model_fields:
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated one-of has no key set")


# ----------------------------------------------------------------------------------------- inputs


class _Base64Payload(_Model):
    """A message whose ``data`` field is base64: decoded (and so checked) when the request is read."""

    data: str
    _bytes: bytes = PrivateAttr(default=b"")

    @model_validator(mode="after")
    def _decode(self) -> Any:
        try:
            self._bytes = decode_base64(self.data)
        except ValueError as exc:
            raise ValueError(f"data is {exc}") from None
        return self

    @property
    def raw(self) -> bytes:
        """The decoded bytes."""
        return self._bytes


class ImageInput(_Base64Payload):
    """``{"Image": {...}}``: an image for the agent to look at."""

    data: str = Field(description="The image file's bytes (PNG, JPEG, GIF, WebP...), base64-encoded.")
    mime_type: str | None = Field(default=None, description="Optional MIME type such as image/png.")


class InstructionInput(_Model):
    """``{"Instruction": {...}}``: run one of the agent's tools directly, without the LLM."""

    command: str = Field(min_length=1, description="The name of the tool to run.")
    parameters: Any = Field(
        default_factory=dict,
        description="The tool's arguments as a JSON object keyed by input name (a bare value is "
        "accepted for a tool with exactly one input).",
    )


class FileInput(_Base64Payload):
    """``{"File": {...}}``: a file, saved to the request's temporary folder for the agent."""

    filename: str = Field(min_length=1, description="The file's name; only its last path component is used.")
    content_type: str | None = Field(default=None, description="MIME type, e.g. text/plain.")
    data: str = Field(description="The file's bytes, base64-encoded.")


class InputType(_OneOf):
    """What the client sends: exactly one of ``Text``, ``Image``, ``Instruction``, ``File``, ``Multi``."""

    Text: str | None = Field(default=None, description="The task or message for the agent.")
    Image: ImageInput | None = Field(default=None, description="An image handed to the agent as an image.")
    Instruction: InstructionInput | None = Field(default=None, description="A tool to run directly.")
    File: FileInput | None = Field(default=None, description="A file handed to the agent.")
    Multi: list[InputType] | None = Field(default=None, description="Several inputs combined, in order.")

    def leaves(self) -> list[InputType]:
        """The non-``Multi`` inputs, nested ``Multi`` flattened, in order."""
        if self.Multi is None:
            return [self]
        out: list[InputType] = []
        for item in self.Multi:
            out.extend(item.leaves())
        return out


class RequestConfig(_Model):
    """``config``: optional per-request overrides. Unknown keys are rejected, so typos are caught."""

    max_tool_try: StrictInt | None = Field(
        default=None, ge=1, le=1000, description="At most this many agent steps (each step may call tools)."
    )
    max_context_num: StrictInt | None = Field(
        default=None,
        ge=0,
        description="How many earlier exchanges of this connection the agent sees (0 = none); "
        "capped by the server's history size.",
    )
    max_tokens: StrictInt | None = Field(
        default=None, ge=1, description="At most this many tokens per model call."
    )
    ask_before_tool_execution: StrictBool | None = Field(
        default=None,
        description="Ask the client before every tool call: the server sends a bare ToolCall response and "
        "waits for an approve/deny Instruction with the same request_id.",
    )
    prompt: str | None = Field(default=None, description="Custom instructions replacing the agent's own.")
    timeout: StrictFloat | None = Field(
        default=None,
        gt=0,
        description="Extension: this request's time limit in seconds (never above the server's limit).",
    )
    incremental_stream: StrictBool | None = Field(
        default=None,
        description="Extension: with stream=true, also send each chunk as it is produced, on lines marked "
        '"partial": true, before the one complete {"Stream": [...]} line.',
    )


class RemoteRequest(BaseModel):
    """One request line. Unknown top-level keys are ignored (clients may add their own metadata)."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(description="The client's id for this request; every response line repeats it.")
    input: InputType = Field(description="What to process.")
    config: RequestConfig | None = Field(default=None, description="Optional overrides.")
    stream: StrictBool = Field(
        default=False, description='Answer with {"Stream": [chunks]} instead of {"Text": ...}.'
    )
    use_tools: StrictBool = Field(
        default=True, description="false: the model alone answers (no agent loop, no tools)."
    )
    token: str | None = Field(
        default=None,
        description="Extension: the server's access token, needed on the first line of a connection when the "
        "server was started with --token.",
    )

    @field_validator("request_id", mode="before")
    @classmethod
    def _id_as_string(cls, value: Any) -> Any:
        # Numbers are a common client habit; keep them as their JSON text.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    def effective_config(self) -> RequestConfig:
        """``config`` or an empty one."""
        return self.config or RequestConfig()


# ---------------------------------------------------------------------------------------- responses


class ToolCallContent(_Model):
    """``{"ToolCall": {...}}``: a tool the agent wants to call (sent when approval is asked)."""

    name: str = Field(description="The tool's name.")
    arguments: Any = Field(default_factory=dict, description="The arguments, keyed by input name.")


class ToolResultContent(_Model):
    """``{"ToolResult": {...}}``: what a tool returned (the answer to an ``Instruction``)."""

    name: str = Field(description="The tool's name.")
    result: Any = Field(default=None, description="Its return value as JSON (non-JSON values as text).")


class ResponseContent(_OneOf):
    """What the server answers: exactly one of ``Text``, ``Stream``, ``ToolCall``, ``ToolResult``, ``Multi``."""

    Text: str | None = Field(default=None, description="The answer text.")
    Stream: list[str] | None = Field(
        default=None, description="The answer in chunks, in order; joined they give the answer text."
    )
    ToolCall: ToolCallContent | None = Field(default=None, description="A tool call waiting for approval.")
    ToolResult: ToolResultContent | None = Field(default=None, description="A tool's result.")
    Multi: list[ResponseContent] | None = Field(default=None, description="Several contents, in order.")

    @classmethod
    def text(cls, value: str) -> ResponseContent:
        return cls(Text=value)


class TokenUsage(_Model):
    """Tokens the model used for this request (summed over all its model calls)."""

    prompt_tokens: int = Field(ge=0, description="Tokens sent to the model.")
    completion_tokens: int = Field(ge=0, description="Tokens the model produced.")
    total_tokens: int = Field(ge=0, description="prompt_tokens + completion_tokens.")


class RemoteResponse(BaseModel):
    """One response line. The four seed keys are always present; extensions only when they apply."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(description="The request this answers ('' when the request had no readable id).")
    response: ResponseContent = Field(
        default_factory=lambda: ResponseContent(Text=""), description='The content; {"Text": ""} on error.'
    )
    error: str | None = Field(default=None, description="null, or '<error_code>: <what went wrong>'.")
    token_usage: TokenUsage | None = Field(default=None, description="Model token counts, when a model ran.")
    error_code: ErrorCode | None = Field(
        default=None, description="Extension: the error code alone, on errors."
    )
    partial: bool | None = Field(
        default=None, description="Extension: true on incremental lines that precede the final response."
    )

    @model_serializer(mode="wrap")
    def _seed_shape(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in ("error_code", "partial"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


# ------------------------------------------------------------------------------------------ helpers

_REQUEST_HINT = 'A request line looks like {"request_id": "r1", "input": {"Text": "..."}}.'


def format_validation_error(exc: ValidationError) -> str:
    """A short, field-by-field text of a pydantic error, e.g. ``input.Image.data: not valid base64``."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in error.get("loc", ())) or "request"
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        parts.append(f"{loc}: {message}")
    return "; ".join(parts)


def parse_request(obj: Any) -> RemoteRequest:
    """Validate a decoded JSON value as a :class:`RemoteRequest`, or raise a ``parse_error``."""
    request_id = obj.get("request_id") if isinstance(obj, dict) else None
    request_id = (
        str(request_id) if isinstance(request_id, (str, int)) and not isinstance(request_id, bool) else ""
    )
    if not isinstance(obj, dict):
        raise RequestError(
            ErrorCode.PARSE_ERROR,
            f"Invalid request: expected a JSON object, got {type(obj).__name__}. {_REQUEST_HINT}",
        )
    try:
        return RemoteRequest.model_validate(obj)
    except ValidationError as exc:
        raise RequestError(
            ErrorCode.PARSE_ERROR,
            f"Invalid request: {format_validation_error(exc)}. {_REQUEST_HINT}",
            request_id,
        ) from None


def encode_response(response: RemoteResponse) -> bytes:
    """One response line: compact JSON, UTF-8 (non-ASCII kept as is), ending in ``\\n``."""
    data = response.model_dump(mode="json")
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode("utf-8")


def error_response(request_id: str, code: ErrorCode, message: str) -> RemoteResponse:
    """The seed's error shape: empty Text, ``error`` = ``"<code>: <message>"``, no token usage."""
    return RemoteResponse(
        request_id=request_id,
        response=ResponseContent(Text=""),
        error=f"{code.value}: {message}",
        error_code=code,
    )
