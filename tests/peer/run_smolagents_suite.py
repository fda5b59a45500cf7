"""A peer's suite as a guard: smolagents' own tests, with and without our executor.

Downloads the source distribution of the installed smolagents version (it ships its
``tests/``), runs its CodeAgent and executor test files twice, once as they are and once with
our ``ContextPreservingExecutor`` installed on every ``CodeAgent`` (see ``peer_plugin.py``),
and fails unless the same tests pass. The download is cached in
``~/.cache/async_task_system/smolagents-sdist``. Without the package registry it skips with the
reason (exit 0), or fails when ``CI=true``.

Usage: ``python tests/peer/run_smolagents_suite.py`` (``make peer-test`` sets up its venv).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = Path(
    os.environ.get("ATS_PEER_CACHE", Path.home() / ".cache" / "async_task_system" / "smolagents-sdist")
)

# smolagents' CodeAgent and executor tests, and the small offline files around them.
TEST_FILES = [
    "test_agents.py",
    "test_local_python_executor.py",
    "test_final_answer.py",
    "test_tools.py",
    "test_memory.py",
    "test_monitoring.py",
]
# Modules those files import beyond smolagents itself (smolagents' [test] extra, trimmed).
NEEDED_MODULES = ["pytest_datadir", "pandas", "numpy", "PIL", "mcp"]
# Left out of both runs. None of the selected tests needs the network today (those that would
# fail the same way in both runs); list one here when it does.
DESELECT: list[str] = [
    # A ToolCallingAgent runs these tool calls in parallel threads and the test assumes their
    # order: it fails at random, with or without our executor.
    "test_agents.py::TestToolCallingAgent::test_process_tool_calls",
]


def _skip(reason: str) -> int:
    if os.environ.get("CI", "").lower() == "true":
        print(f"peer suite FAILED (CI=true): {reason}")
        return 1
    print(f"peer suite SKIPPED: {reason}")
    return 0


def _download(version: str) -> Path | None:
    sdist = CACHE / f"smolagents-{version}.tar.gz"
    if sdist.exists():
        return sdist
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--dest", tmp, f"smolagents=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        got = Path(tmp) / sdist.name
        if done.returncode != 0 or not got.exists():
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
            return None
        got.replace(sdist)
    return sdist


def _prepare(sdist: Path, version: str) -> Path:
    """Extract the sdist's tests/ next to it and add the helpers it does not ship."""
    tree = CACHE / f"smolagents-{version}"
    if not (tree / "tests").is_dir():
        shutil.rmtree(tree, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"smolagents-{version}/tests/")]
            tar.extractall(CACHE, members=members, filter="data")
    tests = tree / "tests"
    (tests / "__init__.py").touch()
    (tests / "utils").mkdir(exist_ok=True)
    (tests / "utils" / "__init__.py").touch()
    shutil.copy(HERE / "support" / "markers.py", tests / "utils" / "markers.py")
    shutil.copy(HERE / "support" / "peer_conftest.py", tests / "conftest.py")
    image = tests / "data" / "000000039769.png"  # the picture the image tests open
    if not image.exists():
        from PIL import Image

        image.parent.mkdir(exist_ok=True)
        Image.new("RGB", (640, 480), (120, 160, 200)).save(image)
    return tree


def _run(tree: Path, with_executor: bool) -> dict[str, str]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        results = Path(f.name)
    env = {
        **os.environ,
        "ATS_PEER_EXECUTOR": "1" if with_executor else "0",
        "ATS_PEER_RESULTS": str(results),
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "peer_plugin",
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
    ]
    cmd += [
        "--timeout=300",
        *[f"--deselect=tests/{d}" for d in DESELECT],
        *[f"tests/{t}" for t in TEST_FILES],
    ]
    label = "with our executor" if with_executor else "without (smolagents as it is)"
    print(f"\n== smolagents tests {label}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=tree, env=env, check=False)
    data = json.loads(results.read_text())
    results.unlink()
    if with_executor and data["executor"] != "ContextPreservingExecutor":
        raise SystemExit("our executor was not installed in the second run")
    return data["outcomes"]


def _count(outcomes: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))


def main() -> int:
    version = importlib.metadata.version("smolagents")
    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return _skip(
            f"modules the smolagents tests need are not installed: {', '.join(missing)} (run `make peer-test`)"
        )
    sdist = _download(version)
    if sdist is None:
        return _skip(
            f"could not download the smolagents {version} source distribution (no package registry?)"
        )
    tree = _prepare(sdist, version)
    without = _run(tree, with_executor=False)
    with_ours = _run(tree, with_executor=True)
    passed_without = {t for t, o in without.items() if o == "passed"}
    passed_with = {t for t, o in with_ours.items() if o == "passed"}
    print(f"\nsmolagents {version} tests ({', '.join(TEST_FILES)}):")
    print(f"  without our executor: {_count(without)}")
    print(f"  with our executor:    {_count(with_ours)}")
    if not passed_without:
        print("peer suite FAILED: no test passed without our executor; the setup is broken")
        return 1
    if passed_with != passed_without:
        for test in sorted(passed_without - passed_with):
            print(f"  passes only without our executor: {test} ({with_ours.get(test, 'not run')})")
        for test in sorted(passed_with - passed_without):
            print(f"  passes only with our executor: {test} ({without.get(test, 'not run')})")
        print("peer suite FAILED: our executor changes which smolagents tests pass")
        return 1
    print(f"peer suite OK: the same {len(passed_with)} tests pass with and without our executor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
