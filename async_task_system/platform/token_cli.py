"""``async-agent platform token issue NAME`` / ``revoke NAME``: per-agent tokens of a running platform.

Both talk to the platform's REST API (``POST`` / ``DELETE /agents/{name}/token``) with the
operator's token, so the running platform's hubs apply the change at once (a revoked agent's
connection is closed). ``issue`` prints the new token alone on stdout (shown this once; the store
keeps only its SHA-256) and how to start the worker on stderr, so ``TOKEN=$(async-agent platform
token issue NAME)`` works. Exit codes: 0 done, 1 the platform refused (its error printed), 2 it
could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["configure_token_parser", "run_token"]


def configure_token_parser(parser: argparse.ArgumentParser) -> None:
    """``token issue NAME`` / ``token revoke NAME`` and where the platform is."""
    parser.add_argument(
        "action", choices=("issue", "revoke"), help="issue a new token, or revoke the agent's"
    )
    parser.add_argument("name", help="the agent's name (the worker's --name)")
    parser.add_argument(
        "--url",
        default=os.environ.get("ASYNC_AGENT_PLATFORM_URL", "http://127.0.0.1:8080"),
        help="the platform's REST API (default $ASYNC_AGENT_PLATFORM_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--token",
        dest="operator_token",
        default=os.environ.get("ASYNC_AGENT_TOKEN"),
        help="the platform's operator token (default $ASYNC_AGENT_TOKEN)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the platform (10)")


def run_token(args: argparse.Namespace) -> int:
    """Issue or revoke ``args.name``'s token through the REST API at ``args.url``."""
    if not args.operator_token:
        print("async-agent platform token: give --token or set $ASYNC_AGENT_TOKEN", file=sys.stderr)
        return 2
    path = "/agents/" + urllib.parse.quote(args.name, safe="") + "/token"
    method = "POST" if args.action == "issue" else "DELETE"
    try:
        status, body = _call(args.url.rstrip("/") + path, method, args.operator_token, args.timeout)
    except (OSError, ValueError) as exc:
        print(f"async-agent platform token: could not reach {args.url}: {exc}", file=sys.stderr)
        return 2
    if status >= 400:
        error = body.get("error", body) if isinstance(body, dict) else body
        print(f"async-agent platform token: HTTP {status}: {error}", file=sys.stderr)
        return 1
    name = body.get("agent_id", args.name)
    if args.action == "revoke":
        print(f"revoked the token of agent {name!r}; its live connection, if any, was closed")
        return 0
    print(body["token"])
    print(
        f"the token of agent {name!r} (shown once; the platform keeps only its SHA-256). Start the worker with:\n"
        f"  ASYNC_AGENT_TOKEN=<this token> async-agent worker --hub <HUB> --name {name}",
        file=sys.stderr,
    )
    return 0


def _call(url: str, method: str, token: str, timeout: float) -> tuple[int, Any]:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"--url must be an http:// or https:// address, got {url!r}")
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        return raw[:500].decode("utf-8", "replace")
