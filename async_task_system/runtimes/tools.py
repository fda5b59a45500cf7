"""Runtime tools: a tool in another language declared by runtime + entry + command + typed inputs.

Each is a real smolagents ``Tool`` (:class:`RuntimeTool`): the LLM calls it directly in its code
(``count_words(text="...")``) or in the background (``submit_task("tool", "count_words", {...})``),
its inputs are checked like any tool's (unknown, missing and mistyped arguments are refused with a
message before anything runs), and ``create_async_agent(tools=[...])`` takes it like any other.
A failed call raises :class:`~async_task_system.runtimes.base.RuntimeToolError` with the runtime's
error (a failed background task, for ``submit_task``), so the LLM reads what went wrong.

Declare one in Python with :func:`runtime_tool`, or many at once in a manifest (TOML or JSON) with
:func:`load_tools`, which also takes a directory of manifests::

    # tools/text.toml
    runtime = "javascript"        # defaults for every [[tool]] below
    entry = "text.js"             # relative to this file
    timeout = 10                  # seconds per call

    [[tool]]
    name = "count_words"
    command = "count"             # default: the tool's name
    description = "Counts the words of a text."
    output_type = "integer"
    inputs.text = { type = "string", description = "The text." }

Where a tool runs: ``where="local"`` (default) runs it in this process's sandbox; ``where="remote"``
sends each call to a fleet worker that advertises the runtime (``async-agent worker --tools-dir
DIR``), as a task suspension through the remote bridge like ``remote_execute`` (the calling task
waits in WAITING_REMOTE without a slot). A remote tool's ``entry`` is a path inside the worker's
tools directory (the file must exist there; the worker refuses paths outside it); ``worker=`` and
``labels=`` choose the worker. Same tool, same inputs and result either way.
"""

from __future__ import annotations

import dataclasses
import json
import keyword
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from smolagents import Tool
from smolagents.tools import AUTHORIZED_TYPES

from ..core.errors import AsyncTaskSystemError, RemoteExecutionError
from .base import RuntimeResult
from .manager import RuntimeManager, default_runtime_manager

__all__ = ["ManifestError", "RuntimeTool", "load_tools", "runtime_tool"]

_SPEC_KEYS = {
    "name",
    "description",
    "runtime",
    "entry",
    "command",
    "inputs",
    "output_type",
    "timeout",
    "where",
    "worker",
    "labels",
}
_WHERE = ("local", "remote")
_TRANSPORT_ERRORS = {"timeout": "timeout", "cancelled": "cancelled"}
"""The remote failures with a RuntimeResult error type of the same name; others keep theirs
(``no_worker``, ``worker_lost``, ``hub_stopped``)."""


class ManifestError(AsyncTaskSystemError, ValueError):
    """A tool manifest (or a runtime tool's declaration) that cannot be used; the message names the file and tool."""


