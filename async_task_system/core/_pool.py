"""The manager's default executor: a thread pool whose threads run the next attempt themselves.

A plain ``ThreadPoolExecutor`` answers each finished task's follow-up ``submit`` (the manager
starts the next pending task from the finishing task's done callback) by queueing it and waking
an idle thread. Here, a ``submit`` made by one of the pool's own threads *while it completes a
future* is kept by that thread and run right after, with no queue and no wake-up: it is the
same thread that just freed the slot. Everything else behaves like ``ThreadPoolExecutor``:
threads start on demand up to ``max_workers``, and they exit when the pool is shut down or
garbage collected.
"""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

__all__ = ["ChainingThreadPool"]

_WorkItem = tuple[Future, Callable[..., Any], tuple, dict]


class ChainingThreadPool(Executor):
    _counter = itertools.count(1)

    def __init__(self, max_workers: int, thread_name_prefix: str = "async-task") -> None:
        self._max_workers = max_workers
        self._prefix = f"{thread_name_prefix}-{next(self._counter)}"
        self._queue: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        item = (future, fn, args, kwargs)
        chain = getattr(self._local, "chain", None)
        if chain is not None:  # one of our threads completing a future: it runs this next itself
            chain.append(item)
            return future
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put(item)
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=_work,
                    args=(weakref.ref(self, _wake_one(self._queue)), self._queue, self._idle, self._local),
                    name=f"{self._prefix}_{len(self._threads)}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()


def _wake_one(work_queue: queue.SimpleQueue) -> Callable[[Any], None]:
    def wake(_: Any) -> None:  # the pool was collected: let one idle thread see it and exit
        work_queue.put(None)

    return wake


def _work(
    pool_ref: weakref.ref,
    work_queue: queue.SimpleQueue,
    idle: threading.Semaphore,
    local: threading.local,
) -> None:
    chain: deque[_WorkItem] = deque()
    while True:
        item = work_queue.get()
        if item is None:
            work_queue.put(None)  # pass it on: every thread exits
            return
        chain.append(item)
        del item
        while chain:
            future, fn, args, kwargs = chain.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            result = None
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                local.chain = chain
                future.set_exception(exc)
            else:
                local.chain = chain
                future.set_result(result)
            finally:
                local.chain = None
            del future, fn, args, kwargs
            result = None  # let go of the last result before waiting
        if pool_ref() is None:
            return
        idle.release()
