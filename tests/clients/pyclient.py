"""Python clients for the JSON-lines server, used by the tests and the benchmark.

``send_request`` and ``AgentCLIClient`` have the shape of seed 003's own Python examples (one
``recv`` per request; read until a newline): the server must work with clients written like that.
``LineClient`` is a proper line-splitting client that can have many requests in flight.
"""

from __future__ import annotations

import json
import socket
from typing import Any


def send_request(request_data: dict[str, Any], host: str = "127.0.0.1", port: int = 8080) -> dict[str, Any]:
    """Seed 003's quick-start client: connect, send one line, one ``recv(4096)``, parse."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.connect((host, port))
        request_json = json.dumps(request_data) + "\n"
        s.sendall(request_json.encode("utf-8"))
        response_data = s.recv(4096).decode("utf-8")
        return json.loads(response_data)


class AgentCLIClient:
    """Seed 003's client class: one connection, reads until a chunk holds a newline."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.host = host
        self.port = port
        self.socket: socket.socket | None = None

    def connect(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.connect((self.host, self.port))

    def send_request(self, request_data: dict[str, Any]) -> dict[str, Any]:
        if not self.socket:
            self.connect()
        assert self.socket is not None
        request_json = json.dumps(request_data) + "\n"
        self.socket.sendall(request_json.encode("utf-8"))
        response_data = b""
        while True:
            chunk = self.socket.recv(4096)
            if not chunk:
                break
            response_data += chunk
            if b"\n" in chunk:
                break
        return json.loads(response_data.decode("utf-8").strip())

    def close(self) -> None:
        if self.socket:
            self.socket.close()
            self.socket = None


class LineClient:
    """A client that sends raw lines and reads whole lines (with a timeout, in seconds)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self.sock.makefile("rb")

    def send(self, request: dict[str, Any] | str | bytes) -> None:
        if isinstance(request, dict):
            data = (json.dumps(request, ensure_ascii=False) + "\n").encode("utf-8")
        elif isinstance(request, str):
            data = request.encode("utf-8")
        else:
            data = request
        self.sock.sendall(data)

    def read(self) -> dict[str, Any] | None:
        """The next line as JSON, or None at EOF."""
        line = self._file.readline()
        if not line:
            return None
        return json.loads(line)

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        self.send(request)
        response = self.read()
        assert response is not None, "server closed the connection"
        return response

    def read_final(self, n: int) -> dict[str, dict[str, Any]]:
        """Read until ``n`` final (non-partial) responses arrived; keyed by request_id."""
        out: dict[str, dict[str, Any]] = {}
        while len(out) < n:
            message = self.read()
            assert message is not None, f"server closed the connection after {len(out)} responses"
            if not message.get("partial"):
                out[message["request_id"]] = message
        return out

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