class RuntimeTool(Tool):
    """A smolagents tool whose work is one command of a program run by a runtime.

    Args:
        name: the tool's name (a Python identifier: the LLM calls it by this name).
        description: what it does, for the LLM.
        runtime: ``python``, ``javascript``, ``native``, ``wasm`` or another name the manager knows.
        entry: the program (script, binary or module); a relative path is taken from the working directory.
        command: the command passed to the program (default: ``name``).
        inputs: smolagents-style ``{"arg": {"type": "string", "description": "...", "nullable": False}}``.
        output_type: one of smolagents' types (default ``"any"``).
        timeout: seconds per call (default: the runtime manager's limits; remote: the bridge's default).
        runtimes: the :class:`RuntimeManager` to run on (default: the process-wide one).
        where: ``"local"`` (this process) or ``"remote"`` (a fleet worker offering the runtime; then
            ``entry`` is a path inside the worker's ``--tools-dir``).
        worker: remote only: the worker's name (default: any that offers the runtime).
        labels: remote only: a label selector the worker must match, e.g. ``{"region": "eu"}``.
        manager: remote only: the ``TaskManager`` whose bridge carries the call (default: the one
            running the current task, as for ``remote_execute``).
    """

    skip_forward_signature_validation = True  # inputs are data, forward takes them as keywords

    def __init__(
        self,
        name: str,
        description: str,
        runtime: str,
        entry: str,
        command: str | None = None,
        inputs: dict[str, dict[str, Any]] | None = None,
        output_type: str = "any",
        timeout: float | None = None,
        runtimes: RuntimeManager | None = None,
        *,
        where: str = "local",
        worker: str | None = None,
        labels: dict[str, str] | None = None,
        manager: Any = None,
    ) -> None:
        if where not in _WHERE:
            raise ManifestError(f"tool {name!r}: where must be 'local' or 'remote', got {where!r}")
        if where == "local" and (worker is not None or labels):
            raise ManifestError(f"tool {name!r}: worker and labels choose a fleet worker: use where='remote'")
        self.where = where
        self.worker = worker
        self.labels = dict(labels) if labels else None
        self._task_manager = manager
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ManifestError(
                f"tool {name!r}: the name must be a Python identifier (the LLM calls it by it)"
            )
        if not isinstance(description, str) or not description.strip():
            raise ManifestError(f"tool {name!r}: a description for the LLM is required")
        self.runtimes = runtimes if runtimes is not None else default_runtime_manager()
        self.runtime = self.runtimes.get_runtime(
            runtime
        ).get_name()  # UnknownRuntimeError names the known ones
        self.entry = str(entry)
        self.command = command or name
        self.timeout = timeout
        self.name = name
        self.description = description
        self.inputs = _normalise_inputs(inputs or {}, name)
        self.output_type = output_type
        if output_type not in AUTHORIZED_TYPES:
            raise ManifestError(
                f"tool {name!r}: output_type must be one of {AUTHORIZED_TYPES}, got {output_type!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ManifestError(
                f"tool {name!r}: timeout must be a positive number of seconds, got {timeout!r}"
            )
        try:
            super().__init__()
        except (
            AssertionError,
            TypeError,
            ValueError,
            Exception,
        ) as exc:  # smolagents raises bare Exception too
            raise ManifestError(f"tool {name!r}: {exc}") from exc

    def check_arguments(self, arguments: dict[str, Any]) -> None:
        """Refuse unknown, missing and mistyped arguments with a message naming them (before anything runs)."""
        from ..core.targets import tool_target  # the same checks submit_task applies

        tool_target(self).validate(arguments)

    def run(self, **arguments: Any) -> RuntimeResult:
        """Check the arguments and run one call; the whole :class:`RuntimeResult`, never raising for the tool's failure.

        Inside a background task, cancelling the task (or its timeout) stops the program at once.
        """
        self.check_arguments(arguments)
        parameters = {key: value for key, value in arguments.items() if value is not None}
        if self.where == "remote":
            return self._run_remote(parameters)
        return self.runtimes.execute_sync(
            self.runtime, self.entry, self.command, parameters, self.timeout, stop_with_task=True
        )

    def _run_remote(self, parameters: dict[str, Any]) -> RuntimeResult:
        """One call on a fleet worker through the remote bridge: inside a task, the task suspends
        (WAITING_REMOTE, no slot) until the answer; elsewhere this thread waits for it."""
        from ..core.manager import get_current_task_id, get_task_manager

        manager = self._task_manager or get_task_manager()
        if manager is None:
            raise RuntimeError(
                f"remote tool {self.name!r} needs a TaskManager with a hub: pass manager= or call it inside an AsyncAgent"
            )
        remote = manager.remote_manager
        call = {"runtime": self.runtime, "entry": self.entry, "parameters": parameters}
        options = {"worker": self.worker, "labels": self.labels, "runtime": call}
        task_id = get_current_task_id()
        try:
            if task_id is not None and get_task_manager() is manager:
                value = remote.execute_inline(task_id, self.command, self.timeout, **options)
            else:
                request_id = remote.create_remote_request(None, self.command, self.timeout, **options)
                value = remote.wait_result(request_id)  # ends by the request's own deadline at the latest
        except RemoteExecutionError as exc:
            if isinstance(exc.result, dict) and "status" in exc.result:  # the call ran and failed
                return _result_from(exc.result)
            error_type = _TRANSPORT_ERRORS.get(exc.error_type, exc.error_type)
            return RuntimeResult.failure(self.runtime, error_type, str(exc.args[0]))
        return _result_from(value)

    def forward(self, **arguments: Any) -> Any:
        """The tool's value; a failed call raises :class:`RuntimeToolError` with the runtime's error."""
        return self.run(**arguments).value()

    def __repr__(self) -> str:
        where = "" if self.where == "local" else " remote"
        return f"<RuntimeTool {self.name!r}{where} {self.runtime}:{self.entry}#{self.command}>"


def _result_from(value: Any) -> RuntimeResult:
    """A worker's answer (a :meth:`RuntimeResult.to_dict`, plus the worker's name) as a result."""
    if not isinstance(value, dict):
        return RuntimeResult.failure(
            "", "invalid_output", f"the worker answered {type(value).__name__}, not a result"
        )
    known = {f.name for f in dataclasses.fields(RuntimeResult)}
    return RuntimeResult(**{key: item for key, item in value.items() if key in known})


