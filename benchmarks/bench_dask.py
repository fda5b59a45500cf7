"""The Dask backend's cost and seed 004's demo on it, each against a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_dask.py

(a) per-task overhead: no-op function tasks through a TaskManager on a LocalCluster (2 worker
    processes, 1 thread each) against raw ``Client.submit(pure=False)`` + ``gather`` on the same
    cluster, interleaved rounds. With enough slots the manager hands every task to Dask at once
    (as the raw loop does); with ``max_workers`` equal to the cluster's threads each slot waits for
    its task's round trip before the next starts.
(b) seed 004's demo scenario (an AsyncAgent on the scripted model analyses 5 datasets, 1 to 2 s
    each): the default thread pool against the 2-worker LocalCluster (and a 5-worker one, enough
    for all five at once), with the time to start each cluster.
"""

from __future__ import annotations

import statistics
import time

from async_task_system import ScriptedModel, TaskManager, create_async_agent
from async_task_system.cli.demo import DATASETS, DEMO_TASK, analyze_dataset, demo_script
from async_task_system.scaleout.dask import DaskExecutor, dask_executor


def noop() -> None:
    return None


def bench_overhead(executor: DaskExecutor, n: int = 400, rounds: int = 5) -> None:
    client = executor.client
    client.gather([client.submit(noop, pure=False) for _ in range(50)])  # warm both workers
    raw_times: list[float] = []
    ours: dict[int, list[float]] = {n: [], 2: []}
    for _ in range(rounds):
        started = time.perf_counter()
        client.gather([client.submit(noop, pure=False) for _ in range(n)])
        raw_times.append(time.perf_counter() - started)
        for slots in ours:
            with TaskManager(max_workers=slots, executor=executor, functions=[noop], retention=n) as manager:
                started = time.perf_counter()
                ids = [manager.submit("function", "noop") for _ in range(n)]
                manager.wait(ids)
                manager.results(ids)
                ours[slots].append(time.perf_counter() - started)
    raw = statistics.median(raw_times)
    print(f"(a) {n} no-op tasks on a 2-process LocalCluster, median of {rounds} interleaved rounds")
    print(f"    {'raw Client.submit + gather:':<34}{raw * 1e3:8.1f} ms  ({raw / n * 1e3:6.2f} ms/task)")
    for slots, times in ours.items():
        median = statistics.median(times)
        print(
            f"    {f'TaskManager, max_workers={slots}:':<34}{median * 1e3:8.1f} ms  ({median / n * 1e3:6.2f} ms/task)"
            f"  {median / raw:5.2f}x raw"
        )


def run_demo(executor: DaskExecutor | None, max_workers: int) -> tuple[float, int]:
    agent = create_async_agent(
        tools=[analyze_dataset],
        model=ScriptedModel(demo_script()),
        executor=executor,
        max_workers=max_workers,
        verbosity_level=0,
    )
    with agent:
        started = time.perf_counter()
        agent.run_with_async_guidance(DEMO_TASK)
        seconds = time.perf_counter() - started
        completed = agent.task_manager.get_statistics()["completed"]
    return seconds, completed


def bench_demo() -> None:
    print(f"(b) seed 004's demo: 5 datasets ({sum(DATASETS.values()):.2f} s of work, 1 to 2 s each)")
    seconds, done = run_demo(None, 5)
    print(f"    thread pool, max_workers=5:                      {seconds:5.2f} s  ({done} completed)")
    for workers in (2, 5):
        started = time.perf_counter()
        with dask_executor(n_workers=workers, threads_per_worker=1) as executor:
            start_up = time.perf_counter() - started
            run_demo(executor, workers)  # first run: workers import the package and smolagents
            seconds, done = run_demo(executor, workers)
        print(
            f"    Dask LocalCluster, {workers} worker processes:          {seconds:5.2f} s  ({done} completed;"
            f" cluster start {start_up:.2f} s)"
        )
    print(
        "    bounds: 2 workers >= 3.75 s (7.5 s of work / 2), 4.50 s in submission order; 5 workers >= 2.00 s"
    )


def main() -> None:
    started = time.perf_counter()
    with dask_executor(n_workers=2, threads_per_worker=1) as executor:
        print(
            f"LocalCluster (2 worker processes, 1 thread each) started in {time.perf_counter() - started:.2f} s"
        )
        bench_overhead(executor)
    bench_demo()


if __name__ == "__main__":
    main()
