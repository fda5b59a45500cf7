"""Tools written the usual smolagents way, in an importable module, for the process-pool tests."""

from __future__ import annotations

import os
import threading

from smolagents import Tool, tool


@tool
def pid_tool(tag: str) -> dict:
    """Reports the process it runs in.

    Args:
        tag: any text, echoed back.
    """
    return {"tag": tag, "pid": os.getpid()}


class PidTool(Tool):
    name = "pid_class_tool"
    description = "Reports the process it runs in (a Tool subclass)."
    inputs = {"tag": {"type": "string", "description": "any text, echoed back"}}
    output_type = "object"

    def forward(self, tag: str) -> dict:
        return {"tag": tag, "pid": os.getpid(), "class": type(self).__name__}


pid_class_tool = PidTool()


class LockedTool(Tool):
    name = "locked_tool"
    description = "Holds a lock: no pickler can send it."
    inputs = {"tag": {"type": "string", "description": "any text"}}
    output_type = "string"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def forward(self, tag: str) -> str:
        return tag


def make_locked_tool() -> LockedTool:
    """A tool instance no module attribute holds (built at run time), with unpicklable state."""
    return LockedTool()
