"""AsyncAgent on a real CodeAgent driven by ScriptedModel; managed agents in the background."""

from __future__ import annotations

import re
import threading
import time

import pytest
from smolagents import CodeAgent, tool

from async_task_system import (
    ASYNC_GUIDANCE,
    ScriptedModel,
    ScriptExhaustedError,
    TaskStatus,
    create_async_agent,
    get_current_task_id,
)
from async_task_system.agents.testing import message_text


@tool
def analyze_dataset(dataset: str) -> dict:
    """Analyze one dataset (takes a second).

    Args:
        dataset: the dataset name
    """
    time.sleep(1.0)
    return {"dataset": dataset, "rows": len(dataset) * 10}


SEED_004_STEPS = [
    "Thought: three independent analyses, submit them all.\n<code>\n"
    'task1 = submit_task("tool", "analyze_dataset", {"dataset": "sales"})\n'
    'task2 = submit_task("tool", "analyze_dataset", {"dataset": "market"})\n'
    'task3 = submit_task("tool", "analyze_dataset", {"dataset": "operations"})\n'
    "</code>",
    "Thought: wait for all three, then combine.\n<code>\n"
    "wait_for_tasks([task1, task2, task3], max_wait_time=30)\n"
    "results = get_task_results([task1, task2, task3])\n"
    "final_answer({name: results[t]['rows'] for name, t in "
    "[('sales', task1), ('market', task2), ('operations', task3)]})\n"
    "</code>",
]


def test_codeagent_runs_seed_004_calls_and_tasks_overlap():
    model = ScriptedModel(SEED_004_STEPS)
    with create_async_agent(tools=[analyze_dataset], model=model, max_workers=3, verbosity_level=0) as agent:
        started = time.monotonic()
        answer = agent.run("Analyse sales, market and operations for Q1.")
        elapsed = time.monotonic() - started
        infos = agent.task_manager.list()
    assert answer == {"sales": 50, "market": 60, "operations": 100}
    assert [i.status for i in infos] == [TaskStatus.COMPLETED] * 3
    # All three ran at the same time: each started before any finished.
    assert max(i.started_at for i in infos) < min(i.finished_at for i in infos)
    assert elapsed < 2.5, f"three 1 s tasks took {elapsed:.2f} s: they did not run in parallel"
    # The model saw the guidance and the async tools in its system prompt.
    system_prompt = message_text(model.calls[0][0])
    assert "submit_task" in system_prompt and "wait_for_tasks" in system_prompt
    assert ASYNC_GUIDANCE.splitlines()[0] in system_prompt


def test_user_tools_stay_directly_callable():
    model = ScriptedModel(['<code>\nfinal_answer(analyze_dataset(dataset="abc"))\n</code>'])
    with create_async_agent(tools=[analyze_dataset], model=model, verbosity_level=0) as agent:
        assert agent.run("direct call") == {"dataset": "abc", "rows": 30}
        assert agent.task_manager.get_statistics()["total"] == 0


def test_validation_error_reaches_the_llm_as_an_observation():
    model = ScriptedModel(
        [
            '<code>\nt = submit_task("tool", "analyse_dataset", {"dataset": "x"})\n</code>',
            '<code>\nfinal_answer("done")\n</code>',
        ]
    )
    with create_async_agent(tools=[analyze_dataset], model=model, verbosity_level=0) as agent:
        assert agent.run("typo") == "done"
    second_call = "\n".join(message_text(m) for m in model.calls[1])
    assert "Unknown tool 'analyse_dataset'" in second_call and "analyze_dataset" in second_call


def _echo_agent(name: str, seen_instances: list[int], barrier: threading.Barrier) -> CodeAgent:
    """A managed CodeAgent whose scripted answer is computed from the task it was given."""

    def answer(messages) -> str:
        text = "\n".join(message_text(m) for m in messages)
        topic = re.findall(r"TOPIC=(\w+)", text)[-1]
        return f'<code>\nnote = wait_here()\nfinal_answer("report on {topic} " + note)\n</code>'

    @tool
    def wait_here() -> str:
        """Waits until both background runs are inside their step, proving they overlap."""
        barrier.wait(timeout=10)
        return f"from {get_current_task_id()}"

    def remember(step, agent=None) -> None:
        seen_instances.append(id(agent))

    return CodeAgent(
        tools=[wait_here],
        model=ScriptedModel([answer], repeat_last=True),
        name=name,
        description="Writes a short report on a topic.",
        verbosity_level=0,
        step_callbacks=[remember],
    )


