"""What a manager can run, by ``(kind, name)``, and the subsystems plugged into it.

Targets are registered per manager. Extensions are registered per process, by name, with a
factory (``"module:attribute"`` or a callable) that builds the subsystem for a manager on first
use: this is how the package's ``__init__`` wires the remote bridge to ``TaskManager`` without
the core importing a subsystem.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import TaskValidationError
from .tasks import TaskKind

if TYPE_CHECKING:
    from .targets import Target

__all__ = ["TargetRegistry", "Extensions", "register_extension", "extension_factory"]

_factories: dict[str, tuple[str | Callable[[Any], Any], tuple[str, ...]]] = {}
_tool_providers: dict[str, str] = {}


def register_extension(
    name: str, factory: str | Callable[[Any], Any], kinds: Iterable[str] = (), tools: Iterable[str] = ()
) -> None:
    """Make ``manager.extension(name)`` build ``factory(manager)`` on first use.

    ``factory`` is a callable or ``"module:attribute"`` (imported only then). ``kinds`` are the
    task kinds whose targets the extension registers, so that submitting one builds it first;
    ``tools`` the tool names it provides to agent conversations (``remote_execute``).
    """
    _factories[name] = (factory, tuple(kinds))
    for tool in tools:
        _tool_providers[tool] = name


def extension_factory(name: str) -> Callable[[Any], Any]:
    """The factory registered as ``name`` (a ``"module:attribute"`` one is imported now), without
    building anything: a subsystem reaches a piece wired in by name, e.g. the scheduler the
    platform's SQL schedule store (``"schedule_store"``). ``LookupError`` if none is registered."""
    if name not in _factories:
        known = ", ".join(sorted(_factories)) or "none"
        raise LookupError(f"no extension {name!r} is registered (known: {known})")
    factory = _factories[name][0]
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    return factory


class TargetRegistry:
    """The targets of one manager, with the lookup errors an LLM can act on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._targets: dict[tuple[TaskKind, str], Target] = {}
        self._kinds: frozenset[TaskKind] = frozenset()

    def add(self, target: Target) -> str:
        with self._lock:
            self._targets[(target.kind, target.name)] = target
            self._kinds = self._kinds | {target.kind}
        return target.name

    def list(self, kind: TaskKind | str | None = None) -> list[Target]:
        wanted = None if kind is None else TaskKind.parse(kind)
        with self._lock:
            return [t for (k, _), t in self._targets.items() if wanted is None or k is wanted]

    def has_kind(self, kind: TaskKind) -> bool:
        return kind in self._kinds  # a frozenset replaced whole: no lock needed

    def resolve(self, kind: TaskKind, name: str) -> Target:
        """The target, or ``TaskValidationError`` saying what exists and how to call it."""
        with self._lock:
            target = self._targets.get((kind, name))
            if target is not None:
                return target
            elsewhere = [t for (k, n), t in self._targets.items() if n == name]
            names = sorted(n for (k, n) in self._targets if k is kind)
        if elsewhere:
            other = elsewhere[0]
            raise TaskValidationError(
                f"{name!r} is a {other.kind.value}, not a {kind.value}: "
                f"call submit_task({other.kind.value!r}, {name!r}, {other.signature_hint()})."
            )
        available = ", ".join(names) if names else "none are registered"
        raise TaskValidationError(f"Unknown {kind.value} {name!r}. Available {kind.value}s: {available}.")


class Extensions:
    """The extensions built for one manager."""

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._lock = threading.RLock()  # an extension may build another one while it is built
        self._built: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        instance = self._built.get(name)
        if instance is not None:
            return instance
        factory = extension_factory(name)
        with self._lock:
            if name not in self._built:
                self._built[name] = factory(self._owner)
            return self._built[name]

    def providing_tool(self, tool: str) -> str | None:
        """The name of the extension that provides tool ``tool`` to conversations, if any."""
        return _tool_providers.get(tool)

    def providing(self, kind: TaskKind | str) -> list[str]:
        """Names of the registered extensions that register targets of ``kind`` (a kind, or its name:
        a kind is often defined by the extension's own module, not imported yet)."""
        value = kind.value if isinstance(kind, TaskKind) else str(kind).strip().lower().replace("-", "_")
        return [name for name, (_, kinds) in _factories.items() if value in kinds]
