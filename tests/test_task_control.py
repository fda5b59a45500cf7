"""Public task control: suspend / complete / fail / resume, progress, timers, open target kinds."""

from __future__ import annotations

import threading
import time

import pytest

from async_task_system import (
    InvalidTransition,
    Target,
    TaskKind,
    TaskManager,
    TaskStatus,
    get_current_task_id,
    report_progress,
)
from async_task_system.agents.tools import SubmitTaskTool


def _handing_off(manager: TaskManager, handles: list, name: str = "hand_off", **suspend_kwargs) -> None:
    def hand_off() -> str:
        handles.append(manager.suspend(**suspend_kwargs))
        return "ignored: the suspension finishes the task"

    manager.register_function(hand_off, name=name)


def test_suspend_frees_the_slot_and_complete_finishes_the_task():
    handles: list = []
    seen: list[str] = []
    with TaskManager(max_workers=1) as manager:
        _handing_off(manager, handles)
        manager.register_function(lambda: "quick", name="quick")
        task_id = manager.submit("function", "hand_off")
        manager.add_listener(lambda info: seen.append(info.status.value) if info.id == task_id else None)
        other = manager.submit("function", "quick")
        assert manager.wait(other, timeout=5).not_done == [], "the only slot was given back"
        assert manager.check(task_id).status is TaskStatus.WAITING_REMOTE
        assert handles[0].active and handles[0].task_id == task_id
        assert handles[0].complete({"answer": 42}) is True
        assert manager.result(task_id) == {"answer": 42}
        assert handles[0].complete("late") is False and handles[0].fail("x", "late") is False
    assert seen == ["running", "completed"]


def test_fail_goes_through_the_one_retry_rule():
    handles: list = []
    with TaskManager(retry_backoff=0.01) as manager:
        _handing_off(manager, handles)
        task_id = manager.submit("function", "hand_off", retries=1)
        deadline = time.monotonic() + 5
        while not handles:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert handles[0].fail("remote_error", "exit 1") is True  # retryable: attempt 2 starts
        while len(handles) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert manager.check(task_id).attempts == 2
        assert handles[1].fail("remote_error", "exit 1 again") is True  # no retries left
        info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED and info.error.type == "remote_error"
    assert info.error.message == "exit 1 again"


def test_non_retryable_failure_ends_the_task_at_once():
    handles: list = []
    with TaskManager() as manager:
        _handing_off(manager, handles)
        task_id = manager.submit("function", "hand_off", retries=5)
        manager.wait(task_id, timeout=0.2)
        handles[0].fail("cancelled", "the worker refused", retryable=False)
        info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED and info.attempts == 1


def test_resume_lets_the_suspending_code_carry_on_with_its_slot():
    answer: list = []
    with TaskManager(max_workers=1) as manager:

        def blocking() -> str:
            handle = manager.suspend()
            threading.Timer(0.05, handle.resume).start()
            while manager.check(get_current_task_id()).status is not TaskStatus.RUNNING:
                time.sleep(0.005)
            answer.append(manager.get_statistics()["free_slots"])
            return "carried on"

        manager.register_function(blocking)
        task_id = manager.submit("function", "blocking")
        manager.wait(task_id, timeout=5)
        assert manager.result(task_id) == "carried on"
        assert answer == [0], "resume takes the slot back"
        assert manager.get_statistics()["free_slots"] == 1


def test_cancel_and_timeout_abandon_a_suspension_and_tell_its_owner():
    handles: list = []
    abandoned: list = []
    with TaskManager() as manager:
        _handing_off(manager, handles, on_abandon=abandoned.append)
        cancelled = manager.submit("function", "hand_off")
        timed = manager.submit("function", "hand_off", timeout=0.1)
        manager.wait(cancelled, timeout=0.2)
        manager.cancel(cancelled)
        assert manager.wait(timed, timeout=5).not_done == []
        assert sorted(error.type for error in abandoned) == ["cancelled", "timeout"]
        assert not any(handle.active for handle in handles)
        assert manager.check(timed).error.type == "timeout"


def test_suspend_refuses_a_task_that_is_not_running():
    with TaskManager(max_workers=1) as manager:
        release = threading.Event()
        manager.register_function(lambda: release.wait(5), name="hold")
        manager.submit("function", "hold")
        queued = manager.submit("function", "hold")
        with pytest.raises(InvalidTransition, match="only a running task"):
            manager.suspend(queued)
        with pytest.raises(InvalidTransition, match="needs a task id"):
            manager.suspend()
        release.set()


def test_progress_is_visible_to_check_list_listeners_and_the_tools():
    seen: list = []
    step = threading.Event()
    go_on = threading.Event()

    def crunch() -> str:
        report_progress(0.5, "half way")
        step.set()
        go_on.wait(5)
        return "done"

    with TaskManager(functions=[crunch]) as manager:
        manager.add_listener(lambda info: seen.append((info.progress, info.progress_message)))
        task_id = manager.submit("function", "crunch")
        assert step.wait(5)
        info = manager.check(task_id)
        assert (info.progress, info.progress_message) == (0.5, "half way")
        assert manager.list("running")[0].to_dict()["progress"] == 0.5
        with pytest.raises(ValueError, match="from 0 to 1"):
            manager.report_progress(task_id, 1.5)
        go_on.set()
        manager.wait(task_id, timeout=5)
    assert (0.5, "half way") in seen
    assert report_progress(0.1) is False  # outside a task


