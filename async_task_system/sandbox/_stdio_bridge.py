"""The bridge program of :mod:`.stdio_bridge` (run by path, never imported): runs a stdio program
isolated and relays its stdin, stdout and stderr; exits with its status."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import os
import signal
import sys
from typing import Any

_CHUNK = 65536
_PR_SET_PDEATHSIG = 1


def _limits(fields: dict[str, Any]) -> Any:
    from async_task_system.sandbox.process import RunLimits

    known = {field.name: field for field in dataclasses.fields(RunLimits)}
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()}
    return RunLimits(**{name: value for name, value in values.items() if name in known})


async def _relay(config: dict[str, Any]) -> int:
    from async_task_system.sandbox.process import ScriptRunner

    loop = asyncio.get_running_loop()
    runner = ScriptRunner(_limits(config["limits"]))
    process = await runner.start_interactive(config["argv"], env=config["env"])
    stopping = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(number, stopping.set)

    async def inbound() -> None:  # our stdin -> the program's; its end closes the program's stdin
        reader = asyncio.StreamReader(limit=_CHUNK)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", 0))
        while chunk := await reader.read(_CHUNK):
            process.stdin.write(chunk)
            await process.stdin.drain()
        process.stdin.close()

    async def outbound(stream: asyncio.StreamReader, fd: int) -> None:
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop), os.fdopen(fd, "wb", 0)
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        while chunk := await stream.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()

    pumps = [
        asyncio.ensure_future(inbound()),
        asyncio.ensure_future(outbound(process.stdout, 1)),
        asyncio.ensure_future(outbound(process.stderr, 2)),
    ]
    ended = asyncio.ensure_future(process.wait())
    told = asyncio.ensure_future(stopping.wait())
    await asyncio.wait([ended, told], return_when=asyncio.FIRST_COMPLETED)
    if not ended.done():
        await runner.stop(process)
    await asyncio.wait(pumps[1:], timeout=2.0)  # what the program wrote before its end
    for pump in pumps:
        pump.cancel()
    code = process.returncode if process.returncode is not None else -signal.SIGKILL
    return code if code >= 0 else 128 - code


def main() -> int:
    with_parent = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if with_parent != 0 or os.getppid() == 1:  # no death signal, or the parent is gone already
        return 1
    sys.path.insert(0, sys.argv[1])
    config = json.loads(os.environ.pop("ASYNC_AGENT_BRIDGE"))
    try:
        return asyncio.run(_relay(config))
    except OSError as exc:  # it could not start: say so where the client shows a server's stderr
        hint = "; RunLimits(isolation=False) runs it unisolated (it then sees this host's files and network)"
        os.write(2, f"cannot start {config['argv'][0]!r} isolated: {exc}{hint}\n".encode())
        return 127


if __name__ == "__main__":
    sys.exit(main())
