"""The default executor: a finishing thread runs the next submitted attempt itself; threads do not leak."""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import CancelledError

import pytest

from async_task_system.core._pool import ChainingThreadPool


def test_a_submit_made_while_completing_a_future_runs_next_on_the_same_thread():
    pool = ChainingThreadPool(4)
    threads: list[str] = []
    done = threading.Event()

    def step(remaining: int) -> int:
        threads.append(threading.current_thread().name)
        return remaining

    def follow_up(future) -> None:
        remaining = future.result()
        if remaining:
            pool.submit(step, remaining - 1).add_done_callback(follow_up)
        else:
            done.set()

    pool.submit(step, 5).add_done_callback(follow_up)
    assert done.wait(5)
    assert len(threads) == 6 and len(set(threads)) == 1, threads
    pool.shutdown()


def test_results_exceptions_and_cancel_on_shutdown():
    pool = ChainingThreadPool(1)
    release = threading.Event()
    blocker = pool.submit(release.wait, 5)
    queued = pool.submit(lambda: 1)
    failing = pool.submit(lambda: 1 / 0)
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert blocker.result(5) is True
    with pytest.raises(CancelledError):
        queued.result(5)
    assert failing.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: 2)


def test_threads_exit_when_the_pool_is_dropped():
    baseline = threading.active_count()
    pool = ChainingThreadPool(3)
    futures = [pool.submit(time.sleep, 0.01) for _ in range(6)]
    for future in futures:
        future.result(5)
    assert threading.active_count() > baseline
    del pool, futures
    deadline = time.monotonic() + 5
    while threading.active_count() > baseline and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
    assert threading.active_count() == baseline
