"""Tools the MCP tests serve (``async-agent mcp --tools tests._mcp_tools:TOOLS``)."""

from __future__ import annotations

from pathlib import Path

from smolagents import tool

from async_task_system import get_current_task_id, get_task_manager, report_progress


@tool
def slow_steps(steps: int, delay: float, marker: str | None = None) -> dict:
    """Works in ``steps`` steps of ``delay`` seconds, reporting progress; a cancel stops it between steps.

    Args:
        steps: how many steps.
        delay: seconds per step.
        marker: a file that gets one line per step done, then 'stopped' or 'finished'.
    """
    manager, task_id = get_task_manager(), get_current_task_id()
    log = Path(marker) if marker else None
    for step in range(steps):
        report_progress(step / steps, f"step {step + 1} of {steps}")
        if manager is not None and task_id is not None and manager.wait_cancelled(task_id, delay):
            if log is not None:
                with log.open("a") as out:
                    out.write("stopped\n")
            return {"steps": step, "stopped": True}
        if log is not None:
            with log.open("a") as out:
                out.write(f"step {step + 1}\n")
    report_progress(1.0, "done")
    if log is not None:
        with log.open("a") as out:
            out.write("finished\n")
    return {"steps": steps, "stopped": False}


@tool
def echo(text: str) -> str:
    """Returns the text.

    Args:
        text: what to return.
    """
    return text


TOOLS = [slow_steps, echo]
