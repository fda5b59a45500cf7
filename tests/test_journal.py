"""The durable journal (``TaskManager(journal=URL)``) on a SQLite file and the real PostgreSQL:
every task recorded, dropped results read back, unique prefixes, the queue policy, and recovery
after a manager process is killed with SIGKILL mid-task."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("sqlalchemy")

from async_task_system import TaskFailure, TaskManager, TaskStatus  # noqa: E402
from async_task_system.platform.journal import Journal, encode_value  # noqa: E402
from async_task_system.platform.store import INTERRUPTED, Store  # noqa: E402


def echo(value):
    return value


def opaque():
    return object()


def boom():
    raise ValueError("nope")


def test_every_task_is_recorded_and_dropped_results_are_read_from_the_journal(database_url):
    with TaskManager(functions=[echo, opaque, boom], retention=0, journal=database_url) as manager:
        journal = manager.extension("journal")
        assert isinstance(journal, Journal) and manager.id_prefix == journal.prefix
        ids = [manager.submit("function", "echo", {"value": {"n": i}}) for i in range(20)]
        odd = manager.submit("function", "opaque")
        bad = manager.submit("function", "boom")
        manager.wait([*ids, odd, bad], timeout=10)
        first = manager.results(ids + [odd, bad])  # read: retention 0 drops them at once
        assert first[ids[3]] == {"n": 3}
        assert journal.flush(10)
        again = manager.results(ids + [odd, bad])  # now from the journal
        assert again[ids[3]] == {"n": 3}
        assert again[odd].startswith("<object object at")  # the readable fallback
        assert isinstance(again[bad], TaskFailure) and "ValueError: nope" in again[bad]
        info = manager.check(ids[0])
        assert info.status is TaskStatus.COMPLETED and info.arguments == {"value": {"n": 0}}
        assert info.started_at is not None and info.finished_at >= info.started_at
        assert journal.store.journal.count(prefix=journal.prefix, status="completed") == 21
    # After shutdown the prefix is closed and the rows stay readable.
    with Store(database_url) as store:
        assert store.prefixes.get(journal.prefix).closed_at is not None
        assert store.journal.get(bad).error_type == "ValueError"


def test_results_are_size_capped_json_with_a_readable_fallback():
    assert encode_value({"a": [1, 2.5, None]}, 100) == ({"a": [1, 2.5, None]}, None, False)
    assert encode_value("x" * 20, 10) == (None, "xxxxxxxxxx... [truncated, 20 chars]", True)
    value, text, truncated = encode_value(float("nan"), 100)
    assert value is None and text == "nan" and not truncated
    value, text, truncated = encode_value({"big": list(range(100))}, 50)
    assert value is None and text.startswith('{"big": [0, 1,') and truncated


def test_prefixes_are_unique_in_the_journal(database_url):
    with TaskManager(functions=[echo], journal=database_url, id_prefix="job_") as first:
        assert first.id_prefix == "job_"
        assert first.submit("function", "echo", {"value": 1}) == "job_1"
    with pytest.raises(ValueError, match="already used"):
        TaskManager(functions=[echo], journal=database_url, id_prefix="job_")
    # A default prefix the store has seen is replaced by a fresh one.
    second = TaskManager(functions=[echo], journal=database_url)
    taken = second.id_prefix
    second.shutdown()
    with TaskManager(functions=[echo], journal=database_url, id_prefix=taken) as third:
        assert third.id_prefix != taken and third.id_prefix.startswith("task_")


def test_a_full_queue_holds_submitters_back_then_drops_and_a_failing_database_is_retried(
    database_url, monkeypatch
):
    monkeypatch.setattr(Journal, "max_pending", 2)
    monkeypatch.setattr(Journal, "put_timeout", 0.2)
    monkeypatch.setattr(Journal, "linger", 0)
    with TaskManager(functions=[echo], journal=database_url) as manager:
        journal = manager.extension("journal")
        gate = threading.Event()
        calls = []
        real_upsert = journal.store.journal.upsert

        def slow_then_failing(rows):
            calls.append(len(rows))
            gate.wait(10)
            if len(calls) == 2:
                raise RuntimeError("database went away")
            real_upsert(rows)

        journal.store.journal.upsert = slow_then_failing
        ids = [manager.submit("function", "echo", {"value": i}) for i in range(6)]
        manager.wait(ids, timeout=30)
        # The thread delivering snapshots waits put_timeout for room, then drops one (wait() itself
        # returns once the tasks are finished: delivery to listeners happens just after).
        deadline = time.monotonic() + 10
        while not journal.dropped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert journal.dropped > 0
        gate.set()
        assert journal.flush(20)
        assert len(calls) >= 3  # the failed batch was written again
        written = {row.task_id for row in journal.store.journal.list(prefix=journal.prefix)}
        assert written  # what reached the queue is stored; dropped snapshots are counted above


CHILD = textwrap.dedent(
    """
    import sys, time
    from async_task_system import TaskManager

    def slow(seconds):
        time.sleep(seconds)
        return seconds

    def quick():
        return "done"

    manager = TaskManager(max_workers=2, functions=[slow, quick], journal=sys.argv[1])
    journal = manager.extension("journal")
    done = manager.submit("function", "quick")
    manager.wait([done])
    running_retry = manager.submit("function", "slow", {"seconds": 60}, retries=1)
    running_once = manager.submit("function", "slow", {"seconds": 60})
    queued = manager.submit("function", "slow", {"seconds": 60})
    while manager.get_statistics()["running"] < 2:
        time.sleep(0.01)
    journal.flush(10)
    print(manager.id_prefix, done, running_retry, running_once, queued, flush=True)
    time.sleep(120)
    """
)


def test_a_new_manager_recovers_the_tasks_of_a_killed_one(database_url):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, database_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline()
        assert line, child.stderr.read()
        prefix, done, running_retry, running_once, queued = line.split()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
        child.stderr.close()

    def slow(seconds):  # the new process registers the same target (here: fast)
        return f"slept {seconds}"

    with TaskManager(functions=[slow], journal=database_url) as manager:
        journal = manager.extension("journal")
        orphans = {info.id: info for info in journal.orphans()}
        assert set(orphans) == {running_retry, running_once, queued}
        assert orphans[queued].status is TaskStatus.PENDING

        report = journal.recover()
        assert prefix in report.prefixes
        assert sorted(report.interrupted) == sorted([running_retry, running_once, queued])
        assert set(report.resubmitted) == {running_retry, queued}  # an attempt left / never started
        assert "no attempt left" in report.skipped[running_once]
        new_ids = list(report.resubmitted.values())
        manager.wait(new_ids, timeout=10)
        assert manager.results(new_ids) == dict.fromkeys(new_ids, "slept 60")

        store = journal.store.journal
        assert store.get(done).status == "completed"
        assert store.get(running_once).status == INTERRUPTED
        assert store.get(running_retry).resubmitted_as == report.resubmitted[running_retry]
        old = journal.get(running_once)  # an interrupted task reads as failed, error type "interrupted"
        assert old.status is TaskStatus.FAILED and old.error.type == "interrupted"
        assert journal.recover().interrupted == []  # nothing left; the dead prefix is closed
