"""Scheduler fire-time lateness: 1,000 interval schedules on one timer, real clock.

    .venv/bin/python benchmarks/bench_scheduler.py [--schedules 1000] [--seconds 3]

Each schedule fires every second, their first fires spread evenly over one second (so about
1,000 fires a second, one every millisecond), for a few seconds; end_at bounds the run. For each
fire we measure

* fire lateness: when the scheduler submitted the run (its history's ``started_at``) minus the
  time it was due (``scheduled_for``): what the one timer adds;
* start lateness: when the run's task started on a worker (``TaskInfo.started_at``) minus the due
  time: what a user sees, including the manager's queue.

Target: fire lateness p99 well under the default misfire_grace (1 s); no missed or skipped fires.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime

from async_task_system import TaskManager
from async_task_system.scheduler.engine import ToolScheduler


def noop() -> None:
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with TaskManager(max_workers=8, functions=[noop], retention=10 * args.schedules) as manager:
        scheduler = ToolScheduler(manager)
        begin = time.time() + 0.5
        end = begin + args.seconds
        ids = [
            scheduler.schedule(
                f"s{i}",
                "interval",
                1.0,
                "noop",
                kind="function",
                start_at=begin + i / args.schedules,
                end_at=end,
            )  # fmt: skip
            for i in range(args.schedules)
        ]
        made = time.time()
        time.sleep(max(0.0, end - time.time()) + 0.2)
        assert scheduler.wait_idle(timeout=30)
        fire, start, other = [], [], 0
        for schedule_id in ids:
            for run in scheduler.history(schedule_id):
                if run.status != "completed":
                    other += 1
                    continue
                fire.append(run.started_at - run.scheduled_for)
                start.append(manager.check(run.task_id).started_at - run.scheduled_for)
        scheduler.shutdown()
    print(f"{args.schedules} interval schedules (1 s each) on one timer for {args.seconds:g} s; made in "
          f"{made - (begin - 0.5):.2f} s")  # fmt: skip
    print(f"fires: {len(fire)} completed, {other} skipped/missed/failed")
    for label, values in (("fire lateness ", fire), ("start lateness", start)):
        ms = [v * 1000 for v in values]
        print(
            f"{label}: p50 {percentile(ms, 0.5):.2f} ms  p99 {percentile(ms, 0.99):.2f} ms  "
            f"max {max(ms):.2f} ms  mean {statistics.fmean(ms):.2f} ms"
        )
    print(f"(at {datetime.now().isoformat(timespec='seconds')})")


if __name__ == "__main__":
    main()
