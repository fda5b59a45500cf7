"""The worker daemon (seed 002's executor): ``async-agent worker --hub ws://HOST:PORT --token T --name N``.

It connects to a hub over WebSocket (``ws://``, :class:`~async_task_system.remote.hub.RemoteHub`)
or gRPC (``grpc://``, :class:`~async_task_system.remote.grpc_hub.GrpcHub`; the client lives in
:mod:`.grpc_connection`, imported only for that scheme), registers (name, capabilities, labels,
version, the runtimes it offers), sends heartbeats, and runs what it is sent: shell and Python
scripts through :class:`~async_task_system.sandbox.process.ScriptRunner` (own process group, SIGTERM then
SIGKILL on timeout or cancel, rlimits, clean environment, capped output), and, with
``--tools-dir``, commands of runtime tools (:mod:`async_task_system.runtimes`) whose entry files
lie in that directory. Job execution is the same for both transports: each delivers and takes
:mod:`..protocol` frames (a :class:`Connection`), translating at its edge.

* output lines are streamed back to the hub while a script runs, then its result;
* at most ``--max-concurrent`` scripts at once (default 5); the rest wait their turn, and a
  cancel for one still waiting means it never starts;
* a result is shortened to fit the hub's message limit rather than be refused;
* when the hub goes away, running scripts are killed (the hub has failed them already) and the
  worker reconnects with exponential back-off. A refused token is fatal (exit code 3).

Modules: :mod:`.config` (:class:`WorkerConfig`), :mod:`.connection` (the :class:`Connection` seam,
its errors, the WebSocket client), :mod:`.grpc_connection` (the gRPC client), :mod:`.jobs` (the
job runner), :mod:`.daemon` (the connection loop), :mod:`.protect` (the token kept from scripts)
and :mod:`.cli` (the flags and the process). This package is the public path of them all.
"""

from __future__ import annotations

from ...sandbox.process import ScriptRunner
from .cli import config_from_args, configure_parser, run
from .config import REMOTE_RUNTIMES, WorkerConfig
from .connection import BadAddress, Connection, ConnectionEnded, TokenRefused, ws_connect
from .daemon import EXIT_REGISTRATION_FAILED, EXIT_TOKEN_REFUSED, WorkerDaemon, connector
from .jobs import JobRunner
from .protect import protect_secret

__all__ = [
    "BadAddress",
    "Connection",
    "ConnectionEnded",
    "EXIT_REGISTRATION_FAILED",
    "EXIT_TOKEN_REFUSED",
    "JobRunner",
    "REMOTE_RUNTIMES",
    "ScriptRunner",
    "TokenRefused",
    "WorkerConfig",
    "WorkerDaemon",
    "config_from_args",
    "configure_parser",
    "connector",
    "protect_secret",
    "run",
    "ws_connect",
]
