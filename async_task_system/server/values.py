"""Values of a run as the wire carries them: JSON stand-ins, answer text, stream chunks."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

__all__ = ["answer_text", "split_chunks", "to_jsonable"]


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
