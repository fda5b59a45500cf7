"""``async-agent platform``: the store, the WebSocket and gRPC hubs and the REST API in one process.

Binds 127.0.0.1 unless ``--host`` says otherwise; one token for workers and REST clients
(``--token``, ``$ASYNC_AGENT_TOKEN``, or generated and printed once), and per-agent tokens as an
option (``async-agent platform token issue NAME`` / ``revoke NAME``: :mod:`.token_cli`;
``--agent-tokens required`` to refuse every agent without one). Prints the three addresses, the
dashboard's (with where its token is, never the token in the URL) and the command that starts a
worker, then serves until SIGINT or SIGTERM, and stops cleanly: in-flight tasks end ``failed`` with
``hub_stopped``, queued records are written, the store is closed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ..remote.cli import add_hub_limit_arguments
from .token_cli import configure_token_parser, run_token

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``async-agent platform`` flags."""
    parser.add_argument(
        "--db",
        default="sqlite:///async_task_system.db",
        help="store URL: a SQLite file (default ./async_task_system.db) or postgresql+psycopg://user@host/db",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface of every listener (default 127.0.0.1)")
    parser.add_argument(
        "--http-port", type=int, default=8080, help="REST API port (default 8080; 0 = any free)"
    )
    parser.add_argument(
        "--ws-port", type=int, default=8765, help="WebSocket hub port (default 8765; 0 = any free)"
    )
    parser.add_argument(
        "--grpc-port", type=int, default=50051, help="gRPC hub port (default 50051; 0 = any free)"
    )
    parser.add_argument("--no-grpc", action="store_true", help="serve WebSocket workers only")
    parser.add_argument(
        "--token",
        default=os.environ.get("ASYNC_AGENT_TOKEN"),
        help="the secret of workers and REST clients (default $ASYNC_AGENT_TOKEN; generated and printed if absent)",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="largest REST request body (1 MiB)"
    )
    parser.add_argument("--max-sse-clients", type=int, default=64, help="live log streams open at once (64)")
    parser.add_argument(
        "--max-log-lines", type=int, default=10_000, help="output lines kept per task (10000)"
    )
    parser.add_argument(
        "--default-timeout", type=float, default=60.0, help="seconds a script may run by default"
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=5.0,
        help="seconds a REST client has to send a request head (5)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        help="REST connections at once (1024; pending ones make room)",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=int,
        default=256,
        help="REST connections of one client address (256; its pending ones make room)",
    )
    parser.add_argument(
        "--max-requests", type=int, default=256, help="REST requests served at once (256; then 503)"
    )
    parser.add_argument(
        "--agent-tokens",
        choices=("optional", "required"),
        default="optional",
        help="optional (default): an agent with a token of its own registers only with it, others with "
        "the shared token; required: every agent needs its own (async-agent platform token issue NAME)",
    )
    add_hub_limit_arguments(parser)
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="platform_command", metavar="token")
    configure_token_parser(
        commands.add_parser(
            "token",
            help="issue or revoke an agent's own token on a running platform",
            description="Issue (printed once) or revoke an agent's own token through the REST API.",
        )
    )


def run(args: argparse.Namespace) -> int:
    """Start the platform, print where it listens, serve until SIGINT/SIGTERM (or run ``token ...``)."""
    if getattr(args, "platform_command", None) == "token":
        return run_token(args)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s platform %(levelname)s %(name)s: %(message)s",
    )
    from sqlalchemy import make_url

    from ..http_front import FrontLimits
    from .service import Platform

    platform = Platform(
        args.db,
        token=args.token or None,
        agent_tokens=args.agent_tokens,
        host=args.host,
        http_port=args.http_port,
        ws_port=args.ws_port,
        grpc_port=args.grpc_port,
        grpc=not args.no_grpc,
        max_body_bytes=args.max_body_bytes,
        http_limits=FrontLimits(
            header_timeout=args.header_timeout,
            max_connections=args.max_connections,
            max_connections_per_address=args.max_connections_per_address,
        ),
        max_requests=args.max_requests,
        max_sse_clients=args.max_sse_clients,
        max_log_lines=args.max_log_lines,
        default_timeout=args.default_timeout,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        max_message_bytes=args.max_message_bytes,
    )
    try:
        platform.start()
    except Exception as exc:
        print(f"async-agent platform: could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    database = make_url(args.db).render_as_string(hide_password=True)
    token = platform.token if not args.token else "$ASYNC_AGENT_TOKEN"
    # The dashboard's sign-in hint names where the token is, never the token itself.
    sign_in = "the token printed below" if not args.token else "your token, $ASYNC_AGENT_TOKEN"
    lines = [f"async-agent platform: store {database}"]
    if platform.reaped:
        lines.append(f"  {len(platform.reaped)} task(s) left unfinished by the previous run were marked lost")
    lines += [
        f"  REST API   {platform.http_url}",
        f"  WebSocket  {platform.ws_url}",
        f"  gRPC       {platform.grpc_url or 'not available (see the warning above)'}",
        f"  dashboard  {platform.http_url}/dashboard/   (sign in with {sign_in})",
    ]
    if not args.token:
        lines.append(f"  token      {platform.token}   (generated: shown once, keep it)")
    lines.append(
        f"start a worker: ASYNC_AGENT_TOKEN={token} async-agent worker --hub {platform.ws_url} --name <NAME>"
    )
    print("\n".join(lines), flush=True)
    try:
        stop.wait()
    finally:
        platform.stop()
    print("async-agent platform: stopped", flush=True)
    return 0
