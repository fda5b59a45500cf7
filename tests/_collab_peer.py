"""A second process for the collaboration tests: serves handlers over A2A until its stdin closes.

Prints ``URL <url>`` when it listens, and ``STOPPED <tool>`` when a hanging handler's coroutine
ends (cancelled or timed out), so the parent can see the remote task really stopped.
"""

from __future__ import annotations

import asyncio
import os
import sys

from async_task_system import TaskManager, report_progress
from async_task_system.collab.a2a import A2AServer
from async_task_system.collab.collaboration import AgentDirectory, CollaborationProtocol


def square(x: int) -> int:
    """The square of x, with a progress report on the way."""
    report_progress(0.5, "half way")
    return x * x


async def hang() -> None:
    """Sleeps an hour (until cancelled)."""
    try:
        await asyncio.sleep(3600)
    finally:
        print("STOPPED hang", flush=True)


def boom() -> None:
    """Always raises."""
    raise ValueError("boom from the peer")


def main() -> None:
    protocol = CollaborationProtocol("peer", TaskManager(max_workers=4), AgentDirectory(), inbox_size=4)
    for handler in (square, hang, boom):
        protocol.register_handler(handler.__name__, handler)
    protocol.register_handler("echo", lambda **kw: kw, "Returns its parameters.")
    server = A2AServer(protocol, token=os.environ["PEER_TOKEN"]).start()
    print(f"URL {server.url}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.close()


if __name__ == "__main__":
    main()
