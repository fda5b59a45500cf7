"""``remote_execute`` with no hub attached fails at once (``no_hub``) saying how to attach one,
instead of waiting for its timeout; seed 000's hand delivery (``manual_delivery``, set by a
``RemoteExecutionHandler``) still waits for the answer."""

from __future__ import annotations

import pytest

from async_task_system import TaskManager, TaskStatus
from async_task_system.remote import RemoteExecuteTool, RemoteExecutionHandler
from async_task_system.remote.bridge import RemoteUnavailable


def test_a_remote_task_with_no_hub_fails_at_once_saying_how_to_attach_one():
    with TaskManager() as manager:
        manager.remote_manager.default_timeout = 3600.0  # a wait for the timeout would never end here
        task_id = manager.submit("remote", "remote_execute", {"command": "uname -a"})
        assert manager.wait(task_id, timeout=60).not_done == []
        info = manager.check(task_id)
        assert info.status is TaskStatus.FAILED
        assert "no remote hub is attached" in str(info.error) and "attach_remote(" in str(info.error)
        assert manager.remote_manager.pending() == []  # nothing was registered


def test_the_tool_raises_no_hub_before_sending_anything():
    with TaskManager() as manager:
        with pytest.raises(RemoteUnavailable) as caught:
            RemoteExecuteTool(manager, wait=True).forward("uname -a")
        assert caught.value.error_type == "no_hub"
        assert "async-agent worker --hub" in str(caught.value) and "manual_delivery" in str(caught.value)
        with pytest.raises(RemoteUnavailable, match="no_hub"):  # as a background task: no task made
            RemoteExecuteTool(manager, wait=False).forward("uname -a")
        assert manager.get_statistics()["total"] == 0


def test_a_remote_execution_handler_turns_on_hand_delivery():
    with TaskManager() as manager:
        handler = RemoteExecutionHandler(manager)
        assert manager.remote_manager.manual_delivery is True
        task_id = manager.submit("remote", "remote_execute", {"command": "uname"})
        request_id = None
        while request_id is None:  # the task suspends as soon as it runs
            manager.wait(task_id, timeout=0.05)
            request_id = manager.remote_manager.request_for_task(task_id)
        message = {"request_id": request_id, "success": True, "result": {"stdout": "Linux\n"}}
        assert handler.handle_message(message) is True
        assert manager.wait(task_id, timeout=30).not_done == []
        assert manager.result(task_id) == {"stdout": "Linux\n"}
