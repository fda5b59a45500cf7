"""``async-agent mcp``: serve a task manager's tools to MCP clients, over stdio or streamable HTTP.

Without ``--tools``/``--functions`` it serves the demo's ``analyze_dataset`` tool, so any MCP
client can try it at once. Needs the ``mcp`` extra.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

__all__ = ["configure_parser", "run", "TOKEN_ENV"]

TOKEN_ENV = "ASYNC_AGENT_MCP_TOKEN"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``async-agent mcp``."""
    from ..mcp.server import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TASKS_PER_SESSION
    from ..mcp.transports import DEFAULT_SESSION_IDLE_TIMEOUT

    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="default stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP: address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8765, help="HTTP: port (default 8765; 0 picks a free one)"
    )
    parser.add_argument(
        "--token", default=None, help=f"HTTP: the bearer token clients must send (or ${TOKEN_ENV}); required"
    )
    parser.add_argument(
        "--tools",
        metavar="MODULE:ATTR",
        action="append",
        default=[],
        help="a smolagents tool or a list; repeatable",
    )
    parser.add_argument(
        "--functions",
        metavar="MODULE:ATTR",
        action="append",
        default=[],
        help="a function or a list; repeatable",
    )
    parser.add_argument("--max-workers", type=int, default=8, help="tasks that run at once (default 8)")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--max-tasks-per-session", type=int, default=DEFAULT_MAX_TASKS_PER_SESSION)
    parser.add_argument(
        "--session-idle-timeout",
        type=float,
        default=DEFAULT_SESSION_IDLE_TIMEOUT,
        help=f"HTTP: seconds without a request that end a session and cancel its tasks (default {DEFAULT_SESSION_IDLE_TIMEOUT:g})",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log requests to stderr")


def _load(specs: list[str]) -> list[Any]:
    from ..server.cli import load_object

    found: list[Any] = []
    for spec in specs:
        value = load_object(spec)
        found.extend(value if isinstance(value, (list, tuple)) else [value])
    return found


def run(args: argparse.Namespace) -> int:
    """Serve until the client leaves (stdio) or Ctrl-C (HTTP)."""
    from ..core.manager import TaskManager
    from ..mcp.transports import serve_mcp

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.transport == "http" and not token:
        print(f"error: the HTTP transport needs a token: pass --token or set ${TOKEN_ENV}", file=sys.stderr)
        return 2
    try:
        tools, functions = _load(args.tools), _load(args.functions)
    except (ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not tools and not functions:
        from .demo import analyze_dataset

        tools = [analyze_dataset]
    with TaskManager(max_workers=args.max_workers) as manager:
        for tool in tools:
            manager.register_tool(tool)
        for function in functions:
            manager.register_function(function)
        serve_mcp(
            manager,
            args.transport,
            host=args.host,
            port=args.port,
            token=token,
            session_idle_timeout=args.session_idle_timeout,
            max_request_bytes=args.max_request_bytes,
            max_tasks_per_session=args.max_tasks_per_session,
            on_ready=lambda url: print(f"MCP server listening on {url}", file=sys.stderr, flush=True),
        )
    return 0
