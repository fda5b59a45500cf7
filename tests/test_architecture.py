"""The layout's rules, enforced: import-linter's layer contracts, no import circle, no module past the
size limit, no module touching another's private members, and a worker machine loads neither
smolagents nor litellm."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "async_task_system"
ROOT = PACKAGE.parent
LARGEST_MODULE_LINES = 600
# Old module paths kept for one release: each only aliases its new module (async_task_system._deprecated).
DEPRECATED = {p.stem for p in PACKAGE.glob("*.py") if "moved(__name__" in p.read_text()}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (generated gRPC code and migrations aside)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "_proto" in path.parts or "migrations" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that a module imports, anywhere in it (in functions and under
    TYPE_CHECKING too): a circle through a lazy import is still a circle."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
    found.discard(name)
    return found


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_the_package_has_no_import_circle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_longer_than_the_limit():
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in _modules().values()
        if (lines := len(path.read_text().splitlines())) > LARGEST_MODULE_LINES
    }
    assert too_long == {}


def test_the_layer_contracts_hold():
    """import-linter's contracts in pyproject.toml (layers, the independence of subsystems)."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint_imports)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Layers" in done.stdout and "0 broken" in done.stdout, done.stdout


def _private_members_by_module(files: list[Path]) -> dict[Path, set[str]]:
    """The private members (``def _x``, ``self._x = ...``, class-level ``_x = ...``) that each file's
    classes define."""
    members: dict[Path, set[str]] = {}
    for path in files:
        names = set()
        for cls in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    if node.value.id in ("self", "cls") and isinstance(node.ctx, ast.Store):
                        names.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
        members[path] = {n for n in names if n.startswith("_") and not n.startswith("__")}
    return members


def test_no_module_touches_a_private_member_of_another_modules_class():
    """``obj._x`` outside ``self``/``cls`` is allowed only for a name the module's own classes define:
    code talks to other modules' classes through their public API (tests and benchmarks too)."""
    files = list(_modules().values())
    others = list((ROOT / "tests").rglob("*.py")) + list((ROOT / "benchmarks").rglob("*.py"))
    defined = _private_members_by_module(files + others)
    everywhere = set().union(*defined.values())
    assert {"_lock", "_set_status", "_finish_locked", "_release_slot"} <= everywhere
    offenders = []
    for path in files + others:
        own = defined[path]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or node.attr not in everywhere or node.attr in own:
                continue
            owner = ast.unparse(node.value)
            if owner in ("self", "cls") or owner.startswith("super(") or node.attr.endswith("_"):
                continue  # names ending in "_" are protocols of other libraries (IPython's _repr_html_)
            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner}.{node.attr}")
    assert offenders == []


def test_no_module_imports_another_modules_private_name():
    """``from .x import _helper`` across modules: what two modules share is public in a third."""
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    target = (
                        f"{name.rsplit('.', 1)[0]}.{alias.name}"
                        if node.level
                        else f"{node.module}.{alias.name}"
                    )
                    if (
                        alias.name.startswith("_")
                        and not alias.name.startswith("__")
                        and target not in modules
                    ):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    assert offenders == []


def test_importing_the_core_and_the_agents_loads_no_subsystem():
    code = (
        "import sys, async_task_system.core.manager, async_task_system.agents.tools, async_task_system.agents.agent\n"
        "print(sorted(m for m in sys.modules if m.startswith('async_task_system.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    allowed = ("async_task_system.core", "async_task_system.agents", "async_task_system.observe")
    assert all(name.startswith(allowed) or name == "async_task_system._version" for name in eval(loaded)), (
        loaded
    )


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
    from async_task_system.core.errors import AsyncTaskSystemError

    # Control-flow signals that must not be caught as errors are BaseExceptions on purpose.
    signals = {"StepStopped", "ConversationSuspended"}
    offenders = []
    for module_info in pkgutil.walk_packages(async_task_system.__path__, "async_task_system."):
        # the sandbox's supervisor and per-run init are scripts (standard library only, run by path)
        scripts = ("__main__", "sandbox._supervise", "sandbox._init", "sandbox._etc")
        if module_info.name.endswith(scripts) or module_info.name.split(".")[-1] in DEPRECATED:
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
        "assert 'async_task_system.collab.collaboration' not in sys.modules\n"
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
