"""WebAssembly tools on ``wasmtime`` (the ``runtimes`` extra): WASI commands and exported functions.

Two kinds of module, picked by what it exports:

* **A function named after the command** (``(export "fib" (func ...))``): called with the
  parameters' values in order (numbers), its result returned (one value, or a list). For small
  compute kernels; no WASI needed, though the module may import it.
* **A WASI command** (exports ``_start``): run like a JavaScript tool, with
  ``{"command", "parameters"}`` as JSON on stdin and one JSON value (or envelope) read from
  stdout; argv is ``[entry name, command]``; no environment variables, no directories unless
  ``preopens`` maps some (a seat belt: WASI sees only what is mapped, but a mapped directory is
  fully readable and writable by the module).

Limits, from the same :class:`~async_task_system.sandbox.process.RunLimits` as the subprocess runtimes:
``timeout`` (seconds; an *epoch deadline*: the engine's epoch is bumped once at the deadline, or
on cancel, and the running code traps there, with no polling and no thread per call),
``memory_mb`` (the store's linear memory limit: ``memory.grow`` past it fails), and
``max_output_bytes`` (stdout and stderr each; a module that writes more is stopped, like a flooding
subprocess). ``fuel`` (instructions, optional) bounds work deterministically on top.

Modules run in this process, in a thread of the default executor: WebAssembly cannot reach
memory or files it was not given, so no subprocess is needed (and a call costs well under a
millisecond). Each call gets its own engine and store (engines cost microseconds; the compiled
module is cached per file and deserialized into it), so one call's deadline never stops another.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from typing import Any

from ..sandbox.process import CappedOutput, RunLimits
from .base import BaseRuntime, RuntimeResult, from_envelope, parse_json_output, read_json_result
from .javascript import request_bytes

__all__ = ["WasmRuntime"]

_SUFFIXES = (".wasm", ".wat")


class WasmRuntime(BaseRuntime):
    """Runs WebAssembly modules (``.wasm`` binaries or ``.wat`` text) under an epoch deadline and memory limit."""

    name = "wasm"

    def __init__(
        self,
        limits: RunLimits | None = None,
        *,
        fuel: int | None = None,
        preopens: dict[str, str] | None = None,
    ) -> None:
        self.limits = limits if limits is not None else RunLimits()
        self.fuel = fuel
        self.preopens = dict(preopens or {})
        self._compiled: dict[str, tuple[tuple[float, int], bytes]] = {}
        self._lock = threading.Lock()

    def available(self) -> str | None:
        """Why WebAssembly cannot run here (``wasmtime`` missing), or ``None``."""
        try:
            import wasmtime  # noqa: F401
        except ImportError:
            return "the wasmtime package is not installed: pip install 'async_task_system[runtimes]'"
        return None

    def problem(self, entry: str) -> str | None:
        """Why ``entry`` is not a module file, or ``None``."""
        if not os.path.isfile(entry):
            return f"WebAssembly module {entry!r} does not exist"
        if not entry.endswith(_SUFFIXES):
            return f"WebAssembly module {entry!r} must be a .wasm or .wat file"
        return None

    def _config(self) -> Any:
        import wasmtime

        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = self.fuel is not None
        return config

    def _module_bytes(self, entry: str) -> bytes:
        """The module compiled for engines of our configuration, cached per file version."""
        import wasmtime

        path = os.path.abspath(entry)
        stat = os.stat(path)
        version = (stat.st_mtime, stat.st_size)
        with self._lock:
            cached = self._compiled.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        engine = wasmtime.Engine(self._config())
        if path.endswith(".wat"):
            with open(path, encoding="utf-8") as handle:
                module = wasmtime.Module(engine, handle.read())
        else:
            module = wasmtime.Module.from_file(engine, path)
        data = module.serialize()
        with self._lock:
            self._compiled[path] = (version, data)
        return data

    async def execute(
        self, entry: str, command: str, parameters: dict[str, Any], timeout: float | None = None
    ) -> RuntimeResult:
        """Run one call; see the module's documentation. Never raises for the module's failures."""
        refused = self.precheck(entry)
        if refused is not None:
            return refused
        import wasmtime

        started = time.monotonic()
        try:
            compiled = await asyncio.to_thread(self._module_bytes, entry)
        except (wasmtime.WasmtimeError, OSError) as exc:
            return RuntimeResult.failure(
                self.name, "invalid_entry", f"could not compile {entry!r}: {_first_line(exc)}"
            )
        engine = wasmtime.Engine(self._config())
        seconds = float(timeout or self.limits.timeout)
        state = {"stopped": None}

        def stop(why: str) -> None:
            if state["stopped"] is None:
                state["stopped"] = why
                engine.increment_epoch()  # thread-safe: the running code traps at its next check

        deadline = asyncio.get_running_loop().call_later(seconds, stop, "timeout")
        try:
            result = await asyncio.to_thread(
                self._call, engine, compiled, entry, command, parameters or {}, stop
            )
        except asyncio.CancelledError:
            stop("cancelled")
            raise
        finally:
            deadline.cancel()
        result.duration = round(time.monotonic() - started, 6)
        why = state["stopped"]
        if why == "timeout":
            result = _replace(result, "timeout", f"timed out after {seconds:g} s; the module was stopped")
        elif why == "output":
            result = _replace(
                result,
                "output_limit",
                f"output passed the {self.limits.max_output_bytes}-byte cap; the module was stopped",
            )
        return result

    def _call(
        self, engine: Any, compiled: bytes, entry: str, command: str, parameters: dict[str, Any], stop: Any
    ) -> RuntimeResult:
        """In a worker thread: instantiate and run; every wasmtime failure becomes an error result."""
        import wasmtime

        module = wasmtime.Module.deserialize(engine, compiled)
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1)
        if self.fuel is not None:
            store.set_fuel(self.fuel)
        if self.limits.memory_mb:
            store.set_limits(memory_size=int(self.limits.memory_mb) * 1024 * 1024)
        exports = {export.name for export in module.exports}
        function_mode = command in exports and command != "_start"
        if not function_mode and "_start" not in exports:
            return RuntimeResult.failure(
                self.name,
                "invalid_entry",
                f"{entry!r} exports neither a function {command!r} nor _start (a WASI command); "
                f"it exports {sorted(exports)}",
            )
        cap = self.limits.max_output_bytes
        out = CappedOutput("stdout", cap, None, lambda: stop("output"))
        err = CappedOutput("stderr", cap, None, lambda: stop("output"))
        wasi = wasmtime.WasiConfig()
        wasi.argv = [os.path.basename(entry), command]
        wasi.stdout_custom = out.feed  # returns None: the whole chunk counts as written
        wasi.stderr_custom = err.feed
        for guest, host in self.preopens.items():
            wasi.preopen_dir(host, guest)
        stdin_path = None
        if not function_mode:
            with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as handle:
                handle.write(request_bytes(command, parameters))
                stdin_path = handle.name
            wasi.stdin_file = stdin_path
        store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        exit_code: int | None = 0

        def fields() -> dict[str, Any]:
            return {
                "stdout": None if function_mode else out.text(),
                "stderr": err.text(),
                "exit_code": exit_code,
                "truncated": out.truncated or err.truncated,
            }

        try:
            instance = linker.instantiate(store, module)
            function = instance.exports(store)[command if function_mode else "_start"]
            if function_mode:
                value = function(store, *_numbers(parameters))
                value = list(value) if isinstance(value, (list, tuple)) else value
                return RuntimeResult("success", result=value, runtime=self.name, **fields())
            function(store)
        except wasmtime.ExitTrap as exc:
            exit_code = exc.code
        except wasmtime.Trap as exc:
            exit_code = None
            return RuntimeResult.failure(
                self.name, "trap", f"the module trapped: {_first_line(exc)}", **fields()
            )
        except (wasmtime.WasmtimeError, TypeError, ValueError) as exc:
            exit_code = None
            return RuntimeResult.failure(self.name, "trap", _first_line(exc), **fields())
        finally:
            if stdin_path is not None:
                os.unlink(stdin_path)
        if exit_code != 0:
            parsed, value = parse_json_output(out.text())
            if parsed and isinstance(value, dict) and value.get("status") == "error":
                return from_envelope(self.name, value, **fields())
            return RuntimeResult.failure(self.name, "exit_code", f"exit code {exit_code}", **fields())
        return read_json_result(self.name, out.text(), fields())


def _numbers(parameters: dict[str, Any]) -> list[Any]:
    values = list(parameters.values())
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"an exported WebAssembly function takes numbers, got {type(value).__name__} {value!r:.40}"
            )
    return values


def _first_line(exc: BaseException) -> str:
    """The reason in a wasmtime error, without its backtrace (``wasm trap: unreachable``)."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "wasm trap:" in line:
            return line[line.index("wasm trap:") :].strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _replace(result: RuntimeResult, error_type: str, error: str) -> RuntimeResult:
    result.status = "error"
    result.result = None
    result.error_type = error_type
    result.error = error
    return result
