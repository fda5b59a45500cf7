"""GrpcHub: the gRPC transport for remote workers (seed 002's ``AgentService.Connect`` stream).

Workers connect with ``async-agent worker --hub grpc://HOST:PORT`` and open one bidirectional
stream (``proto/agent.proto``), presenting ``authorization: Bearer <token>`` as call metadata. The
token (the shared one, or an agent's own: see :mod:`.hub_base`) is checked before a single message
is read (``UNAUTHENTICATED`` otherwise; a name its token may not register: ``PERMISSION_DENIED``); the first
message must be ``register`` within ``register_timeout`` seconds; after the ``register_response``
the worker heartbeats (each acknowledged with ``heartbeat_ack``), streams ``task_log`` lines and
sends a ``task_result`` per ``task_request``; the hub sends ``task_cancel`` to stop a task.

Everything past the wire is shared with the WebSocket hub through :class:`~.hub_base.HubBase`
(registration rules, liveness, routing through a :class:`~.router.WorkerRouter`, what each message
does), with protobuf translated to the same frames at the edge (:mod:`.grpc_codec`). ``router=``
feeds another hub's router, so WebSocket and gRPC workers share one registry.

Faults: the same as the WebSocket hub's. A message is measured before it is decoded: over
``max_message_bytes`` it is answered with an ``error`` (``oversized``), bytes that are not an
``AgentMessage`` with an ``error`` (``malformed``), a message out of order (a second ``register``,
a result for a task the worker was not given) with an ``error``; the stream stays open and the
server keeps serving. Messages over four times the limit are refused by gRPC itself
(``RESOURCE_EXHAUSTED``, ending that one stream). At most ``max_connections`` streams at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

try:
    import grpc
    from google.protobuf.message import DecodeError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the gRPC hub needs grpcio and protobuf: pip install 'async_task_system[grpc]'"
    ) from exc

from ...core.compat import TIMEOUT_ERRORS
from .._proto import agent_pb2
from ..protocol import ProtocolError, error_frame
from ..routing import Worker
from .grpc_codec import SERVICE, agent_frame, refusal_message, server_message
from .hub_base import HubBase, RegisterRefused

__all__ = ["GrpcHub"]

logger = logging.getLogger("async_task_system.remote.grpc_hub")

_OUTBOX_LIMIT = 10_000  # frames waiting to go to one worker; more means it stopped reading


class _Refused:
    """What the deserializer returns for bytes it will not decode (too large, not an AgentMessage)."""

    __slots__ = ("error_type", "message")

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        self.message = message


class GrpcHub(HubBase):
    """A gRPC hub for remote workers, bound to one task manager's remote bridge.

    Args: as :class:`~.hub.RemoteHub` (``manager``, ``router``, ``host``, ``port``, ``token``,
    ``heartbeat_interval``, ``heartbeat_timeout``, ``max_message_bytes``, ``register_timeout``,
    ``start_timeout``), plus
    ``max_connections``: streams served at once (more are refused with ``RESOURCE_EXHAUSTED``).
    """

    scheme = "grpc"
    transport_name = "grpc"

    def __init__(self, manager: Any, *, max_connections: int = 256, **options: Any) -> None:
        super().__init__(manager, **options)
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self._server: grpc.aio.Server | None = None

    def start(self, timeout: float = 10.0) -> GrpcHub:
        """Start listening (returns once the port is bound) and, with its own router, become the bridge's transport."""
        return super().start(timeout)

    def __enter__(self) -> GrpcHub:
        return super().__enter__()

    # ------------------------------------------------------------------ server (hub loop)

    async def _serve(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 4 * self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
            ],
            maximum_concurrent_rpcs=self.max_connections,
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Connect": grpc.stream_stream_rpc_method_handler(
                    self._connect,
                    request_deserializer=self._decode,
                    response_serializer=agent_pb2.ServerMessage.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = server.add_insecure_port(f"{host}:{self.port}")
        if not port:
            raise OSError(f"could not bind the gRPC hub to {host}:{self.port}")
        self.port = port
        await server.start()
        self._server = server

    async def _close_server(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)  # ends every stream

    def _close_link(self, worker: Worker, code: int, reason: str) -> None:
        # the stream's reader: the call ends with UNAVAILABLE (4001: heartbeat) or UNAUTHENTICATED (4003)
        worker.connection.handle.cancel(reason, code == 4003)

    # ------------------------------------------------------------------ one stream (hub loop)

    def _decode(self, data: bytes) -> Any:
        """The deserializer: the size is checked first, and bytes that are not a message do not raise
        (gRPC would end the stream), they become a :class:`_Refused` the handler answers."""
        if len(data) > self.max_message_bytes:
            return _Refused(
                "oversized",
                f"message of {len(data)} bytes exceeds the limit of {self.max_message_bytes} bytes; dropped",
            )
        try:
            return agent_pb2.AgentMessage.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return _Refused("malformed", f"the bytes are not an AgentMessage: {exc}")

    def _frame(self, message: Any) -> dict[str, Any]:
        if isinstance(message, _Refused):
            raise ProtocolError(message.message)
        return agent_frame(message)

    async def _connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        metadata = {
            key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
        }
        authorization = metadata.get("authorization", "")
        if not self.authorized(authorization):
            self.refused_connections += 1
            logger.warning("refused a gRPC stream from %s: missing or wrong token", context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        worker = await self._register(context, authorization)
        if worker is None:
            return
        handle: _StreamHandle = worker.connection.handle
        writer = asyncio.ensure_future(self._write_loop(worker, context, handle.outbox))
        reader = handle.task = asyncio.ensure_future(self._read_loop(worker, context, handle.outbox))
        reason = "stream closed"
        try:
            reason = await reader
        except asyncio.CancelledError:
            if not handle.expired:  # the server is stopping
                raise
        finally:
            reader.cancel()
            writer.cancel()
            self.drop(worker, reason)
        if handle.expired:
            if handle.unauthorized:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, handle.reason)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no heartbeat for {self.heartbeat_timeout:g} s")

    async def _read_loop(
        self, worker: Worker, context: grpc.aio.ServicerContext, outbox: asyncio.Queue[dict[str, Any]]
    ) -> str:
        """Apply the worker's messages until its stream ends; returns why it ended."""
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    return "stream closed"
                self.arm(worker)
                await self._on_message(worker, message, outbox)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke (the peer went away)
            return f"stream ended: {type(exc).__name__}"

    async def _register(self, context: grpc.aio.ServicerContext, authorization: str) -> Worker | None:
        try:
            message = await asyncio.wait_for(context.read(), self.register_timeout)
        except TIMEOUT_ERRORS:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "send a register message first")
        if message is grpc.aio.EOF:
            return None
        try:
            try:
                frame = self._frame(message)
            except ProtocolError as exc:
                self.rejected_frames += 1
                raise RegisterRefused("malformed", str(exc)) from None
            fields = self.check_registration(frame, authorization)
            # Booked before the answer goes out, so work sent the moment a client sees the worker
            # registered finds it; routed requests wait in the outbox, written only after the answer.
            outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_OUTBOX_LIMIT)
            worker = self.join(fields, self._sender, _StreamHandle(outbox), authorization)
        except RegisterRefused as exc:
            with contextlib.suppress(Exception):
                await context.write(refusal_message(exc.error_type, str(exc)))
            code = {
                "name_taken": grpc.StatusCode.ALREADY_EXISTS,
                "unauthorized": grpc.StatusCode.PERMISSION_DENIED,
                "hub_stopped": grpc.StatusCode.UNAVAILABLE,
            }.get(exc.error_type, grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(code, str(exc))
            return None  # pragma: no cover - abort raises
        try:
            await context.write(server_message(self.registered(fields["name"])))
        except BaseException:
            self.drop(worker, "the stream closed before its registration was answered")
            raise
        return worker

    async def _on_message(self, worker: Worker, message: Any, outbox: asyncio.Queue[dict[str, Any]]) -> None:
        request_id = None
        try:
            frame = self._frame(message)
            request_id = frame.get("request_id") or None
            self.handle_message(worker, frame)
            if frame["type"] == "heartbeat":
                self._put(worker, outbox, {"type": "heartbeat_ack"})
        except ProtocolError as exc:
            self.rejected_frames += 1
            logger.warning("worker %r sent a bad message: %s", worker.name, exc)
            error = error_frame(str(exc), request_id)
            error["error_type"] = message.error_type if isinstance(message, _Refused) else "malformed"
            self._put(worker, outbox, error)

    # ------------------------------------------------------------------ sending

    def _sender(self, worker: Worker, frame: dict[str, Any]) -> None:
        """The router's ``send`` (any thread): queue the frame on the hub loop."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the gRPC hub is not running")
        loop.call_soon_threadsafe(self._put, worker, worker.connection.handle.outbox, frame)

    def _put(self, worker: Worker, outbox: asyncio.Queue[dict[str, Any]], frame: dict[str, Any]) -> None:
        try:
            outbox.put_nowait(frame)
        except asyncio.QueueFull:  # the worker stopped reading: it is as good as lost
            if frame.get("type") == "execute":
                self.router.send_failed(
                    worker, frame["request_id"], RuntimeError("the worker's outbox is full")
                )

    async def _write_loop(
        self, worker: Worker, context: grpc.aio.ServicerContext, outbox: asyncio.Queue[dict[str, Any]]
    ) -> None:
        # heartbeat_ack is a ServerMessage of its own; everything else translates from its frame
        ack = agent_pb2.ServerMessage(heartbeat_ack=agent_pb2.Response(success=True))
        while True:
            frame = await outbox.get()
            try:
                await context.write(ack if frame["type"] == "heartbeat_ack" else server_message(frame))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream went away between routing and sending
                if frame.get("type") == "execute":
                    self.router.send_failed(worker, frame["request_id"], exc)


class _StreamHandle:
    """One worker stream: its reading task (cancelled when the heartbeat expires or the hub closes
    it), its outbox, and why it was closed."""

    __slots__ = ("task", "outbox", "expired", "reason", "unauthorized")

    def __init__(self, outbox: asyncio.Queue[dict[str, Any]]) -> None:
        self.task: asyncio.Future[str] | None = None
        self.outbox = outbox
        self.expired = False
        self.reason = ""
        self.unauthorized = False

    def cancel(self, reason: str, unauthorized: bool = False) -> None:
        self.expired = True
        self.reason = reason
        self.unauthorized = unauthorized
        if self.task is not None:
            self.task.cancel()
