"""Tool runtimes (seed 001 §2): tools written in Python, JavaScript, native code or WebAssembly,
run through one :class:`RuntimeManager` with one interface and one result shape.

``RuntimeManager().execute("javascript", "tools/text.js", "count", {"text": "a b"}, timeout=5)``
returns a :class:`RuntimeResult`. :func:`runtime_tool` and :func:`load_tools` turn such calls into
smolagents tools the LLM calls directly or through ``submit_task``. See ``docs/runtimes.md``.
:class:`SandboxedPythonExecutor` (:mod:`.code_sandbox`) runs a ``CodeAgent``'s own code steps in the
same sandbox (the JSON-lines server does so by default).

The ``wasm`` and ``mcp`` runtimes need the ``runtimes`` extra (``wasmtime``; ``mcp``, ``mcpadapt``),
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import BaseRuntime, RuntimeResult, RuntimeToolError, SubprocessRuntime, UnknownRuntimeError
from .javascript import JavaScriptRuntime
from .manager import RuntimeManager, default_runtime_manager
from .mcp import McpRuntime, McpServer
from .native import NativeRuntime
from .python import PythonRuntime
from .wasm import WasmRuntime

__all__ = [
    "BaseRuntime",
    "CodeKernelError",
    "JavaScriptRuntime",
    "ManifestError",
    "McpRuntime",
    "McpServer",
    "NativeRuntime",
    "PythonRuntime",
    "RuntimeManager",
    "RuntimeResult",
    "RuntimeTool",
    "RuntimeToolError",
    "SandboxedPythonExecutor",
    "SubprocessRuntime",
    "UnknownRuntimeError",
    "WasmRuntime",
    "default_runtime_manager",
    "install_sandboxed_executor",
    "load_tools",
    "runtime_tool",
]

_LAZY = {
    "RuntimeTool": "tools",
    "runtime_tool": "tools",
    "load_tools": "tools",
    "ManifestError": "tools",
    # smolagents-based: imported on first use, so a worker importing the runtimes never loads it
    "SandboxedPythonExecutor": "code_sandbox",
    "install_sandboxed_executor": "code_sandbox",
    "CodeKernelError": "code_sandbox",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
