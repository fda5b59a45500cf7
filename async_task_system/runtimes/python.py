"""Python tools: a ``.py`` file of functions, each function a command, run in the sandbox.

``execute("tools/text.py", "count_words", {"text": "a b"})`` starts the limits' interpreter
(``python -I``: no user site, no ``PYTHONPATH``) in the shared sandbox, loads the file (its
``if __name__ == "__main__"`` block does not run; its own directory is importable), calls
``count_words(text="a b")`` (awaiting it when it is ``async def``) and prints the JSON result.
Whatever the function prints goes to stderr, so it never corrupts the reply. An exception
becomes an error result naming its type and message, with the traceback on stderr.

Why a subprocess and not an import: the tool then gets the same limits, clean environment and
killable process group as every other runtime, and a crash or a leak in it cannot touch the agent.
"""

from __future__ import annotations

import os
from typing import Any

from .base import SubprocessRuntime
from .javascript import request_bytes

__all__ = ["PythonRuntime"]

_BOOTSTRAP = r"""
import asyncio, inspect, json, os, runpy, sys, traceback
reply_to = sys.stdout
sys.stdout = sys.stderr
def reply(message, code=0):
    reply_to.write(json.dumps(message, default=str))
    reply_to.flush()
    sys.exit(code)
entry = sys.argv[1]
request = json.loads(sys.stdin.read() or "{}")
command = request.get("command")
try:
    sys.path.insert(0, os.path.dirname(os.path.abspath(entry)))
    namespace = runpy.run_path(entry, run_name="__tool__")
except BaseException as exc:
    traceback.print_exc()
    reply({"status": "error", "error_type": "invalid_entry", "error": f"could not load {entry}: {type(exc).__name__}: {exc}"}, 2)
function = namespace.get(command)
if not callable(function) or str(command).startswith("_"):
    names = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == "__tool__")
    reply({"status": "error", "error_type": "invalid_entry", "error": f"{entry} has no function {command!r}; it defines {names}"}, 2)
try:
    result = function(**(request.get("parameters") or {}))
    if inspect.isawaitable(result):
        async def _wait(awaitable):
            return await awaitable
        result = asyncio.run(_wait(result))
except Exception as exc:
    traceback.print_exc()
    reply({"status": "error", "error_type": "tool_error", "error": f"{type(exc).__name__}: {exc}"}, 1)
reply({"status": "success", "result": result})
"""


class PythonRuntime(SubprocessRuntime):
    """Runs a function of a Python file in a sandboxed interpreter (``limits.python``)."""

    name = "python"

    def problem(self, entry: str) -> str | None:
        """Why ``entry`` is not a Python tool file, or ``None``."""
        if not os.path.isfile(entry):
            return f"Python tool file {entry!r} does not exist"
        if not entry.endswith(".py"):
            return f"Python tool file {entry!r} must end in .py"
        return None

    def command_line(self, entry: str, command: str, parameters: dict[str, Any]) -> tuple[list[str], bytes]:
        """``python -I -c BOOTSTRAP entry`` with the request on stdin."""
        interpreter = self.runner.limits.python
        return [interpreter, "-I", "-c", _BOOTSTRAP, os.path.abspath(entry)], request_bytes(
            command, parameters
        )
