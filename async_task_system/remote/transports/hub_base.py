"""HubBase: what the WebSocket hub and the gRPC hub share, so both apply the same rules.

A hub is a transport in front of a :class:`~.router.WorkerRouter`: it runs its server on an
asyncio loop thread of its own, authorizes connections, and turns what workers send into router
calls. Everything here is independent of the wire: the loop thread's life, owning or sharing the
router, the registration rules (a valid ``register`` message, the hub accepting, the name free),
the liveness deadline (any message re-arms it; ``heartbeat_timeout`` seconds of silence and the
worker is lost), what a ``heartbeat``, ``started``, ``log`` or ``result`` message does, and the
bound on a dispatch that never starts (``start_timeout``: a hub owning its router checks it every
second, see :meth:`~.router.WorkerRouter.expire_unstarted`). Messages reach this
class as :mod:`.protocol` dicts: the WebSocket hub decodes JSON text, the gRPC hub translates
protobuf messages at the edge (:mod:`.grpc_codec`).

A hub given ``router=`` (another hub's) feeds that router and leaves it open when it stops (only
its own workers leave, their requests failing with ``worker_lost``); without, it creates one and
becomes the bridge's transport, and stopping it closes the router (``hub_stopped``).

Credentials: every connection presents a bearer token, checked before a single frame is read (the
shared ``token``, or -- given ``agent_tokens``, an :class:`AgentTokenCheck` -- any agent's live
token). The ``register`` frame then names the worker, and the name must fit the token: a name with
a credential registers only with its own token (the shared one is refused for it), an agent token
registers only its own name, and with ``require_agent_tokens`` a name without a credential is
refused too (``RegisterRefused("unauthorized")``). :meth:`HubBase.recheck` closes the live
connection of a name whose token no longer fits it (revoked, or replaced by a new one). The checker answers from memory (the hub calls
it on its event loop); the platform keeps it fresh.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ...core.errors import AsyncTaskSystemError
from ..bridge import RemoteExecutionManager
from ..protocol import (
    ProtocolError,
    check_heartbeat,
    check_log,
    check_register,
    check_result,
    check_started,
    registered_frame,
)
from ..requests import RemoteRequest, RemoteUnavailable
from ..router import WorkerRouter
from ..routing import Worker

__all__ = ["AgentTokenCheck", "HubBase", "Link", "RegisterRefused"]

logger = logging.getLogger("async_task_system.remote.hub_base")


class AgentTokenCheck(Protocol):
    """Per-agent credentials as a hub sees them (the platform's ``AgentTokens`` is one); memory only."""

    def __call__(self, name: str, token: str) -> bool | None:
        """True: ``token`` is ``name``'s live token; False: ``name`` has one and this is not it; None: ``name`` has none."""
        ...

    def known(self, token: str) -> bool:
        """Whether ``token`` is some agent's live token."""
        ...


class RegisterRefused(AsyncTaskSystemError):
    """A registration the hub turns down: ``error_type`` is ``malformed``, ``unauthorized``, ``name_taken`` or ``hub_stopped``."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class Link:
    """A hub's side of one worker connection: the transport's handle and the liveness deadline (hub loop only)."""

    __slots__ = ("handle", "deadline", "authorization")

    def __init__(self, handle: Any, authorization: str = "") -> None:
        self.handle = handle
        self.deadline: asyncio.TimerHandle | None = None
        self.authorization = authorization  # what the connection presented (rechecked on revocation)


class HubBase:
    """The transport-independent part of a hub; subclasses serve one wire protocol.

    Subclasses set ``scheme`` and ``transport_name``, and implement :meth:`_serve` (bind, set
    ``self.port``), :meth:`_close_server` (stop serving, close connections) and
    :meth:`_close_link` (close one worker's connection after its heartbeat expired).
    """

    scheme = ""
    transport_name = ""

    def __init__(
        self,
        manager: Any,
        *,
        router: WorkerRouter | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        max_message_bytes: int = 1 << 20,
        register_timeout: float = 10.0,
        start_timeout: float | None = None,
        agent_tokens: AgentTokenCheck | None = None,
        require_agent_tokens: bool = False,
    ) -> None:
        if require_agent_tokens and agent_tokens is None:
            raise ValueError("require_agent_tokens needs agent_tokens, the checker of the agents' tokens")
        if heartbeat_timeout <= heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
        if max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        manager = getattr(manager, "task_manager", manager)  # an AsyncAgent works too
        self.remote: RemoteExecutionManager = (
            manager if isinstance(manager, RemoteExecutionManager) else manager.remote_manager
        )
        self.host = host
        self.port = port
        self.token = token if token else secrets.token_urlsafe(18)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.max_message_bytes = max_message_bytes
        self.register_timeout = register_timeout
        self.agent_tokens = agent_tokens
        self.require_agent_tokens = require_agent_tokens
        # seconds a start-reporting worker may hold a command with a free slot without starting it
        self.start_timeout = heartbeat_timeout + 5.0 if start_timeout is None else float(start_timeout)
        if self.start_timeout <= 0:
            raise ValueError("start_timeout must be a positive number of seconds")
        self.owns_router = router is None
        self.router = (
            router
            if router is not None
            else WorkerRouter(self.remote, no_worker_message=self._no_worker_message)
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._own: set[Worker] = set()  # the workers connected through this hub (hub loop only)
        self.refused_connections = 0
        self.rejected_frames = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``SCHEME://HOST:PORT`` for ``async-agent worker --hub``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Any:
        """Start listening (returns once the port is bound); a hub with its own router becomes the bridge's transport."""
        if self._thread is not None:
            raise RuntimeError("this hub was already started; create a new one")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name=f"async-task-{self.transport_name}-hub", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
            raise
        if self.owns_router or not self.router.accepting:
            self.router.open()
        if self.owns_router:
            self.remote.set_transport(self)
            loop.call_soon_threadsafe(self._sweep)
        logger.info("%s hub listening on %s", self.transport_name, self.url)
        return self

    def _sweep(self) -> None:
        """Fail dispatches that never started (hub loop, every second while the router accepts)."""
        if self._stopped:
            return
        try:
            self.router.expire_unstarted(self.start_timeout)
        except Exception:
            logger.exception("checking for commands that never started failed")
        asyncio.get_running_loop().call_later(min(1.0, self.start_timeout / 4), self._sweep)

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting workers and close their connections; with its own router, fail every request
        routed here (``hub_stopped``), else only this hub's workers leave (``worker_lost``)."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        # The hub stays the transport (refusing with hub_stopped) until another one is set, so new
        # requests fail clearly instead of waiting for a response nothing will deliver.
        if self.owns_router:
            self.router.close("hub_stopped", "the remote hub stopped before the command finished")
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            except Exception:
                logger.exception("closing the %s hub's server failed", self.transport_name)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)

    async def _shutdown(self) -> None:
        await self._close_server()
        for worker in list(self._own):
            self.drop(worker, "hub stopped")

    async def _serve(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _close_server(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close_link(self, worker: Worker, code: int, reason: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self) -> Any:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ workers

    def workers(self) -> list[dict[str, Any]]:
        """The workers of the router (shared by every hub feeding it): name, transport, labels, load, times."""
        return self.router.workers()

    def wait_for_workers(self, count: int = 1, timeout: float | None = 10.0) -> bool:
        """Block until at least ``count`` workers are registered (True) or ``timeout`` seconds pass (False)."""
        return self.router.wait_for_workers(count, timeout)

    # ------------------------------------------------------------------ transport (any thread)

    def send_request(self, request: RemoteRequest) -> None:
        """Route ``request`` to a worker, or raise :class:`RemoteUnavailable` (``no_worker``/``hub_stopped``)."""
        self.router.send_request(request)

    def cancel_request(self, request: RemoteRequest, reason: str) -> None:
        """Tell the worker running ``request`` to kill it (best effort)."""
        self.router.cancel_request(request, reason)

    def _no_worker_message(self) -> str:
        return (
            f"no remote worker is connected to the hub at {self.url}; start one with: "
            f"async-agent worker --hub {self.url} --token <TOKEN> --name <NAME>"
        )

    @staticmethod
    def bearer(header: str) -> str:
        """The token of an ``Authorization: Bearer <token>`` value ("" for anything else)."""
        return header[7:].strip() if header[:7].lower() == "bearer " else ""

    def token_matches(self, header: str) -> bool:
        """Whether an ``Authorization`` value is ``Bearer <this hub's shared token>`` (constant-time compare)."""
        supplied = self.bearer(header)
        return bool(supplied) and hmac.compare_digest(
            supplied.encode("utf-8", "surrogatepass"), self.token.encode()
        )

    def authorized(self, header: str) -> bool:
        """Whether an ``Authorization`` value may open a connection: the shared token, or an agent's live
        token (which name it may register is checked at ``register``: :meth:`check_registration`)."""
        if self.token_matches(header):
            return True
        supplied = self.bearer(header)
        return bool(supplied) and self.agent_tokens is not None and self.agent_tokens.known(supplied)

    # ------------------------------------------------------------------ registration (hub loop)

    def check_registration(self, message: dict[str, Any], authorization: str) -> dict[str, Any]:
        """The fields of a first message sent on a connection that presented ``authorization`` (its
        ``Authorization`` value), or :class:`RegisterRefused` saying why it is not let in."""
        try:
            if message.get("type") != "register":
                raise ProtocolError(
                    f"the first frame must be a register frame, got type {message.get('type')!r}"
                )
            fields = check_register(message)
        except ProtocolError as exc:
            self.rejected_frames += 1
            raise RegisterRefused("malformed", str(exc)) from None
        self._check_credential(fields["name"], authorization)
        if not self.router.accepting:
            raise RegisterRefused("hub_stopped", "the hub is stopping")
        if self.router.has_worker(fields["name"]):
            raise self._name_taken(fields["name"])
        return fields

    def _check_credential(self, name: str, authorization: str) -> None:
        """RegisterRefused (``unauthorized``) unless the connection's token may register ``name``."""
        supplied = self.bearer(authorization)
        shared = self.token_matches(authorization)
        verdict = self.agent_tokens(name, supplied) if self.agent_tokens is not None and supplied else None
        if verdict is True or (verdict is None and shared and not self.require_agent_tokens):
            return
        if verdict is False and shared:
            problem = f"worker name {name!r} has its own token: register it with that token (the shared token is refused for it)"
        elif verdict is False:
            problem = f"this token is not worker {name!r}'s (or it was revoked): an agent's token registers only that agent's name"
        elif shared:
            problem = (
                f"this hub requires a token per agent and worker name {name!r} has none: "
                f"issue one (async-agent platform token issue {name}) and start the worker with it"
            )
        else:
            problem = f"this token is another agent's: it cannot register worker name {name!r}"
        self.refused_connections += 1
        logger.warning("refused the registration of worker %r: %s", name, problem)
        raise RegisterRefused("unauthorized", problem)

    def registered(self, name: str) -> dict[str, Any]:
        """The ``registered`` answer to worker ``name``: this hub's heartbeat and message limits."""
        return registered_frame(name, self.heartbeat_interval, self.heartbeat_timeout, self.max_message_bytes)

    def join(
        self,
        fields: dict[str, Any],
        sender: Callable[[Worker, dict[str, Any]], None],
        handle: Any,
        authorization: str = "",
    ) -> Worker:
        """Register a worker (before the hub's answer goes out: the transport holds frames routed to it
        until the answer is out, so no task precedes it); arm its deadline.

        ``sender(worker, frame)`` hands a frame to the connection (it must not block);
        ``authorization`` is what the connection presented (:meth:`recheck` checks it again).
        """
        worker = Worker(
            fields["name"],
            fields["capabilities"],
            fields["max_concurrent"],
            lambda frame: sender(worker, frame),
            Link(handle, authorization),
            labels=fields["labels"],
            version=fields["version"],
            transport=self.transport_name,
            runtimes=fields["runtimes"],
        )
        try:
            self.router.join(worker)
        except RemoteUnavailable as exc:
            if exc.error_type == "name_taken":  # another connection with the name came in meanwhile
                raise self._name_taken(fields["name"]) from None
            raise RegisterRefused("hub_stopped", "the hub is stopping") from None
        self._own.add(worker)
        self.arm(worker)
        return worker

    def recheck(self, name: str, reason: str) -> None:
        """Check worker ``name``'s live connection through this hub again (any thread; its credential was
        issued or revoked): closed, its requests failing with ``worker_lost``, if its token no longer
        registers the name."""
        self.call_soon(self._recheck, name, reason)

    async def _recheck(self, name: str, reason: str) -> None:
        for worker in [worker for worker in self._own if worker.name == name]:
            try:
                self._check_credential(name, worker.connection.authorization)
            except RegisterRefused:
                logger.warning("closing the connection of worker %r: %s", name, reason)
                self.drop(worker, reason)
                self._close_link(worker, 4003, reason)

    def _name_taken(self, name: str) -> RegisterRefused:
        self.rejected_frames += 1
        logger.warning("refused a second connection for worker %r (the first is alive)", name)
        return RegisterRefused(
            "name_taken", f"worker name {name!r} is in use by a live connection; retry later"
        )

    # ------------------------------------------------------------------ liveness (hub loop)

    def arm(self, worker: Worker) -> None:
        """(Re)start the worker's liveness deadline: any message counts as a heartbeat."""
        self.router.seen(worker)
        link: Link = worker.connection
        if link.deadline is not None:
            link.deadline.cancel()
        loop = asyncio.get_running_loop()
        link.deadline = loop.call_later(self.heartbeat_timeout, self._heartbeat_expired, worker)

    def _heartbeat_expired(self, worker: Worker) -> None:
        logger.warning("worker %r sent nothing for %g s: declared lost", worker.name, self.heartbeat_timeout)
        self.drop(worker, f"no heartbeat for {self.heartbeat_timeout:g} s")
        self._close_link(worker, 4001, "heartbeat timeout")

    def drop(self, worker: Worker, reason: str) -> None:
        """Stop watching ``worker``'s liveness; the router fails its requests (``worker_lost``)."""
        link: Link = worker.connection
        if link.deadline is not None:
            link.deadline.cancel()
        self._own.discard(worker)
        self.router.leave(worker, reason)

    # ------------------------------------------------------------------ messages (hub loop)

    def check_size(self, size: int) -> None:
        """ProtocolError for a message of ``size`` bytes over ``max_message_bytes`` (checked before decoding)."""
        if size > self.max_message_bytes:
            raise ProtocolError(
                f"frame of {size} bytes exceeds the limit of {self.max_message_bytes} bytes; dropped"
            )

    def handle_message(self, worker: Worker, message: dict[str, Any]) -> None:
        """Apply a ``heartbeat``, ``started``, ``log`` or ``result`` message from ``worker``; ProtocolError if it is not one."""
        kind = message.get("type")
        if kind == "heartbeat":
            self.router.heartbeat(worker, check_heartbeat(message)["running"])
        elif kind == "started":
            started = check_started(message)
            self.router.started(worker, started["request_id"], started["started_at"])
        elif kind == "log":
            log = check_log(message)
            self.router.log(worker, log["request_id"], log["stream"], log["line"])
        elif kind == "result" or (kind is None and "request_id" in message):
            fields = check_result(message)
            self.router.result(
                worker,
                fields["request_id"],
                fields["success"],
                fields["result"],
                fields["error"],
                fields["error_type"],
            )
        elif kind == "register":
            raise ProtocolError("this connection is registered already; a second register frame is refused")
        else:
            raise ProtocolError(f"unknown frame type {kind!r}: expected heartbeat, started, log or result")

    # ------------------------------------------------------------------ sending (any thread -> hub loop)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run the coroutine function ``fn(*args)`` on the hub loop (from any thread; dropped once it closed)."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(fn(*args)))
        except RuntimeError:  # the loop has closed
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} workers={len(self.router.connected())} routed={self.router.routed}>"
