"""Nothing lost, nothing stuck, nothing kept alive: retention, timers, shutdown, dropped managers."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from async_task_system import TaskFailure, TaskManager, TaskStatus, UnknownTaskError


def echo(value: int) -> int:
    return value


def flaky() -> None:
    raise RuntimeError("not yet")


def test_three_times_retention_tasks_are_all_readable_after_waiting():
    retention = 200
    with TaskManager(max_workers=4, functions=[echo], retention=retention) as manager:
        ids = [manager.submit("function", "echo", {"value": i}) for i in range(3 * retention)]
        assert manager.wait(ids, timeout=30).not_done == []
        results = manager.results(ids)
        assert [results[task_id] for task_id in ids] == list(range(3 * retention))
        # Reading made them droppable: only `retention` read tasks stay held.
        assert manager.get_statistics()["retained"] == retention
        # A read-and-dropped id still waits as done and reads as a clear failure, never raises.
        assert manager.wait(ids, timeout=0).not_done == []
        again = manager.results(ids[:1])[ids[0]]
        assert isinstance(again, TaskFailure) and again.startswith("EXPIRED:")


def test_unknown_ids_are_still_refused_with_a_hint():
    with TaskManager(functions=[echo]) as manager:
        manager.submit("function", "echo", {"value": 1})
        try:
            manager.results(["task_nope_1"])
        except UnknownTaskError as exc:
            assert "Use the ids that submit_task returned" in str(exc)
        else:
            raise AssertionError("an id never issued must raise")


def test_finished_tasks_with_long_timeouts_release_their_timers():
    from async_task_system.core import _timers

    queue = _timers._default
    before = len(queue)
    with TaskManager(max_workers=4, functions=[echo], retention=10) as manager:
        ids = [manager.submit("function", "echo", {"value": i}, timeout=3600) for i in range(5000)]
        manager.wait(ids, timeout=60)
        # Every timer of a finished task is cancelled, and a cancelled timer lets go of its task.
        assert len(queue) == before
        assert queue.stored() < 5000, "cancelled entries are purged, not kept until their deadline"


def test_shutdown_without_waiting_ends_a_task_waiting_for_its_retry():
    for _ in range(5):
        manager = TaskManager(functions=[flaky], retry_backoff=5.0)
        task_id = manager.submit("function", "flaky", retries=3)
        deadline = time.monotonic() + 5
        while manager.check(task_id).attempts < 1 or manager.check(task_id).status is not TaskStatus.PENDING:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        manager.shutdown(wait=False)
        info = manager.check(task_id)
        assert info.status is TaskStatus.FAILED
        assert "no retry: the manager shut down" in info.error.message


def test_shutdown_without_waiting_ends_queued_tasks():
    release = threading.Event()
    manager = TaskManager(max_workers=1)
    manager.register_function(lambda: release.wait(5), name="hold")
    first = manager.submit("function", "hold")
    queued = [manager.submit("function", "hold") for _ in range(3)]
    manager.shutdown(wait=False, cancel_pending=True)
    release.set()
    assert manager.wait([first, *queued], timeout=5).not_done == []
    assert {manager.check(t).status for t in queued} == {TaskStatus.CANCELLED}


def test_dropped_managers_leave_no_threads_behind():
    def timed() -> int:
        return 1

    baseline = threading.active_count()
    refs = []
    for _ in range(50):
        manager = TaskManager(functions=[timed])
        task_id = manager.submit("function", "timed", timeout=30)
        manager.wait([task_id], timeout=5)
        refs.append(weakref.ref(manager))
        del manager
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gc.collect()
        if all(ref() is None for ref in refs) and threading.active_count() <= baseline + 2:
            break
        time.sleep(0.05)
    assert all(ref() is None for ref in refs), "a manager that was never shut down must be collectable"
    assert threading.active_count() <= baseline + 2  # the shared timer thread, at most one straggler


def test_dropped_tasks_are_read_from_the_archive_when_one_is_set():
    kept: dict = {}
    with TaskManager(functions=[echo], retention=1) as manager:
        manager.add_listener(
            lambda info: kept.__setitem__(info.id, info) if info.status.is_terminal else None
        )
        manager.set_archive(kept.get)
        ids = [manager.submit("function", "echo", {"value": i}) for i in range(3)]
        manager.wait(ids, timeout=5)
        assert manager.results(ids) == {ids[0]: 0, ids[1]: 1, ids[2]: 2}
        assert manager.get_statistics()["retained"] == 1
        assert manager.results(ids) == {ids[0]: 0, ids[1]: 1, ids[2]: 2}, "read back from the archive"
        assert manager.check(ids[0]).result == 0
