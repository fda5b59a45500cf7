"""``async-agent serve --remote HOST:PORT``: serve an agent over seed 003's JSON-lines protocol.

By default each request gets a fresh ``create_async_agent(...)`` on the LLM from ``.env``
(API_KEY, BASE_URL, MODEL_ID). Without one it stops with a clear message, unless ``--scripted``
asks for an offline echo model (for trying clients without an LLM). ``--factory module:callable``
serves any agent factory of yours instead; ``--tools module:attr`` adds tools to the default agent.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import ipaddress
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

from .agents import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_REQUEST_PIXELS
from .limits import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_AUTH_LINE_BYTES,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_HISTORY,
    DEFAULT_MAX_HISTORY_CHARS,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_REQUESTS_PER_CONNECTION,
    DEFAULT_MAX_RUNNING_PER_CLIENT,
    DEFAULT_MAX_RUNNING_PER_CONNECTION,
    DEFAULT_REQUEST_TIMEOUT,
)

__all__ = ["configure_parser", "run", "scripted_agent_model", "scripted_chat_model", "load_object"]

TOKEN_ENV = "ASYNC_AGENT_SERVER_TOKEN"


def _positive(kind: type, zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` above zero (or zero too, with ``zero``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > 0 or (zero and value == 0)):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero else 'above 0'}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``async-agent serve``."""
    parser.add_argument(
        "--remote",
        metavar="HOST:PORT",
        default="127.0.0.1:8080",
        help="Address to listen on (default 127.0.0.1:8080; port 0 picks a free one).",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"Require this token from clients (first line or a 'token' field). Also read from ${TOKEN_ENV}. "
        "Required when listening on a non-loopback address.",
    )
    parser.add_argument(
        "--scripted",
        action="store_true",
        help="Offline demo mode: a scripted model that echoes the request (no LLM needed).",
    )
    parser.add_argument(
        "--factory",
        metavar="MODULE:CALLABLE",
        help="Serve your own agent factory: a callable returning a fresh AsyncAgent or smolagents agent.",
    )
    parser.add_argument(
        "--tools",
        metavar="MODULE:ATTR",
        action="append",
        default=[],
        help="Add a smolagents tool (or a list of tools) to the default agent; repeatable.",
    )
    parser.add_argument("--max-workers", type=int, default=3, help="Background tasks per agent (default 3).")
    parser.add_argument("--max-steps", type=int, default=20, help="Agent steps per request by default (20).")
    parser.add_argument(
        "--request-timeout",
        type=_positive(float),
        default=DEFAULT_REQUEST_TIMEOUT,
        help=f"Seconds a request may run once started (default {DEFAULT_REQUEST_TIMEOUT:g}).",
    )
    limits = parser.add_argument_group(
        "limits", "What one client may take; over a limit it gets an error, never the whole server."
    )

    def limit(flag: str, kind: type, default: float, text: str, zero: bool = False) -> None:
        shown = f"{default:g}" if kind is float else str(default)
        limits.add_argument(
            flag, type=_positive(kind, zero), default=default, help=f"{text} (default {shown})."
        )

    limit(
        "--max-line-bytes",
        int,
        DEFAULT_MAX_LINE_BYTES,
        "Longest request line; a longer one closes the connection",
    )
    limit(
        "--max-concurrent-requests",
        int,
        DEFAULT_MAX_CONCURRENT_REQUESTS,
        "Requests running at once; the rest wait",
    )
    limit(
        "--max-requests-per-connection",
        int,
        DEFAULT_MAX_REQUESTS_PER_CONNECTION,
        "Requests in flight on one connection; more are refused with processing_error",
    )
    limit(
        "--max-running-per-connection",
        int,
        DEFAULT_MAX_RUNNING_PER_CONNECTION,
        "Requests of one connection running at once; its others wait in the connection",
    )
    limit(
        "--max-running-per-client",
        int,
        DEFAULT_MAX_RUNNING_PER_CLIENT,
        "Requests running at once over all the connections from one IP address",
    )
    limit("--max-connections", int, DEFAULT_MAX_CONNECTIONS, "Connections open at once; one more is refused")
    limit(
        "--max-connections-per-client",
        int,
        DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        "Connections open at once from one IP address; one more is refused",
    )
    limit(
        "--idle-timeout",
        float,
        DEFAULT_IDLE_TIMEOUT,
        "Seconds a connection may send nothing while none of its requests is in flight",
    )
    limit("--auth-timeout", float, DEFAULT_AUTH_TIMEOUT, "With a token: seconds to present it")
    limit(
        "--max-auth-line-bytes",
        int,
        DEFAULT_MAX_AUTH_LINE_BYTES,
        "With a token: the longest line before it is checked (nothing more is read until then)",
    )
    limit(
        "--max-history",
        int,
        DEFAULT_MAX_HISTORY,
        "Exchanges a connection remembers for max_context_num",
        zero=True,
    )
    limit(
        "--max-history-chars",
        int,
        DEFAULT_MAX_HISTORY_CHARS,
        "Characters kept of each side of a remembered exchange",
    )
    limit(
        "--max-image-pixels",
        int,
        DEFAULT_MAX_IMAGE_PIXELS,
        "Pixels (width x height x frames) of one image, read from its header before decoding",
    )
    limit("--max-request-pixels", int, DEFAULT_MAX_REQUEST_PIXELS, "Pixels of all the images of one request")
    parser.add_argument(
        "--context",
        type=int,
        default=5,
        help="Earlier exchanges a request sees when it sets no max_context_num (default 5).",
    )
    parser.add_argument(
        "--no-code-isolation",
        action="store_true",
        help="Run the code the agent's LLM writes in the server process instead of a sandboxed kernel "
        "(it then sees this host's files, network, processes and the server's environment); needed where "
        "namespaces are unavailable, else the server refuses to start. Only for agents and clients you trust.",
    )
    parser.add_argument(
        "--allow-network",
        action="store_true",
        help="Sandboxed agent code may use the network (default: none, not even loopback). Tools run in "
        "the server and are not affected.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="Log connections and agent steps.")


def load_object(spec: str) -> Any:
    """Import ``module:attr`` (``module.attr`` also accepted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"expected MODULE:NAME, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    finally:
        sys.path.pop(0)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None


def _last_user_text(messages: list[Any]) -> str:
    from ..agents.testing import message_text

    for message in reversed(messages):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if str(getattr(role, "value", role)) == "user":
            return message_text(message)
    return ""


def _task_of(messages: list[Any]) -> str:
    text = _last_user_text(messages)
    for message in messages:
        content = _last_user_text([message])
        if content.startswith("New task:\n"):
            text = content
    text = text.removeprefix("New task:\n")
    match = re.search(r"(?:^|\n)Request:\n(.*)\Z", text, re.S)
    return (match.group(1) if match else text).strip()


def scripted_agent_model() -> Any:
    """The ``--scripted`` agent model: answers every task with a final_answer echoing it."""
    from ..agents.testing import ScriptedModel

    def answer(messages: list[Any]) -> str:
        reply = f"(scripted offline model, no LLM configured) You asked: {_task_of(messages)}"
        return f"Thought: I answer directly.\n<code>\nfinal_answer({reply!r})\n</code>"

    return ScriptedModel([answer], model_id="scripted-echo", repeat_last=True)


def scripted_chat_model() -> Any:
    """The ``--scripted`` model for ``use_tools=false``: plain-text echo."""
    from ..agents.testing import ScriptedModel

    def answer(messages: list[Any]) -> str:
        return f"(scripted offline model, no LLM configured) You said: {_last_user_text(messages)}"

    return ScriptedModel([answer], model_id="scripted-echo", repeat_last=True)


def _load_tools(specs: list[str]) -> list[Any]:
    tools: list[Any] = []
    for spec in specs:
        value = load_object(spec)
        tools.extend(value if isinstance(value, (list, tuple)) else [value])
    return tools


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Start the server and serve until Ctrl-C."""
    import asyncio

    from ..sandbox.process import RunLimits
    from .tcp import AgentServer, parse_address

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        host, port = parse_address(args.remote)
    except ValueError as exc:
        print(f"error: --remote: {exc}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is None and not _is_loopback(host):
        print(
            f"error: listening on {host} (not loopback) needs a token: pass --token or set ${TOKEN_ENV}, "
            "and give it to your clients",
            file=sys.stderr,
        )
        return 2

    isolated = not getattr(args, "no_code_isolation", False)
    if isolated:
        from ..sandbox.isolation import isolation_status

        status = isolation_status()
        if not status.available:
            print(
                f"error: agent code cannot be sandboxed here ({status.reason}); start with "
                "--no-code-isolation to run it in the server process (it then sees this host's files, "
                "network and processes: only for agents and clients you trust)",
                file=sys.stderr,
            )
            return 2
    chat_model = None
    if args.factory:
        try:
            factory: Callable[[], Any] = load_object(args.factory)
        except (ImportError, ValueError) as exc:
            print(f"error: --factory: {exc}", file=sys.stderr)
            return 2
        if not callable(factory):
            print(f"error: --factory {args.factory} is not callable", file=sys.stderr)
            return 2
        description = f"factory {args.factory}"
    else:
        from ..agents.agent import create_async_agent
        from ..agents.config import model_from_env

        try:
            tools = _load_tools(args.tools)
        except (ImportError, ValueError) as exc:
            print(f"error: --tools: {exc}", file=sys.stderr)
            return 2
        if args.scripted:
            model = scripted_agent_model()
            chat_model = scripted_chat_model()
            description = "scripted offline model (echo), no LLM"
        else:
            model = model_from_env()
            if model is None:
                print(
                    "No LLM configured: set API_KEY, BASE_URL and MODEL_ID in .env (see .env.example), "
                    "or run with --scripted for an offline echo model to try clients with.",
                    file=sys.stderr,
                )
                return 2
            chat_model = model  # use_tools=false requests then need no agent instance
            description = f"LLM {getattr(model, 'model_id', model)} from .env"
        verbosity = 1 if args.verbose else -1

        def factory() -> Any:
            return create_async_agent(
                tools=tools,
                model=model,
                max_workers=args.max_workers,
                max_steps=args.max_steps,
                verbosity_level=verbosity,
            )

    server = AgentServer(
        factory,
        host,
        port,
        token=token,
        model=chat_model,
        request_timeout=args.request_timeout,
        max_line_bytes=args.max_line_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        default_context_num=args.context,
        max_requests_per_connection=args.max_requests_per_connection,
        max_running_per_connection=args.max_running_per_connection,
        max_running_per_client=args.max_running_per_client,
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        idle_timeout=args.idle_timeout,
        auth_timeout=args.auth_timeout,
        max_auth_line_bytes=args.max_auth_line_bytes,
        max_history=args.max_history,
        max_history_chars=args.max_history_chars,
        max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels,
        code_isolation=isolated,
        code_limits=RunLimits(network=bool(getattr(args, "allow_network", False))),
    )
    where = "sandboxed" + (", with the network" if getattr(args, "allow_network", False) else "")
    description += f"; agent code {where if isolated else 'IN THE SERVER PROCESS (--no-code-isolation)'}"

    async def main() -> None:
        await server.start()
        print(
            f"async-agent serving JSON lines on {server.address} ({description}"
            f"{', token required' if token else ''}). Ctrl-C stops.",
            flush=True,
        )
        # SIGTERM (service managers, `kill`) stops as gracefully as Ctrl-C: unfinished requests
        # get connection_error before the connections close.
        serving = asyncio.ensure_future(server.serve_forever())
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serving.cancel)
        try:
            await serving
        except asyncio.CancelledError:
            pass
        finally:
            await server.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: cannot listen on {args.remote}: {exc}", file=sys.stderr)
        return 1
    return 0
