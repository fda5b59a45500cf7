"""A long-lived stdio program, isolated, for code that must start the process itself.

An MCP client (smolagents' ``MCPClient``, the ``mcp`` SDK) starts its server with a command line
and talks to it over the process's stdin and stdout. :func:`bridge_command` gives that command line
for an isolated run: the client starts the bridge (``python -I _stdio_bridge.py PACKAGE_ROOT``, configuration in
``ASYNC_AGENT_BRIDGE``), which starts the program through
:meth:`~.process.ScriptRunner.start_interactive` in the sandbox every script gets (no network unless
allowed, the file system read-only but the scratch directory and the write paths, its own pid
namespace, the tree limits) and relays its stdin, stdout and stderr. It exits with the program's
status; the program's tree is stopped when the bridge is told to stop (``SIGTERM``, ``SIGINT``,
``SIGHUP``) and dies with it, and the bridge dies with the process that started it.

The cost is one interpreter and one sandbox supervisor per server started (about 0.1 s), not per
message: the relay copies bytes on one event loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

__all__ = ["bridge_command"]

_BRIDGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stdio_bridge.py")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bridge_command(limits: Any, argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` that run ``argv`` isolated under ``limits`` (a ``RunLimits``) with the
    environment ``env`` exactly (already the clean one: nothing else reaches the program)."""
    fields = {field.name: getattr(limits, field.name) for field in dataclasses.fields(limits)}
    fields["allow_env"] = ()
    config = {"limits": fields, "argv": list(argv), "env": dict(env)}
    return [sys.executable, "-I", _BRIDGE, _PACKAGE_ROOT], {"ASYNC_AGENT_BRIDGE": json.dumps(config)}
