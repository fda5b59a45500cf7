"""What a platform does when it starts: reap what a dead platform left, open or adopt the manager
(its id prefix reserved on the store), heartbeat that prefix, and start the gRPC hub and the REST API."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import string
import threading
from typing import Any

from ..core.manager import TaskManager
from ..http_front import FrontLimits
from .interface import PlatformAPI
from .store import Store

__all__ = ["Heartbeat", "open_manager", "reap_unfinished", "reserve_prefix", "start_grpc_hub", "start_rest"]

logger = logging.getLogger(__name__)


def reap_unfinished(store: Store, stale_after: float) -> list[str]:
    """Mark ``lost`` the records a platform that is gone left unfinished, and every agent offline;
    the reaped task ids. Another platform running on this database (alive: its process exists here,
    or it heartbeats within ``stale_after`` seconds) keeps its tasks."""
    reaped = store.tasks.reap(
        "the platform stopped while this task was in flight (its outcome is unknown); "
        "it was marked lost when the platform started again",
        stale_after=stale_after,
    )
    if reaped:
        logger.warning("marked %d task(s) left unfinished by a previous platform as lost", len(reaped))
    store.agents.mark_all_offline("the platform restarted")
    return reaped


def reserve_prefix(store: Store) -> str:
    """A task-id prefix no manager ever used on this store, reserved for this process."""
    letters = string.ascii_lowercase + string.digits
    for _ in range(100):
        prefix = "task_" + "".join(secrets.choice(letters) for _ in range(8)) + "_"
        if store.prefixes.reserve(prefix):
            return prefix
    raise RuntimeError("could not reserve a task-id prefix on the store")  # pragma: no cover


def open_manager(given: Any, store: Store, retention: int) -> TaskManager:
    """The platform's manager: a new one (``given`` None) on a fresh prefix, or the ``TaskManager`` /
    ``AsyncAgent`` given, whose id prefix must be new to this store or already this process's."""
    if given is None:
        return TaskManager(max_workers=8, retention=retention, id_prefix=reserve_prefix(store))
    manager = getattr(given, "task_manager", given)
    if not isinstance(manager, TaskManager):
        raise TypeError(f"manager must be a TaskManager or an AsyncAgent, got {type(given).__name__}")
    if getattr(given, "agent", None) is not None:
        from ..remote.tools import attach_remote  # the agent gets the remote_execute tool

        attach_remote(given, hub=False)
    row = store.prefixes.get(manager.id_prefix)
    if row is None:
        store.prefixes.reserve(manager.id_prefix)
    elif row.pid != os.getpid() or row.host != socket.gethostname():
        raise ValueError(
            f"the manager's id prefix {manager.id_prefix!r} was used by another process on this database, "
            "so its task ids could repeat stored ones: create the manager with a new id_prefix, or let "
            "the Platform create its own manager"
        )
    return manager


class Heartbeat:
    """A thread that tells other platforms on the database that ``prefix``'s one is alive, every
    ``interval`` seconds, until :meth:`stop`."""

    def __init__(self, store: Store, prefix: str, interval: float) -> None:
        self.store = store
        self.prefix = prefix
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="platform-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.store.prefixes.heartbeat(self.prefix)
            except Exception:
                logger.warning("platform heartbeat failed", exc_info=True)

    def stop(self, timeout: float | None = None) -> None:
        """End the thread (waiting at most ``timeout`` seconds)."""
        self._stopping.set()
        self._thread.join(timeout)


def start_grpc_hub(
    manager: TaskManager, router: Any, host: str, port: int, token: str, **options: Any
) -> Any:
    """The gRPC hub on ``router``, started; None (a warning logged) when gRPC is not installed."""
    try:
        from ..remote.grpc_hub import GrpcHub
    except ImportError as exc:
        logger.warning("the gRPC transport is not available (%s): serving WebSocket workers only", exc)
        return None
    return GrpcHub(manager, router=router, host=host, port=port, token=token, **options).start()


def start_rest(platform: PlatformAPI, host: str, port: int, limits: FrontLimits | None) -> tuple[Any, int]:
    """The REST API of ``platform`` served in a thread (:class:`~..http_front.HttpServer`), and its port."""
    from ..http_front import listen, start_server
    from .rest import create_app

    sock = listen(host, port, limits)
    port = sock.getsockname()[1]
    return start_server(create_app(platform), sock, limits=limits, name="platform-http"), port
