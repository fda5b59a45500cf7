"""AsyncAgent: a smolagents ``CodeAgent`` that coordinates background tasks.

``create_async_agent`` builds a ``CodeAgent`` (composition, not subclassing) with the user's
tools and managed agents, the async task tools bound to a fresh :class:`TaskManager`, and a
guidance prompt that teaches decompose, submit in parallel, wait, collect, combine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from typing import Any

from smolagents import CodeAgent, Tool

from ..core.agent_runtime import install_context_executor
from ..core.manager import TaskManager, active_manager
from .tools import DEFAULT_MAX_WAIT_SECONDS, create_task_tools

__all__ = ["AsyncAgent", "ChatAgent", "create_async_agent", "ASYNC_GUIDANCE", "DEFAULT_CODE_TIMEOUT_SECONDS"]

DEFAULT_CODE_TIMEOUT_SECONDS = 600.0
"""How long one code step of the coordinating agent may run; above the wait cap so waits fit."""

ASYNC_GUIDANCE = """\
You coordinate background tasks. Tools, managed agents and functions can run in parallel through these tools:
- submit_task(task_type, name, arguments, after=None) -> task_id: starts work in the background and returns at once.
  task_type is 'tool', 'agent' or 'function'; arguments is a dict of keyword arguments (agents take {'task': '...'}).
  A value {'$result': task_id} in arguments is replaced by that task's result when this one starts: the task waits for it.
- wait_for_tasks(task_ids, max_wait_time=60) -> summary dict: returns as soon as all the tasks have finished.
- get_task_results(task_ids) -> {task_id: result}: a failed task maps to a string starting with 'ERROR:'.
- check_task(task_id), list_tasks(status=None), cancel_task(task_id), sleep(seconds, reason).

Work in this order:
1. Decompose the request into independent pieces of work.
2. Submit ALL independent pieces first, in one code block, collecting their ids. Do not wait between submits.
3. Wait once for all of them with wait_for_tasks.
4. Collect the results with get_task_results and check for 'ERROR:' values; resubmit a failed piece once if it makes sense.
5. Combine the results into the final answer.
Only call a tool directly (not through submit_task) when there is a single quick piece of work.

Example:
ids = [submit_task('tool', 'analyze_dataset', {'dataset': name}) for name in ['a', 'b', 'c']]
summary = wait_for_tasks(ids, max_wait_time=60)
results = get_task_results(ids)
final_answer({task_id: results[task_id] for task_id in ids})

A pipeline of stages is one code block: each stage refers to the previous stage's task, no waiting in between:
last = []
for name in ['a', 'b', 'c']:
    cleaned = submit_task('tool', 'clean', {'file': name})
    analyzed = submit_task('tool', 'analyze', {'data': {'$result': cleaned}})
    last.append(submit_task('tool', 'visualize', {'analysis': {'$result': analyzed}}))
wait_for_tasks(last, max_wait_time=120)
results = get_task_results(last)
"""

_RUN_GUIDANCE = (
    "Before acting, list the independent sub-tasks of this request; submit them all in parallel with "
    "submit_task, wait for them together with wait_for_tasks, then combine the results.\n\nRequest:\n"
)


class AsyncAgent:
    """A ``CodeAgent`` plus the :class:`TaskManager` its async tools are bound to.

    Use :meth:`run` (or :meth:`run_with_async_guidance`), then :meth:`shutdown`, or use it as a
    context manager. ``.agent`` is the wrapped ``CodeAgent``; ``.task_manager`` the manager.
    """

    def __init__(self, agent: CodeAgent, task_manager: TaskManager, owns_task_manager: bool = True) -> None:
        self.agent = agent
        self.task_manager = task_manager
        self._owns_task_manager = owns_task_manager

    @property
    def tools(self) -> dict[str, Tool]:
        """The tools the LLM gets, by name, as in smolagents' agents: yours, the task tools
        (``submit_task``, ``wait_for_tasks``, ...), ``final_answer`` and any added later (e.g.
        ``remote_execute`` by ``attach_remote``). It is the wrapped ``CodeAgent``'s own dict."""
        return self.agent.tools

    @property
    def owns_task_manager(self) -> bool:
        """True when this agent created its manager: every task in it was started by this agent."""
        return self._owns_task_manager

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        # Lets get_task_manager() find this manager in the agent's code and tools.
        token = active_manager.set(self.task_manager)
        try:
            yield
        finally:
            active_manager.reset(token)

    def run(self, task: str, **kwargs: Any) -> Any:
        """Run the agent on ``task``; keyword arguments go to ``CodeAgent.run``."""
        with self._active():
            return self.agent.run(task, **kwargs)

    def run_with_async_guidance(self, task: str, **kwargs: Any) -> Any:
        """Run ``task`` with an explicit reminder to fan independent work out in parallel."""
        return self.run(_RUN_GUIDANCE + task, **kwargs)

    async def arun(self, task: str, *, guidance: bool = True, **kwargs: Any) -> Any:
        """``await agent.arun(task)``: :meth:`run_with_async_guidance` (or :meth:`run` with
        ``guidance=False``) in a worker thread, so a running event loop (Jupyter, an async app) stays
        free; ``asyncio.to_thread`` carries the caller's contextvars (tracing spans) into the run."""
        return await asyncio.to_thread(self.run_with_async_guidance if guidance else self.run, task, **kwargs)

    def shutdown(self, wait: bool = True, cancel_pending: bool = True) -> None:
        """Stop the task manager (if this agent created it) and release the agent's resources."""
        if self._owns_task_manager:
            self.task_manager.shutdown(wait=wait, cancel_pending=cancel_pending)
        with contextlib.suppress(Exception):
            self.agent.cleanup()

    def __enter__(self) -> AsyncAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<AsyncAgent model={getattr(self.agent.model, 'model_id', None)!r} {self.task_manager!r}>"


