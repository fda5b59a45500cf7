"""Core performance figures, each against a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_core.py

(a) submit -> result overhead for 10,000 no-op tasks vs raw ThreadPoolExecutor (target <= 2x)
(b) how long wait() takes to return after the last task finishes, p50/p99 (target p99 <= 1 ms)
(c) 32 tasks x 100 ms sleep with max_workers=32, wall time (target <= 115 ms)
(d) seed 004's demo: AsyncAgent vs a plain CodeAgent calling the same tools one by one (target >= 3.5x)
(e) seed 004's pipeline (10 files x clean -> analyze -> visualize, varied durations) submitted in one
    go with {"$result": id} references: wall time vs its critical path (target <= 1.1x) and vs
    stage-by-stage barriers
(f) CPU-bound function tasks on a ProcessPoolExecutor through the manager vs the raw process pool
    and vs the default thread pool (the GIL serializes those)
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait

from async_task_system import ScriptedModel, TaskManager, create_async_agent


def noop() -> None:
    return None


def bench_overhead(n: int = 10_000, workers: int = 4, rounds: int = 7) -> None:
    raw_times, ours_times = [], []
    for _ in range(rounds):  # interleaved, so both see the same machine
        with ThreadPoolExecutor(max_workers=workers) as pool:
            started = time.perf_counter()
            futures = [pool.submit(noop) for _ in range(n)]
            wait(futures)
            _ = [f.result() for f in futures]
            raw_times.append(time.perf_counter() - started)
        with TaskManager(max_workers=workers, functions=[noop], retention=n) as manager:
            started = time.perf_counter()
            ids = [manager.submit("function", "noop") for _ in range(n)]
            manager.wait(ids)
            manager.results(ids)
            ours_times.append(time.perf_counter() - started)
    raw, ours = statistics.median(raw_times), statistics.median(ours_times)
    ratios = sorted(o / r for o, r in zip(ours_times, raw_times, strict=True))
    print(f"(a) {n:,} no-op tasks, max_workers={workers}, median of {rounds} interleaved rounds")
    print(f"    raw ThreadPoolExecutor: {raw * 1e3:8.1f} ms  ({raw / n * 1e6:5.1f} us/task)")
    print(f"    TaskManager           : {ours * 1e3:8.1f} ms  ({ours / n * 1e6:5.1f} us/task)")
    print(
        f"    ratio                 : {ours / raw:.2f}x   (per round {ratios[0]:.2f}x-{ratios[-1]:.2f}x; target <= 2x)"
    )


def bench_wait_latency(samples: int = 500) -> None:
    finished_at: list[float] = []

    def short() -> None:
        time.sleep(0.001)
        finished_at.append(time.perf_counter())

    latencies = []
    with TaskManager(max_workers=2, functions=[short]) as manager:
        for _ in range(samples):
            task_id = manager.submit("function", "short")
            manager.wait([task_id])
            latencies.append(time.perf_counter() - finished_at[-1])
    baseline = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(samples):
            future = pool.submit(short)
            wait([future])
            baseline.append(time.perf_counter() - finished_at[-1])
    q = statistics.quantiles(latencies, n=100)
    qb = statistics.quantiles(baseline, n=100)
    print(f"(b) wait() return after the task's last line, {samples} samples")
    print(
        f"    TaskManager.wait      : p50 {q[49] * 1e6:7.1f} us   p99 {q[98] * 1e6:7.1f} us   (target p99 <= 1000 us)"
    )
    print(f"    futures.wait baseline : p50 {qb[49] * 1e6:7.1f} us   p99 {qb[98] * 1e6:7.1f} us")


def bench_sleepers(n: int = 32, seconds: float = 0.1, rounds: int = 5) -> None:
    def nap() -> None:
        time.sleep(seconds)

    walls, raw_walls = [], []
    for _ in range(rounds):
        with TaskManager(max_workers=n, functions=[nap]) as manager:
            started = time.perf_counter()
            ids = [manager.submit("function", "nap") for _ in range(n)]
            manager.wait(ids)
            walls.append(time.perf_counter() - started)
        with ThreadPoolExecutor(max_workers=n) as pool:
            started = time.perf_counter()
            wait([pool.submit(nap) for _ in range(n)])
            raw_walls.append(time.perf_counter() - started)
    print(f"(c) {n} tasks x {seconds * 1e3:.0f} ms sleep, max_workers={n}, {rounds} rounds (fresh pool each)")
    print(
        f"    TaskManager wall      : median {statistics.median(walls) * 1e3:6.1f} ms  worst {max(walls) * 1e3:6.1f} ms"
        "   (target <= 115 ms)"
    )
    print(
        f"    ThreadPoolExecutor    : median {statistics.median(raw_walls) * 1e3:6.1f} ms  worst {max(raw_walls) * 1e3:6.1f} ms"
    )


def bench_demo() -> None:
    from smolagents import CodeAgent

    from async_task_system.cli.demo import DATASETS, analyze_dataset, demo_script

    model = ScriptedModel(demo_script())
    with create_async_agent(tools=[analyze_dataset], model=model, max_workers=5, verbosity_level=0) as agent:
        started = time.perf_counter()
        agent.run("Analyse the five datasets.")
        parallel = time.perf_counter() - started

    sequential_code = (
        "<code>\n"
        f"results = [analyze_dataset(dataset=name) for name in {list(DATASETS)!r}]\n"
        "final_answer(results)\n"
        "</code>"
    )
    plain = CodeAgent(
        tools=[analyze_dataset],
        model=ScriptedModel([sequential_code]),
        verbosity_level=0,
        executor_kwargs={"timeout_seconds": 60},
    )
    started = time.perf_counter()
    plain.run("Analyse the five datasets.")
    sequential = time.perf_counter() - started
    print("(d) seed 004 demo: 5 datasets, 1.0-2.0 s each (7.5 s of work)")
    print(f"    plain CodeAgent, one by one : {sequential:6.2f} s")
    print(f"    AsyncAgent, in parallel     : {parallel:6.2f} s")
    print(f"    speedup                     : {sequential / parallel:.2f}x   (target >= 3.5x)")


STAGES = ("clean", "analyze", "visualize")


def _stage(seconds: float, data: object = None) -> str:
    time.sleep(seconds)
    return f"done after {seconds:.3f}"


def bench_pipeline(files: int = 10, rounds: int = 3) -> None:
    rng = random.Random(4)
    # Each file is slow in a different stage (as real files are): barriers pay every stage's slowest.
    durations = [[rng.choice([0.03, 0.06, 0.1, 0.4]) for _ in STAGES] for _ in range(files)]
    critical = max(sum(row) for row in durations)
    barrier_ideal = sum(max(row[i] for row in durations) for i in range(len(STAGES)))
    chained, barriers = [], []
    for _ in range(rounds):
        with TaskManager(max_workers=files, functions=[_stage], retention=10 * files) as manager:
            started = time.perf_counter()
            last = []
            for row in durations:
                previous = None
                for seconds in row:
                    arguments = {
                        "seconds": seconds,
                        "data": None if previous is None else {"$result": previous},
                    }
                    previous = manager.submit("function", "_stage", arguments)
                last.append(previous)
            manager.wait(last)
            chained.append(time.perf_counter() - started)
            started = time.perf_counter()
            for stage in range(len(STAGES)):
                ids = [manager.submit("function", "_stage", {"seconds": row[stage]}) for row in durations]
                manager.wait(ids)
            barriers.append(time.perf_counter() - started)
    ours, barrier = statistics.median(chained), statistics.median(barriers)
    print(
        f"(e) pipeline: {files} files x {len(STAGES)} stages, 30-400 ms each, max_workers={files}, median of {rounds}"
    )
    print(f"    critical path (ideal)     : {critical * 1e3:7.1f} ms")
    print(
        f"    chained with $result refs : {ours * 1e3:7.1f} ms  = {ours / critical:.3f}x the critical path (target <= 1.1x)"
    )
    print(
        f"    stage-by-stage barriers   : {barrier * 1e3:7.1f} ms  (ideal {barrier_ideal * 1e3:.1f} ms): "
        f"chaining is {barrier / ours:.2f}x faster"
    )


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def bench_process_pool(tasks: int = 8, n: int = 2_000_000) -> None:
    workers = 2
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        wait([pool.submit(spin, 10) for _ in range(workers)])  # start the processes first
        started = time.perf_counter()
        wait([pool.submit(spin, n) for _ in range(tasks)])
        raw = time.perf_counter() - started
        with TaskManager(max_workers=workers, executor=pool, functions=[spin]) as manager:
            started = time.perf_counter()
            manager.wait([manager.submit("function", "spin", {"n": n}) for _ in range(tasks)])
            ours = time.perf_counter() - started
    with TaskManager(max_workers=workers, functions=[spin]) as manager:
        started = time.perf_counter()
        manager.wait([manager.submit("function", "spin", {"n": n}) for _ in range(tasks)])
        threads = time.perf_counter() - started
    print(f"(f) {tasks} CPU-bound tasks ({n:,}-step loop), {workers} workers")
    print(f"    raw ProcessPoolExecutor         : {raw * 1e3:7.1f} ms")
    print(f"    TaskManager on that process pool: {ours * 1e3:7.1f} ms  ({ours / raw:.2f}x the raw pool)")
    print(
        f"    TaskManager on its thread pool  : {threads * 1e3:7.1f} ms  (process pool is {threads / ours:.2f}x faster)"
    )


if __name__ == "__main__":
    print(f"Python {sys.version.split()[0]}")
    bench_overhead()
    bench_wait_latency()
    bench_sleepers()
    bench_demo()
    bench_pipeline()
    bench_process_pool()
