"""conftest.py for the smolagents test files (copied into their ``tests/`` as ``conftest.py``).

The source distribution does not ship smolagents' own conftest and fixture modules; this
provides the one fixture the selected files use from there, written for the peer suite.
"""

from __future__ import annotations

import pytest
from smolagents.tools import Tool


class _EchoTool(Tool):
    name = "test_tool"
    description = "A test tool that echoes its input."
    inputs = {"input": {"type": "string", "description": "Input value"}}
    output_type = "string"

    def forward(self, input: str) -> str:  # noqa: A002 - the tool's input name
        if input == "error":
            raise ValueError("Tool execution error")
        return "Processed: " + input


@pytest.fixture
def test_tool() -> Tool:
    return _EchoTool()