def create_async_agent(
    tools: Sequence[Any] | None = None,
    managed_agents: Sequence[Any] | None = None,
    model: Any | None = None,
    max_workers: int = 3,
    instructions: str | None = None,
    *,
    task_manager: TaskManager | None = None,
    code_timeout: float | None = DEFAULT_CODE_TIMEOUT_SECONDS,
    max_wait_cap: float = DEFAULT_MAX_WAIT_SECONDS,
    executor: Executor | None = None,
    **codeagent_kwargs: Any,
) -> AsyncAgent:
    """Build an :class:`AsyncAgent`.

    Args:
        tools: smolagents tools; each is registered for background runs and stays directly callable.
        managed_agents: smolagents agents (with ``name`` and ``description``); background runs use copies.
        model: a smolagents ``Model``. ``None`` reads API_KEY, BASE_URL and MODEL_ID from ``.env``.
        max_workers: how many background tasks run at once.
        instructions: extra system instructions, added after the async guidance.
        task_manager: use this manager instead of creating one (it is then not shut down by the agent).
        code_timeout: seconds one code step may run (smolagents' own default of 30 s would cut
            ``wait_for_tasks`` short); ``executor_kwargs={"timeout_seconds": ...}`` also sets it.
        max_wait_cap: upper bound for one ``wait_for_tasks`` or ``sleep`` call.
        executor: where the created manager runs tool, function and agent tasks (default: its own
            thread pool), e.g. :func:`~async_task_system.scaleout.dask.dask_executor` for a Dask cluster.
            Not shut down by the agent; cannot be combined with ``task_manager``.
        **codeagent_kwargs: passed to ``CodeAgent`` (``max_steps``, ``verbosity_level``, ...).
    """
    if model is None:
        from .config import model_from_env

        model = model_from_env()
        if model is None:
            raise ValueError(
                "No model configured: pass model=... (any smolagents Model), or set API_KEY, BASE_URL and MODEL_ID "
                "in .env. For offline runs and tests use async_task_system.agents.testing.ScriptedModel."
            )
    tools = list(tools or [])
    managed_agents = list(managed_agents or [])
    if task_manager is not None and executor is not None:
        raise ValueError("pass executor= or task_manager=, not both: the executor belongs to the manager")
    owns_manager = task_manager is None
    manager = task_manager or TaskManager(max_workers=max_workers, executor=executor)
    for tool in tools:
        manager.register_tool(tool)
    for sub_agent in managed_agents:
        manager.register_agent(sub_agent)

    executor_kwargs = dict(codeagent_kwargs.pop("executor_kwargs", None) or {})
    if "timeout_seconds" in executor_kwargs:  # kept in executor_kwargs: agent.executor_kwargs, to_dict()
        code_timeout = executor_kwargs["timeout_seconds"]
    if code_timeout is not None and max_wait_cap >= code_timeout:
        raise ValueError(
            f"max_wait_cap ({max_wait_cap:g} s) must be below code_timeout ({code_timeout:g} s), "
            "or wait_for_tasks would be cut off by the code timeout"
        )
    full_instructions = ASYNC_GUIDANCE if not instructions else f"{ASYNC_GUIDANCE}\n{instructions}"
    agent = CodeAgent(
        tools=[*tools, *create_task_tools(manager, max_wait_cap)],
        model=model,
        managed_agents=managed_agents or None,
        instructions=full_instructions,
        executor_kwargs=executor_kwargs or None,
        **codeagent_kwargs,
    )
    install_context_executor(agent, code_timeout)
    manager.extension("conversations").default_model = model  # create_task's conversations use it too
    return AsyncAgent(agent, manager, owns_task_manager=owns_manager)


class ChatAgent(AsyncAgent):
    """Seed 000's ``ChatAgent``: an :class:`AsyncAgent` whose ``task_manager.create_task(prompt, tools)``
    runs agent conversations as background tasks that wait for remote work without holding a thread.

    ``ChatAgent(tools=[...], model=...)`` takes :func:`create_async_agent`'s arguments; with no model
    it reads ``.env``.
    """

    def __init__(self, tools: Sequence[Any] | None = None, model: Any | None = None, **kwargs: Any) -> None:
        built = create_async_agent(tools=tools, model=model, **kwargs)
        super().__init__(built.agent, built.task_manager, owns_task_manager=built._owns_task_manager)
