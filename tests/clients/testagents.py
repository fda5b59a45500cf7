"""Agents the server tests serve: real CodeAgents / AsyncAgents on a ScriptedModel.

The scripted model reads instructions out of the task text, so each test says what the agent
does in its request:

* ``RUN: <code>`` - the agent's first step runs ``<code>``;
* ``STEPS: <code1> ||| <code2> ...`` - step *n* runs ``<code_n>`` (counted by the model's earlier
  answers in this run);
* ``IMAGE_SIZE`` - answer with the size of the first image the model was shown;
* anything else - ``final_answer("echo: <task>")``.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from smolagents import CodeAgent, tool
from smolagents.models import ChatMessage, MessageRole, Model
from smolagents.monitoring import TokenUsage

from async_task_system import ScriptedModel, create_async_agent
from async_task_system.agents.testing import message_text

RELEASE = threading.Event()
"""Set to let ``block`` return (tests set it in teardown, so nothing hangs)."""
BLOCK_STARTED = threading.Event()
BARRIER: dict[str, threading.Barrier] = {}
CALLS: list[str] = []
CALLS_LOCK = threading.Lock()


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: first number
        b: second number
    """
    with CALLS_LOCK:
        CALLS.append(f"add({a},{b})")
    return a + b


@tool
def read_text_file(path: str) -> str:
    """Read a UTF-8 text file.

    Args:
        path: the file's path
    """
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@tool
def block(seconds: float) -> str:
    """Wait until the test releases it (at most `seconds`).

    Args:
        seconds: upper bound of the wait
    """
    BLOCK_STARTED.set()
    released = RELEASE.wait(seconds)
    return "released" if released else "waited"


@tool
def meet(name: str) -> str:
    """Wait at the named barrier until all parties arrived (proves requests run at once).

    Args:
        name: the barrier's name
    """
    BARRIER[name].wait(20)
    return f"met {name}"


TOOLS = [add, read_text_file, block, meet]


def _role(message: Any) -> str:
    role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
    return str(getattr(role, "value", role))


def task_text(messages: list[Any], full: bool = True) -> str:
    """The task of a CodeAgent run (after 'New task:'), or the last user message.

    With ``full=False`` only the request itself (the part after the server's 'Request:' header,
    without earlier exchanges or file listings).
    """
    for message in messages:
        text = message_text(message)
        if _role(message) == "user" and text.startswith("New task:\n"):
            text = text.removeprefix("New task:\n")
            return text if full or "\nRequest:\n" not in text else text.split("\nRequest:\n")[-1]
    for message in reversed(messages):
        if _role(message) == "user":
            return message_text(message)
    return ""


def images_in(messages: list[Any]) -> list[Any]:
    found = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        if isinstance(content, list):
            found.extend(
                part["image"] for part in content if isinstance(part, dict) and part.get("type") == "image"
            )
    return found


def respond(messages: list[Any]) -> str:
    """The scripted agent's answer, computed from the task (see the module docstring)."""
    task = task_text(messages, full=False)
    done_steps = sum(1 for m in messages if _role(m) == "assistant")
    if "IMAGE_SIZE" in task:
        images = images_in(messages)
        size = f"{images[0].size[0]}x{images[0].size[1]}" if images else "no image"
        return f"<code>\nfinal_answer({size!r})\n</code>"
    match = re.search(r"STEPS: (.*)", task, re.S)
    if match:
        steps = [s.strip() for s in match.group(1).split("|||")]
        code = steps[min(done_steps, len(steps) - 1)]
        return f"Thought: step {done_steps + 1}.\n<code>\n{code}\n</code>"
    match = re.search(r"RUN: (.*)", task, re.S)
    if match:
        return f"Thought: run it.\n<code>\n{match.group(1).strip()}\n</code>"
    last_line = task.strip().splitlines()[-1] if task.strip() else ""
    return f"<code>\nfinal_answer({('echo: ' + last_line)!r})\n</code>"


def chat_respond(messages: list[Any]) -> str:
    """Model-only answers: echo the system prompt's first words and the user's text."""
    system = message_text(messages[0]) if messages and _role(messages[0]) == "system" else ""
    images = images_in(messages)
    extra = f" [image {images[0].size[0]}x{images[0].size[1]}]" if images else ""
    return f"chat({system[:20]}): {task_text(messages)}{extra}"


class RecordingModel(Model):
    """A test model that records the keyword arguments of each call (max_tokens) and replies like respond."""

    def __init__(self, reply: Any = respond) -> None:
        super().__init__(model_id="recording")
        self.reply = reply
        self.kwargs_seen: list[dict[str, Any]] = []
        self.messages_seen: list[list[Any]] = []
        self._lock = threading.Lock()

    def generate(
        self, messages: list[Any], stop_sequences: list[str] | None = None, **kwargs: Any
    ) -> ChatMessage:
        with self._lock:
            self.kwargs_seen.append(dict(kwargs))
            self.messages_seen.append(list(messages))
        text = self.reply(messages)
        return ChatMessage(
            role=MessageRole.ASSISTANT, content=text, token_usage=TokenUsage(input_tokens=10, output_tokens=5)
        )


class NotifyingCodeAgent(CodeAgent):
    """A CodeAgent that sets an event when the server releases it (cleanup), to wait without polling."""

    finished: threading.Event

    def cleanup(self) -> None:
        super().cleanup()
        self.finished.set()


def scripted_model() -> ScriptedModel:
    return ScriptedModel([respond], repeat_last=True)


def async_agent_factory(model: Any | None = None) -> Any:
    model = model or scripted_model()

    def factory() -> Any:
        return create_async_agent(tools=TOOLS, model=model, verbosity_level=-1, max_steps=6)

    return factory


def code_agent_factory(model: Any | None = None) -> Any:
    model = model or scripted_model()

    def factory() -> Any:
        return CodeAgent(tools=TOOLS, model=model, verbosity_level=-1, max_steps=6)

    return factory


def reset() -> None:
    RELEASE.clear()
    BLOCK_STARTED.clear()
    BARRIER.clear()
    with CALLS_LOCK:
        CALLS.clear()


_CLI_MODEL = ScriptedModel([respond], repeat_last=True)


def cli_factory() -> Any:
    """For ``async-agent serve --factory clients.testagents:cli_factory`` in the CLI tests."""
    return create_async_agent(tools=TOOLS, model=_CLI_MODEL, verbosity_level=-1, max_steps=6)
