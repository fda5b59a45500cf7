"""The journal's per-task cost, against the same manager without one, in the same run.

    .venv/bin/python benchmarks/bench_journal.py [--postgres URL] [--tasks N] [--rounds R]
        [--workers W] [--task-ms MS]

10,000 no-op function tasks (submit all, wait, read every result) with the journal off, on a
SQLite file, and on PostgreSQL (skipped with the reason when no server answers), each written by
the journal's writer process (the default once batches reach ``Journal.process_threshold``) and,
for comparison, by its own thread (``process_threshold=None``). Rounds are interleaved and
shuffled so that every variant sees the same machine. Two figures per variant:

* until every result is read (what the submitter sees; target <= 1.5x of off), and
* until the journal has everything written (``journal.flush()`` returned: the last row committed).

Everything runs twice: on the machine as it is, and with the other cores kept busy by a spinning
process for every variant alike. Why: on a virtual machine a thread handing the GIL to a thread
on an idle core pays for waking that core; any second busy process (the journal's writer among
them) removes that cost and makes the manager *faster* than with no journal at all -- measured
here: a spinning process alone took no-op tasks from 357 to 228 ms. With every core busy for
every variant that effect is the same for all, and the ratio is the journal's own cost.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from async_task_system import TaskManager
from async_task_system.platform.journal import Journal

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def noop() -> None:
    return None


def sleeper(seconds: float) -> None:
    time.sleep(seconds)


def one_round(
    n: int, workers: int, journal: str | None, writer: str, task_seconds: float = 0.0
) -> tuple[float, float]:
    """(seconds until every result is read, seconds until the journal holds every row)."""
    Journal.process_threshold = 200 if writer == "process" else None
    gc.collect()
    functions = [noop, sleeper]
    with TaskManager(max_workers=workers, functions=functions, retention=n, journal=journal) as manager:
        started = time.perf_counter()
        if task_seconds:
            ids = [manager.submit("function", "sleeper", {"seconds": task_seconds}) for _ in range(n)]
        else:
            ids = [manager.submit("function", "noop") for _ in range(n)]
        manager.wait(ids)
        manager.results(ids)
        done = time.perf_counter() - started
        if journal is not None:
            journal_ext = manager.extension("journal")
            assert journal_ext.flush(120), "the journal did not flush within 120 s"
            assert journal_ext.dropped == 0
        flushed = time.perf_counter() - started
    return done, flushed


def postgres_schema(url: str) -> tuple[str, str] | None:
    """A fresh schema on the server (and the URL that uses it), or None when no server answers."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
        engine.dispose()
    except Exception as exc:
        print(f"PostgreSQL skipped: no server answers at {url} ({type(exc).__name__})")
        return None
    return schema, f"{url}?options=-csearch_path%3D{schema}"


def drop_schema(url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    engine.dispose()


@contextmanager
def other_cores_busy(busy: bool):
    """While inside: one spinning process per core but ours (or nothing, when ``busy`` is false)."""
    spinners = []
    if busy:
        for _ in range(max(1, (os.cpu_count() or 2) - 1)):
            spinners.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(0.2)
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--task-ms", type=float, default=0.0, help="each task sleeps this long (0: no-op)")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    args = parser.parse_args()

    pg = postgres_schema(args.postgres)
    try:
        for busy in (False, True):
            with tempfile.TemporaryDirectory() as tmp, other_cores_busy(busy):
                times = measure(args, tmp, None if pg is None else pg[1])
            title = "other cores kept busy for every variant" if busy else "machine as it is"
            report(times, args, title)
    finally:
        if pg is not None:
            drop_schema(args.postgres, pg[0])


def measure(args: argparse.Namespace, tmp: str, pg_url: str | None) -> dict[str, list[tuple[float, float]]]:
    times: dict[str, list[tuple[float, float]]] = {}
    for round_number in range(args.rounds):
        sqlite = f"sqlite:///{Path(tmp) / f'journal-{round_number}'}"
        variants: list[tuple[str, str | None, str]] = [
            ("off", None, ""),
            ("sqlite", f"{sqlite}-p.db", "process"),
            ("sqlite/thread", f"{sqlite}-t.db", "thread"),
        ]
        if pg_url is not None:
            variants += [("postgresql", pg_url, "process"), ("postgresql/thread", pg_url, "thread")]
        random.shuffle(variants)
        for name, url, writer in variants:
            times.setdefault(name, []).append(
                one_round(args.tasks, args.workers, url, writer, args.task_ms / 1000)
            )
    return times


def report(times: dict[str, list[tuple[float, float]]], args: argparse.Namespace, title: str) -> None:
    n = args.tasks
    off = statistics.median(done for done, _ in times["off"])
    what = f"{args.task_ms:g} ms" if args.task_ms else "no-op"
    print(f"{n:,} {what} function tasks, max_workers={args.workers}, median of {args.rounds} rounds; {title}")
    print(
        f"  {'journal':<18} {'results read':>13} {'per task':>10} {'ratio':>7}   {'all rows written':>17} {'ratio':>7}"
    )
    for name in ("off", "sqlite", "sqlite/thread", "postgresql", "postgresql/thread"):
        if name not in times:
            continue
        pairs = times[name]
        done = statistics.median(d for d, _ in pairs)
        flushed = statistics.median(f for _, f in pairs)
        print(
            f"  {name:<18} {done * 1e3:10.1f} ms {done / n * 1e6:7.1f} us {done / off:6.2f}x"
            f"   {flushed * 1e3:14.1f} ms {flushed / off:6.2f}x"
        )
    print("  target: results read <= 1.5x of off (the writer process; /thread: for comparison)")
    print()


if __name__ == "__main__":
    main()