def _normalise_inputs(inputs: dict[str, Any], tool: str) -> dict[str, dict[str, Any]]:
    """Accept ``{"text": "string"}`` shorthand; every input gets a description (smolagents requires one)."""
    if not isinstance(inputs, dict):
        raise ManifestError(f"tool {tool!r}: inputs must be a table/object of argument specs")
    result = {}
    for key, spec in inputs.items():
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict) or "type" not in spec:
            raise ManifestError(
                f"tool {tool!r}: input {key!r} needs a 'type' ({', '.join(AUTHORIZED_TYPES)})"
            )
        spec = dict(spec)
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        wrong = [t for t in types if t not in AUTHORIZED_TYPES]
        if wrong or not key.isidentifier():
            problem = f"type(s) {wrong} must be among {AUTHORIZED_TYPES}" if wrong else "is not an identifier"
            raise ManifestError(f"tool {tool!r}: input {key!r}: {problem}")
        spec.setdefault("description", key)
        result[key] = spec
    return result


def runtime_tool(
    name: str,
    *,
    runtime: str,
    entry: str | os.PathLike[str],
    description: str,
    command: str | None = None,
    inputs: dict[str, Any] | None = None,
    output_type: str = "any",
    timeout: float | None = None,
    runtimes: RuntimeManager | None = None,
    where: str = "local",
    worker: str | None = None,
    labels: dict[str, str] | None = None,
    manager: Any = None,
) -> RuntimeTool:
    """Declare one runtime tool in Python (see :class:`RuntimeTool`); ``inputs`` may use the shorthand
    ``{"text": "string"}``."""
    return RuntimeTool(
        name=name,
        description=description,
        runtime=runtime,
        entry=os.fspath(entry),
        command=command,
        inputs=inputs,
        output_type=output_type,
        timeout=timeout,
        runtimes=runtimes,
        where=where,
        worker=worker,
        labels=labels,
        manager=manager,
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a manifest is a table/object with a 'tool' list")
    return data


def load_tools(
    path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    runtimes: RuntimeManager | None = None,
    *,
    check_entries: bool = True,
) -> list[RuntimeTool]:
    """The tools declared in a manifest file (``.toml`` or ``.json``), in every manifest of a
    directory (not recursive, in name order), or in several such paths.

    A manifest has a ``tool`` (or ``tools``) list; its top-level ``runtime``, ``entry``,
    ``timeout``, ``output_type``, ``where`` and ``labels`` are defaults for each tool; a relative
    ``entry`` is taken from the manifest's directory (for ``where = "remote"`` it is kept as written:
    a path in the worker's tools directory, not checked here). ``check_entries`` refuses an entry file the runtime cannot use
    (missing, not executable). Raises :class:`ManifestError` naming the file and tool; a missing
    runtime program (Node.js not installed) is not a load error: calls then fail saying so.
    """
    runtimes = runtimes if runtimes is not None else default_runtime_manager()
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix in (".toml", ".json") and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise ManifestError(f"{item}: no such manifest file or directory")
    tools: list[RuntimeTool] = []
    seen: dict[str, Path] = {}
    for file in files:
        data = _read_manifest(file)
        specs = data.get("tool", data.get("tools"))
        if not isinstance(specs, list) or not specs:
            raise ManifestError(f"{file}: no tools declared (a 'tool' list of tables/objects)")
        defaults = {
            key: data[key]
            for key in ("runtime", "entry", "timeout", "output_type", "where", "labels")
            if key in data
        }
        for index, raw in enumerate(specs):
            if not isinstance(raw, dict):
                raise ManifestError(f"{file}: tool #{index + 1} is not a table/object")
            spec = {**defaults, **raw}
            label = f"{file}: tool {spec.get('name', f'#{index + 1}')!r}"
            unknown = sorted(set(spec) - _SPEC_KEYS)
            if unknown:
                raise ManifestError(f"{label}: unknown key(s) {unknown}; known: {sorted(_SPEC_KEYS)}")
            missing = [key for key in ("name", "description", "runtime", "entry") if not spec.get(key)]
            if missing:
                raise ManifestError(f"{label}: missing {', '.join(missing)}")
            if spec["name"] in seen:
                raise ManifestError(f"{label}: the name is already declared in {seen[spec['name']]}")
            remote = spec.get("where") == "remote"
            entry = Path(spec["entry"])
            if not remote:  # a remote entry is a path in the worker's tools directory, kept as written
                spec["entry"] = str(entry if entry.is_absolute() else (file.parent / entry).resolve())
            try:
                tool = RuntimeTool(**spec, runtimes=runtimes)
            except ManifestError as exc:
                raise ManifestError(f"{file}: {exc}") from exc
            except LookupError as exc:  # an unknown runtime
                raise ManifestError(f"{label}: {exc}") from exc
            if check_entries and not remote:
                problem = runtimes.get_runtime(tool.runtime).problem(tool.entry)
                if problem is not None:
                    raise ManifestError(f"{label}: {problem}")
            seen[tool.name] = file
            tools.append(tool)
    return tools
