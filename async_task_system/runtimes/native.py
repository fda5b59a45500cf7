"""Native tools (seed 001 §2.5): an executable run as ``[entry, command, --key, value, ...]``.

The argument list goes to ``execve`` as is: no shell ever sees it, so a value such as
``"; rm -rf ~"`` is one harmless argument. Values: strings as they are, booleans ``true`` /
``false``, numbers in decimal, lists and dicts as JSON; ``None`` leaves the option out. Stdin is
``/dev/null``. Output: one JSON value (or envelope, as for JavaScript tools) when stdout is JSON,
else the text itself (trailing newline removed). A non-zero exit is an error with stderr's tail.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .base import RuntimeResult, SubprocessRuntime, from_envelope, parse_json_output

__all__ = ["NativeRuntime", "format_arguments"]


def format_arguments(parameters: dict[str, Any]) -> list[str]:
    """``{"n": 3, "name": "x"}`` -> ``["--n", "3", "--name", "x"]`` (see the module's rules)."""
    args: list[str] = []
    for key, value in parameters.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float, str)):
            text = str(value)
        else:
            text = json.dumps(value, default=str)
        args += [f"--{key}", text]
    return args


class NativeRuntime(SubprocessRuntime):
    """Runs an executable (a compiled binary, or any file with a ``#!`` line) per call."""

    name = "native"

    def problem(self, entry: str) -> str | None:
        """Why ``entry`` is not a runnable file, or ``None``."""
        if not os.path.exists(entry):
            return f"native tool {entry!r} does not exist"
        if not os.path.isfile(entry):
            return f"native tool {entry!r} is not a file"
        if not os.access(entry, os.X_OK):
            return f"native tool {entry!r} is not executable (chmod +x it)"
        return None

    def command_line(self, entry: str, command: str, parameters: dict[str, Any]) -> tuple[list[str], None]:
        """``[entry, command, --key, value, ...]``; no stdin."""
        argv = [os.path.abspath(entry)]
        if command:
            argv.append(command)
        return argv + format_arguments(parameters), None

    def read_output(self, stdout: str, fields: dict[str, Any]) -> RuntimeResult:
        """JSON when stdout is JSON, else the text."""
        parsed, value = parse_json_output(stdout, last_line=False)
        if parsed:
            return from_envelope(self.name, value, **fields)
        return RuntimeResult("success", result=stdout.rstrip("\n"), runtime=self.name, **fields)
