"""How we run smolagents agents safely from background threads.

Three facts about smolagents shape this module:

* ``LocalPythonExecutor`` runs each code step in a fresh thread of its own (its timeout
  decorator), and that thread starts with an empty ``contextvars`` context. Whatever the step
  calls (``submit_task``, ``get_current_task_id()``, an OpenTelemetry span) would lose the
  caller's context. :class:`ContextPreservingExecutor` runs the step in a thread that carries
  the caller's context.
* On timeout smolagents waits for the step to end before raising (a step stuck in a long wait
  blocks the agent until it ends). We return at the deadline and **stop** the step instead:
  every step thread carries a stop token, checked before and after each AST node the
  interpreter evaluates and before each tool or managed-agent call. A stopped step ends at its
  next interpreter operation; a call already running in C code (``time.sleep``, a blocking
  socket read) cannot be interrupted and runs to its end, after which the step stops without
  using its result. Ctrl-C stops the step the same way and reaches the caller as
  ``KeyboardInterrupt``.
* Agent instances are not thread-safe (smolagents issue #1781): memory, monitor, step counter
  and executor state are per instance. :func:`copy_agent` makes an independent instance that
  shares only the immutable or thread-safe parts (model, tools, prompt templates).
"""

from __future__ import annotations

import contextvars
import copy
import threading
from typing import Any

from smolagents import local_python_executor as _lpe
from smolagents.agents import MultiStepAgent
from smolagents.local_python_executor import CodeOutput, ExecutionTimeoutError, LocalPythonExecutor
from smolagents.tools import Tool

__all__ = ["ContextPreservingExecutor", "StepStopped", "install_context_executor", "copy_agent"]

STOP_GRACE_SECONDS = 0.25
"""After a timeout, how long the caller waits for the stopped step's thread to end before returning."""

INTERRUPT_GRACE_SECONDS = 2.0
"""After Ctrl-C, how long the caller waits for the stopped step's thread to end before re-raising."""

_KEEP = object()  # install_context_executor: keep the executor's own timeout


class StepStopped(BaseException):
    """Raised inside a stopped code step to end it.

    A ``BaseException`` (like smolagents' ``FinalAnswerException``) so that neither the
    interpreted code's ``try/except Exception`` nor smolagents' error handling can swallow it.
    """


class _StopToken:
    """The stop flag of one code step; stopping a step stops the steps nested in it."""

    __slots__ = ("_lock", "_children", "done", "finished", "stopped", "reason", "parent")

    def __init__(self, parent: _StopToken | None) -> None:
        self._lock = threading.Lock()
        self._children: set[_StopToken] = set()
        self.done = threading.Event()  # set when the step finished or was stopped
        self.finished = False
        self.stopped = False
        self.reason = ""
        self.parent = parent
        if parent is not None:
            parent._add_child(self)

    def _add_child(self, child: _StopToken) -> None:
        with self._lock:
            if not self.stopped:
                self._children.add(child)
                return
        child.stop(self.reason)

    def stop(self, reason: str) -> bool:
        """Stop the step unless it already finished; returns whether it is stopped now."""
        with self._lock:
            if self.finished:
                return False
            if not self.stopped:
                self.stopped = True
                self.reason = reason
            children, self._children = list(self._children), set()
        for child in children:
            child.stop(reason)
        self.done.set()
        return True

    def finish(self) -> None:
        """Called by the step's thread when it ends; no effect once the step was stopped."""
        with self._lock:
            if not self.stopped:
                self.finished = True
        if self.parent is not None:
            with self.parent._lock:
                self.parent._children.discard(self)
        self.done.set()

    def check(self) -> None:
        if self.stopped:
            raise StepStopped(f"code step stopped ({self.reason})")


_thread_state = threading.local()


def _current_token() -> _StopToken | None:
    return getattr(_thread_state, "token", None)


def _check_current_step() -> None:
    token = getattr(_thread_state, "token", None)
    if token is not None and token.stopped:
        raise StepStopped(f"code step stopped ({token.reason})")


_patch_lock = threading.Lock()


