"""AsyncAgent on ScriptedModel calling remote_execute against a real hub and a real CLI worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from smolagents import CodeAgent

from async_task_system import ScriptedModel, TaskStatus, create_async_agent
from async_task_system.agents.testing import message_text
from async_task_system.remote import RemoteExecuteTool, attach_remote

TOKEN = "agent-test-token"


@pytest.fixture
def worker_process() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


def start_worker(hub_url: str, started: list[subprocess.Popen], name: str = "box") -> None:
    started.append(
        subprocess.Popen(
            [sys.executable, "-m", "async_task_system", "worker", "--hub", hub_url, "--name", name],
            env={**os.environ, "ASYNC_AGENT_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )


def test_coordinating_llm_starts_remote_commands_waits_and_reads_results(worker_process):
    model = ScriptedModel(
        [
            "Thought: run both commands remotely in parallel.\n<code>\n"
            "a = remote_execute('echo alpha', timeout=20)\n"
            "b = remote_execute(\"import os; print(os.getpid() > 0)\", timeout=20, language='python')\n"
            "print(a['status'], b['status'], a['request_id'] is not None)\n"
            "</code>",
            "Thought: wait for both, then read them.\n<code>\n"
            "summary = wait_for_tasks([a['task_id'], b['task_id']], max_wait_time=30)\n"
            "results = get_task_results([a['task_id'], b['task_id']])\n"
            "final_answer([summary['completed'], results[a['task_id']]['stdout'], results[b['task_id']]['stdout']])\n"
            "</code>",
        ]
    )
    with create_async_agent(model=model, verbosity_level=0) as agent:
        hub = attach_remote(agent, token=TOKEN)
        start_worker(hub.url, worker_process)
        assert hub.wait_for_workers(1, timeout=20)
        completed, alpha, python_out = agent.run("Run echo alpha and a python check on the remote box.")
        infos = agent.task_manager.list()
    # Shutting the agent down stopped the hub it attached: its port no longer accepts connections.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", hub.port), timeout=2).close()
    assert alpha == "alpha\n" and python_out == "True\n"
    assert completed == [info.id for info in infos]
    assert all(info.kind.value == "remote" and info.status is TaskStatus.COMPLETED for info in infos)
    # The first step's observation shows the immediate pending_remote answers.
    second_call = "\n".join(message_text(m) for m in model.calls[1])
    assert "pending_remote pending_remote True" in second_call
    system_prompt = message_text(model.calls[0][0])
    assert "remote_execute" in system_prompt and "task_type='remote'" in system_prompt
    assert "Remote machines: remote_execute(" in system_prompt  # the guidance attach_remote adds


def test_sub_agent_blocks_on_remote_execute_and_sees_the_output_in_its_context(worker_process):
    def second_step(messages) -> str:
        # The remote output must be in the sub-agent's own context (its last observation).
        last = message_text(messages[-1])
        marker = "MARKER-7319" if "MARKER-7319" in last else "MISSING"
        return f"<code>\nfinal_answer('ops saw {marker}')\n</code>"

    ops = CodeAgent(
        tools=[RemoteExecuteTool()],
        model=ScriptedModel(
            [
                "Thought: run it remotely.\n<code>\nout = remote_execute('echo MARKER-7319')\nprint(out['stdout'])\n</code>",
                second_step,
            ]
        ),
        name="ops",
        description="Runs operational commands on the remote box.",
        verbosity_level=0,
    )
    coordinator = ScriptedModel(
        [
            "<code>\n"
            "t = submit_task('agent', 'ops', {'task': 'Print the marker on the remote box.'})\n"
            "wait_for_tasks([t], max_wait_time=60)\n"
            "final_answer(get_task_results([t])[t])\n"
            "</code>"
        ]
    )
    with create_async_agent(
        managed_agents=[ops], model=coordinator, max_workers=1, verbosity_level=0
    ) as agent:
        statuses: list[str] = []
        agent.task_manager.add_listener(
            lambda info: info.kind.value == "agent" and statuses.append(info.status.value)
        )
        hub = attach_remote(agent, token=TOKEN)
        try:
            start_worker(hub.url, worker_process)
            assert hub.wait_for_workers(1, timeout=20)
            answer = agent.run("Have ops print the marker.")
        finally:
            hub.stop()
    assert answer == "ops saw MARKER-7319"
    # The sub-agent's task waited remotely (no slot held) and came back to RUNNING to finish its run.
    assert statuses == ["pending", "running", "waiting_remote", "running", "completed"]
