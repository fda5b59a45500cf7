"""RemoteHub: the WebSocket server remote workers join, running on its own asyncio loop thread.

The agent process starts it (``attach_remote(agent)`` or ``RemoteHub(manager, token=...).start()``).
Workers connect to ``ws://HOST:PORT`` with ``Authorization: Bearer <token>`` (anything else is
refused with HTTP 401 before the WebSocket opens; the token is the shared one or, with per-agent
credentials, the agent's own, which registers only its name: see :mod:`.hub_base`), register a
name and capabilities, and send
heartbeats. The hub is the bridge's transport, and only the WebSocket part of it: it authorizes
connections, checks frames (:mod:`.protocol`) and their sizes, watches heartbeats, picks close
codes, and hands everything else to a :class:`~.router.WorkerRouter`, which keeps the registry of
workers and routes each request to the named worker or to the least loaded one with a free slot
(waiting at the hub while all are busy), and turns result frames into ``complete`` on the bridge.

Faults and what they do:

* no worker connected (or none that can run the language, or the named one is absent): the
  request fails at once with ``no_worker`` and a message saying how to start a worker;
* a worker's connection closes, or it sends nothing for ``heartbeat_timeout`` seconds: its
  requests fail with ``worker_lost`` and the connection is closed;
* ``stop()``: every request routed through the hub fails with ``hub_stopped``;
* a malformed frame, an unknown type, a result for a request the worker was not given, or a frame
  over ``max_message_bytes``: the worker gets an ``error`` frame and nothing else changes (frames
  over four times the limit make the WebSocket library close that one connection with 1009).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

try:
    from websockets.asyncio.server import Server, ServerConnection, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the remote hub needs the websockets library (>= 15): pip install 'async_task_system[remote]'"
    ) from exc

from ...core.compat import TIMEOUT_ERRORS
from ..protocol import ProtocolError, decode, encode, error_frame
from ..routing import Worker
from .hub_base import HubBase, RegisterRefused

__all__ = ["RemoteHub"]

logger = logging.getLogger("async_task_system.remote.hub")


class RemoteHub(HubBase):
    """A WebSocket hub for remote workers, bound to one task manager's remote bridge.

    Args:
        manager: a ``TaskManager`` (its ``remote_manager`` is used), an ``AsyncAgent`` (its task
            manager's), or a ``RemoteExecutionManager``.
        router: another hub's :class:`~.router.WorkerRouter` to feed (e.g. a gRPC hub's), so both
            transports share one registry; ``None`` creates one and makes this hub the transport.
        host: interface to bind; loopback unless you mean to accept workers from other machines.
        port: TCP port; 0 picks a free one (read it back from :attr:`port` / :attr:`url`).
        token: the shared secret workers must present. ``None`` generates one (see :attr:`token`).
        agent_tokens: per-agent credentials (an :class:`~.hub_base.AgentTokenCheck`): a name that has
            one registers only with its own token.
        require_agent_tokens: refuse every name without a credential (the shared token registers none).
        heartbeat_interval: seconds between the heartbeats workers are asked to send.
        heartbeat_timeout: a worker silent this long is declared lost and its requests fail.
        max_message_bytes: larger frames are refused with an error frame.
        register_timeout: seconds a new connection has to send its ``register`` frame.
        start_timeout: seconds a worker that reports starts may hold a command (with a free slot)
            without starting or answering it; then it fails with ``start_timeout`` (default
            ``heartbeat_timeout + 5``).
    """

    scheme = "ws"
    transport_name = "ws"

    _server: Server | None = None

    def start(self, timeout: float = 10.0) -> RemoteHub:
        """Start listening (returns once the port is bound) and, with its own router, become the bridge's transport."""
        return super().start(timeout)

    def __enter__(self) -> RemoteHub:
        return super().__enter__()

    # ------------------------------------------------------------------ server (hub loop)

    async def _serve(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._authorize,
            max_size=4 * self.max_message_bytes,
            ping_interval=None,  # liveness is the application heartbeat, with its own timeout
            compression=None,  # frames are small and the link is near: deflate costs more than it saves
            close_timeout=2.0,
        )
        sockets = list(self._server.sockets)
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()  # closes every worker connection with 1001 (going away)
            await self._server.wait_closed()

    def _close_link(self, worker: Worker, code: int, reason: str) -> None:
        asyncio.ensure_future(worker.connection.handle.close(code, reason))

    # ------------------------------------------------------------------ connections (hub loop)

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        if not self.authorized(request.headers.get("Authorization", "")):
            self.refused_connections += 1
            logger.warning("refused a connection from %s: missing or wrong token", connection.remote_address)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        worker: Worker | None = None
        reason = "connection closed"
        try:
            worker = await self._register(ws)
            if worker is None:
                return
            async for raw in ws:
                self.arm(worker)
                await self._on_frame(worker, raw)
        except ConnectionClosed:
            pass
        finally:
            if worker is not None:
                code = ws.close_code
                reason = f"connection closed with code {code}" if code is not None else reason
                self.drop(worker, reason)

    async def _register(self, ws: ServerConnection) -> Worker | None:
        try:
            raw = await asyncio.wait_for(ws.recv(), self.register_timeout)
        except TIMEOUT_ERRORS:
            await ws.close(1008, "send a register frame first")
            return None
        try:
            try:
                self.check_size(self._size(raw))
                message = decode(raw)
            except ProtocolError as exc:
                self.rejected_frames += 1
                raise RegisterRefused("malformed", str(exc)) from None
            request = ws.request
            authorization = request.headers.get("Authorization", "") if request is not None else ""
            fields = self.check_registration(message, authorization)
            # Booked before the answer goes out, so work sent the moment a client sees the worker
            # registered finds it; frames routed meanwhile wait until the answer is out.
            answered = asyncio.Event()
            worker = self.join(
                fields,
                lambda worker, frame: self.call_soon(self._send_frame, worker, frame, answered),
                ws,
                authorization,
            )
        except RegisterRefused as exc:
            await self._refuse(ws, exc)
            return None
        try:
            await ws.send(encode(self.registered(fields["name"])))
        except BaseException:
            self.drop(worker, "the connection closed before its registration was answered")
            raise
        finally:
            answered.set()
        return worker

    async def _refuse(self, ws: ServerConnection, refusal: RegisterRefused) -> None:
        if refusal.error_type == "hub_stopped":
            await ws.close(1001, "hub stopping")
            return
        frame = error_frame(str(refusal))
        if refusal.error_type in ("name_taken", "unauthorized"):
            frame["error_type"] = refusal.error_type
        await self._send_quietly(ws, encode(frame))
        reasons = {"name_taken": "worker name in use", "unauthorized": "token refused for this name"}
        await ws.close(1008, reasons.get(refusal.error_type, "registration failed"))

    @staticmethod
    def _size(raw: str | bytes) -> int:
        return len(raw) if isinstance(raw, bytes) or raw.isascii() else len(raw.encode("utf-8"))

    async def _on_frame(self, worker: Worker, raw: str | bytes) -> None:
        request_id = None
        try:
            self.check_size(self._size(raw))
            message = decode(raw)
            request_id = message.get("request_id") if isinstance(message.get("request_id"), str) else None
            self.handle_message(worker, message)
        except ProtocolError as exc:
            self.rejected_frames += 1
            logger.warning("worker %r sent a bad frame: %s", worker.name, exc)
            await self._send_quietly(worker.connection.handle, encode(error_frame(str(exc), request_id)))

    # ------------------------------------------------------------------ sending (hub loop)

    async def _send_frame(self, worker: Worker, frame: dict[str, Any], answered: asyncio.Event) -> None:
        """Send a frame the router handed over (once the registration's answer is out); an
        ``execute`` that cannot go out fails its request."""
        if not answered.is_set():
            await answered.wait()
        try:
            await worker.connection.handle.send(encode(frame))
        except Exception as exc:  # the connection went away between routing and sending
            if frame.get("type") == "execute":
                self.router.send_failed(worker, frame["request_id"], exc)

    @staticmethod
    async def _send_quietly(ws: ServerConnection, frame: str) -> None:
        try:
            await ws.send(frame)
        except Exception:
            pass
