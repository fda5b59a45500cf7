"""Agent conversations that suspend on remote work (seed 000): threads held, wall time, vs blocking.

    .venv/bin/python benchmarks/bench_conversations.py [--conversations 1000] [--delay 0.5]

(a) N scripted CodeAgent conversations (``TaskManager.create_task``), each calling
    ``remote_execute`` twice (one suspension per call) and answering from its own two results,
    with ``max_workers=4``. The remote side answers each command after ``delay`` seconds (an
    in-process transport with the hub's interface, so only the conversations are measured).
    Reported: peak thread count, wall time against the remote work's critical path (2 x delay)
    and against the CPU floor (the same conversations with instant answers).
(b) baseline in the same run: conversations that *block* in remote_execute (the inline mode a
    step uses without suspension), at a smaller count, with the same 4 workers.
(c) the suspended conversations against the real hub and one ``async-agent worker`` process.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time

from bench_remote import start_worker

from async_task_system import ScriptedModel, TaskManager
from async_task_system.remote.bridge import RemoteRequest


class DelayedAnswers:
    """A transport (the hub's interface) whose executor answers every command after ``delay`` seconds."""

    def __init__(self, manager: TaskManager, delay: float) -> None:
        self.manager = manager
        self.remote = manager.remote_manager
        self.delay = delay
        self.remote.set_transport(self)

    def send_request(self, request: RemoteRequest) -> None:
        output = {"exit_code": 0, "stdout": request.command.removeprefix("echo ") + "\n", "stderr": ""}
        complete = self.remote.complete
        self.manager.call_later(self.delay, lambda: complete(request.request_id, True, output, None, None))

    def cancel_request(self, request: RemoteRequest, reason: str) -> None:
        pass


def conversation_model(index: int) -> ScriptedModel:
    def answer(messages) -> str:
        text = " ".join(str(m.content) for m in messages)
        found = sorted(set(re.findall(rf"\b[ab]{index}-out\b", text)))
        return f"<code>\nfinal_answer({' + '.join(repr(f) for f in found) or repr('nothing')})\n</code>"

    return ScriptedModel(
        [
            f"<code>\nremote_execute('echo a{index}-out')\n</code>",
            f"<code>\nremote_execute('echo b{index}-out')\n</code>",
            answer,
        ]
    )


class ThreadPeak:
    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, threading.active_count())

    def __enter__(self) -> ThreadPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_conversations(count: int, delay: float, *, blocking: bool = False) -> tuple[float, int, int]:
    with TaskManager(max_workers=4, retention=count + 10) as manager:
        if delay:
            DelayedAnswers(manager, delay)
        else:
            remote = manager.remote_manager

            class Instant(DelayedAnswers):
                def send_request(self, request: RemoteRequest) -> None:
                    output = {
                        "exit_code": 0,
                        "stdout": request.command.removeprefix("echo ") + "\n",
                        "stderr": "",
                    }
                    remote.complete(request.request_id, True, output, None, None)

            Instant(manager, 0)
        if blocking:  # conversations whose tool blocks its thread (no suspension): a plain CodeAgent run
            from smolagents import CodeAgent

            from async_task_system.remote import RemoteExecuteTool

            def converse(index: int) -> str:
                agent = CodeAgent(
                    tools=[RemoteExecuteTool(manager, wait=True)], model=conversation_model(index)
                )
                agent.logger.level = -1
                return agent.run(f"job {index}")

            manager.register_function(converse)
        with ThreadPeak() as threads:
            started = time.perf_counter()
            if blocking:
                ids = [manager.submit("function", "converse", {"index": i}) for i in range(count)]
            else:
                ids = [
                    manager.create_task(f"job {i}", tools=["remote_execute"], model=conversation_model(i))
                    for i in range(count)
                ]
            manager.wait(ids)
            wall = time.perf_counter() - started
        results = manager.results(ids)
        correct = sum(results[task_id] == f"a{i}-outb{i}-out" for i, task_id in enumerate(ids))
    return wall, threads.peak, correct


def bench_local(count: int, delay: float, blocking_count: int) -> None:
    baseline_threads = threading.active_count()
    floor, _, _ = run_conversations(count, 0.0)
    wall, peak, correct = run_conversations(count, delay)
    blocked_wall, blocked_peak, blocked_correct = run_conversations(blocking_count, delay, blocking=True)
    critical = 2 * delay
    print(f"(a) {count} conversations x 2 suspensions, max_workers=4, remote answers after {delay:g} s")
    print(f"    answers built from their own two results: {correct}/{count}")
    print(f"    peak threads              : {peak}  (process had {baseline_threads} before; goal < 50)")
    print(f"    wall time                 : {wall:6.2f} s")
    print(f"    remote critical path      : {critical:6.2f} s  (wall = {wall / critical:.2f}x)")
    print(
        f"    CPU floor (instant answers): {floor:6.2f} s  (wall = {wall / floor:.2f}x; agent steps are CPU work under the GIL)"
    )
    print(f"(b) baseline: {blocking_count} conversations that block in remote_execute, same 4 workers")
    print(f"    answers correct: {blocked_correct}/{blocking_count}, peak threads {blocked_peak}")
    print(
        f"    wall time {blocked_wall:6.2f} s = {blocked_wall / blocking_count * 1e3:.0f} ms per conversation, "
        f"suspended: {wall / count * 1e3:.1f} ms per conversation "
        f"({blocked_wall / blocking_count / (wall / count):.0f}x more throughput)"
    )


def bench_hub(count: int) -> None:
    from async_task_system.remote.hub import RemoteHub

    token = "bench-token"
    with TaskManager(max_workers=4, retention=count + 10) as manager:
        hub = RemoteHub(manager, token=token).start()
        worker = start_worker(hub, token, "w1")
        try:
            with ThreadPeak() as threads:
                started = time.perf_counter()
                ids = [
                    manager.create_task(f"job {i}", tools=["remote_execute"], model=conversation_model(i))
                    for i in range(count)
                ]
                manager.wait(ids, timeout=300)
                wall = time.perf_counter() - started
            results = manager.results(ids)
            correct = sum(results[t] == f"a{i}-outb{i}-out" for i, t in enumerate(ids))
        finally:
            hub.stop()
            worker.terminate()
            worker.wait(10)
    print(f"(c) {count} conversations through the real hub and one worker process (its default slots)")
    print(f"    answers correct: {correct}/{count}, peak threads {threads.peak}, wall {wall:.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--blocking", type=int, default=40)
    parser.add_argument("--hub-conversations", type=int, default=40)
    options = parser.parse_args()
    print(f"Python {sys.version.split()[0]}")
    bench_local(options.conversations, options.delay, options.blocking)
    bench_hub(options.hub_conversations)
