"""Runs an MCP server with its stderr passed through and its tail kept, standard library only.

``python -I -S _stderr_tail.py STATUS_FILE PROGRAM ARG...``: starts the program with this
process's stdin and stdout (the MCP stdio channel), copies its stderr to this process's stderr,
and when the program exits writes ``{"exit_code": N, "stderr": "<last 8 KiB>"}`` to STATUS_FILE
(written to a temporary name, then renamed), then exits with the program's status. The server's
:class:`~async_task_system.runtimes.mcp.McpServer` reads the file to say why a server died at start.
"""

import json
import os
import signal
import subprocess
import sys

TAIL_BYTES = 8192


def main() -> int:
    status_file, argv = sys.argv[1], sys.argv[2:]
    tail = b""
    try:
        child = subprocess.Popen(argv, stderr=subprocess.PIPE)
    except OSError as exc:
        code, tail = 127, f"cannot start {argv[0]!r}: {exc}\n".encode()
    else:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda number, _frame: child.send_signal(number))
        assert child.stderr is not None
        while True:
            chunk = os.read(child.stderr.fileno(), 65536)
            if not chunk:
                break
            os.write(2, chunk)
            tail = (tail + chunk)[-TAIL_BYTES:]
        code = child.wait()
    temporary = status_file + ".tmp"
    try:  # the directory is gone once the server started: nobody reads the file then
        with open(temporary, "w") as handle:
            json.dump({"exit_code": code, "stderr": tail.decode("utf-8", "replace")}, handle)
        os.replace(temporary, status_file)
    except OSError:
        pass
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
