"""A live table of a manager's tasks: a rich ``Live`` table in a terminal, an updating HTML table in
Jupyter (``IPython.display`` with a display id), redrawn on every task change (a listener; no polling).

    with TaskTable(agent.task_manager).shown():
        agent.run_with_async_guidance("...")
"""

from __future__ import annotations

import html
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..core.manager import TaskManager
from ..core.tasks import TaskInfo, TaskStatus

__all__ = ["TaskTable", "in_jupyter"]

_COLUMNS = ("task", "target", "arguments", "status", "progress", "seconds")
_STYLE = {
    TaskStatus.PENDING: "yellow",
    TaskStatus.RUNNING: "cyan",
    TaskStatus.WAITING_REMOTE: "magenta",
    TaskStatus.COMPLETED: "green",
    TaskStatus.FAILED: "red",
    TaskStatus.CANCELLED: "dim",
}
_HTML_COLOR = {
    "yellow": "#b58900",
    "cyan": "#268bd2",
    "magenta": "#d33682",
    "green": "#2e7d32",
    "red": "#c62828",
}


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (where rich's ``Live`` would need ipywidgets)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _progress_cell(info: TaskInfo) -> str:
    if info.progress is None:
        return ""
    filled = round(info.progress * 5)
    message = "" if info.status.is_terminal else f" {(info.progress_message or '')[:9]}"
    return f"{'█' * filled}{'░' * (5 - filled)} {info.progress:4.0%}{message}"


def _row(info: TaskInfo) -> tuple[str, ...]:
    duration = info.duration
    return (
        info.id,
        info.name,
        ", ".join(f"{k}={v}" for k, v in info.arguments.items())[:40],
        info.status.value,
        _progress_cell(info),
        "" if duration is None else f"{duration:.2f}",
    )


class TaskTable:
    """The tasks of ``manager`` as a table that :meth:`shown` keeps up to date while its block runs."""

    def __init__(self, manager: TaskManager, console: Any = None, title: str = "Background tasks") -> None:
        self.manager = manager
        self.console = console
        self.title = title
        self._tasks: dict[str, TaskInfo] = {}
        self._lock = threading.Lock()
        self._redraw: Any = None

    def rich_table(self) -> Any:
        """The table as a ``rich.table.Table``."""
        from rich.table import Table

        table = Table(title=self.title, expand=False)
        for column in _COLUMNS:
            table.add_column(column)
        for info in self._tasks.values():
            cells = list(_row(info))
            style = _STYLE[info.status]
            cells[3] = f"[{style}]{cells[3]}[/{style}]"
            table.add_row(*cells)
        return table

    def to_html(self) -> str:
        """The table as HTML (what Jupyter shows)."""
        head = "".join(f"<th style='text-align:left'>{c}</th>" for c in _COLUMNS)
        rows = []
        for info in self._tasks.values():
            cells = [html.escape(cell) for cell in _row(info)]
            color = _HTML_COLOR.get(_STYLE[info.status], "#888")
            cells[3] = f"<span style='color:{color};font-weight:bold'>{cells[3]}</span>"
            rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
        return (
            f"<table class='async-task-table'><caption style='text-align:left'><b>{html.escape(self.title)}</b> "
            f"({len(self._tasks)} tasks)</caption><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )

    def _repr_html_(self) -> str:
        self.refresh()
        return self.to_html()

    def refresh(self) -> None:
        """Take every task the manager holds now (``shown`` does it by itself)."""
        with self._lock:
            for info in self.manager.list():
                self._tasks[info.id] = info

    def _on_change(self, info: TaskInfo) -> None:
        with self._lock:
            self._tasks[info.id] = info
            if self._redraw is not None:
                self._redraw()

    @contextmanager
    def shown(self) -> Iterator[TaskTable]:
        """Show the table and redraw it on every task change until the block ends."""
        self.refresh()
        remove = self.manager.add_listener(self._on_change)
        try:
            if in_jupyter():
                with self._in_jupyter():
                    yield self
            else:
                with self._in_terminal():
                    yield self
        finally:
            remove()

    @contextmanager
    def _in_jupyter(self) -> Iterator[None]:
        from IPython.display import HTML, display

        handle = display(HTML(self.to_html()), display_id=True)
        with self._lock:
            self._redraw = lambda: handle.update(HTML(self.to_html()))
        try:
            yield
        finally:
            with self._lock:
                self._redraw = None
                handle.update(HTML(self.to_html()))

    @contextmanager
    def _in_terminal(self) -> Iterator[None]:
        from rich.console import Console
        from rich.live import Live

        console = self.console or Console()
        with Live(self.rich_table(), console=console, auto_refresh=False, transient=False) as live:
            with self._lock:
                self._redraw = lambda: live.update(self.rich_table(), refresh=True)
            try:
                yield
            finally:
                with self._lock:
                    self._redraw = None
                    live.update(self.rich_table(), refresh=True)
        console.print()
