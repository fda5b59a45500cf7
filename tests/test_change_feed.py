"""``TaskManager.watch()``: a change feed coalesces each task's changes, hands out its latest state,
numbers the changes so a recorder knows what it has, and holds submitters back when it is full."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from async_task_system import ChangeFeed, TaskManager, TaskStatus


def quick(value=None):
    return value


@pytest.fixture
def gate():
    event = threading.Event()
    yield event
    event.set()


def make_manager(gate: threading.Event) -> TaskManager:
    def held():
        gate.wait(10)
        return "released"

    return TaskManager(max_workers=4, functions=[quick, held])


def held_back_submission(manager: TaskManager, put_timeout: float):
    """A feed with room for one task, filled; a second submission from another thread, held back.
    Returns the feed, that thread, and an event set once its submit() returned."""
    feed = manager.watch(max_pending=1, put_timeout=put_timeout)
    manager.submit("function", "held")
    submitted = threading.Event()
    thread = threading.Thread(target=lambda: (manager.submit("function", "held"), submitted.set()))
    thread.start()
    assert not submitted.wait(0.2)  # held back: the feed is full
    return feed, thread, submitted


def test_changes_coalesce_into_the_latest_state_once_per_task():
    with TaskManager(max_workers=2, functions=[quick]) as manager:
        feed = manager.watch()
        assert isinstance(feed, ChangeFeed) and feed.sequence == 0 and not feed.wait(0)
        ids = [manager.submit("function", "quick", {"value": i}) for i in range(5)]
        manager.wait(ids, timeout=10)
        assert feed.sequence == 15  # pending, running, completed: three numbered changes each
        assert len(feed) == 5 and feed.wait(0)
        batch = feed.drain()
        assert [info.id for info in batch.snapshots] == ids  # in the order of their first change
        assert {info.status for info in batch.snapshots} == {TaskStatus.COMPLETED}
        assert [info.result for info in batch.snapshots] == list(range(5))
        assert batch.through == 15 and len(feed) == 0 and not feed.wait(0)
        assert feed.drain() == ([], 15)
        feed.close()


def test_a_partial_drain_says_through_which_change_it_is_complete(gate):
    with make_manager(gate) as manager:
        feed = manager.watch()
        ids = [manager.submit("function", "quick", {"value": i}) for i in range(4)]
        manager.wait(ids, timeout=10)
        first = feed.drain(limit=2)
        assert [info.id for info in first.snapshots] == ids[:2]
        assert first.through < feed.sequence  # the third task's changes are not handed out yet
        assert feed.peek(ids[2]).status is TaskStatus.COMPLETED and feed.peek(ids[0]) is None
        rest = feed.drain()
        assert [info.id for info in rest.snapshots] == ids[2:] and rest.through == feed.sequence == 12
        # A progress report is a change too; the snapshot is a copy the manager no longer touches.
        held = manager.submit("function", "held")
        manager.report_progress(held, 0.5, "half")
        snapshot = next(info for info in feed.drain().snapshots if info.id == held)
        assert snapshot.progress == 0.5 and snapshot.progress_message == "half"
        gate.set()
        manager.wait([held], timeout=10)
        assert snapshot.status is TaskStatus.RUNNING
        assert feed.drain().snapshots[0].status is TaskStatus.COMPLETED
        feed.close()


def test_wait_returns_when_a_change_arrives():
    with TaskManager(functions=[quick]) as manager:
        feed = manager.watch()
        timer = threading.Timer(0.1, lambda: manager.submit("function", "quick"))
        timer.start()
        started = time.monotonic()
        assert feed.wait(10)
        assert time.monotonic() - started < 5
        timer.join()
        feed.close()


def test_a_full_feed_holds_a_submission_back_and_drops_only_what_the_next_change_repeats(gate):
    with make_manager(gate) as manager:
        feed = manager.watch(max_pending=2, put_timeout=0.2)
        first = manager.submit("function", "held")
        second = manager.submit("function", "held")
        started = time.monotonic()
        third = manager.submit("function", "held")  # no room: waits put_timeout...
        assert time.monotonic() - started >= 0.2
        # ...then its "pending" change is dropped, but it started at once and "running" is kept.
        assert feed.dropped == 1 and len(feed) == 3
        assert feed.peek(third).status is TaskStatus.RUNNING
        assert [info.id for info in feed.drain().snapshots] == [first, second, third]
        gate.set()
        manager.wait([first, second, third], timeout=10)
        # How every task ended is kept past max_pending: a recorder never keeps a stale "running".
        latest = {info.id: info for info in feed.drain().snapshots}
        assert {info.status for info in latest.values()} == {TaskStatus.COMPLETED}
        assert set(latest) == {first, second, third} and feed.dropped == 1
        feed.close()


def test_past_twice_max_pending_every_new_change_is_dropped(gate):
    with make_manager(gate) as manager:
        feed = manager.watch(max_pending=1, put_timeout=0)
        ids = [manager.submit("function", "held") for _ in range(4)]
        # first: kept (room); second: pending dropped, running kept (2 = the hard limit);
        # third and fourth: both changes dropped.
        assert len(feed) == 2 and feed.dropped == 5
        assert [info.id for info in feed.drain().snapshots] == ids[:2]
        gate.set()
        manager.wait(ids, timeout=10)
        assert len(feed) <= 2
        feed.close()


def test_a_drain_releases_a_held_submission_at_once(gate):
    with make_manager(gate) as manager:
        feed, thread, submitted = held_back_submission(manager, put_timeout=10)
        started = time.monotonic()
        feed.drain()
        assert submitted.wait(5) and time.monotonic() - started < 5
        assert feed.dropped == 0
        thread.join(5)
        feed.close()
        gate.set()


def test_a_closed_feed_records_nothing_and_releases_everyone(gate):
    with make_manager(gate) as manager:
        feed, thread, released = held_back_submission(manager, put_timeout=30)
        feed.close()
        assert released.wait(5)  # close() lets the held submission go on
        thread.join(5)
        sequence = feed.sequence
        manager.submit("function", "quick")
        assert feed.sequence == sequence and feed.wait(0)  # nothing recorded; wait() never blocks
        gate.set()


def test_bad_limits_are_refused():
    with TaskManager() as manager:
        with pytest.raises(ValueError, match="max_pending"):
            manager.watch(max_pending=0)
        with pytest.raises(ValueError, match="put_timeout"):
            manager.watch(put_timeout=-1)


def test_a_feed_does_not_keep_its_manager_alive():
    manager = TaskManager(functions=[quick])
    feed = manager.watch()
    manager.submit("function", "quick")
    manager.shutdown()
    alive = weakref.ref(manager)
    del manager
    gc.collect()
    assert alive() is None  # a recorder holding the feed lets the manager go (and its finalizers run)
    assert feed.drain().snapshots[0].status is TaskStatus.COMPLETED
    feed.close()  # closing after the manager is gone is harmless
