"""What running agent code in the sandboxed kernel costs: the first step (kernel start included),
a later step, and a step calling a host tool, against smolagents' in-process executor.

    python benchmarks/bench_code_sandbox.py
"""

from __future__ import annotations

import statistics
import time

from smolagents.local_python_executor import LocalPythonExecutor

from async_task_system.runtimes import SandboxedPythonExecutor


def add(a: int, b: int) -> int:
    return a + b


def measure(make, rounds: int = 5, steps: int = 50) -> dict[str, float]:
    first, later, tool = [], [], []
    for _ in range(rounds):
        executor = make()
        started = time.perf_counter()
        executor.send_tools({"add": add})
        executor("x = 1")
        first.append(time.perf_counter() - started)
        for _ in range(steps):
            started = time.perf_counter()
            executor("x = x + 1")
            later.append(time.perf_counter() - started)
            started = time.perf_counter()
            executor("y = add(x, 1)")
            tool.append(time.perf_counter() - started)
        getattr(executor, "cleanup", lambda: None)()
    return {
        "first step (s)": statistics.median(first),
        "later step (ms)": statistics.median(later) * 1000,
        "step with a tool call (ms)": statistics.median(tool) * 1000,
    }


def main() -> None:
    rows = {
        "in process (LocalPythonExecutor)": measure(lambda: LocalPythonExecutor([], timeout_seconds=None)),
        "sandboxed kernel": measure(lambda: SandboxedPythonExecutor(timeout_seconds=30)),
    }
    for name, row in rows.items():
        print(f"{name:34} " + "  ".join(f"{key} {value:8.3f}" for key, value in row.items()))


if __name__ == "__main__":
    main()