def test_managed_agent_submitted_twice_runs_on_two_instances_at_once():
    seen_instances: list[int] = []
    barrier = threading.Barrier(2)
    researcher = _echo_agent("researcher", seen_instances, barrier)
    coordinator = ScriptedModel(
        [
            "<code>\n"
            'a = submit_task("agent", "researcher", {"task": "Research TOPIC=apples"})\n'
            'b = submit_task("agent", "researcher", {"task": "Research TOPIC=pears"})\n'
            "wait_for_tasks([a, b], max_wait_time=30)\n"
            "r = get_task_results([a, b])\n"
            "final_answer([r[a], r[b], a, b])\n"
            "</code>"
        ]
    )
    with create_async_agent(managed_agents=[researcher], model=coordinator, verbosity_level=0) as agent:
        first, second, id_a, id_b = agent.run("Research apples and pears")
        infos = {i.id: i for i in agent.task_manager.list()}
    assert first == f"report on apples from {id_a}"
    assert second == f"report on pears from {id_b}"
    assert infos[id_a].status is infos[id_b].status is TaskStatus.COMPLETED
    # Two different instances ran, neither of them the registered one, which stayed untouched.
    assert len(set(seen_instances)) == 2 and id(researcher) not in seen_instances
    assert researcher.memory.steps == []


def test_code_timeout_is_ours_not_smolagents_30_seconds():
    model = ScriptedModel(
        [
            "<code>\nimport time\ntime.sleep(1.5)\n</code>",
            '<code>\nfinal_answer("recovered")\n</code>',
        ]
    )
    with create_async_agent(model=model, code_timeout=0.5, max_wait_cap=0.2, verbosity_level=0) as agent:
        started = time.monotonic()
        assert agent.run("sleep too long") == "recovered"
        elapsed = time.monotonic() - started
    observation = "\n".join(message_text(m) for m in model.calls[1])
    assert "maximum execution time of 0.5 seconds" in observation
    assert elapsed < 1.4, "the timed-out step must not be waited for"
    default = create_async_agent(model=ScriptedModel([]), verbosity_level=0)
    assert default.agent.python_executor.code_timeout_seconds == 600
    default.shutdown()


def test_wait_cap_must_fit_in_code_timeout():
    with pytest.raises(ValueError, match="max_wait_cap"):
        create_async_agent(model=ScriptedModel([]), code_timeout=60, max_wait_cap=120)


def test_no_model_configured_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in ("API_KEY", "BASE_URL", "MODEL_ID"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="No model configured.*ScriptedModel"):
        create_async_agent(tools=[analyze_dataset])


def test_run_with_async_guidance_adds_the_reminder():
    model = ScriptedModel(['<code>\nfinal_answer("ok")\n</code>'])
    with create_async_agent(
        model=model, verbosity_level=0, instructions="You are a project manager."
    ) as agent:
        assert agent.run_with_async_guidance("do three things") == "ok"
    system_prompt = message_text(model.calls[0][0])
    assert "You are a project manager." in system_prompt
    task_message = "\n".join(message_text(m) for m in model.calls[0][1:])
    assert "submit them all in parallel" in task_message and "do three things" in task_message


def test_shutdown_cancels_what_is_still_queued():
    model = ScriptedModel(
        [
            "<code>\n"
            'ids = [submit_task("tool", "analyze_dataset", {"dataset": str(i)}) for i in range(4)]\n'
            "final_answer(ids)\n"
            "</code>"
        ]
    )
    agent = create_async_agent(tools=[analyze_dataset], model=model, max_workers=1, verbosity_level=0)
    ids = agent.run("submit and leave")
    agent.shutdown(wait=True)
    statuses = [agent.task_manager.check(i).status for i in ids]
    assert statuses[0] is TaskStatus.COMPLETED
    assert statuses[1:] == [TaskStatus.CANCELLED] * 3


# ---------------------------------------------------------------- ScriptedModel


