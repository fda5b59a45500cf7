"""Per-agent credentials: a token per agent name, issued and revoked through the REST API and the
CLI, stored as a SHA-256 digest, checked by both hubs at ``register`` -- with real platforms, real
worker daemons (``async-agent worker --token ...``) over WebSocket and gRPC, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest
from _platform import (  # noqa: F401  (fixtures)
    TOKEN,
    client,
    hub_url,
    post_task,
    running_platform,
    transport_fixture,
    wait_end,
    workers_fixture,
)

from async_task_system.platform.service import Platform
from async_task_system.remote.worker.daemon import EXIT_REGISTRATION_FAILED, EXIT_TOKEN_REFUSED

websockets_sync = pytest.importorskip("websockets.sync.client")
websockets_exceptions = pytest.importorskip("websockets.exceptions")


def _online(platform: Platform, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if platform.router.has_worker(name):
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {name!r} did not register")


def _gone(platform: Platform, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not platform.router.has_worker(name):
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {name!r} is still registered")


def _issue(platform: Platform, name: str) -> str:
    with client(platform) as http:
        response = http.post(f"/agents/{name}/token")
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["agent_id"] == name and body["token"].startswith("aat_")
    return body["token"]


def _credential(platform: Platform, name: str) -> bool | None:
    with client(platform) as http:
        for agent in http.get("/agents").json():
            if agent["agent_id"] == name:
                return agent["credential"]
    return None


def test_an_agent_runs_with_its_own_token_and_the_shared_token_cannot_take_its_name(
    database_url, transport, workers
):
    with running_platform(database_url) as platform:
        token = _issue(platform, "alpha")
        # stored hashed: the row holds the token's SHA-256, never the token
        (row,) = platform.store.credentials.history("alpha")
        assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest() != token
        assert row.revoked_at is None
        assert _credential(platform, "alpha") is True  # listed before it ever connected, without the hash
        with client(platform) as http:
            listed = http.get("/agents").text
        assert token not in listed and row.token_sha256 not in listed

        workers.start(hub_url(platform, transport), "alpha", "--token", token)
        _online(platform, "alpha")
        with client(platform) as http:
            record = post_task(http, agent_id="alpha", type="shell", script="echo mine")
            _lines, final = wait_end(http, record["task_id"])
        assert final["status"] == "completed" and final["stdout"] == "mine\n"

        # the shared token is refused for a name with a credential (even while it is offline)
        workers.processes["alpha"].kill()
        _gone(platform, "alpha")
        impostor = workers.start(hub_url(platform, transport), "alpha", "--token", TOKEN)
        assert impostor.wait(30) == EXIT_REGISTRATION_FAILED
        assert not platform.router.has_worker("alpha")


def test_one_agents_token_registers_no_other_name(tmp_path, transport, workers):
    with running_platform(f"sqlite:///{tmp_path / 'store.db'}") as platform:
        token_a = _issue(platform, "agent-a")
        _issue(platform, "agent-b")
        as_b = workers.start(hub_url(platform, transport), "agent-b", "--token", token_a)
        assert as_b.wait(30) == EXIT_REGISTRATION_FAILED
        as_c = workers.start(hub_url(platform, transport), "agent-c", "--token", token_a)  # no credential
        assert as_c.wait(30) == EXIT_REGISTRATION_FAILED
        unknown = workers.start(hub_url(platform, transport), "agent-a", "--token", "aat_" + "x" * 43)
        assert unknown.wait(30) == EXIT_TOKEN_REFUSED  # not any agent's token: refused before a frame
        assert platform.router.workers() == []


def test_a_revoked_token_closes_the_live_connection_and_is_refused(tmp_path, transport, workers):
    with running_platform(f"sqlite:///{tmp_path / 'store.db'}") as platform:
        token = _issue(platform, "alpha")
        worker = workers.start(hub_url(platform, transport), "alpha", "--token", token)
        _online(platform, "alpha")
        with client(platform) as http:
            response = http.delete("/agents/alpha/token")
            assert response.status_code == 200 and response.json() == {"agent_id": "alpha", "revoked": True}
            again = http.delete("/agents/alpha/token")
            assert again.status_code == 404 and again.json()["error"] == "this agent has no token"
        _gone(platform, "alpha")
        # closed by the hub, it reconnects, and its token is refused before the connection opens
        assert worker.wait(30) == EXIT_TOKEN_REFUSED
        assert _credential(platform, "alpha") is False
        (row,) = platform.store.credentials.history("alpha")
        assert row.revoked_at is not None


def test_reissuing_closes_the_connection_of_the_old_token(tmp_path, workers):
    with running_platform(f"sqlite:///{tmp_path / 'store.db'}", grpc=False) as platform:
        old = _issue(platform, "alpha")
        worker = workers.start(platform.ws_url, "alpha", "--token", old)
        _online(platform, "alpha")
        new = _issue(platform, "alpha")
        assert new != old
        assert worker.wait(30) == EXIT_TOKEN_REFUSED
        workers.start(platform.ws_url, "alpha", "--token", new)
        _online(platform, "alpha")
        assert [row.revoked_at is None for row in platform.store.credentials.history("alpha")] == [
            False,
            True,
        ]


def test_required_agent_tokens_refuse_the_shared_token_for_every_name(tmp_path, transport, workers):
    with running_platform(f"sqlite:///{tmp_path / 'store.db'}", agent_tokens="required") as platform:
        shared = workers.start(hub_url(platform, transport), "beta", "--token", TOKEN)
        assert shared.wait(30) == EXIT_REGISTRATION_FAILED
        token = _issue(platform, "beta")
        workers.start(hub_url(platform, transport), "beta", "--token", token)
        _online(platform, "beta")


def test_the_refusal_is_a_precise_error_frame_then_a_policy_close(tmp_path):
    with running_platform(f"sqlite:///{tmp_path / 'store.db'}", grpc=False) as platform:
        token_a = _issue(platform, "agent-a")

        def register(token: str, name: str) -> tuple[dict, int | None]:
            headers = {"Authorization": f"Bearer {token}"}
            with websockets_sync.connect(platform.ws_url, additional_headers=headers) as ws:
                ws.send(json.dumps({"type": "register", "name": name, "capabilities": ["shell"]}))
                frame = json.loads(ws.recv(10))
                with pytest.raises(websockets_exceptions.ConnectionClosed):
                    ws.recv(10)
                return frame, ws.close_code

        frame, code = register(TOKEN, "agent-a")
        assert frame["type"] == "error" and frame["error_type"] == "unauthorized" and code == 1008
        assert "has its own token" in frame["error"]
        frame, code = register(token_a, "agent-b")
        assert frame["error_type"] == "unauthorized" and "another agent's" in frame["error"]
        with pytest.raises(websockets_exceptions.InvalidStatus, match="401"):
            register("aat_not-a-token", "agent-a")


def test_invalid_names_are_refused_by_the_api(tmp_path):
    with (
        running_platform(f"sqlite:///{tmp_path / 'store.db'}", grpc=False) as platform,
        client(platform) as http,
    ):
        response = http.post("/agents/" + "n" * 65 + "/token")
        assert response.status_code == 422 and response.json()["error"].startswith("invalid agent name")
        assert http.post("/agents/x/token", headers={"Authorization": "Bearer wrong"}).status_code == 401


def _cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "async_task_system", "platform", "token", *args, "--url", platform.http_url],
        env={"ASYNC_AGENT_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_issues_and_revokes_and_credentials_survive_a_restart(database_url, workers):
    with running_platform(database_url, grpc=False) as platform:
        issued = _cli(platform, "issue", "gamma")
        assert issued.returncode == 0, issued.stderr
        token = issued.stdout.strip()
        assert token.startswith("aat_") and "shown once" in issued.stderr
    with running_platform(database_url, grpc=False) as platform:  # a new process's view of the store
        worker = workers.start(platform.ws_url, "gamma", "--token", token)
        _online(platform, "gamma")
        shared = workers.start(platform.ws_url, "gamma-shared", "--token", TOKEN)  # no credential: allowed
        _online(platform, "gamma-shared")
        revoked = _cli(platform, "revoke", "gamma")
        assert revoked.returncode == 0, revoked.stderr
        assert worker.wait(30) == EXIT_TOKEN_REFUSED
        assert shared.poll() is None  # another agent's connection is untouched
        missing = _cli(platform, "revoke", "gamma")
        assert missing.returncode == 1 and "no token" in missing.stderr
    with running_platform(database_url, grpc=False) as platform:
        assert platform.tokens is not None and platform.tokens("gamma", token) is None  # stays revoked
