"""smolagents tools (``@tool`` functions, ``Tool`` subclass instances) from an importable module run
on a real ProcessPoolExecutor: they travel by reference (module + attribute), so no cloudpickle is
needed; a tool that cannot be sent fails with an error naming it and the fix."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from _pool_tools import make_locked_tool, pid_class_tool, pid_tool

from async_task_system import TaskManager, TaskStatus
from async_task_system.core.targets import tool_target


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


def test_a_tool_decorated_function_and_a_tool_instance_run_in_pool_processes(pool):
    with TaskManager(executor=pool, tools=[pid_tool, pid_class_tool]) as manager:
        ids = [
            manager.submit("tool", "pid_tool", {"tag": "decorated"}),
            manager.submit("tool", "pid_class_tool", {"tag": "subclass"}),
        ]
        assert manager.wait(ids, timeout=60).not_done == []
        first, second = (manager.result(task_id) for task_id in ids)
    assert first["tag"] == "decorated" and first["pid"] != os.getpid()
    assert second == {"tag": "subclass", "pid": second["pid"], "class": "PidTool"}
    assert second["pid"] != os.getpid()


def test_the_tools_travel_by_reference_not_by_value():
    for tool in (pid_tool, pid_class_tool):
        payload = pickle.dumps(tool_target(tool).call)
        assert b"_pool_tools" in payload and len(payload) < 300, payload  # a module and a name
        assert pickle.loads(payload).fn is tool  # resolved to the very object in this process


def test_by_reference_needs_no_cloudpickle(tmp_path: Path):
    """In a process where cloudpickle cannot be imported, the tools still run on a process pool."""
    blocker = tmp_path / "cloudpickle.py"
    blocker.write_text("raise ImportError('cloudpickle is blocked for this test')\n")
    script = textwrap.dedent(
        """
        import multiprocessing, os
        from concurrent.futures import ProcessPoolExecutor
        from _pool_tools import pid_class_tool, pid_tool
        from async_task_system import TaskManager

        if __name__ == "__main__":
            try:
                import cloudpickle  # noqa: F401
            except ImportError:
                pass
            else:
                raise SystemExit("cloudpickle was importable")
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                with TaskManager(executor=pool, tools=[pid_tool, pid_class_tool]) as manager:
                    ids = [manager.submit("tool", "pid_tool", {"tag": "a"}),
                           manager.submit("tool", "pid_class_tool", {"tag": "b"})]
                    assert manager.wait(ids, timeout=60).not_done == []
                    results = [manager.result(i) for i in ids]
            assert all(r["pid"] != os.getpid() for r in results), results
            print("ok", [r["tag"] for r in results])
        """
    )
    tests_dir = Path(__file__).parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(tests_dir), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok ['a', 'b']" in proc.stdout


def test_a_tool_that_cannot_be_sent_names_itself_and_the_fix(pool):
    with TaskManager(executor=pool, tools=[make_locked_tool()]) as manager:
        task_id = manager.submit("tool", "locked_tool", {"tag": "x"})
        assert manager.wait(task_id, timeout=60).not_done == []
        info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED and info.error.type == "unpicklable"
    message = str(info.error)
    assert "tool 'locked_tool' cannot be sent to another process" in message
    assert "lock" in message  # what really cannot be sent
    assert "module-level attribute of an importable module" in message and "thread pool" in message
    assert "register a module-level function or tool" not in message
