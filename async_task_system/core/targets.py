"""What a task can run, by name, and how its arguments are checked before it is queued.

A target is a smolagents ``Tool`` (including ``@tool`` functions), a managed agent (an agent
instance, copied per run, or a factory that builds one), or a plain callable. Each is described
by smolagents-style ``inputs`` (``{"arg": {"type": "string", "description": ..., "nullable": bool}}``)
so that one validator serves all three and its errors read the same to the LLM.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import AsyncTaskSystemError, TaskValidationError
from .tasks import TaskKind

__all__ = [
    "Target",
    "TaskValidationError",
    "CallWithKeywords",
    "RunAgent",
    "RESULT_REF",
    "is_result_ref",
    "tool_target",
    "agent_target",
    "function_target",
]

RESULT_REF = "$result"
"""An argument ``{"$result": "<task_id>"}`` stands for that task's result (and makes it a dependency)."""


def is_result_ref(value: Any) -> bool:
    """True for ``{"$result": "<task_id>"}``, the one shape that refers to another task's result."""
    return type(value) is dict and len(value) == 1 and isinstance(value.get(RESULT_REF), str)


class CallWithKeywords:
    """``call(arguments)`` -> ``fn(**arguments)``, sendable to a process pool or a Dask cluster.

    A smolagents tool (an ``@tool`` function or a ``Tool`` subclass instance) that is an attribute
    of an importable module travels *by reference*: its module and attribute name, resolved in the
    receiving process (``@tool`` builds a class local to the decorator, which pickle cannot send).
    Another tool is pickled (with cloudpickle when it is installed, e.g. by the ``dask`` extra);
    when neither can send it, :class:`UnsendableError` says which tool and how to fix it. Plain
    functions are pickled as they are (by name: a module-level function).
    """

    __slots__ = ("fn", "_reference")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._reference: tuple[str, str] | None | bool = False  # False: not looked up yet

    def __call__(self, arguments: dict[str, Any]) -> Any:
        return self.fn(**arguments)

    def __reduce__(self) -> Any:
        if self._reference is False:
            self._reference = _module_reference(self.fn)
        if self._reference is not None:
            return (_call_by_reference, self._reference)
        fn = self.fn
        return (CallWithKeywords, (_picklable(fn) if _is_tool(fn) else fn,))

    def __repr__(self) -> str:
        return f"CallWithKeywords({self.fn!r})"


class UnsendableError(AsyncTaskSystemError, pickle.PicklingError):
    """A target's callable cannot be sent to another process; the message says which and how to fix it."""


_resolved: dict[tuple[str, str], Any] = {}


def _call_by_reference(module: str, attribute: str) -> CallWithKeywords:
    """In the receiving process: the tool ``module.attribute`` (imported once per process)."""
    key = (module, attribute)
    fn = _resolved.get(key)
    if fn is None:
        fn = _resolved[key] = getattr(importlib.import_module(module), attribute)
    call = CallWithKeywords(fn)
    call._reference = key
    return call


def _module_reference(fn: Any) -> tuple[str, str] | None:
    """``(module, attribute)`` of an importable module holding the tool ``fn``, else None."""
    if not _is_tool(fn):
        return None
    forward = getattr(type(fn), "forward", None)
    candidates: list[tuple[str | None, str | None]] = [
        (getattr(forward, "__module__", None), getattr(forward, "__qualname__", None)),  # @tool
        (type(fn).__module__, getattr(fn, "name", None)),
    ]
    for module_name, attribute in candidates:
        if not module_name or module_name in ("__main__", "__mp_main__"):  # not importable elsewhere
            continue
        module = sys.modules.get(module_name)
        if module is None:
            continue
        if attribute and "." not in attribute and getattr(module, attribute, None) is fn:
            return module_name, attribute
        for name, value in list(vars(module).items()):
            if value is fn:
                return module_name, name
    return None


def _is_tool(fn: Any) -> bool:
    return hasattr(fn, "forward") and hasattr(fn, "inputs")  # a smolagents Tool (or duck-typed one)


def _picklable(fn: Any) -> Any:
    """The tool ``fn`` itself when pickle can send it; a cloudpickle payload; or UnsendableError saying why."""
    try:
        pickle.dumps(fn)
        return fn
    except Exception as plain:  # noqa: BLE001 - the pickler's error, explained below
        error: Exception = plain
    try:
        import cloudpickle
    except ImportError:
        cloudpickle = None
    if cloudpickle is not None:
        try:
            return _Cloudpickled(cloudpickle.dumps(fn))
        except Exception as exc:  # noqa: BLE001
            error = exc
    what = f"tool {getattr(fn, 'name', None)!r}"
    module = getattr(getattr(type(fn), "forward", None), "__module__", None) or type(fn).__module__
    raise UnsendableError(
        f"{what} cannot be sent to another process ({type(error).__name__}: {error}). It is sent by "
        "reference when it is a module-level attribute of an importable module (module "
        f"{module!r} does not hold it, or is __main__): define it at the top level of a module the "
        "worker processes can import, give it picklable state"
        + ("" if cloudpickle is not None else ", or install cloudpickle")
        + "; or use the default thread pool"
    ) from error


