"""The task manager's state machine, waiting, results, cancel, timeout, retries, retention."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from async_task_system import (
    TaskFailure,
    TaskManager,
    TaskStatus,
    UnknownTaskError,
    cancellation_requested,
    get_current_task_id,
    get_task_manager,
)


def add(a: int, b: int) -> int:
    return a + b


def boom(message: str = "bad input") -> None:
    raise ValueError(message)


@pytest.fixture
def manager():
    m = TaskManager(max_workers=2, functions=[add, boom])
    yield m
    m.shutdown(wait=False, cancel_pending=True)


def blocker_function(manager: TaskManager) -> threading.Event:
    """Registers `block` (waits for the returned event) on the manager."""
    release = threading.Event()

    def block(seconds: float = 10.0) -> str:
        release.wait(seconds)
        return "released"

    manager.register_function(block)
    return release


def test_completed_task_moves_pending_running_completed(manager):
    seen: list[TaskStatus] = []
    manager.add_listener(lambda info: seen.append(info.status))
    task_id = manager.submit("function", "add", {"a": 2, "b": 3})
    assert manager.wait([task_id], timeout=5).done == [task_id]
    info = manager.check(task_id)
    assert info.status is TaskStatus.COMPLETED
    assert info.result == 5
    assert info.attempts == 1
    assert info.created_at <= info.started_at <= info.finished_at
    assert seen == [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.COMPLETED]


def test_failed_task_records_type_message_and_traceback(manager):
    task_id = manager.submit("function", "boom", {"message": "no such column"})
    manager.wait([task_id], timeout=5)
    info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED
    assert info.error.type == "ValueError"
    assert info.error.message == "no such column"
    assert "raise ValueError(message)" in info.error.traceback


def test_results_map_failures_to_readable_values_without_raising(manager):
    release = blocker_function(manager)
    ok = manager.submit("function", "add", {"a": 1, "b": 1})
    bad = manager.submit("function", "boom", {})
    manager.wait([ok, bad], timeout=5)
    running = manager.submit("function", "block", {})
    queued_a = manager.submit("function", "block", {})
    queued_b = manager.submit("function", "block", {})  # max_workers=2: this one stays pending
    manager.cancel(queued_b)
    results = manager.results([ok, bad, running, queued_b])
    assert results[ok] == 2
    assert isinstance(results[bad], TaskFailure) and results[bad].startswith("ERROR:")
    assert "ValueError: bad input" in results[bad]
    assert results[bad].status is TaskStatus.FAILED
    assert results[queued_b].startswith("CANCELLED:")
    assert results[running].startswith("NOT FINISHED:") and "wait_for_tasks" in results[running]
    release.set()
    manager.wait([running, queued_a], timeout=5)


def test_unknown_task_id_error_lists_known_ids(manager):
    task_id = manager.submit("function", "add", {"a": 1, "b": 2})
    with pytest.raises(UnknownTaskError) as excinfo:
        manager.results(["task_999"])
    assert "task_999" in str(excinfo.value) and task_id in str(excinfo.value)
    with pytest.raises(UnknownTaskError):
        manager.wait(["nope"], timeout=0.1)


def test_cancelled_pending_task_never_runs():
    runs: list[str] = []
    with TaskManager(max_workers=1) as manager:
        release = blocker_function(manager)
        manager.register_function(lambda: runs.append("ran"), name="record")
        first = manager.submit("function", "block", {})
        queued = manager.submit("function", "record", {})
        assert manager.check(queued).status is TaskStatus.PENDING
        assert manager.cancel(queued) is True
        assert manager.check(queued).status is TaskStatus.CANCELLED
        release.set()
        manager.wait([first], timeout=5)
        follow_up = manager.submit("function", "block", {})  # the slot is free and the queue moves on
        assert manager.wait([follow_up], timeout=5).not_done == []
    assert runs == []
    assert manager.cancel(queued) is False


def test_cancel_running_task_marks_it_and_raises_cooperative_flag(manager):
    observed = threading.Event()
    started = threading.Event()

    def cooperative() -> str:
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if cancellation_requested():
                observed.set()
                return "stopped early"
            time.sleep(0.01)
        return "ran to the end"

    manager.register_function(cooperative)
    task_id = manager.submit("function", "cooperative", {})
    assert started.wait(5)
    assert manager.cancel(task_id) is True
    assert manager.check(task_id).status is TaskStatus.CANCELLED
    assert observed.wait(5), "the running task never saw the cancel flag"
    time.sleep(0.05)
    # The late return value does not revive a cancelled task.
    assert manager.check(task_id).status is TaskStatus.CANCELLED
    assert manager.check(task_id).result is None


def test_timeout_fails_with_error_type_timeout_and_frees_the_slot():
    with TaskManager(max_workers=1) as manager:
        release = blocker_function(manager)
        manager.register_function(add)
        slow = manager.submit("function", "block", {"seconds": 10}, timeout=0.2)
        quick = manager.submit("function", "add", {"a": 1, "b": 1})
        manager.wait([slow, quick], timeout=5)
        info = manager.check(slow)
        assert info.status is TaskStatus.FAILED
        assert info.error.type == "timeout"
        assert "0.2 s" in info.error.message
        assert manager.result(quick) == 2  # ran although the slow task's thread is still blocked
        release.set()


def test_retries_with_backoff_until_success():
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("transient")
        return "ok"

    with TaskManager(max_workers=1, functions=[flaky], retry_backoff=0.05) as manager:
        task_id = manager.submit("function", "flaky", {}, retries=2)
        manager.wait([task_id], timeout=5)
        info = manager.check(task_id)
    assert info.status is TaskStatus.COMPLETED and info.result == "ok"
    assert info.attempts == 3
    assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1  # exponential back-off


def test_retries_exhausted_ends_failed_with_last_error():
    with TaskManager(max_workers=1, functions=[boom], retry_backoff=0.01) as manager:
        task_id = manager.submit("function", "boom", {"message": "still broken"}, retries=2)
        manager.wait([task_id], timeout=5)
        info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED and info.attempts == 3
    assert info.error.message == "still broken"


def test_timeout_is_retried_too():
    attempts: list[int] = []

    def slow_then_fast() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(1.0)
        return "fast"

    with TaskManager(max_workers=1, functions=[slow_then_fast], retry_backoff=0.01) as manager:
        task_id = manager.submit("function", "slow_then_fast", {}, timeout=0.2, retries=1)
        manager.wait([task_id], timeout=5)
        info = manager.check(task_id)
    assert info.status is TaskStatus.COMPLETED and info.result == "fast" and info.attempts == 2


def test_wait_returns_first_and_times_out(manager):
    release = blocker_function(manager)
    quick = manager.submit("function", "add", {"a": 1, "b": 1})
    slow = manager.submit("function", "block", {})
    first = manager.wait([slow, quick], timeout=5, return_when="first")
    assert quick in first.done and slow in first.not_done
    started = time.monotonic()
    timed_out = manager.wait([slow], timeout=0.2)
    assert timed_out == ([], [slow])
    assert 0.15 <= time.monotonic() - started < 2
    release.set()
    assert manager.wait([slow], timeout=5).done == [slow]


def test_wait_wakes_when_last_task_finishes():
    with TaskManager(max_workers=4) as manager:
        release = blocker_function(manager)
        ids = [manager.submit("function", "block", {}) for _ in range(3)]
        woke_at: list[float] = []
        waiter = threading.Thread(
            target=lambda: (manager.wait(ids, timeout=10), woke_at.append(time.monotonic()))
        )
        waiter.start()
        time.sleep(0.1)
        assert woke_at == []
        released_at = time.monotonic()
        release.set()
        waiter.join(5)
    assert woke_at and woke_at[0] - released_at < 1.0


def test_current_task_id_and_manager_inside_a_task(manager):
    def whoami() -> tuple:
        return get_current_task_id(), get_task_manager()

    manager.register_function(whoami)
    task_id = manager.submit("function", "whoami", {})
    manager.wait([task_id], timeout=5)
    assert manager.result(task_id) == (task_id, manager)
    assert get_current_task_id() is None


def test_no_context_leaks_between_tasks_on_a_pooled_thread():
    import contextvars

    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")

    def set_marker(value: str) -> str:
        before = marker.get()
        marker.set(value)
        return before

    with TaskManager(max_workers=1, functions=[set_marker]) as manager:
        marker.set("submitter")
        ids = [manager.submit("function", "set_marker", {"value": f"v{i}"}) for i in range(5)]
        manager.wait(ids, timeout=5)
        # Every task saw the submitter's value, never the previous task's.
        assert list(manager.results(ids).values()) == ["submitter"] * 5


def test_pluggable_executor_runs_the_tasks():
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="custom-pool")

    def thread_name() -> str:
        return threading.current_thread().name

    with TaskManager(max_workers=2, executor=executor, functions=[thread_name]) as manager:
        task_id = manager.submit("function", "thread_name", {})
        manager.wait([task_id], timeout=5)
        assert manager.result(task_id).startswith("custom-pool")
    # The manager does not shut down an executor it was given.
    assert executor.submit(lambda: 42).result(timeout=5) == 42
    executor.shutdown()


def test_retention_drops_only_read_tasks_oldest_first_and_keeps_statistics():
    with TaskManager(max_workers=2, functions=[add], retention=2) as manager:
        early = [manager.submit("function", "add", {"a": i, "b": 0}) for i in range(5)]
        manager.wait(early, timeout=5)
        manager.results(early[:3])  # three read, retention 2: the oldest read one goes
        held = {info.id for info in manager.list()}
        assert held == set(early[1:]), "only read tasks are dropped, the oldest first"
        later = [manager.submit("function", "add", {"a": i, "b": 0}) for i in range(3)]
        manager.wait(later, timeout=5)
        assert {info.id for info in manager.list()} == set(early[1:] + later), (
            "unread results are never dropped"
        )
        dropped = manager.results([early[0]])[early[0]]
        assert isinstance(dropped, TaskFailure) and dropped.startswith("EXPIRED:")
        assert manager.wait([early[0]], timeout=0).done == [early[0]]
        stats = manager.get_statistics()
    assert stats["total"] == 8 and stats["completed"] == 8 and stats["retained"] == 7


def test_list_filters_by_status_and_rejects_unknown_status(manager):
    ok = manager.submit("function", "add", {"a": 1, "b": 1})
    bad = manager.submit("function", "boom", {})
    manager.wait([ok, bad], timeout=5)
    assert [i.id for i in manager.list("failed")] == [bad]
    assert [i.id for i in manager.list(TaskStatus.COMPLETED)] == [ok]
    with pytest.raises(ValueError, match="Unknown status 'finished'"):
        manager.list("finished")


def test_statistics_count_running_like_seed_004():
    with TaskManager(max_workers=2) as manager:
        release = blocker_function(manager)
        ids = [manager.submit("function", "block", {}) for _ in range(3)]
        time.sleep(0.1)
        stats = manager.get_statistics()
        assert stats["running"] == 2 and stats["pending"] == 1 and stats["total"] == 3
        release.set()
        manager.wait(ids, timeout=5)
        assert manager.get_statistics()["completed"] == 3


def test_shutdown_cancels_pending_and_refuses_new_work():
    manager = TaskManager(max_workers=1)
    release = blocker_function(manager)
    running = manager.submit("function", "block", {})
    queued = manager.submit("function", "block", {})
    time.sleep(0.05)
    releaser = threading.Timer(0.2, release.set)
    releaser.start()
    manager.shutdown(wait=True, cancel_pending=True)
    assert manager.check(queued).status is TaskStatus.CANCELLED
    assert manager.check(running).status is TaskStatus.COMPLETED
    with pytest.raises(RuntimeError, match="shut down"):
        manager.submit("function", "block", {})


def test_context_manager_waits_for_running_tasks():
    with TaskManager(max_workers=1) as manager:
        manager.register_function(lambda: time.sleep(0.2) or "done", name="slow")
        task_id = manager.submit("function", "slow", {})
    assert manager.check(task_id).status is TaskStatus.COMPLETED


def test_task_waiting_for_its_own_subtasks_lends_its_slot():
    def parent(children: int) -> list:
        manager = get_task_manager()
        ids = [manager.submit("function", "add", {"a": i, "b": 1}) for i in range(children)]
        manager.wait(ids, timeout=5)
        return list(manager.results(ids).values())

    # One slot, held by the parent: without lending, the children could never start.
    with TaskManager(max_workers=1, functions=[parent, add]) as manager:
        task_id = manager.submit("function", "parent", {"children": 3})
        assert manager.wait([task_id], timeout=10).done == [task_id]
        assert manager.result(task_id) == [1, 2, 3]
        stats = manager.get_statistics()
        assert stats["completed"] == 4 and stats["running"] == 0
        # The slot came back exactly once: two more tasks still run one at a time.
        assert manager.get_statistics()["free_slots"] == 1
