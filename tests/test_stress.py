"""Many submitting threads, random failures, cancels and timeouts: every task ends exactly once."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict

from async_task_system import TaskManager, TaskStatus

TERMINAL = {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}


def work(seconds: float, fail: bool) -> str:
    time.sleep(seconds)
    if fail:
        raise RuntimeError("random failure")
    return "ok"


def test_every_task_ends_in_exactly_one_terminal_state():
    manager = TaskManager(max_workers=8, functions=[work], retry_backoff=0.001)
    events: dict[str, list[TaskStatus]] = defaultdict(list)
    events_lock = threading.Lock()

    def record(info):
        with events_lock:
            events[info.id].append(info.status)

    manager.add_listener(record)
    submitted: list[str] = []
    submitted_lock = threading.Lock()
    errors: list[BaseException] = []

    def submitter(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                task_id = manager.submit(
                    "function",
                    "work",
                    {"seconds": rng.choice([0, 0.001, 0.01, 0.05]), "fail": rng.random() < 0.2},
                    timeout=rng.choice([None, None, 0.02]),
                    retries=rng.choice([0, 0, 1]),
                )
                with submitted_lock:
                    submitted.append(task_id)
                if rng.random() < 0.15:
                    manager.cancel(rng.choice(submitted))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(submitted) == len(set(submitted)) == 360
    result = manager.wait(submitted, timeout=60)
    assert result.not_done == []
    manager.shutdown(wait=True)

    infos = {task_id: manager.check(task_id) for task_id in submitted}
    statuses = Counter(info.status for info in infos.values())
    assert set(statuses) <= TERMINAL
    assert sum(statuses.values()) == 360

    # Listeners saw exactly one terminal transition per task, and it was the last one.
    for task_id in submitted:
        seen = events[task_id]
        assert sum(status in TERMINAL for status in seen) == 1, (task_id, seen)
        assert seen[-1] is infos[task_id].status
        assert seen[0] is TaskStatus.PENDING

    stats = manager.get_statistics()
    assert stats["total"] == 360
    assert stats["pending"] == stats["running"] == stats["waiting_remote"] == 0
    assert stats["completed"] + stats["failed"] + stats["cancelled"] == 360
    assert stats["completed"] == statuses[TaskStatus.COMPLETED]
    assert stats["failed"] == statuses[TaskStatus.FAILED]
    assert stats["cancelled"] == statuses[TaskStatus.CANCELLED]
    # The mix really exercised every ending.
    assert statuses[TaskStatus.COMPLETED] and statuses[TaskStatus.FAILED] and statuses[TaskStatus.CANCELLED]
    assert any(info.error and info.error.type == "timeout" for info in infos.values())
    assert any(info.attempts == 2 for info in infos.values())
