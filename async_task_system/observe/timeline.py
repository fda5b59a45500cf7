"""What ran in parallel: a timeline of a manager's tasks, as SVG/HTML and as a terminal chart.

``task_manager.timeline()`` returns a :class:`Timeline`: one row per task, a bar from its start
to its end colored by status, a thin line for the time it waited before (queue, dependencies,
retry back-offs), arrows from each dependency to the task that waited for it, and a retry mark
(``↻``) with the attempt count. In Jupyter it shows inline (``_repr_html_``); ``to_svg()``,
``save("run.svg" | "run.html")`` and ``to_text(width=80)`` give the same picture elsewhere.

It reads only the public :class:`~async_task_system.core.tasks.TaskInfo` fields (``created_at``,
``started_at``, ``finished_at``, ``status``, ``attempts``, ``depends_on``, ``error``), so it
works on ``manager.list()`` or on snapshots from anywhere. ``started_at`` is the *last*
attempt's start: earlier attempts of a retried task fall in its waiting line, shown dashed.
Plain SVG, no script, no external resource: it renders offline and in any viewer.

``overrides`` (task id -> ``{"status", "label", "started_at"}``) lets a caller show what its users
know instead: the fleet platform's ``/timeline`` draws its records' statuses (``dispatched``,
``running``, ``timed_out``, ``lost``, ... colored by :data:`RECORD_COLORS`), the agent and the
script's first line as the label, and the process's start as the bar's start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any, Protocol


class TaskInfo(Protocol):
    """The fields of a task snapshot the timeline reads (:class:`async_task_system.TaskInfo` has
    them; named here so that this module, which the core reports through, imports no core)."""

    id: str
    name: str
    kind: Any
    status: Any  # a TaskStatus, or its value
    arguments: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    depends_on: list[str]
    error: Any


__all__ = ["Timeline", "STATUS_COLORS", "RECORD_COLORS"]

STATUS_COLORS: dict[str, str] = {
    "completed": "#2e9e5b",
    "failed": "#d64541",
    "cancelled": "#9e9e9e",
    "running": "#2f7ed8",
    "waiting_remote": "#8e55b5",
    "pending": "#f0ad4e",
}
"""The fill of a task's bar per status value (``TaskStatus.COMPLETED.value``...; also the legend's)."""

RECORD_COLORS: dict[str, str] = {
    "pending": "#f0ad4e",
    "queued": "#f0ad4e",
    "dispatched": "#8e55b5",
    "running": "#2f7ed8",
    "completed": "#2e9e5b",
    "failed": "#d64541",
    "timed_out": "#b03a2e",
    "lost": "#7f5539",
    "cancelled": "#9e9e9e",
}
"""Colors of status names given through ``overrides`` (the platform's record statuses)."""

_COLORS = {**STATUS_COLORS, **RECORD_COLORS}
_TERMINAL_NAMES = {"completed", "failed", "cancelled", "timed_out", "lost"}

_ANSI_BY_NAME = {
    "completed": "32",
    "failed": "31",
    "cancelled": "90",
    "running": "34",
    "waiting_remote": "35",
    "pending": "33",
    "queued": "33",
    "dispatched": "35",
    "timed_out": "31",
    "lost": "31",
}

_ROW = 24  # px per task row
_LABEL = 250  # px for the labels on the left
_SUFFIX = 170  # px for the status text on the right
_TOP = 56  # px for the legend and the time axis


class Timeline:
    """The tasks of a run laid out in time (see the module docstring).

    Args:
        tasks: task snapshots (``manager.list()``), drawn in order of creation.
        now: the time unfinished tasks are drawn up to (default: now).
        title: a heading for the picture.
        overrides: per task id, what to show instead of the snapshot's own: ``status`` (a name,
            e.g. a platform record's ``dispatched``), ``label`` and ``started_at`` (epoch seconds).
    """

    def __init__(
        self,
        tasks: Iterable[TaskInfo],
        now: float | None = None,
        title: str | None = None,
        overrides: Mapping[str, Mapping[str, object]] | None = None,
    ) -> None:
        self.overrides: dict[str, Mapping[str, object]] = dict(overrides or {})
        self.tasks: list[TaskInfo] = sorted(tasks, key=lambda info: info.created_at)
        self.now = time.time() if now is None else now
        self.title = title
        self.start = min((info.created_at for info in self.tasks), default=self.now)
        self.end = max([self.start, *(self._end_of(info) for info in self.tasks)])
        self._row = {info.id: number for number, info in enumerate(self.tasks)}

    # ------------------------------------------------------------------ shared by both pictures

    def _end_of(self, info: TaskInfo) -> float:
        return info.finished_at if info.finished_at is not None else self.now

    def status_of(self, info: TaskInfo) -> str:
        """The status name shown for ``info`` (its override, else its own)."""
        status = self.overrides.get(info.id, {}).get("status")
        if isinstance(status, str):
            return status
        return getattr(info.status, "value", info.status)  # a TaskStatus, or already its value

    def started_of(self, info: TaskInfo) -> float | None:
        """When ``info``'s bar starts (its override, else its ``started_at``)."""
        override = self.overrides.get(info.id, {})
        if "started_at" in override:
            started = override["started_at"]
            return float(started) if isinstance(started, (int, float)) else None
        return info.started_at

    def _color(self, info: TaskInfo) -> str:
        return _COLORS.get(self.status_of(info), "#607d8b")

    @property
    def span(self) -> float:
        """Seconds from the first task's creation to the last task's end (at least 1 ms)."""
        return max(self.end - self.start, 1e-3)

    def label(self, info: TaskInfo) -> str:
        """``name(argument)``: what a reader recognises a task by (its first text argument, else
        its first plain one; a ``{"$result": id}`` reference shows as nothing), or its override."""
        label = self.overrides.get(info.id, {}).get("label")
        if isinstance(label, str):
            return label
        values = [v for v in info.arguments.values() if isinstance(v, (str, int, float)) and v is not True]
        texts = [v for v in values if isinstance(v, str)]
        shown = str((texts or values or [""])[0])
        return f"{info.name}({shown[:24]})"

    def outcome(self, info: TaskInfo, retries: bool = True) -> str:
        """``completed 1.02s``, ``failed timeout``, ``running 0.40s``: the row's right-hand text."""
        started = self.started_of(info)
        duration = None if started is None else self._end_of(info) - started
        status = self.status_of(info)
        if status in ("failed", "cancelled", "timed_out", "lost") and info.error is not None:
            text = f"{status} {info.error.type}"
        else:
            text = status + ("" if duration is None else f" {duration:.2f}s")
        if retries and info.attempts > 1:
            text += f" ↻{info.attempts}"
        return text

    # ------------------------------------------------------------------ SVG / HTML

    def to_svg(self, width: int = 960) -> str:
        """The picture as a standalone SVG document (inline-able in HTML)."""
        chart = max(width - _LABEL - _SUFFIX, 100)
        height = _TOP + _ROW * max(len(self.tasks), 1) + 12

        def x(moment: float) -> float:
            return round(_LABEL + (moment - self.start) / self.span * chart, 1)

        def y(row: int) -> float:
            return _TOP + row * _ROW

        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" class="ats-timeline">',
            "<defs>"
            '<marker id="ats-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker>'
            "</defs>",
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        ]
        title = self.title or f"{len(self.tasks)} tasks in {self.span:.2f} s"
        out.append(f'<text x="8" y="16" font-weight="bold">{escape(title)}</text>')
        legend_x = max(_LABEL, 8 + 8 * len(title) + 16)  # after the title: only the statuses of this run
        present = {self.status_of(info) for info in self.tasks}
        for status, color in _COLORS.items():
            if status not in present:
                continue
            out.append(
                f'<g class="legend"><rect x="{legend_x}" y="6" width="12" height="12" fill="{color}"/>'
                f'<text x="{legend_x + 16}" y="16">{status}</text></g>'
            )
            legend_x += 24 + 7 * len(status)
        for tick in range(6):  # the time axis: six ticks from 0 to the span
            moment = self.start + self.span * tick / 5
            out.append(
                f'<line x1="{x(moment)}" y1="{_TOP - 14}" x2="{x(moment)}" y2="{height - 8}" '
                'stroke="#e4e4e4"/>'
                f'<text x="{x(moment)}" y="{_TOP - 18}" text-anchor="middle" fill="#666">'
                f"{self.span * tick / 5:.2f}s</text>"
            )
        for row, info in enumerate(self.tasks):
            out.append(self._svg_row(info, y(row), x))
        for info in self.tasks:  # arrows last: on top of the bars
            for dependency in info.depends_on:
                if dependency in self._row:
                    out.append(self._svg_arrow(self.tasks[self._row[dependency]], info, x, y))
        out.append("</svg>")
        return "\n".join(out)

    def _svg_row(self, info: TaskInfo, top: float, x: Callable[[float], float]) -> str:
        color = self._color(info)
        status = self.status_of(info)
        middle = top + _ROW / 2
        created, end = x(info.created_at), x(self._end_of(info))
        tooltip = f"{info.id} {getattr(info.kind, 'value', info.kind)} {info.name}: {status}, {info.attempts} attempt(s)"
        if info.depends_on:
            tooltip += f"; waited for {', '.join(info.depends_on)}"
        if info.error is not None:
            tooltip += f"; {info.error.type}: {info.error.message}"
        parts = [
            f'<g class="task" data-task-id="{escape(info.id)}" data-status="{escape(status)}" '
            f'data-attempts="{info.attempts}"><title>{escape(tooltip)}</title>',
            f'<text x="8" y="{middle + 4}">{escape(_cut(self.label(info), 25))}</text>',
            f'<text x="{_LABEL - 6}" y="{middle + 4}" text-anchor="end" fill="#888" font-size="10">'
            f"{escape(info.id)}</text>",
        ]
        started_at = self.started_of(info)
        started = None if started_at is None else x(started_at)
        wait_end = started if started is not None else end
        if wait_end > created:  # queued, waiting for dependencies or for a retry
            dash = ' stroke-dasharray="4 3" class="retried"' if info.attempts > 1 else ' class="waited"'
            parts.append(
                f'<line x1="{created}" y1="{middle}" x2="{wait_end}" y2="{middle}" '
                f'stroke="{color if info.attempts > 1 else "#b0b0b0"}" stroke-width="2"{dash}/>'
            )
        if started is not None:
            parts.append(
                f'<rect class="bar" x="{started}" y="{top + 4}" width="{max(end - started, 2)}" '
                f'height="{_ROW - 8}" rx="3" fill="{color}"/>'
            )
        else:  # never ran: a cross where it ended (or a hollow mark while it waits)
            parts.append(
                f'<rect class="not-started" x="{end - 5}" y="{middle - 5}" width="10" height="10" '
                f'fill="none" stroke="{color}" stroke-width="2"/>'
            )
        retries = (
            f' <tspan class="retries" font-weight="bold">↻{info.attempts} attempts</tspan>'
            if info.attempts > 1
            else ""
        )
        parts.append(
            f'<text x="{end + 8}" y="{middle + 4}" fill="{color}">'
            f"{escape(self.outcome(info, retries=False))}{retries}</text></g>"
        )
        return "".join(parts)

    def _svg_arrow(
        self,
        dependency: TaskInfo,
        dependent: TaskInfo,
        x: Callable[[float], float],
        y: Callable[[int], float],
    ) -> str:
        x1, y1 = x(self._end_of(dependency)), y(self._row[dependency.id]) + _ROW / 2
        target = dependent.started_at if dependent.started_at is not None else self._end_of(dependent)
        x2, y2 = x(target), y(self._row[dependent.id]) + _ROW / 2
        bend = max(abs(x2 - x1) / 2, 10)
        return (
            f'<path class="dependency" data-from="{escape(dependency.id)}" data-to="{escape(dependent.id)}" '
            f'd="M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}" fill="none" stroke="#555" '
            'stroke-width="1.2" marker-end="url(#ats-arrow)"/>'
        )

    def _repr_html_(self) -> str:
        """Jupyter shows the SVG inline."""
        return f'<div style="overflow-x:auto">{self.to_svg()}</div>'

    def to_html(self) -> str:
        """A standalone HTML page with the SVG (no script, no external resource)."""
        title = escape(self.title or "Task timeline")
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f'<body style="margin:16px;background:#fff">\n{self.to_svg()}\n</body></html>\n'
        )

    def save(self, path: str | Path) -> Path:
        """Write the picture to ``path``: ``.svg`` or ``.html`` (``.htm``); returns the path."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".svg":
            text = '<?xml version="1.0" encoding="UTF-8"?>\n' + self.to_svg()
        elif suffix in (".html", ".htm"):
            text = self.to_html()
        else:
            raise ValueError(f"save a timeline as .svg or .html, not {path.name!r}")
        path.write_text(text, encoding="utf-8")
        return path

    # ------------------------------------------------------------------ terminal

    def to_text(self, width: int = 80, color: bool = False) -> str:
        """A compact chart for the terminal, every line at most ``width`` characters.

        Row ``#n``: label, a lane with ``·`` while it waited and ``█`` while it ran (``░`` for a
        retried task's earlier attempts and back-offs), then its outcome and ``after #i,#j`` for
        dependencies. ``color`` adds ANSI colors by status (not counted in the width).
        """
        number_width = len(str(len(self.tasks)))
        suffixes = [self._text_suffix(info) for info in self.tasks]
        label_width = min(max([len(self.label(i)) for i in self.tasks] + [5]), max(width // 3, 8))
        suffix_width = min(max([len(s) for s in suffixes] + [8]), max(width * 2 // 5, 10))
        # A line: "#n label │lane│ outcome"; prefix is everything before the first "│".
        prefix = number_width + 2 + label_width + 1
        lane = max(width - prefix - 3 - suffix_width, 8)
        if prefix + lane + 3 + suffix_width > width:  # a very narrow terminal: shrink the label
            label_width = max(label_width - (prefix + lane + 3 + suffix_width - width), 1)
            prefix = number_width + 2 + label_width + 1

        def column(moment: float) -> int:
            return min(int((moment - self.start) / self.span * lane), lane - 1)

        axis = f"0s{'':{lane - 2 - len(f'{self.span:.2f}s')}}{self.span:.2f}s" if lane > 12 else ""
        lines = [f"{'':{prefix}}│{axis:{lane}}│"[:width]]
        for number, (info, suffix) in enumerate(zip(self.tasks, suffixes, strict=True), start=1):
            cells = [" "] * lane
            first = column(info.created_at)
            last = column(self._end_of(info))
            started_at = self.started_of(info)
            run_from = column(started_at) if started_at is not None else None
            for cell in range(first, last + 1):
                if run_from is not None and cell >= run_from:
                    cells[cell] = "█"
                else:
                    cells[cell] = "░" if info.attempts > 1 else "·"
            if run_from is None:
                status = self.status_of(info)
                cells[last] = "×" if info.status.is_terminal or status in _TERMINAL_NAMES else "?"
            bar = "".join(cells)
            if color:
                code = _ANSI_BY_NAME.get(self.status_of(info), "0")
                bar = f"\x1b[{code}m{bar}\x1b[0m"
            label, text = _cut(self.label(info), label_width), _cut(suffix, suffix_width)
            lines.append(f"{'#' + str(number):>{number_width + 1}} {label:<{label_width}} │{bar}│ {text}")
        return "\n".join(lines)

    def _text_suffix(self, info: TaskInfo) -> str:
        text = self.outcome(info)
        numbers = [f"#{self._row[d] + 1}" for d in info.depends_on if d in self._row]
        return text + (f" after {','.join(numbers)}" if numbers else "")

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"<Timeline {len(self.tasks)} tasks over {self.span:.2f} s>"


def _cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, ending in ``…`` when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
