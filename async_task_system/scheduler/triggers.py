"""When a schedule fires: a trigger gives the first fire strictly after a time (once, interval, cron).

Cron goes through ``croniter`` (the ``scheduler`` extra, imported only for a cron schedule): 5 fields,
or 6 with *seconds first*, evaluated in an IANA time zone. Across a daylight-saving change it
behaves like Vixie cron: a fixed-time job whose wall time is skipped runs at the first time after
the gap, one whose wall time repeats runs once; a wildcard-hour job follows real time.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from .values import ScheduleError

__all__ = ["Trigger", "OnceTrigger", "IntervalTrigger", "CronTrigger"]


class Trigger:
    """The fire times of a schedule."""

    def next_after(self, t: float) -> float | None:
        """The first fire strictly after ``t``, or None when there is none."""
        raise NotImplementedError


class OnceTrigger(Trigger):
    """One fire, at ``at``."""

    def __init__(self, at: float) -> None:
        self.at = at

    def next_after(self, t: float) -> float | None:
        return self.at if self.at > t else None


class IntervalTrigger(Trigger):
    """Fires at ``anchor + k * interval``: anchored, so fire times never drift with lateness."""

    def __init__(self, anchor: float, interval: float) -> None:
        self.anchor = anchor
        self.interval = interval

    def next_after(self, t: float) -> float | None:
        if t < self.anchor:
            return self.anchor
        k = math.floor((t - self.anchor) / self.interval) + 1
        fire = self.anchor + k * self.interval
        while fire <= t:  # float rounding
            k += 1
            fire = self.anchor + k * self.interval
        return fire


class CronTrigger(Trigger):
    """A cron expression in time zone ``tz``; a ``ScheduleError`` explains a malformed one."""

    def __init__(self, expression: str, tz: Any) -> None:
        from croniter import croniter  # the 'scheduler' extra; only schedules with cron need it

        fields = expression.split()
        if len(fields) not in (5, 6):
            raise ScheduleError(
                f"cron expression {expression!r} has {len(fields)} fields: use 5 (minute hour day month weekday, "
                "e.g. '*/10 * * * *' for every 10 minutes) or 6 with seconds first ('*/15 * * * * *')"
            )
        seconds_first = len(fields) == 6
        if not croniter.is_valid(expression, second_at_beginning=seconds_first):
            raise ScheduleError(
                f"invalid cron expression {expression!r}: fields are "
                f"{'second ' if seconds_first else ''}minute(0-59) hour(0-23) day(1-31) month(1-12) "
                "weekday(0-6, 0=Sunday), each '*', a number, a list '1,5', a range '1-5' or a step '*/15'; "
                "e.g. '0 9 * * 1-5' is 09:00 on weekdays"
            )
        self._croniter = croniter
        self.expression = expression
        self.seconds_first = seconds_first
        self.tz = tz
        hour = fields[2 if seconds_first else 1]
        self.fixed_hour = not hour.startswith("*")  # Vixie cron: fixed-time jobs run once when a time repeats

    def next_after(self, t: float) -> float | None:
        it = self._croniter(
            self.expression, datetime.fromtimestamp(t, self.tz), second_at_beginning=self.seconds_first
        )
        for _ in range(4):
            fire = it.get_next(datetime)
            if self.fixed_hour and fire.fold == 1 and fire.replace(fold=0).utcoffset() != fire.utcoffset():
                continue  # the second occurrence of a repeated wall time: the first one already ran
            return fire.timestamp()
        return None