def _install_stop_checks() -> None:
    """Make smolagents' ``evaluate_ast`` check the current step's stop token (once per process).

    The interpreter's functions call ``evaluate_ast`` through the module global for every AST
    node, so one wrapper there sees every node: it checks on entry (nothing new starts once the
    step is stopped) and on exit (a result computed after the stop, e.g. by a call that was
    blocked in C, is never used). Threads that are not code steps of ours carry no token, so the
    wrapper changes nothing for them.
    """
    with _patch_lock:
        current = _lpe.evaluate_ast
        if getattr(current, "_async_task_system_stoppable", False):
            return
        original = current

        def evaluate_ast(*args: Any, **kwargs: Any) -> Any:
            token = getattr(_thread_state, "token", None)
            if token is None:
                return original(*args, **kwargs)
            if token.stopped:
                raise StepStopped(f"code step stopped ({token.reason})")
            result = original(*args, **kwargs)
            if token.stopped:
                raise StepStopped(f"code step stopped ({token.reason})")
            return result

        evaluate_ast.__wrapped__ = original  # type: ignore[attr-defined]
        evaluate_ast.__doc__ = original.__doc__
        evaluate_ast._async_task_system_stoppable = True  # type: ignore[attr-defined]
        _lpe.evaluate_ast = evaluate_ast


