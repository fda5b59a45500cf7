"""An agent's code steps in the sandbox: :class:`SandboxedPythonExecutor`.

smolagents' ``LocalPythonExecutor`` runs the code an LLM writes inside the agent's own process: its
AST checks are no security boundary. :class:`SandboxedPythonExecutor` has the same interface but runs
each step in a *code kernel* (:mod:`._code_kernel`), a long-lived interpreter in the sandbox that
worker scripts and runtime tools get (:class:`~async_task_system.sandbox.process.ScriptRunner`): no
network, a read-only file system but a private scratch directory, its own pid namespace (no view of
this process, its ``/proc`` or its environment), CPU, memory and process limits, the whole tree
killed at its end. The kernel keeps its variables from step to step, like a Jupyter kernel.

Tools stay here: in the kernel every tool (and managed agent, and ``final_answer``) is a stub that
sends a ``call`` and waits for the reply, and the host runs the tool *in the thread that runs the
step*, so context variables, tracing spans, approval gates and the agent's ``TaskManager`` work as
before. The host trusts nothing from the kernel: it reads JSON only (never a pickle), bounds every
line (``max_message_bytes``) before decoding it, and stops a kernel that breaks the protocol.
What JSON cannot carry (an image passed to a tool, say) reaches the host as its ``repr``; values
going *to* the kernel (tool results, variables) are pickled, and objects of modules the sandbox
cannot import (this package's, your own) travel as their plain value or ``repr``.

Limits: a step may run ``timeout_seconds``; past it the kernel's whole tree is killed and the step
raises smolagents' ``ExecutionTimeoutError`` (the next step starts a fresh kernel: the variables the
agent sent are sent again, those the code made are gone). A kernel that dies (memory, processes,
CPU seconds of its life) raises :class:`CodeKernelError` naming the limit. A host tool that blocks is
not interrupted (the step returns when it does), but sandboxed steps nested in it (a managed agent)
are stopped at the outer step's deadline. All kernels' I/O runs on one private event-loop thread
per process; the step's own thread waits on a queue, with the deadline set on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import weakref
from typing import Any

from smolagents.local_python_executor import (
    BASE_BUILTIN_MODULES,
    DEFAULT_MAX_LEN_OUTPUT,
    CodeOutput,
    ExecutionTimeoutError,
    LocalPythonExecutor,
)

from ..core.agent_runtime import ContextPreservingExecutor, StepStopped
from ..sandbox.process import RunLimits, ScriptRunner
from .code_channel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KERNEL_START_TIMEOUT,
    CodeKernelError,
    KernelProcess,
    decode_message,
    is_tool_call,
    pickled,
    stop_kernel_quietly,
)

__all__ = [
    "CodeKernelError",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "SandboxedPythonExecutor",
    "install_sandboxed_executor",
]

_KEEP = object()
_LOST = (
    "Variables from earlier steps are gone (the next step runs in a fresh interpreter): "
    "compute again what you need."
)


# --------------------------------------------------------------------------- one step


class _Step:
    """A running step: the kernel it runs in and the sandboxed steps nested in it (its host tools
    calling managed agents), stopped with it."""

    def __init__(self, kernel: KernelProcess, parent: _Step | None) -> None:
        self.kernel = kernel
        self.reason: str | None = None
        self.children: list[_Step] = []
        self.lock = threading.Lock()
        self.final: Any = _KEEP
        self.tool_error: BaseException | None = None
        self.abort: BaseException | None = None
        self.number = 0  # sent with the code; the kernel's end of the step must name it
        if parent is not None:
            with parent.lock:
                parent.children.append(self)
            if parent.reason is not None:
                self.stop("parent")

    def stop(self, reason: str) -> None:
        with self.lock:
            if self.reason is not None:
                return
            self.reason = reason
            children = list(self.children)
        self.kernel.stop(reason)
        for child in children:
            child.stop("parent")


_steps = threading.local()


def _stack() -> list[_Step]:
    stack = getattr(_steps, "stack", None)
    if stack is None:
        stack = _steps.stack = []
    return stack


# --------------------------------------------------------------------------- the executor


class SandboxedPythonExecutor:
    """A smolagents code executor whose steps run in a sandboxed kernel (see the module docstring).

    Args:
        additional_authorized_imports: modules the code may import besides smolagents' base ones
            (as for ``LocalPythonExecutor``; ``"*"`` allows all); ``authorized_imports`` replaces the
            whole list. smolagents' AST checks still apply, inside the kernel.
        limits: the sandbox of the kernel (:class:`RunLimits`; default ``RunLimits()``: no network,
            1 GiB, 64 processes, 300 CPU seconds over the kernel's life). ``limits.timeout`` is not
            used: ``timeout_seconds`` bounds each step.
        timeout_seconds: seconds one step may run (smolagents' 30 s by default; ``None``: no limit).
        max_print_outputs_length: characters of a step's logs kept (smolagents' default).
        additional_functions: functions the code may call; they run here, like tools.
        variables: sent to every new kernel (like :meth:`send_variables`).
        max_message_bytes: the longest line a kernel may send; a longer one stops it.
        network: overrides ``limits.network``.

    ``state`` holds only ``_print_outputs`` (the last step's logs, read by smolagents when a step
    fails): the code's variables live in the kernel. Call :meth:`cleanup` when done (a
    ``CodeAgent``'s ``cleanup()`` does); an executor dropped without it kills its kernel when it is
    garbage-collected, and every kernel dies with this process.
    """

    def __init__(
        self,
        additional_authorized_imports: list[str] | tuple[str, ...] = (),
        *,
        authorized_imports: list[str] | None = None,
        limits: RunLimits | None = None,
        timeout_seconds: float | None = 30,
        max_print_outputs_length: int | None = None,
        additional_functions: dict[str, Any] | None = None,
        variables: dict[str, Any] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        network: bool | None = None,
    ) -> None:
        self.additional_authorized_imports = list(additional_authorized_imports)
        self.authorized_imports = (
            list(authorized_imports)
            if authorized_imports is not None
            else sorted(set(BASE_BUILTIN_MODULES) | set(self.additional_authorized_imports))
        )
        self.limits = limits if limits is not None else RunLimits()
        self.timeout_seconds = timeout_seconds
        self.max_print_outputs_length = max_print_outputs_length or DEFAULT_MAX_LEN_OUTPUT
        self.additional_functions = dict(additional_functions or {})
        self.max_message_bytes = int(max_message_bytes)
        self.network = network
        self.state: dict[str, Any] = {"_print_outputs": ""}
        self._runner = ScriptRunner(self.limits)
        self._tools: dict[str, Any] = dict(self.additional_functions)
        self._variables: dict[str, Any] = dict(variables or {})
        self._box: list[KernelProcess | None] = [None]
        self._lock = threading.Lock()
        self._current: _Step | None = None
        self._copies: weakref.WeakSet[SandboxedPythonExecutor] = weakref.WeakSet()
        self._steps = 0
        self.kernels_started = 0
        """How many kernels this executor started (a step after a timeout or a crash starts one)."""
        weakref.finalize(self, stop_kernel_quietly, self._box)

    # ----------------------------------------------------------------- smolagents' interface

    def send_tools(self, tools: dict[str, Any]) -> None:
        """The tools (and managed agents) the code may call; the kernel starts now if it is not
        running, so that it is ready by the time the model has written the first step."""
        self._tools = {**tools, **self.additional_functions}
        kernel = self._box[0]
        if kernel is not None and kernel.stop_reason is None:
            kernel.send(self._tools_message())
        else:
            with contextlib.suppress(CodeKernelError):
                self._kernel(wait=False)

    def send_variables(self, variables: dict[str, Any]) -> None:
        """Variables for the code: sent to the kernel now and to every new one."""
        self._variables.update(variables)
        kernel = self._box[0]
        if kernel is not None and kernel.stop_reason is None and variables:
            kernel.send(self._variables_message(variables))

    def __call__(self, code_action: str) -> CodeOutput:
        stack = _stack()
        parent = stack[-1] if stack else None
        if parent is not None and parent.reason is not None:
            raise StepStopped(f"code step stopped ({parent.reason})")
        kernel = self._kernel(wait=True)
        step = _Step(kernel, parent)
        self._current = step
        stack.append(step)
        deadline = None
        if self.timeout_seconds is not None:
            deadline = asyncio.run_coroutine_threadsafe(_expire(step, self.timeout_seconds), kernel.loop)
        try:
            self._steps += 1
            step.number = self._steps
            kernel.send({"op": "run", "step": step.number, "code": code_action})
            return self._serve(kernel, step)
        except KeyboardInterrupt:
            step.stop("interrupted")
            raise
        finally:
            if deadline is not None:
                deadline.cancel()
            stack.pop()
            self._current = None
            if kernel.stop_reason is not None:
                self._forget(kernel)

    def cleanup(self) -> None:
        """Kill the kernel (and those of this executor's copies); a later step starts a new one."""
        step = self._current
        if step is not None:
            step.stop("cleanup")
        kernel = self._forget(self._box[0])
        if kernel is not None:
            kernel.stop("cleanup")
        for copy in list(self._copies):
            copy.cleanup()

    # ----------------------------------------------------------------- ours

    def interrupt(self) -> bool:
        """Stop the running step (any thread): it raises :class:`CodeKernelError` saying the run was
        interrupted. Returns whether a step was running."""
        step = self._current
        if step is not None:
            step.stop("interrupted")
        return step is not None

    def fresh_copy(self) -> SandboxedPythonExecutor:
        """An executor with this one's settings and a kernel of its own (what
        :func:`~async_task_system.core.agent_runtime.copy_agent` gives a copy); :meth:`cleanup` of
        this one cleans it up too."""
        copy = SandboxedPythonExecutor(
            authorized_imports=self.authorized_imports,
            limits=self.limits,
            timeout_seconds=self.timeout_seconds,
            max_print_outputs_length=self.max_print_outputs_length,
            additional_functions=self.additional_functions,
            max_message_bytes=self.max_message_bytes,
            network=self.network,
        )
        copy.additional_authorized_imports = list(self.additional_authorized_imports)
        self._copies.add(copy)
        return copy

    # ----------------------------------------------------------------- internals

    def _kernel(self, wait: bool) -> KernelProcess:
        """The running kernel, or a new one (with the setup, tools and variables sent); ``wait``:
        until it said it is ready."""
        with self._lock:
            kernel = self._box[0]
            if kernel is None or kernel.stop_reason is not None:
                kernel = KernelProcess(self._runner, self.max_message_bytes)
                kernel.start(self.network)
                self.kernels_started += 1
                self._box[0] = kernel
                kernel.send(
                    {
                        "op": "setup",
                        "authorized_imports": self.authorized_imports,
                        "max_print_outputs_length": self.max_print_outputs_length,
                    }
                )
                kernel.send(self._tools_message())
                if self._variables:
                    kernel.send(self._variables_message(self._variables))
            if wait and kernel.pid is None:
                self._await_ready(kernel)
            return kernel

    def _await_ready(self, kernel: KernelProcess) -> None:
        try:
            kind, item = kernel.inbox.get(timeout=KERNEL_START_TIMEOUT)
        except queue.Empty:
            kind, item = "exit", f"it did not start within {KERNEL_START_TIMEOUT:g} s"
        message = decode_message(item) if kind == "line" else None
        if message is not None and message.get("op") == "ready" and isinstance(message.get("pid"), int):
            kernel.pid = message["pid"]
            return
        kernel.stop("start")
        why = item if kind == "exit" else "it did not say it was ready"
        self._forget(kernel)
        raise CodeKernelError(f"The code sandbox could not start: {why}")

    def _forget(self, kernel: KernelProcess | None) -> KernelProcess | None:
        with self._lock:
            if kernel is not None and self._box[0] is kernel:
                self._box[0] = None
        return kernel

    def _tools_message(self) -> dict[str, Any]:
        specs = {}
        for name, tool in self._tools.items():
            spec: dict[str, Any] = {"name": name}
            for key in ("description", "inputs", "output_type"):
                value = getattr(tool, key, None)
                with contextlib.suppress(TypeError, ValueError):
                    spec[key] = json.loads(json.dumps(value)) if value is not None else None
            specs[name] = spec
        return {"op": "tools", "tools": specs}

    def _variables_message(self, variables: dict[str, Any]) -> dict[str, Any]:
        data = {}
        for name, value in variables.items():
            data[str(name)] = pickled(value)
        return {"op": "variables", "data": data}

    def _serve(self, kernel: KernelProcess, step: _Step) -> CodeOutput:
        """Answer the kernel's tool calls until the step ends."""
        while True:
            kind, item = kernel.inbox.get()
            if kind == "line":
                message = decode_message(item)
                op = message.get("op") if message is not None else None
                if op == "call" and is_tool_call(message):
                    self._call(kernel, step, message)
                    continue
                ours = message is not None and message.get("step") == step.number
                if op == "done" and ours and isinstance(message.get("logs"), str):
                    return self._done(step, message)
                if op == "error" and ours and isinstance(message.get("message"), str):
                    self._raise_error(step, message)
                kernel.stop("protocol")
                self._raise_broken("a malformed message", step)
            if kind == "bad":
                kernel.stop("protocol")
                what = f"a message of more than {self.max_message_bytes} bytes"
                self._raise_broken(what if isinstance(item, int) else str(item), step)
            if kind == "stopped" and step.reason is None and item != "cleanup":
                continue  # the kernel was stopped after this step began to end: its exit follows
            self._raise_ended(step, kind, item)

    def _call(self, kernel: KernelProcess, step: _Step, message: dict[str, Any]) -> None:
        number, name = message["id"], message["tool"]
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            error = f"There is no tool named {name!r}; the tools are: {known}"
            kernel.send({"op": "reply", "id": number, "error": error, "type": "NameError"})
            return
        try:
            value = tool(*message["args"], **message["kwargs"])
        except Exception as exc:
            step.tool_error = exc
            kernel.send({"op": "reply", "id": number, "error": str(exc), "type": type(exc).__name__})
            return
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # StepStopped, a conversation's suspension: the step ends
            step.abort = exc
            kernel.send({"op": "reply", "id": number, "abort": True})
            return
        if name == "final_answer":
            step.final = value
        kernel.send({"op": "reply", "id": number, "value": pickled(value)})

    def _done(self, step: _Step, message: dict[str, Any]) -> CodeOutput:
        logs = self._logs(message)
        is_final = message.get("is_final_answer") is True
        output = message.get("output")
        if is_final and step.final is not _KEEP:
            output = step.final  # the host's own value, not the kernel's JSON of it
        return CodeOutput(output=output, logs=logs, is_final_answer=is_final)

    def _logs(self, message: dict[str, Any]) -> str:
        logs = message.get("logs")
        logs = logs if isinstance(logs, str) else ""
        cap = self.max_print_outputs_length
        if len(logs) > cap:
            logs = logs[:cap] + f"\n..._This content has been truncated to stay below {cap} characters_...\n"
        self.state["_print_outputs"] = logs
        return logs

    def _raise_error(self, step: _Step, message: dict[str, Any]) -> None:
        self._logs(message)
        if message.get("type") == "abort" and step.abort is not None:
            raise step.abort
        text = str(message["message"])[: self.max_print_outputs_length]
        if "MemoryError" in text and self.limits.memory_mb:
            text += f" (the code sandbox allows {self.limits.memory_mb} MiB: work on smaller pieces)"
        error = CodeKernelError(text)
        raise error from step.tool_error

    def _raise_broken(self, what: str, step: _Step) -> None:
        self.state["_print_outputs"] = ""
        raise CodeKernelError(
            f"The code sandbox sent {what}; the step was stopped. {_LOST}"
        ) from step.tool_error

    def _raise_ended(self, step: _Step, kind: str, item: Any) -> None:
        self.state["_print_outputs"] = ""
        reason = step.reason or (item if kind == "stopped" else None)
        if reason == "timeout":
            raise ExecutionTimeoutError(
                f"Code execution exceeded the maximum execution time of {self.timeout_seconds:g} seconds: "
                f"the step was stopped, so nothing after that point ran. {_LOST} "
                "Use shorter waits (wait_for_tasks returns as soon as tasks finish) or split the work "
                "into smaller steps."
            )
        if reason == "parent":
            raise StepStopped("code step stopped (the step that called this agent was stopped)")
        if reason in ("interrupted", "cleanup"):
            why = "the run was interrupted" if reason == "interrupted" else "its executor was cleaned up"
            raise CodeKernelError(f"The code step was stopped: {why}.")
        if kind != "exit":  # stopped for another reason: wait for its exit to say how it ended
            while kind != "exit":
                kind, item = step.kernel.inbox.get()
        raise CodeKernelError(f"The code sandbox ended during this step: {item}. {_LOST}")


async def _expire(step: _Step, seconds: float) -> None:
    await asyncio.sleep(seconds)
    step.stop("timeout")


def install_sandboxed_executor(
    agent: Any,
    limits: RunLimits | None = None,
    timeout_seconds: Any = _KEEP,
    recursive: bool = True,
    **options: Any,
) -> list[SandboxedPythonExecutor]:
    """Run ``agent``'s code steps (and with ``recursive`` its managed agents') in sandboxed kernels.

    ``agent`` is a smolagents ``CodeAgent`` (or an ``AsyncAgent``, whose agent it takes). Its
    ``LocalPythonExecutor``, or a :class:`~async_task_system.core.agent_runtime.ContextPreservingExecutor`
    around one, becomes a :class:`SandboxedPythonExecutor` with the same authorized imports, print
    cap, functions, variables and timeout (``timeout_seconds`` overrides it for ``agent`` only;
    ``options`` are the executor's other arguments). Agents whose executor is not local (E2B,
    Docker, ...) and agents without one are left alone. Returns the sandboxed executors of the
    agent and its managed agents (clean them up at the end: a ``CodeAgent``'s ``cleanup()`` does
    its own only).
    """
    inner_agent = getattr(agent, "agent", None)
    if not hasattr(agent, "python_executor") and inner_agent is not None:
        agent = inner_agent
    executor = getattr(agent, "python_executor", None)
    installed: list[SandboxedPythonExecutor] = []
    timeout = getattr(executor, "timeout_seconds", 30) if timeout_seconds is _KEEP else timeout_seconds
    if isinstance(executor, ContextPreservingExecutor):
        executor = executor.wrapped
    if isinstance(executor, SandboxedPythonExecutor):
        installed.append(executor)
    elif isinstance(executor, LocalPythonExecutor):
        state = {k: v for k, v in executor.state.items() if not k.startswith("_") and k != "__name__"}
        sandboxed = SandboxedPythonExecutor(
            authorized_imports=list(executor.authorized_imports),
            limits=limits,
            timeout_seconds=timeout,
            max_print_outputs_length=executor.max_print_outputs_length,
            additional_functions=executor.additional_functions,
            variables=state,
            **options,
        )
        sandboxed.additional_authorized_imports = list(executor.additional_authorized_imports)
        agent.python_executor = sandboxed
        installed.append(sandboxed)
    if recursive:
        for sub_agent in (getattr(agent, "managed_agents", None) or {}).values():
            installed += install_sandboxed_executor(sub_agent, limits, recursive=True, **options)
    return installed
