"""The durable journal (``TaskManager(journal=URL)``) on a SQLite file and the real PostgreSQL,
written by its own thread and by its writer process: every task recorded, dropped results read
back, unique prefixes, the queue policy against a database that really fails, a writer process
killed mid-run, and recovery after a manager process is killed with SIGKILL mid-task."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("sqlalchemy")

from async_task_system import TaskFailure, TaskManager, TaskStatus  # noqa: E402
from async_task_system.platform.journal import Journal, encode_json  # noqa: E402
from async_task_system.platform.store import INTERRUPTED, Store  # noqa: E402

try:
    import sqlalchemy as sa
except ImportError:  # pragma: no cover - skipped above
    sa = None


@pytest.fixture(params=["thread", "process"])
def writer(request, monkeypatch):
    """Who writes the rows: the journal's thread, or (from the first batch on) its writer process."""
    monkeypatch.setattr(Journal, "process_threshold", None if request.param == "thread" else 1)
    return request.param


def rename_table(url: str, old: str, new: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")
    finally:
        engine.dispose()


def echo(value):
    return value


def opaque():
    return object()


def boom():
    raise ValueError("nope")


def test_every_task_is_recorded_and_dropped_results_are_read_from_the_journal(database_url, writer):
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
        row = journal.store.journal.get(ids[5])  # read back through the ORM: the types bound right
        assert row.arguments == {"value": {"n": 5}} and row.result == {"n": 5} and row.depends_on == []
        assert row.created_at.tzinfo is not None and row.finished_at >= row.started_at >= row.created_at
        odd_row = journal.store.journal.get(odd)
        assert odd_row.result is None and odd_row.result_text.startswith("<object object at")
        assert (journal.writer_pid is not None) == (writer == "process")
    # After shutdown the prefix is closed and the rows stay readable.
    with Store(database_url) as store:
        assert store.prefixes.get(journal.prefix).closed_at is not None
        assert store.journal.get(bad).error_type == "ValueError"


def test_results_are_size_capped_json_with_a_readable_fallback():
    assert encode_json({"a": [1, 2.5, None]}, 100) == ('{"a": [1, 2.5, null]}', None, False)
    assert encode_json(None, 100) == ("null", None, False)
    assert encode_json(True, 100) == ("true", None, False)
    assert encode_json(12, 100) == ("12", None, False)
    assert encode_json("x" * 20, 10) == ("null", "xxxxxxxxxx... [truncated, 20 chars]", True)
    assert encode_json(float("nan"), 100) == ("null", "nan", False)
    value, text, truncated = encode_json({"big": list(range(100))}, 50)
    assert value == "null" and text.startswith('{"big": [0, 1,') and truncated


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
    database_url, writer, monkeypatch
):
    monkeypatch.setattr(Journal, "max_pending", 3)
    monkeypatch.setattr(Journal, "put_timeout", 0.2)
    monkeypatch.setattr(Journal, "linger", 0)
    gate = threading.Event()

    def held(value):
        gate.wait(30)
        return value

    with TaskManager(max_workers=4, functions=[echo, held], journal=database_url) as manager:
        journal = manager.extension("journal")
        first = manager.submit("function", "echo", {"value": "before"})
        assert journal.flush(10)
        rename_table(database_url, "journal_tasks", "journal_tasks_away")  # every write now fails
        stuck = manager.submit("function", "held", {"value": 0})
        assert not journal.flush(0.5) and journal.failing  # its batch is retried, in vain
        ids = [stuck] + [manager.submit("function", "held", {"value": i}) for i in (1, 2, 3)]
        assert journal.waiting == 3  # = max_pending: the next submission is held back...
        started = time.monotonic()
        last = manager.submit("function", "held", {"value": 4})
        assert time.monotonic() - started >= 0.2
        assert journal.dropped == 1  # ...then its "pending" change (no slot: not started) is dropped
        ids.append(last)
        gate.set()
        manager.wait(ids, timeout=30)
        rename_table(database_url, "journal_tasks_away", "journal_tasks")
        assert journal.flush(20)  # the failed batch and what waited are written
        assert not journal.failing
        rows = {row.task_id: row for row in journal.store.journal.list(prefix=journal.prefix)}
        # Only a "pending" change was dropped: every task's end was kept and written.
        assert {task_id: row.status for task_id, row in rows.items()} == dict.fromkeys(
            [first, *ids], "completed"
        )
        assert rows[last].result == 4 and journal.dropped == 1


def test_a_killed_writer_process_loses_nothing(database_url, monkeypatch):
    monkeypatch.setattr(Journal, "process_threshold", 1)
    with TaskManager(max_workers=4, functions=[echo], journal=database_url) as manager:
        journal = manager.extension("journal")
        ids = [manager.submit("function", "echo", {"value": i}) for i in range(50)]
        assert journal.flush(20)
        first = journal.writer_pid
        assert first is not None and _running(first)
        os.kill(first, signal.SIGKILL)
        ids += [manager.submit("function", "echo", {"value": i}) for i in range(50, 500)]
        manager.wait(ids, timeout=30)
        assert journal.flush(30)
        assert journal.writer_pid not in (None, first)  # a new one
        assert journal.store.journal.count(prefix=journal.prefix, status="completed") == 500


def test_a_manager_dropped_without_shutdown_writes_its_rows_and_ends_its_writer(database_url, monkeypatch):
    monkeypatch.setattr(Journal, "process_threshold", 1)
    manager = TaskManager(functions=[echo], journal=database_url)
    journal = manager.extension("journal")
    ids = [manager.submit("function", "echo", {"value": i}) for i in range(20)]
    manager.wait(ids, timeout=10)
    assert journal.flush(10)
    writer_pid = journal.writer_pid
    last = manager.submit("function", "echo", {"value": "last"})
    manager.wait([last], timeout=10)
    del manager
    gc.collect()  # the journal's finalizer: write what waits, end the thread and the process
    (writer,) = [t for t in threading.enumerate() if t.name == f"journal-{journal.prefix}"] or [None]
    if writer is not None:
        writer.join(10)
    assert (writer is None or not writer.is_alive()) and not _running(writer_pid)
    assert journal.store.journal.get(last).status == "completed"
    journal.store.close()


WRITER_CHILD = textwrap.dedent(
    """
    import sys, time
    from async_task_system import TaskManager
    from async_task_system.platform.journal import Journal

    def echo(value):
        return value

    Journal.process_threshold = 1
    manager = TaskManager(functions=[echo], journal=sys.argv[1])
    journal = manager.extension("journal")
    manager.wait([manager.submit("function", "echo", {"value": 1})])
    journal.flush(10)
    print(journal.writer_pid, flush=True)
    time.sleep(120)
    """
)


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie (its new parent may reap it late)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_writer_process_ends_with_a_killed_manager(tmp_path):
    manager_process = subprocess.Popen(
        [sys.executable, "-c", WRITER_CHILD, f"sqlite:///{tmp_path / 'j.db'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = manager_process.stdout.readline()
        assert line, manager_process.stderr.read()
        writer_pid = int(line)
    finally:
        manager_process.send_signal(signal.SIGKILL)
        manager_process.wait(10)
        manager_process.stdout.close()
        manager_process.stderr.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not _running(writer_pid):
            break
        time.sleep(0.05)  # a bounded wait for another process to exit: nothing to block on
    else:
        os.kill(writer_pid, signal.SIGKILL)
        pytest.fail("the writer process outlived its manager")


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
