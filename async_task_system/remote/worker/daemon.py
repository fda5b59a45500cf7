"""The worker daemon's connection loop: connect, register, heartbeat, hand frames to the job runner, reconnect.

:class:`WorkerDaemon` runs one connection at a time (:func:`connector` picks the client by the
hub's scheme) and gives ``execute`` / ``cancel`` frames to its :class:`~.jobs.JobRunner`. When the
hub goes away, running scripts are killed (the hub has failed them already) and the daemon
reconnects with exponential back-off. A refused token is fatal (:data:`EXIT_TOKEN_REFUSED`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from ...core.compat import TIMEOUT_ERRORS
from ...sandbox.process import ScriptRunner
from ..protocol import ProtocolError, check_execute, heartbeat_frame, register_frame, result_frame
from .config import WorkerConfig
from .connection import BadAddress, Connection, ConnectionEnded, TokenRefused, ws_connect
from .jobs import JobRunner

__all__ = ["EXIT_REGISTRATION_FAILED", "EXIT_TOKEN_REFUSED", "WorkerDaemon", "connector"]

logger = logging.getLogger("async_task_system.remote.worker")

EXIT_TOKEN_REFUSED = 3
EXIT_REGISTRATION_FAILED = 4


def connector(hub: str) -> Any:
    """The connect function for ``hub``'s scheme: ``ws://``/``wss://`` or ``grpc://`` (imported only then)."""
    if hub.startswith("grpc://"):
        from .grpc_connection import grpc_connect

        return grpc_connect
    if hub.startswith(("ws://", "wss://")):
        return ws_connect
    raise BadAddress(f"--hub must start with ws://, wss:// or grpc://, got {hub!r}")


class WorkerDaemon:
    """Connects to the hub, registers, heartbeats, runs requests; reconnects with back-off."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.jobs = JobRunner(config)
        self._stop = asyncio.Event()

    @property
    def runner(self) -> ScriptRunner:
        """The script runner of the jobs."""
        return self.jobs.runner

    @property
    def runtimes(self) -> list[str]:
        """The runtimes this worker offers (registered with the hub)."""
        return self.jobs.runtimes

    @property
    def answered(self) -> int:
        """Requests answered (a result sent), over all connections."""
        return self.jobs.answered

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler on the worker's loop)."""
        self._stop.set()

    async def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        config = self.config
        try:
            connect = connector(config.hub)
        except (BadAddress, ImportError) as exc:
            logger.error("%s", exc)
            return 2
        delay = config.reconnect_initial
        while not self._stop.is_set():
            ended = "the hub closed the connection"  # why a --once worker exits
            try:
                async with connect(config) as connection:
                    code = await self._session(connection)
                    if code is not None:
                        return code
                    delay = config.reconnect_initial
            except TokenRefused as exc:
                logger.error("the hub at %s refused the token (%s); check --token", config.hub, exc)
                return EXIT_TOKEN_REFUSED
            except BadAddress as exc:
                logger.error("bad --hub address: %s", exc)
                return 2
            except (OSError, ConnectionEnded, ProtocolError, *TIMEOUT_ERRORS) as exc:
                ended = f"the connection failed or ended: {exc or type(exc).__name__}"
                logger.warning("connection to %s failed or ended: %s", config.hub, exc or type(exc).__name__)
            except Exception as exc:  # a daemon keeps serving: log it, back off, reconnect
                ended = f"unexpected error: {type(exc).__name__}: {exc}"
                logger.exception("unexpected error in the connection to %s", config.hub)
            finally:
                killed = self.jobs.kill_all()
                if killed:
                    logger.warning("killed %d running script(s): the hub connection ended", killed)
            if config.once and not self._stop.is_set():
                logger.info("--once: %s after %d job(s); exiting", ended, self.answered)
            if config.once or self._stop.is_set():
                break
            wait = delay * (0.5 + random.random() / 2)
            logger.info("reconnecting in %.2f s", wait)
            with contextlib.suppress(*TIMEOUT_ERRORS):
                await asyncio.wait_for(self._stop.wait(), wait)
            delay = min(delay * 2, config.reconnect_max)
        await self.jobs.drain()
        return 0

    async def _session(self, connection: Connection) -> int | None:
        """One connection: register, then serve frames until it closes. An int return ends the daemon."""
        config = self.config
        await connection.send(
            register_frame(
                config.name,
                list(config.capabilities),
                config.max_concurrent,
                labels={**config.sandbox_labels(), **config.labels},
                worker_version=config.version,
                runtimes=self.runtimes,
            )
        )
        reply = await asyncio.wait_for(connection.recv(), 10)
        if reply.get("type") != "registered":
            if reply.get("error_type") == "name_taken":  # our previous connection is not gone yet
                logger.warning("the hub still has a connection named %r; retrying", config.name)
                return None
            logger.error("the hub refused the registration: %s", reply.get("error", reply))
            return EXIT_REGISTRATION_FAILED
        interval = float(reply.get("heartbeat_interval") or 5.0)
        limit = reply.get("max_message_bytes")
        self.jobs.connected(limit if isinstance(limit, int) and limit > 0 else None, connection.size)
        logger.info("registered with %s as %r", config.hub, config.name)
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send_loop(connection, outbox))
        beats = asyncio.ensure_future(self._heartbeats(outbox, interval))
        stopper = asyncio.ensure_future(self._stop.wait())
        receiver = asyncio.ensure_future(self._receive_loop(connection, outbox))
        try:
            done, _ = await asyncio.wait({sender, receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                await connection.close("worker stopping")
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (sender, beats, stopper, receiver):
                task.cancel()
            await self.jobs.drain()
        return 0 if self._stop.is_set() else None

    async def _receive_loop(self, connection: Connection, outbox: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            try:
                message = await connection.recv()
            except ProtocolError as exc:
                logger.warning("ignored a bad frame from the hub: %s", exc)
                continue
            except ConnectionEnded:
                return
            kind = message.get("type")
            if kind == "execute":
                try:
                    request = check_execute(message)
                except ProtocolError as exc:
                    request_id = message.get("request_id")
                    if isinstance(request_id, str):
                        outbox.put_nowait(result_frame(request_id, False, None, str(exc), "remote_error"))
                    continue
                self.jobs.start(request, outbox)
            elif kind == "cancel":
                self.jobs.cancel(str(message.get("request_id")))
            elif kind == "error":
                logger.warning("the hub reported an error: %s", message.get("error"))
            else:
                logger.debug("ignored a %r frame", kind)

    async def _send_loop(self, connection: Connection, outbox: asyncio.Queue[dict[str, Any]]) -> None:
        # One sender keeps frames in order: a script's log lines always precede its result.
        while True:
            frame = await outbox.get()
            await connection.send(frame)

    async def _heartbeats(self, outbox: asyncio.Queue[dict[str, Any]], interval: float) -> None:
        while True:
            outbox.put_nowait(heartbeat_frame(self.jobs.running, self.jobs.queued))
            await asyncio.sleep(interval)
