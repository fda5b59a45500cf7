"""Offline, deterministic agent runs: :class:`ScriptedModel`.

``ScriptedModel`` is a real smolagents ``Model``: it replays the responses you write, one per
call, so a ``CodeAgent`` runs its real loop (parsing, executing code, calling tools) without an
LLM. Use it to test your own agents::

    model = ScriptedModel([
        "Thought: fan out.\\n<code>\\nt = submit_task('tool', 'analyze_dataset', {'name': 'a'})\\n</code>",
        "<code>\\nfinal_answer(get_task_results([t]))\\n</code>",
    ])
    agent = create_async_agent(tools=[analyze_dataset], model=model)

A response may also be a callable ``(messages) -> str`` that computes its text from what the
model was sent (useful when several agents share one model and run concurrently).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from smolagents.models import ChatMessage, ChatMessageStreamDelta, MessageRole, Model
from smolagents.monitoring import TokenUsage

from ..core.errors import AsyncTaskSystemError

__all__ = ["ScriptedModel", "ScriptExhaustedError", "message_text"]

Response = str | ChatMessage | Callable[[list[Any]], str]


class ScriptExhaustedError(AsyncTaskSystemError, RuntimeError):
    """The script has no response left for another model call."""


def message_text(message: Any) -> str:
    """The plain text of a smolagents message (``ChatMessage`` or dict, text or content parts)."""
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
    return "\n".join(parts)


def _estimate_tokens(text: str) -> int:
    # About four characters a token, the usual rule of thumb for English text.
    return max(1, len(text) // 4) if text else 0


class ScriptedModel(Model):
    """A smolagents ``Model`` that replays written responses, one per ``generate`` call.

    Args:
        responses: texts, ``ChatMessage`` objects (their ``tool_calls`` are kept, for a
            ``ToolCallingAgent``), or callables ``(messages) -> str``, used in order.
        model_id: the id reported to smolagents and telemetry.
        repeat_last: keep answering with the last response instead of failing when the script ends.
        keep_calls: how many of the latest calls :attr:`calls` keeps (a long-running server driven by
            it must not keep every message, and every image, it ever saw).

    It honours ``stop_sequences`` (the text is cut at the first one, as an API would), records
    the latest calls in :attr:`calls` (the messages it saw; :attr:`call_count` counts all), reports estimated token usage, is safe to
    share between threads, and raises :class:`ScriptExhaustedError` with a clear message when
    asked for more responses than it has.
    """

    def __init__(
        self,
        responses: Sequence[Response],
        model_id: str = "scripted-model",
        repeat_last: bool = False,
        keep_calls: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_id=model_id, **kwargs)
        self.responses: list[Response] = list(responses)
        self.repeat_last = repeat_last
        self.calls: collections.deque[list[Any]] = collections.deque(maxlen=max(1, keep_calls))
        self.call_count = 0
        self._position = 0
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        """How many scripted responses have not been used yet."""
        with self._lock:
            return len(self.responses) - self._position

    @property
    def supports_stop_parameter(self) -> bool:
        return True

    def generate(
        self,
        messages: list[Any],
        stop_sequences: list[str] | None = None,
        response_format: dict[str, str] | None = None,
        tools_to_call_from: list[Any] | None = None,
        **kwargs: Any,
    ) -> ChatMessage:
        with self._lock:
            self.calls.append(list(messages))
            self.call_count += 1
            call_number = self.call_count
            if self._position < len(self.responses):
                response = self.responses[self._position]
                self._position += 1
            elif self.repeat_last and self.responses:
                response = self.responses[-1]
            else:
                last = message_text(messages[-1]) if messages else ""
                raise ScriptExhaustedError(
                    f"ScriptedModel has {len(self.responses)} response(s) but was called a "
                    f"{call_number}th time. Last message it was sent: {last[:300]!r}"
                )
        if callable(response) and not isinstance(response, ChatMessage):
            response = response(messages)
        text = message_text(response) if isinstance(response, ChatMessage) else str(response)
        for stop in stop_sequences or ():
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        prompt_text = "\n".join(message_text(m) for m in messages)
        return ChatMessage(
            role=MessageRole.ASSISTANT,
            content=text,
            # A scripted tool call (for a ToolCallingAgent) is passed on as it is.
            tool_calls=response.tool_calls if isinstance(response, ChatMessage) else None,
            raw={"scripted": True, "call": call_number},
            token_usage=TokenUsage(
                input_tokens=_estimate_tokens(prompt_text), output_tokens=_estimate_tokens(text)
            ),
        )

    def generate_stream(
        self, messages: list[Any], stop_sequences: list[str] | None = None, **kwargs: Any
    ) -> Iterator[ChatMessageStreamDelta]:
        """Stream the scripted response word by word (whitespace kept), usage on the last delta."""
        message = self.generate(messages, stop_sequences=stop_sequences, **kwargs)
        text = message.content or ""
        pieces = _split_keep_spaces(text)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield ChatMessageStreamDelta(content=piece, token_usage=message.token_usage if last else None)
        if not pieces:
            yield ChatMessageStreamDelta(content="", token_usage=message.token_usage)


def _split_keep_spaces(text: str) -> list[str]:
    pieces: list[str] = []
    current = ""
    for char in text:
        if char.isspace() and current and not current[-1].isspace():
            pieces.append(current)
            current = char
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces
