"""The journal's per-task cost, against the same manager without one, in the same run.

    .venv/bin/python benchmarks/bench_journal.py [--postgres URL] [--tasks N] [--rounds R]

10,000 no-op function tasks (submit all, wait, read every result) with the journal off, on a
SQLite file, and on PostgreSQL (skipped with the reason when no server answers), rounds
interleaved so that every variant sees the same machine. Two figures per variant:

* until every result is read (what the submitter sees; target <= 1.5x of off), and
* until the journal has everything written (``journal.flush()`` returned: the last row committed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from async_task_system import TaskManager

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def noop() -> None:
    return None


def one_round(n: int, workers: int, journal: str | None) -> tuple[float, float]:
    """(seconds until every result is read, seconds until the journal holds every row)."""
    with TaskManager(max_workers=workers, functions=[noop], retention=n, journal=journal) as manager:
        started = time.perf_counter()
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        variants: dict[str, str | None] = {"off": None}
        pg = postgres_schema(args.postgres)
        times: dict[str, list[tuple[float, float]]] = {}
        try:
            for round_number in range(args.rounds):
                variants["sqlite"] = f"sqlite:///{Path(tmp) / f'journal-{round_number}.db'}"
                if pg is not None:
                    variants["postgresql"] = pg[1]
                for name, url in variants.items():
                    times.setdefault(name, []).append(one_round(args.tasks, args.workers, url))
        finally:
            if pg is not None:
                drop_schema(args.postgres, pg[0])

    n = args.tasks
    off = statistics.median(done for done, _ in times["off"])
    print(
        f"{n:,} no-op function tasks, max_workers={args.workers}, median of {args.rounds} interleaved rounds"
    )
    print(
        f"  {'journal':<11} {'results read':>13} {'per task':>10} {'ratio':>7}   {'all rows written':>17} {'ratio':>7}"
    )
    for name, pairs in times.items():
        done = statistics.median(d for d, _ in pairs)
        flushed = statistics.median(f for _, f in pairs)
        print(
            f"  {name:<11} {done * 1e3:10.1f} ms {done / n * 1e6:7.1f} us {done / off:6.2f}x"
            f"   {flushed * 1e3:14.1f} ms {flushed / off:6.2f}x"
        )
    print("  target: results read <= 1.5x of off")


if __name__ == "__main__":
    main()
