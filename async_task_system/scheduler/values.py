"""What a schedule's caller writes: the schedule types, times, durations and counts, read strictly.

Every refusal is a :class:`ScheduleError` (a ``ValueError``) that says which value is wrong and
how to write it: schedules come from LLM calls, so the message is the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timezone
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.errors import AsyncTaskSystemError, TaskValidationError

__all__ = [
    "ScheduleError",
    "UnknownScheduleError",
    "ScheduleType",
    "UTC",
    "to_epoch",
    "iso",
    "zone",
    "seconds",
    "check_choice",
    "check_count",
]

UTC = timezone.utc  # ToolScheduler.schedule has a parameter named timezone


class ScheduleError(TaskValidationError):
    """A schedule was refused: the message says which value is wrong and how to write it."""


class UnknownScheduleError(AsyncTaskSystemError, LookupError):
    """No schedule has this id (it was never made, or was cancelled)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ScheduleType(str, Enum):
    """How ``schedule_value`` is read (seed 001 §4)."""

    ONCE = "once"  # an ISO 8601 time
    INTERVAL = "interval"  # seconds
    CRON = "cron"  # 5 fields, or 6 with seconds first

    @classmethod
    def parse(cls, value: ScheduleType | str) -> ScheduleType:
        """The type for ``value`` (case-insensitive), or a ``ScheduleError`` listing the valid ones."""
        if isinstance(value, ScheduleType):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ScheduleError(
                f"schedule_type must be one of 'once', 'interval', 'cron', got {value!r}"
            ) from None


def to_epoch(value: Any, tz: Any, what: str) -> float:
    """Epoch seconds from an ISO string, a datetime (naive = ``tz``) or a number."""
    if isinstance(value, bool):
        raise ScheduleError(f"{what} must be an ISO 8601 time, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):  # fromisoformat accepts 'Z' only from Python 3.11
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ScheduleError(
                f"{what} must be an ISO 8601 time such as '2030-01-31T09:30:00+00:00' "
                f"(without an offset it is read in the schedule's timezone), got {value!r}"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=tz)
        return value.timestamp()
    raise ScheduleError(f"{what} must be an ISO 8601 time, got {type(value).__name__} {value!r}")


def iso(when: float | None, tz: Any = UTC) -> str | None:
    """``when`` (epoch seconds) as an ISO 8601 string in ``tz``; None for None."""
    if when is None:
        return None
    try:
        return datetime.fromtimestamp(when, tz).isoformat()
    except (OverflowError, ValueError, OSError, TypeError):  # a stored value no datetime can hold
        return f"out of range ({when!r})"


def zone(name: str | None) -> Any:
    """The time zone named ``name`` (IANA; None or 'UTC' is UTC), or a ``ScheduleError``."""
    if name is None or name in ("UTC", "utc", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"Unknown timezone {name!r}: use an IANA name such as 'UTC', 'Europe/Berlin' or "
            "'America/New_York' (on Windows install the tzdata package)"
        ) from None


def seconds(
    value: Any,
    what: str,
    *,
    positive: bool = True,
    allow_none: bool = False,
    maximum: float = math.inf,
    minimum: float = 0.0,
) -> float | None:
    """``value`` as a finite number of seconds within the bounds, or a ``ScheduleError`` naming them."""
    if value is None and allow_none:
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if (
        math.isnan(number)
        or math.isinf(number)
        or (number <= 0 if positive else number < 0)
        or number < minimum
        or number > maximum
    ):
        bound = "a positive number of seconds" if positive else "a non-negative number of seconds"
        if maximum < math.inf or minimum > 0:
            low = f"{minimum:.15g}" if minimum > 0 else ("just above 0" if positive else "0")
            bound += f" from {low} to {maximum:.15g}"
        raise ScheduleError(f"{what} must be {bound}, got {value!r}")
    return number


def check_choice(value: Any, choices: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``choices``, else a ``ScheduleError`` listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ScheduleError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def check_count(value: Any, what: str, *, zero: bool = False, maximum: int | None = None) -> int | None:
    """``value`` as a count (None stays None), or a ``ScheduleError`` giving the allowed range."""
    if value is None:
        return None
    low = 0 if zero else 1
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (maximum is not None and value > maximum)
    ):
        if maximum is not None:
            raise ScheduleError(
                f"{what} must be an integer from {low} to {maximum} (or omitted), got {value!r:.40}"
            )
        bound = "a non-negative" if zero else "a positive"
        raise ScheduleError(f"{what} must be {bound} integer (or omitted), got {value!r:.40}")
    return value