def test_call_later_fires_on_the_shared_timer_and_can_be_cancelled():
    fired = threading.Event()
    wrong: list[str] = []
    with TaskManager() as manager:
        dropped = manager.call_later(0.01, lambda: wrong.append("a cancelled timer fired"))
        kept = manager.call_later(0.02, fired.set)
        dropped.cancel()
        assert fired.wait(2) and kept.fired and not kept.cancelled
        assert dropped.cancelled and not dropped.fired
    assert wrong == []


def test_a_subsystem_registers_a_new_kind_without_editing_the_core():
    kind = TaskKind.register("scheduled_run", "a run of a schedule", aliases=("schedule",))
    assert (
        TaskKind.parse("schedule") is kind and TaskKind("scheduled_run") is kind and kind == "scheduled_run"
    )
    handles: list = []
    with TaskManager() as manager:

        def start(arguments: dict) -> None:
            handles.append((arguments["label"], manager.suspend()))

        manager.register_target(
            Target(kind=kind, name="nightly", description="a nightly run",
                   inputs={"label": {"type": "string", "description": "what to run"}},
                   call=start, runs_inline=True)
        )  # fmt: skip
        description = SubmitTaskTool(manager).description
        assert "task_type='scheduled_run'" in description and "nightly" in description
        task_id = manager.submit("schedule", "nightly", {"label": "backup"})
        assert handles and handles[0][0] == "backup", "an inline target starts in the submitting thread"
        assert manager.check(task_id).status is TaskStatus.WAITING_REMOTE
        handles[0][1].complete("backed up")
        assert manager.result(task_id) == "backed up"
        assert manager.check(task_id).kind is kind


def test_resume_later_waits_for_a_slot_then_continues_and_may_suspend_again():
    handles: list = []
    seen: list[str] = []
    release = threading.Event()
    with TaskManager(max_workers=1) as manager:
        _handing_off(manager, handles)
        manager.register_function(lambda: release.wait(5), name="hold")
        task_id = manager.submit("function", "hand_off")
        manager.add_listener(lambda info: seen.append(info.status.value) if info.id == task_id else None)
        manager.wait(task_id, timeout=0.2)
        holder = manager.submit("function", "hold")  # takes the only slot

        def second_turn() -> str:
            handles.append(manager.suspend())  # suspends again from the continuation
            return "ignored"

        assert handles[0].resume_later(second_turn) is True
        assert handles[0].resume_later(second_turn) is False, "a suspension is settled once"
        time.sleep(0.1)
        assert manager.check(task_id).status is TaskStatus.WAITING_REMOTE, "it waits for a free slot"
        release.set()
        manager.wait(holder, timeout=5)
        deadline = time.monotonic() + 5
        while len(handles) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert handles[1].resume_later(lambda: "answer built on two turns") is True
        manager.wait(task_id, timeout=5)
        info = manager.check(task_id)
    assert info.status is TaskStatus.COMPLETED and manager.result(task_id) == "answer built on two turns"
    assert info.attempts == 1, "continuations are the same attempt, not retries"
    assert seen == ["running", "waiting_remote", "running", "completed"]  # listener added while it waited


def test_cancel_while_queued_to_resume_drops_the_continuation():
    handles: list = []
    ran: list[str] = []
    release = threading.Event()
    with TaskManager(max_workers=1) as manager:
        _handing_off(manager, handles)
        manager.register_function(lambda: release.wait(5), name="hold")
        task_id = manager.submit("function", "hand_off")
        manager.wait(task_id, timeout=0.2)
        manager.submit("function", "hold")
        handles[0].resume_later(lambda: ran.append("continued"))
        assert manager.cancel(task_id) is True
        release.set()
    assert ran == [] and manager.check(task_id).status is TaskStatus.CANCELLED


def test_a_continuation_starts_only_after_the_suspending_code_has_returned():
    order: list[str] = []
    with TaskManager(max_workers=2) as manager:

        def suspends_then_lingers() -> None:
            handle = manager.suspend()
            handle.resume_later(lambda: order.append("continuation") or "done")  # answered at once
            time.sleep(0.2)  # still returning (as an agent run unwinding after its step ended)
            order.append("first turn returned")

        manager.register_function(suspends_then_lingers)
        task_id = manager.submit("function", "suspends_then_lingers")
        manager.wait(task_id, timeout=5)
        assert manager.result(task_id) == "done"
    assert order == ["first turn returned", "continuation"]


def test_the_sleep_tool_inside_a_task_ends_when_the_task_is_cancelled():
    from async_task_system.agents.tools import SleepTool

    with TaskManager() as manager:
        sleep = SleepTool(manager)
        answers: list[str] = []
        manager.register_function(lambda: answers.append(sleep(seconds=30)), name="nap")
        task_id = manager.submit("function", "nap")
        time.sleep(0.1)
        started = time.monotonic()
        manager.cancel(task_id)
        deadline = time.monotonic() + 5
        while not answers:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert time.monotonic() - started < 1.0
        assert answers[0].startswith("Sleep interrupted")
        assert manager.wait_cancelled(task_id, 0) is True
