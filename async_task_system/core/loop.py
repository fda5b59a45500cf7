"""One background asyncio event loop for coroutine tasks, started on first use.

A task whose target returns a coroutine (an ``async def`` function or tool) does not keep a
pool thread: the manager hands the coroutine to this loop and the attempt ends when it does.
While the coroutine awaits (a remote result, a timer, I/O) it holds no thread at all, and once it
suspends in WAITING_REMOTE it holds no worker slot either.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["background_loop", "spawn"]

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared loop (a daemon thread runs it forever; coroutines must not block it)."""
    global _loop
    loop = _loop
    if loop is not None:
        return loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="async-task-coroutines", daemon=True).start()
            ready.wait()
            _loop = loop
        return _loop


_tasks: set[asyncio.Task] = set()


def spawn(coroutine: Any) -> asyncio.Task:
    """Start ``coroutine`` as a task on the running loop, keeping a strong reference until it ends.

    (The event loop itself holds tasks only weakly: a task nothing else refers to can be collected.)
    """
    task = asyncio.get_running_loop().create_task(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task
