"""The model of one request: ``max_tokens``, summed token usage, and a stop at the next model call
once the request is cancelled."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .hooks import RequestHooks
from .protocol import TokenUsage

__all__ = ["RequestModel"]


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

    @property
    def inner(self) -> Any:
        """The wrapped model."""
        return self._inner

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