class _GuardedCallable:
    """A tool or managed agent as a code step sees it: refused once the step is stopped.

    Attribute reads go to the wrapped object, so code that reads ``tool.name`` keeps working.
    """

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _check_current_step()
        return self._target(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def __repr__(self) -> str:
        return repr(self._target)


def _guard_tools(static_tools: dict[str, Any] | None) -> dict[str, Any] | None:
    if static_tools is None:
        return None
    return {
        name: _GuardedCallable(value) if isinstance(value, (Tool, MultiStepAgent)) else value
        for name, value in static_tools.items()
    }


def _run_code(inner: LocalPythonExecutor, code_action: str) -> CodeOutput:
    """One code step on ``inner``, its tools guarded by the current step's stop token."""
    if type(inner).__call__ is not LocalPythonExecutor.__call__:
        return inner(code_action)  # a subclass with its own __call__: the AST checks still apply
    output, is_final_answer = _lpe.evaluate_python_code(
        code_action,
        static_tools=_guard_tools(inner.static_tools),
        custom_tools=inner.custom_tools,
        state=inner.state,
        authorized_imports=inner.authorized_imports,
        max_print_outputs_length=inner.max_print_outputs_length,
        timeout_seconds=None,
    )
    return CodeOutput(output=output, logs=str(inner.state["_print_outputs"]), is_final_answer=is_final_answer)


class ContextPreservingExecutor:
    """Wraps a ``LocalPythonExecutor``: same interface, caller's context kept, a stopping timeout.

    ``timeout_seconds`` (smolagents' own attribute) is the time one code step may run; ``None``
    runs steps in the caller's thread without a limit. A step that runs past it, or that Ctrl-C
    interrupts, is stopped (see the module docstring). Other attribute reads and writes go to the
    wrapped executor (``state``, ``static_tools``, ...), so smolagents code that inspects the
    executor keeps working. Copies, deep copies and pickles behave like the wrapped executor's.
    """

    def __init__(self, inner: LocalPythonExecutor, timeout_seconds: float | None) -> None:
        # The inner executor must not start its own (context-less, waiting) timeout thread.
        inner.timeout_seconds = None
        self.__dict__["_inner"] = inner
        self.__dict__["timeout_seconds"] = timeout_seconds
        _install_stop_checks()

    @property
    def wrapped(self) -> LocalPythonExecutor:
        """The smolagents executor this one runs steps of."""
        return self.__dict__["_inner"]

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not set on the wrapper itself; during copy/unpickle the
        # instance is still empty, and dunder lookups must not fall through to the inner executor.
        inner = self.__dict__.get("_inner")
        if inner is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return getattr(inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "code_timeout_seconds":
            name = "timeout_seconds"
        if name == "timeout_seconds":
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["_inner"], name, value)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _install_stop_checks()

    @property
    def code_timeout_seconds(self) -> float | None:
        """Alias of ``timeout_seconds`` (the name this attribute had before)."""
        return self.__dict__["timeout_seconds"]

    def __call__(self, code_action: str) -> Any:
        inner: LocalPythonExecutor = self.__dict__["_inner"]
        timeout = self.__dict__["timeout_seconds"]
        parent = _current_token()
        if parent is not None:
            parent.check()
        if timeout is None:
            # In the caller's thread: its context, and (for a nested agent) its step's stop token.
            return _run_code(inner, code_action)
        token = _StopToken(parent)
        context = contextvars.copy_context()
        outcome: dict[str, Any] = {}

        def run() -> None:
            _thread_state.token = token
            try:
                outcome["value"] = context.run(_run_code, inner, code_action)
            except BaseException as exc:  # re-raised in the caller's thread below
                outcome["error"] = exc
            finally:
                _thread_state.token = None
                token.finish()

        thread = threading.Thread(target=run, name="agent-code-step", daemon=True)
        thread.start()
        try:
            token.done.wait(timeout)
        except KeyboardInterrupt:
            token.stop("interrupted")
            thread.join(INTERRUPT_GRACE_SECONDS)
            raise
        if token.stop("timeout"):
            thread.join(STOP_GRACE_SECONDS)
            if parent is not None and parent.stopped:
                raise StepStopped(f"code step stopped ({parent.reason})")
            message = (
                f"Code execution exceeded the maximum execution time of {timeout:g} seconds: "
                "the step was stopped, so nothing after that point ran. "
            )
            if thread.is_alive():
                message += "A call it was blocked in could not be interrupted; its result will be discarded. "
            raise ExecutionTimeoutError(
                message
                + "Use shorter waits (wait_for_tasks returns as soon as tasks finish) or split the work."
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def send_tools(self, tools: dict[str, Any]) -> None:
        self.__dict__["_inner"].send_tools(tools)

    def send_variables(self, variables: dict[str, Any]) -> None:
        self.__dict__["_inner"].send_variables(variables)


def install_context_executor(agent: Any, timeout_seconds: Any = _KEEP, recursive: bool = True) -> None:
    """Give ``agent`` (and, with ``recursive``, its managed agents) a context-preserving executor.

    ``timeout_seconds`` applies to ``agent`` only (omit it to keep the executor's own timeout);
    managed agents keep the timeout their owner gave them. Agents whose executor is not local
    (E2B, Docker, ...) are left as they are.
    """
    executor = getattr(agent, "python_executor", None)
    if isinstance(executor, ContextPreservingExecutor):
        if timeout_seconds is not _KEEP:
            executor.timeout_seconds = timeout_seconds
    elif isinstance(executor, LocalPythonExecutor):
        timeout = executor.timeout_seconds if timeout_seconds is _KEEP else timeout_seconds
        agent.python_executor = ContextPreservingExecutor(executor, timeout)
    if recursive:
        for sub_agent in (getattr(agent, "managed_agents", None) or {}).values():
            install_context_executor(sub_agent, recursive=True)


def copy_agent(agent: Any) -> Any:
    """An independent instance of a smolagents agent, safe to run alongside the original.

    Shallow-copies the agent, then gives the copy its own memory, monitor, state, step
    callbacks, python executor and (recursively) managed agents.
    """
    from smolagents.memory import AgentMemory
    from smolagents.monitoring import Monitor

    clone = copy.copy(agent)
    clone.state = {}
    clone.step_number = 0
    clone.interrupt_switch = False
    clone.memory = AgentMemory(agent.system_prompt)
    clone.monitor = Monitor(agent.model, agent.logger)
    registry = getattr(agent, "step_callbacks", None)
    if registry is not None:
        clone.step_callbacks = _copy_callbacks(registry, agent.monitor, clone.monitor)
    sub_agents = getattr(agent, "managed_agents", None)
    if sub_agents:
        clone.managed_agents = {name: copy_agent(sub) for name, sub in sub_agents.items()}
    executor = getattr(agent, "python_executor", None)
    fresh_copy = getattr(executor, "fresh_copy", None)
    if callable(fresh_copy):  # an executor that makes its own copies (the sandboxed one: a new kernel)
        clone.python_executor = fresh_copy()
    elif executor is not None and hasattr(agent, "create_python_executor"):
        timeout = None
        if isinstance(executor, (ContextPreservingExecutor, LocalPythonExecutor)):
            timeout = executor.timeout_seconds
        clone.python_executor = clone.create_python_executor()
        if isinstance(clone.python_executor, LocalPythonExecutor):
            clone.python_executor = ContextPreservingExecutor(clone.python_executor, timeout)
    return clone


def _copy_callbacks(registry: Any, old_monitor: Any, new_monitor: Any) -> Any:
    """Copy a smolagents ``CallbackRegistry``, re-binding the monitor's metrics callback."""
    clone = copy.copy(registry)
    callbacks = getattr(registry, "_callbacks", None)
    if isinstance(callbacks, dict):
        clone._callbacks = {
            step_cls: [
                new_monitor.update_metrics
                if getattr(cb, "__self__", None) is old_monitor
                and getattr(cb, "__name__", "") == "update_metrics"
                else cb
                for cb in cbs
            ]
            for step_cls, cbs in callbacks.items()
        }
    return clone
