"""The worker daemon's job runner: what it does with ``execute`` and ``cancel`` frames, the same for every transport.

* at most ``max_concurrent`` jobs at once; the rest wait their turn, and a cancel for one still
  waiting means it never starts;
* shell and Python scripts run through :class:`~async_task_system.sandbox.process.ScriptRunner`,
  runtime-tool commands (``--tools-dir``) through :class:`~async_task_system.runtimes.manager.RuntimeManager`;
* output lines, the start event and the result go to the connection's outbox as :mod:`..protocol`
  frames; a result is shortened to fit the hub's message limit rather than be refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ...sandbox.process import ScriptRunner
from ..protocol import log_frame, result_frame, started_frame
from .config import WorkerConfig

__all__ = ["JobRunner"]

logger = logging.getLogger("async_task_system.remote.worker")


_SCRIPT_RESULT_KEYS = {
    "exit_code",
    "stdout",
    "stderr",
    "timed_out",
    "cancelled",
    "truncated",
    "duration",
    "worker",
}


class JobRunner:
    """Runs the requests a worker is sent, ``config.max_concurrent`` at once (see the module docstring)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.runner = ScriptRunner(config.limits())
        self.runtimes = config.runtimes()
        self._runtime_manager: Any = None
        self._calls: dict[str, asyncio.Future[Any]] = {}  # runtime calls running, by request id
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._queued = 0
        self._jobs: set[asyncio.Task[None]] = set()
        self._queued_ids: set[str] = set()
        self._cancelled_queued: set[str] = set()
        self._frame_limit: int | None = None  # the hub's max_message_bytes, learned at registration
        self._size: Any = None  # the connection's size of a frame on the wire
        self.answered = 0  # requests answered (a result sent), over all connections

    def connected(self, frame_limit: int | None, size: Callable[[dict[str, Any]], int]) -> None:
        """A new connection: results must fit ``frame_limit`` bytes as ``size`` measures a frame."""
        self._frame_limit = frame_limit
        self._size = size

    @property
    def running(self) -> int:
        """Scripts and runtime calls running now."""
        return self.runner.running + len(self._calls)

    @property
    def queued(self) -> int:
        """Requests waiting for a free slot."""
        return self._queued

    def start(self, request: dict[str, Any], outbox: asyncio.Queue[dict[str, Any]]) -> None:
        """Queue a checked ``execute`` request; its frames go to ``outbox``."""
        self._queued_ids.add(request["request_id"])  # now, so a cancel right behind it finds it
        job = asyncio.ensure_future(self._execute(request, outbox))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def kill_all(self) -> int:
        """Kill every running script and runtime call (the connection ended); returns how many."""
        return self.runner.kill_all() + self._cancel_calls()

    async def drain(self) -> None:
        """Cancel the jobs still queued or running and wait for them to end."""
        for job in list(self._jobs):
            job.cancel()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    def _cancel_calls(self) -> int:
        calls = list(self._calls.values())
        for call in calls:
            call.cancel()
        return len(calls)

    def cancel(self, request_id: str) -> None:
        """Stop a running script or runtime call, or make a queued one never start (best effort)."""
        call = self._calls.get(request_id)
        if call is not None:
            call.cancel()
        elif not self.runner.cancel(request_id) and request_id in self._queued_ids:
            self._cancelled_queued.add(request_id)  # still waiting for a slot: it will not start

    async def _execute(self, request: dict[str, Any], outbox: asyncio.Queue[dict[str, Any]]) -> None:
        request_id = request["request_id"]
        task_id = request.get("task_id") or request_id

        def on_start(at: float | None = None) -> None:
            # the process has started (the runner calls this before any output line)
            outbox.put_nowait(started_frame(request_id, time.time() if at is None else at, task_id))

        def on_line(stream: str, line: str) -> None:
            limit = self._frame_limit
            if limit is not None and 4 * len(line) > limit - 512 and len(line.encode("utf-8")) > limit - 512:
                line = line.encode("utf-8")[: limit - 512].decode(
                    "utf-8", errors="ignore"
                )  # fit the hub's limit
            outbox.put_nowait(log_frame(request_id, stream, line, task_id))

        waiting = True
        self._queued += 1
        try:
            async with self._slots:
                self._queued -= 1
                self._queued_ids.discard(request_id)
                waiting = False
                try:
                    if request_id in self._cancelled_queued:
                        self._cancelled_queued.discard(request_id)
                        result = {"exit_code": None, "cancelled": True}
                        success, error, error_type = False, "cancelled before it started", "cancelled"
                    elif request.get("runtime") is not None:
                        success, result, error, error_type = await self._run_tool(request, on_start)
                    else:
                        # DEBUG: at hundreds of tasks a second one INFO line each was 5-10 % of the worker.
                        logger.debug("running task %s (request %s)", task_id, request_id)
                        success, result, error, error_type = await self.runner.run(
                            request["command"],
                            request["language"],
                            key=request_id,
                            timeout=request.get("timeout"),
                            env=request.get("env"),
                            trace=request.get("trace"),
                            on_line=on_line,
                            on_start=on_start,
                        )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # never leave the hub without an answer
                    logger.exception("running request %s failed", request_id)
                    success, result, error, error_type = False, None, f"worker error: {exc}", "remote_error"
        finally:
            if waiting:
                self._queued -= 1
                self._queued_ids.discard(request_id)
                self._cancelled_queued.discard(request_id)
        if isinstance(result, dict):
            result["worker"] = self.config.name
        outbox.put_nowait(self._fitted_result(request_id, success, result, error, error_type, task_id))
        self.answered += 1

    # ------------------------------------------------------------------ runtime tools

    def _entry_path(self, entry: str) -> str:
        """``entry`` inside ``--tools-dir`` (symlinks resolved), or ValueError saying why not."""
        tools_dir = self.config.tools_dir
        if not tools_dir:
            raise ValueError(
                f"worker {self.config.name!r} runs no runtime tools: it was started without --tools-dir"
            )
        if not entry or "\x00" in entry:
            raise ValueError("the tool's entry must be a non-empty path inside the worker's tools directory")
        root = os.path.realpath(tools_dir)
        path = os.path.realpath(os.path.join(root, entry))
        if os.path.commonpath([root, path]) != root:
            raise ValueError(
                f"entry {entry!r} is outside the worker's tools directory; give a path relative to --tools-dir"
            )
        return path

    async def _run_tool(
        self, request: dict[str, Any], on_start: Any = None
    ) -> tuple[bool, Any, str | None, str | None]:
        """One runtime-tool command; the result is a RuntimeResult dict (``success`` is its ``ok``)."""
        from ...runtimes.base import RuntimeResult

        call = request["runtime"]
        name = call["runtime"]
        try:
            if name not in self.runtimes:
                offered = ", ".join(self.runtimes) or "none (start it with --tools-dir)"
                raise ValueError(
                    f"worker {self.config.name!r} does not offer the {name} runtime (it offers {offered})"
                )
            entry = self._entry_path(call["entry"])
        except ValueError as exc:
            outcome = RuntimeResult.failure(name, "invalid_entry", str(exc))
        else:
            if self._runtime_manager is None:
                from ...runtimes.manager import RuntimeManager

                self._runtime_manager = RuntimeManager(self.runner.limits)
            if on_start is not None:
                on_start()
            job = asyncio.ensure_future(
                self._runtime_manager.execute(
                    name, entry, request["command"], call["parameters"], request.get("timeout")
                )
            )
            self._calls[request["request_id"]] = job
            try:
                await asyncio.wait({job})
            except asyncio.CancelledError:
                job.cancel()
                raise
            finally:
                self._calls.pop(request["request_id"], None)
            if job.cancelled():
                outcome = RuntimeResult.failure(name, "cancelled", "cancelled; the call was stopped")
            else:
                outcome = job.result()
        success = outcome.ok
        return (
            success,
            outcome.to_dict(),
            None if success else outcome.error,
            None if success else "remote_error",
        )

    # ------------------------------------------------------------------ results

    def _fitted_result(
        self,
        request_id: str,
        success: bool,
        result: Any,
        error: str | None,
        error_type: str | None,
        task_id: str | None = None,
    ) -> dict[str, Any]:
        """The result frame, with stdout/stderr shortened (``truncated: true``) until it fits the hub's
        message limit: a refused message would leave the request unanswered until its deadline."""
        frame = result_frame(request_id, success, result, error, error_type, task_id)
        limit = self._frame_limit
        if limit is None or not isinstance(result, dict):
            return frame
        size = self._size
        budget = limit - 1024  # headroom for the envelope
        if result.keys() <= _SCRIPT_RESULT_KEYS:
            texts = (result.get("stdout"), result.get("stderr"), error)
            if 4 * sum(len(text) for text in texts if isinstance(text, str)) + 4096 < budget:
                return frame  # fits whatever its characters encode to: no need to encode it here too
        while size(frame) > budget:
            longest = max(("stdout", "stderr"), key=lambda key: len(result.get(key) or ""))
            text = result.get(longest) or ""
            if not text:
                result = {"exit_code": result.get("exit_code"), "truncated": True, "worker": self.config.name}
                return result_frame(request_id, success, result, error, error_type, task_id)
            result[longest] = text[: len(text) // 2]
            result["truncated"] = True
            frame = result_frame(request_id, success, result, error, error_type, task_id)
        return frame
