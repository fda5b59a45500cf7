"""The ``async-agent`` command: ``demo``, ``run``, and the subsystems' own subcommands.

Each subsystem adds its subcommand through a ``configure_parser(subparsers)`` function in its
own module, imported only when that subcommand runs, so ``async-agent demo`` never imports a
WebSocket or TCP server.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

# subcommand -> (module that implements it, one-line help). Modules define
# ``configure_parser(parser)`` and ``run(args) -> int``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "async_task_system.cli.demo",
        "Run the demo scenario: 5 datasets analysed in parallel by a CodeAgent.",
    ),
    "run": ("async_task_system.cli.demo", "Run any task on the LLM configured in .env."),
    "serve": (
        "async_task_system.server.cli",
        "Serve the agent to any client over JSON lines on TCP.",
    ),
    "worker": (
        "async_task_system.remote.worker",
        "Run a remote worker daemon that executes scripts for a hub or the fleet platform.",
    ),
    "hub": (
        "async_task_system.remote.cli",
        "Run a remote-execution hub; optionally start workers and run commands through it.",
    ),
    "mcp": (
        "async_task_system.cli.mcp",
        "Serve the task manager's tools to MCP clients (stdio or streamable HTTP, MCP Tasks).",
    ),
    "platform": (
        "async_task_system.platform.cli",
        "Run the fleet platform: task store, WebSocket and gRPC hubs, REST API.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="async-agent",
        description="A smolagents CodeAgent that runs tools and sub-agents as parallel background tasks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        args = parser.parse_args(argv)  # prints help or the "invalid choice" error
        parser.print_help()
        return 2
    name = argv[0]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"async-agent {name}", description=help_text)
    configure = getattr(module, f"configure_{name}_parser", None) or module.configure_parser
    configure(sub)
    args = sub.parse_args(argv[1:])
    runner = getattr(module, f"run_{name}", None) or module.run
    return int(runner(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
