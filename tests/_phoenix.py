"""Start a real Phoenix server for tests, from its own virtual environment.

The full ``arize-phoenix`` server needs ``openai>=3``, which conflicts with litellm's pin, so it
cannot live in the project's ``.venv``. ``make phoenix`` installs it into
``~/.cache/async_task_system/phoenix-venv`` (override with ``ASYNC_TASK_SYSTEM_PHOENIX_VENV``).

The server runs on 127.0.0.1 with free ports, in-memory SQLite and a temporary working
directory. Readiness is detected from the server's own log line (read from its stdout pipe),
then confirmed once over HTTP; nothing polls.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

DEFAULT_VENV = Path.home() / ".cache" / "async_task_system" / "phoenix-venv"
READY_MARKERS = ("Uvicorn running on",)  # printed after the socket is bound
START_TIMEOUT = 120.0


class PhoenixUnavailable(RuntimeError):
    """Phoenix cannot be started here; the message says why and how to fix it."""


def phoenix_venv() -> Path:
    return Path(os.environ.get("ASYNC_TASK_SYSTEM_PHOENIX_VENV") or DEFAULT_VENV)


def phoenix_python() -> Path:
    """The Python of the Phoenix venv, or raise :class:`PhoenixUnavailable` naming the fix."""
    venv = phoenix_venv()
    python = venv / "bin" / "python"
    if not python.exists():
        raise PhoenixUnavailable(f"no Phoenix venv at {venv}: run `make phoenix` to create it")
    if not (venv / ".installed").exists() and not list(venv.glob("lib/python*/site-packages/phoenix/server")):
        raise PhoenixUnavailable(f"arize-phoenix is not installed in {venv}: run `make phoenix`")
    return python


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PhoenixServer:
    """A Phoenix server subprocess on 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.traces_endpoint = f"{self.base_url}/v1/traces"
        self._workdir = tempfile.TemporaryDirectory(prefix="phoenix-test-")
        self._log: deque[str] = deque(maxlen=200)
        self._ready = threading.Event()
        self._exited = threading.Event()
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> PhoenixServer:
        python = phoenix_python()
        env = {
            **os.environ,
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_SQL_DATABASE_URL": "sqlite:///:memory:",
            "PHOENIX_WORKING_DIR": self._workdir.name,
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
        self._proc = subprocess.Popen(
            [str(python), "-m", "phoenix.server.main", "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=self._workdir.name,
        )
        threading.Thread(target=self._read_output, name="phoenix-log", daemon=True).start()
        self._ready.wait(START_TIMEOUT)  # set by the log reader on the ready line, or on exit
        if not self._ready.is_set() or self._exited.is_set():
            tail = "\n".join(list(self._log)[-30:])
            self.stop()
            raise PhoenixUnavailable(f"Phoenix did not start within {START_TIMEOUT:g} s:\n{tail}")
        with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=10) as response:
            if response.status != 200:
                raise PhoenixUnavailable(f"Phoenix health check answered {response.status}")
        return self

    def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._log.append(line.rstrip())
            if any(marker in line for marker in READY_MARKERS):
                self._ready.set()
        self._exited.set()
        self._ready.set()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._workdir.cleanup()

    @property
    def log(self) -> str:
        return "\n".join(self._log)

    def get_json(self, path: str, **params: Any) -> Any:
        query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        with urllib.request.urlopen(f"{self.base_url}{path}{query}", timeout=30) as response:
            return json.loads(response.read())

    def spans(self, project: str, limit: int = 1000) -> list[dict[str, Any]]:
        """All spans of a project, through the REST endpoint ``/v1/projects/<name>/spans``."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            try:
                page = self.get_json(f"/v1/projects/{urllib.parse.quote(project)}/spans", **params)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:  # the project appears with its first ingested span
                    return out
                raise
            out.extend(page.get("data", []))
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def __enter__(self) -> PhoenixServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
