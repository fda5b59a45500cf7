"""The code kernel: runs an agent's code steps inside the sandbox (a script, run by path).

Started by :class:`~async_task_system.runtimes.code_sandbox.SandboxedPythonExecutor` as
``python -I _code_kernel.py`` in an isolated run; it needs only the standard library and smolagents
(the interpreter's installation is visible in the sandbox, this package need not be). It keeps one
smolagents interpreter state across steps, like a Jupyter kernel.

The channel to the host is one JSON object per line on the fds that were 0 and 1 at start: they are
moved to private descriptors before anything else runs, fd 0 then reads ``/dev/null`` and fd 1 goes
to fd 2, so nothing the code (or a program it starts) prints can reach the channel by accident.

Host -> kernel: ``setup`` (authorized imports, print cap), ``tools`` (names and descriptions),
``variables`` (a base64 pickle: the host is trusted), ``run`` (the code), ``reply`` (to a ``call``:
``value``, a base64 pickle, or ``error`` and ``type``; ``abort`` ends the step).
Kernel -> host: ``ready``, ``call`` {id, tool, args, kwargs}, ``done`` {step, output, logs,
is_final_answer}, ``error`` {step, type, message, logs} (``step``: the number the ``run`` gave): JSON only, never pickles (the host does not trust
the kernel); what JSON cannot carry is sent as its ``repr`` (lossy; see :func:`_plain`).
"""

import base64
import json
import os
import pickle
import sys

_REPR_CHARS = 100_000
_DEPTH = 50


def _plain(value, depth=0):
    """``value`` as JSON can carry it: dicts (string keys), lists, strings, numbers, booleans and
    ``None`` as they are (tuples and sets become lists); anything else becomes its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth < _DEPTH and isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item, depth + 1) for item in value]
    if depth < _DEPTH and isinstance(value, dict):
        return {str(key): _plain(item, depth + 1) for key, item in value.items()}
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break the channel
        text = f"<{type(value).__name__} object (repr failed: {exc})>"
    return text[:_REPR_CHARS]


class _Channel:
    def __init__(self, read_fd, write_fd):
        self.reader = os.fdopen(read_fd, "rb")
        self.writer = os.fdopen(write_fd, "wb")
        self.calls = 0
        self.pid = os.getpid()

    def _mine(self):
        """A process the code forked inherits the channel; it must not speak on it (its messages
        would reach the host in a later step): it ends instead."""
        if os.getpid() != self.pid:
            os._exit(0)

    def send(self, message):
        self._mine()
        self.writer.write(json.dumps(message, default=repr).encode() + b"\n")
        self.writer.flush()

    def receive(self):
        self._mine()
        line = self.reader.readline()
        if not line:
            os._exit(0)  # the host closed the channel: nothing more to do
        return json.loads(line)


def _stub(channel, name, spec, control):
    """A tool as the code sees it: each call goes to the host and waits for its reply."""

    def call(*args, **kwargs):
        channel.calls += 1
        number = channel.calls
        channel.send(
            {"op": "call", "id": number, "tool": name, "args": _plain(args), "kwargs": _plain(kwargs)}
        )
        while True:
            reply = channel.receive()
            if reply.get("op") == "reply" and reply.get("id") == number:
                break
        if reply.get("abort"):
            raise control("the host ended this step")
        if "error" in reply:
            kind = type(str(reply.get("type") or "ToolError"), (Exception,), {})
            raise kind(str(reply["error"]))
        return pickle.loads(base64.b64decode(reply["value"]))

    call.__name__ = name
    call.__doc__ = spec.get("description") or ""
    for key in ("name", "description", "inputs", "output_type"):
        if key in spec:
            setattr(call, key, spec[key])
    return call


def _reap():
    """Collect the processes the code started that have ended: zombies count against the sandbox's
    process limit, and nobody else waits for them while the kernel lives."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def main():
    # The channel first: off fd 0/1, before smolagents (or anything else) is imported.
    read_fd, write_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - for the kernel's whole life
    sys.stdout = sys.stderr
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [path for path in sys.path if os.path.abspath(path or ".") != here]  # -I of 3.10
    channel = _Channel(read_fd, write_fd)

    from smolagents.local_python_executor import BASE_PYTHON_TOOLS, evaluate_python_code

    # Raised in the code when the host ends the step (a BaseException: ``except Exception`` in the
    # code cannot swallow it). Made here, not at module level: importing this script defines nothing.
    control = type("StepAborted", (BaseException,), {})
    state = {"__name__": "__main__"}
    custom_tools = {}
    tools = {}
    authorized = []
    print_cap = 50_000
    notes = []  # told with the next step's logs
    channel.send({"op": "ready", "pid": os.getpid()})
    while True:
        message = channel.receive()
        op = message.get("op")
        if op == "setup":
            authorized = list(message.get("authorized_imports") or [])
            print_cap = int(message.get("max_print_outputs_length") or print_cap)
        elif op == "tools":
            specs = message.get("tools") or {}
            tools = {name: _stub(channel, name, spec, control) for name, spec in specs.items()}
        elif op == "variables":
            for name, data in (message.get("data") or {}).items():
                try:
                    state[name] = pickle.loads(base64.b64decode(data))
                except Exception as exc:  # e.g. its class's module is not visible in the sandbox
                    notes.append(f"The variable {name!r} could not be loaded: {type(exc).__name__}: {exc}\n")
        elif op == "run":
            _reap()
            note, notes[:] = "".join(notes), []
            try:
                output, is_final = evaluate_python_code(
                    message["code"],
                    static_tools={**tools, **BASE_PYTHON_TOOLS},
                    custom_tools=custom_tools,
                    state=state,
                    authorized_imports=authorized,
                    max_print_outputs_length=print_cap,
                    timeout_seconds=None,
                )
            except BaseException as exc:  # every end of the step is reported; the kernel goes on
                _reap()
                logs = note + str(state.get("_print_outputs", ""))
                kind = "abort" if isinstance(exc, control) else type(exc).__name__
                channel.send(
                    {
                        "op": "error",
                        "step": message.get("step"),
                        "type": kind,
                        "message": str(exc),
                        "logs": logs,
                    }
                )
                continue
            _reap()
            logs = note + str(state.get("_print_outputs", ""))
            channel.send(
                {
                    "op": "done",
                    "step": message.get("step"),
                    "output": _plain(output),
                    "logs": logs,
                    "is_final_answer": is_final,
                }
            )


if __name__ == "__main__":
    main()