class _Cloudpickled:
    """A cloudpickle payload that unpickles to the callable (cloudpickle is needed where it lands)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> Any:
        return (pickle.loads, (self.payload,))


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}

_PY_TO_JSON: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
}


@dataclass
class Target:
    """Something a task can run, by ``(kind, name)``.

    ``call(arguments)`` does the work. It is what goes to the manager's executor, so make it
    picklable (e.g. :class:`CallWithKeywords` around a module-level function) when the executor
    runs work in other processes. ``runs_inline`` targets are called in the thread that starts
    them and hold no slot: their call only hands the work to something else (a remote worker,
    another agent) through the manager's task control, and returns at once.
    """

    kind: TaskKind
    name: str
    description: str
    inputs: dict[str, dict[str, Any]]
    call: Callable[[dict[str, Any]], Any]
    accepts_extra: bool = False
    obj: Any = field(default=None, repr=False)
    runs_inline: bool = False
    is_async: bool = False

    def signature_hint(self) -> str:
        """``{"dataset": <string>, "depth": <integer, optional>}``: how to call this target."""
        parts = []
        for arg, spec in self.inputs.items():
            kind = spec.get("type", "any")
            kind = "|".join(kind) if isinstance(kind, list) else kind
            optional = ", optional" if spec.get("nullable") else ""
            parts.append(f'"{arg}": <{kind}{optional}>')
        return "{" + ", ".join(parts) + "}"

    def validate(self, arguments: Any) -> dict[str, Any]:
        """Return the arguments as a dict, or raise ``TaskValidationError`` naming what is wrong."""
        if arguments is None:
            arguments = {}
        hint = _LazyHint(self)
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise TaskValidationError(
                    f"Arguments for {self.kind.value} {self.name!r} must be a dict, got a string that is not JSON. {hint}"
                ) from None
        if not isinstance(arguments, dict):
            raise TaskValidationError(
                f"Arguments for {self.kind.value} {self.name!r} must be a dict, got {type(arguments).__name__}. {hint}"
            )
        problems = []
        unknown = [key for key in arguments if key not in self.inputs]
        if unknown and not self.accepts_extra:
            problems.append(f"unknown argument(s) {', '.join(map(repr, unknown))}")
        missing = [
            key for key, spec in self.inputs.items() if not spec.get("nullable") and key not in arguments
        ]
        if missing:
            problems.append(f"missing required argument(s) {', '.join(map(repr, missing))}")
        for key, value in arguments.items():
            spec = self.inputs.get(key)
            if spec is None:
                continue
            expected = spec.get("type", "any")
            if value is None and spec.get("nullable"):
                continue
            if is_result_ref(value):
                continue  # checked when the referenced task's result is known
            if not _matches(value, expected):
                problems.append(
                    f"argument {key!r} must be {_describe(expected)}, got {type(value).__name__} {value!r:.60}"
                )
        if problems:
            raise TaskValidationError(
                f"Invalid arguments for {self.kind.value} {self.name!r}: {'; '.join(problems)}. {hint}"
            )
        return dict(arguments)


class _LazyHint:
    """Formats the how-to-call hint only when an error message is actually built."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def __str__(self) -> str:
        t = self.target
        return f"Call it as submit_task({t.kind.value!r}, {t.name!r}, {t.signature_hint()})."


def _matches(value: Any, expected: str | list[str]) -> bool:
    options = expected if isinstance(expected, list) else [expected]
    for option in options:
        if option not in _JSON_TYPES:  # "any", "image", "audio" and unknown types are not checked
            return True
        if option in ("integer", "number") and isinstance(value, bool):
            continue
        if isinstance(value, _JSON_TYPES[option]):
            return True
    return False


def _describe(expected: str | list[str]) -> str:
    options = expected if isinstance(expected, list) else [expected]
    return " or ".join(f"a {o}" if o[0] not in "aeiou" else f"an {o}" for o in options)


