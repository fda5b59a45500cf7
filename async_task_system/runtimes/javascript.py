"""JavaScript tools on Node.js over stdio (seed 001 §2.4): one JSON ``{command, parameters}`` on
stdin, one JSON value on stdout.

``execute("tools/text.js", "count", {"text": "a b"})`` runs ``node tools/text.js`` in the shared
sandbox, writes ``{"command": "count", "parameters": {"text": "a b"}}`` to its stdin and closes it,
and reads what it prints: a value, or the envelope ``{"status": "success", "result": ...}`` /
``{"status": "error", "error": "..."}``. Logs belong on stderr (``console.error``).

``permission=True`` adds Node's permission model (``--permission``; ``--experimental-permission``
on Node 20/21) allowing reads of the tool's own directory only: no writes, no child processes, no
workers, no addons. It is a seat belt against mistakes, not a sandbox against hostile code (Node's
own documentation says so); the process sandbox and its limits apply either way.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from typing import Any

from .base import SubprocessRuntime

__all__ = ["JavaScriptRuntime", "request_bytes"]


def request_bytes(command: str, parameters: dict[str, Any]) -> bytes:
    """The stdin of one call: ``{"command": ..., "parameters": ...}`` as UTF-8 JSON."""
    return json.dumps({"command": command, "parameters": parameters}, default=str).encode()


@functools.lru_cache(maxsize=8)
def _node_major(node: str) -> int | None:
    try:
        text = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)", text.strip())
    return int(match.group(1)) if match else None


class JavaScriptRuntime(SubprocessRuntime):
    """Runs a Node.js script per call; ``node`` is looked up on ``PATH`` unless a path is given."""

    name = "javascript"

    def __init__(
        self,
        runner: Any = None,
        *,
        node: str = "node",
        permission: bool = False,
        node_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(runner)
        self.node = node
        self.permission = permission
        self.node_args = tuple(node_args)

    def node_path(self) -> str | None:
        """The Node.js executable, or ``None`` when it is not installed."""
        return shutil.which(self.node)

    def available(self) -> str | None:
        """Why Node.js cannot run here, or ``None``."""
        if self.node_path() is None:
            return (
                f"Node.js is not installed: {self.node!r} was not found on PATH (install Node.js 20 or later)"
            )
        return None

    def problem(self, entry: str) -> str | None:
        """Why ``entry`` is not a script file, or ``None``."""
        if not os.path.isfile(entry):
            return f"JavaScript tool file {entry!r} does not exist"
        return None

    def command_line(self, entry: str, command: str, parameters: dict[str, Any]) -> tuple[list[str], bytes]:
        """``node [permission flags] [node_args] entry`` with the request on stdin."""
        node = self.node_path() or self.node
        script = os.path.abspath(entry)
        argv = [node]
        if self.permission:
            major = _node_major(node) or 0
            if major >= 22:
                argv.append("--permission")
            else:
                argv += ["--experimental-permission", "--disable-warning=ExperimentalWarning"]
            argv.append(f"--allow-fs-read={os.path.dirname(script)}")
        return [*argv, *self.node_args, script], request_bytes(command, parameters)