def test_scripted_model_replays_honours_stops_and_reports_usage():
    model = ScriptedModel(["Thought: x\n<code>\nprint(1)\n</code>\nObservation: invented", "second"])
    message = model.generate([{"role": "user", "content": "hello there"}], stop_sequences=["</code>"])
    assert message.content == "Thought: x\n<code>\nprint(1)\n"
    assert message.token_usage.input_tokens > 0 and message.token_usage.output_tokens > 0
    assert model.generate([{"role": "user", "content": "again"}]).content == "second"
    assert [message_text(call[0]) for call in model.calls] == ["hello there", "again"]
    with pytest.raises(ScriptExhaustedError, match="has 2 response\\(s\\) but was called a 3th time.*'more'"):
        model.generate([{"role": "user", "content": "more"}])


def test_scripted_model_streams_the_same_text():
    model = ScriptedModel(["one two  three"])
    deltas = list(model.generate_stream([{"role": "user", "content": "hi"}]))
    assert "".join(d.content for d in deltas) == "one two  three"
    assert deltas[-1].token_usage is not None and len(deltas) == 3


def test_agent_factory_builds_one_instance_per_run():
    built: list[CodeAgent] = []

    def factory() -> CodeAgent:
        agent = CodeAgent(
            tools=[],
            model=ScriptedModel(['<code>\nfinal_answer("fresh")\n</code>']),
            name="writer",
            description="writes",
            verbosity_level=0,
        )
        built.append(agent)
        return agent

    from async_task_system import TaskManager

    with TaskManager(max_workers=2) as manager:
        manager.register_agent(factory, name="writer", description="Writes things.")
        ids = [manager.submit("agent", "writer", {"task": f"write {i}"}) for i in range(2)]
        manager.wait(ids, timeout=10)
        assert manager.results(ids) == {ids[0]: "fresh", ids[1]: "fresh"}
    assert len(built) == 2 and built[0] is not built[1]
    with pytest.raises(ValueError, match="needs a name"):
        TaskManager().register_agent(factory)


def test_get_task_manager_inside_the_agents_own_code():
    from async_task_system import get_task_manager

    @tool
    def which_manager() -> str:
        """Reports whether the active task manager is visible here."""
        return "visible" if get_task_manager() is not None else "missing"

    model = ScriptedModel(["<code>\nfinal_answer(which_manager())\n</code>"])
    with create_async_agent(tools=[which_manager], model=model, verbosity_level=0) as agent:
        assert agent.run("which manager?") == "visible"
    assert get_task_manager() is None


def test_tools_is_the_dict_of_what_the_llm_gets_as_on_smolagents_agents():
    model = ScriptedModel(
        ["<code>\nfinal_answer(sorted(n for n in ['submit_task', 'analyze_dataset']))\n</code>"]
    )
    with create_async_agent(tools=[analyze_dataset], model=model, verbosity_level=0) as agent:
        tools = agent.tools
        assert tools is agent.agent.tools  # the CodeAgent's own dict, as smolagents exposes it
        assert tools["analyze_dataset"] is analyze_dataset
        for name in (
            "submit_task",
            "wait_for_tasks",
            "get_task_results",
            "check_task",
            "cancel_task",
            "final_answer",
        ):
            assert name in tools and tools[name].name == name
        system_prompt_tools = set(tools)
        agent.run("list")
        prompt = message_text(model.calls[0][0])
        assert all(name in prompt for name in system_prompt_tools)  # each one was shown to the LLM


def test_arun_runs_in_a_running_event_loop_and_keeps_the_callers_contextvars():
    import asyncio
    import contextvars

    request = contextvars.ContextVar("request", default="unset")

    @tool
    def whose_request() -> str:
        """Returns the request the caller set in its context."""
        time.sleep(0.2)
        return request.get()

    steps = [
        "Thought: run it in the background.\n<code>\n"
        't = submit_task("tool", "whose_request", {})\n'
        "wait_for_tasks([t], max_wait_time=10)\n"
        "final_answer(get_task_results([t])[t])\n"
        "</code>"
    ]

    async def main() -> tuple[str, int]:
        request.set("req-42")
        ticks = 0

        async def tick() -> None:  # runs only while the loop is free
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with create_async_agent(
            tools=[whose_request], model=ScriptedModel(steps), verbosity_level=0
        ) as agent:
            answer = await agent.arun("Whose request is this?")
        ticker.cancel()
        return answer, ticks

    answer, ticks = asyncio.run(main())
    assert answer == "req-42"
    assert ticks > 0, "the event loop was blocked during arun"