def tool_target(tool: Any, name: str | None = None) -> Target:
    """A smolagents ``Tool`` (or ``@tool`` function) as a target; its ``inputs`` are the contract."""
    tool_name = name or tool.name
    return Target(
        kind=TaskKind.TOOL,
        name=tool_name,
        description=getattr(tool, "description", "") or "",
        inputs=dict(getattr(tool, "inputs", {}) or {}),
        call=CallWithKeywords(tool),
        obj=tool,
        is_async=inspect.iscoroutinefunction(getattr(tool, "forward", None)),
    )


AGENT_INPUTS = {
    "task": {"type": "string", "description": "What the agent should do, with all the context it needs."},
    "additional_args": {
        "type": "object",
        "description": "Optional variables handed to the agent (names become variables in its code).",
        "nullable": True,
    },
}


def agent_target(agent_or_factory: Any, name: str | None = None, description: str | None = None) -> Target:
    """A managed agent as a target. Each run gets its own instance: a copy, or a new one from the factory."""
    is_agent = hasattr(agent_or_factory, "run") and hasattr(agent_or_factory, "memory")
    if is_agent:
        template = agent_or_factory
        agent_name = name or getattr(template, "name", None)

        def build() -> Any:
            from .agent_runtime import copy_agent  # smolagents: loaded only when an agent runs

            return copy_agent(template)
    elif callable(agent_or_factory):
        template = None
        agent_name = name
        build = agent_or_factory
    else:
        raise TypeError(
            "register_agent expects a smolagents agent or a zero-argument factory that returns one"
        )
    if not agent_name:
        raise ValueError(
            "A managed agent needs a name: give the agent a `name=` or pass name= when registering it."
        )
    agent_description = description or getattr(template, "description", None) or ""
    return Target(
        kind=TaskKind.AGENT,
        name=agent_name,
        description=agent_description,
        inputs=dict(AGENT_INPUTS),
        call=RunAgent(build, agent_name),
        obj=agent_or_factory,
    )


class RunAgent:
    """``call(arguments)`` for a managed agent: build a fresh agent, run it on the task.

    Picklable when ``build`` is (a module-level factory), so an executor in another process or on
    a Dask cluster rebuilds the agent there; an agent *instance* is copied in process and cannot
    be sent (its model, locks and memory do not pickle).
    """

    __slots__ = ("build", "name")

    def __init__(self, build: Callable[[], Any], name: str) -> None:
        self.build = build
        self.name = name

    def __call__(self, arguments: dict[str, Any]) -> Any:
        from smolagents.agents import populate_template

        agent = self.build()
        task = arguments["task"]
        templates = getattr(agent, "prompt_templates", None) or {}
        managed_template = (templates.get("managed_agent") or {}).get("task")
        if managed_template:
            task = populate_template(managed_template, variables={"name": self.name, "task": task})
        return agent.run(task, additional_args=arguments.get("additional_args") or None)

    def __getstate__(self) -> Any:
        return (self.build, self.name)

    def __setstate__(self, state: Any) -> None:
        self.build, self.name = state

    def __repr__(self) -> str:
        return f"RunAgent({self.name!r}, {self.build!r})"


def function_target(
    fn: Callable[..., Any], name: str | None = None, description: str | None = None
) -> Target:
    """A plain callable as a target; its signature (and simple annotations) give the contract."""
    fn_name = name or getattr(fn, "__name__", None)
    if not fn_name or fn_name == "<lambda>":
        raise ValueError("A function target needs a name: pass name= when registering a lambda or partial.")
    inputs: dict[str, dict[str, Any]] = {}
    accepts_extra = False
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        signature, hints = None, {}
    if signature is not None:
        for param in signature.parameters.values():
            if param.kind is param.VAR_KEYWORD:
                accepts_extra = True
                continue
            if param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
                continue
            spec: dict[str, Any] = {"type": _json_type(hints.get(param.name)), "description": ""}
            if param.default is not param.empty:
                spec["nullable"] = True
            inputs[param.name] = spec
    doc = inspect.getdoc(fn) or ""
    return Target(
        kind=TaskKind.FUNCTION,
        name=fn_name,
        description=description or doc.split("\n\n")[0],
        inputs=inputs,
        call=CallWithKeywords(fn),
        accepts_extra=accepts_extra,
        obj=fn,
        is_async=inspect.iscoroutinefunction(fn),
    )


def _json_type(annotation: Any) -> str | list[str]:
    if annotation is None or annotation is inspect.Parameter.empty:
        return "any"
    if annotation in _PY_TO_JSON:
        return _PY_TO_JSON[annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [_json_type(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        flat = [o for o in options if isinstance(o, str)]
        if "any" in flat or len(flat) != len(options):
            return "any"
        return flat[0] if len(flat) == 1 else flat
    if origin in _PY_TO_JSON:
        return _PY_TO_JSON[origin]
    return "any"
