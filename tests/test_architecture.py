"""The layering rules DESIGN.md sets, enforced: the core imports no subsystem, nothing outside the
manager touches its private members, and a worker machine loads neither smolagents nor litellm."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "async_task_system"
CORE = [
    "tasks", "errors", "manager", "tools", "agent", "tracing", "testing",
    "_attempt", "_context", "_dependencies", "_listeners", "_loop", "_registry", "_targets", "_timers",
    "_records", "_running", "_pool", "timeline",
]  # fmt: skip
SUBSYSTEMS = ("remote", "server", "platform", "runtimes", "scheduler", "collaboration")


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_core_modules_import_no_subsystem():
    for module in CORE:
        for name in _imported_modules(PACKAGE / f"{module}.py"):
            parts = name.lstrip(".").split(".")
            assert not (
                parts[0] in SUBSYSTEMS
                or (parts[0] == "async_task_system" and parts[1:2] and parts[1] in SUBSYSTEMS)
            ), f"{module}.py imports the subsystem {name}"


def test_importing_the_core_loads_no_subsystem():
    code = (
        "import sys, async_task_system.manager, async_task_system.tools, async_task_system.agent\n"
        "print(sorted(m for m in sys.modules if m.split('.')[1:2] and m.split('.')[0] == 'async_task_system'))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for subsystem in SUBSYSTEMS:
        assert f"async_task_system.{subsystem}" not in loaded, loaded


# TaskManager and the classes it is built from (records, then running, then the public API).
MANAGER_CLASSES = {"manager.py": "TaskManager", "_running.py": "TaskRunner", "_records.py": "TaskRecords"}


def _private_members_of_task_manager() -> set[str]:
    names = set()
    for filename, class_name in MANAGER_CLASSES.items():
        tree = ast.parse((PACKAGE / filename).read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
        for node in ast.walk(cls):
            if (
                isinstance(node, ast.FunctionDef)
                and node.name.startswith("_")
                and not node.name.startswith("__")
            ):
                names.add(node.name)
            is_self = (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            )
            if is_self and node.attr.startswith("_") and not node.attr.startswith("__"):
                names.add(node.attr)
    return names


def _own_members(path: Path) -> set[str]:
    """Names a file's own classes use for their members (``self._lock``, ``def _notify``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
    return names


def test_no_module_touches_a_private_member_of_task_manager():
    private = _private_members_of_task_manager()
    assert {"_lock", "_set_status", "_finish_locked", "_release_slot"} <= private
    files = [p for p in PACKAGE.rglob("*.py") if p.name not in MANAGER_CLASSES]
    files += list((PACKAGE.parent / "tests").rglob("*.py")) + list(
        (PACKAGE.parent / "benchmarks").rglob("*.py")
    )
    # A name other classes use for their own members (``_lock``) counts only on an object named like a manager.
    shared = set().union(*(_own_members(path) for path in files))
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or node.attr not in private:
                continue
            owner = ast.unparse(node.value)
            if owner in ("self", "cls") or (node.attr in shared and "manager" not in owner.lower()):
                continue
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {owner}.{node.attr}")
    assert offenders == []


def test_a_worker_loads_neither_smolagents_nor_litellm_nor_croniter():
    code = (
        "import sys\n"
        "import async_task_system.remote.worker\n"
        "from async_task_system import cli\n"
        "try:\n"
        "    cli.main(['worker', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LOADED', sorted(m for m in ('smolagents', 'litellm', 'sqlalchemy', 'wasmtime', 'croniter') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out, out


def test_every_exception_class_of_the_package_derives_from_the_root():
    import importlib
    import inspect
    import pkgutil

    import async_task_system
    from async_task_system.errors import AsyncTaskSystemError

    # Control-flow signals that must not be caught as errors are BaseExceptions on purpose.
    signals = {"StepStopped", "ConversationSuspended"}
    offenders = []
    for module_info in pkgutil.walk_packages(async_task_system.__path__, "async_task_system."):
        if module_info.name.endswith(("__main__", "_supervise")):
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and name not in signals
                and not issubclass(value, AsyncTaskSystemError)
            ):
                offenders.append(f"{module.__name__}.{name}")
    assert offenders == []


def test_a_kind_defined_by_an_extension_not_imported_yet_is_accepted():
    """``submit_task("agent_request", ...)`` in a fresh process: the kind's module is imported on demand
    (through the extension that declares it), so the call reaches the kind's own validation."""
    code = (
        "import sys\n"
        "from async_task_system import TaskManager\n"
        "assert 'async_task_system.collaboration' not in sys.modules\n"
        "with TaskManager() as manager:\n"
        "    try:\n"
        "        manager.submit('agent_request', 'nobody', {'tool': 'x', 'parameters': {}})\n"
        "    except ValueError as exc:\n"
        "        print(exc)\n"
        "    try:\n"
        "        manager.submit('no_such_kind', 'x')\n"
        "    except ValueError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()[:2]
    assert "Unknown agent_request 'nobody'" in first and "task type" not in first, first
    assert "Unknown task type 'no_such_kind'" in second, second
