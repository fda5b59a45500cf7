"""Every code block in README.md, README.zh-CN.md and docs/*.md runs as written, or says why not.

A fenced block is one of:

- ``python``: run. A page's Python blocks run in order in one interpreter and one namespace (as a
  reader pastes them into one session), in a scratch directory holding ``examples/`` (a link to the
  checkout's), with no LLM configured.
- ``bash``: run when its commands are ``curl`` calls to the REST API (against one ``async-agent
  platform`` this module starts on free ports, with a worker ``agent-001``; a page's shell blocks
  share one shell, so ``$T`` and ``$API`` carry over); the documented port 8080 becomes the real one.
- data, not code: ``text``, ``json``, ``toml``, ``protobuf`` (an unmarked fence must name one).
- marked ``<!-- not run: REASON -->`` on the line before the fence: it needs an LLM key, a remote
  machine, a long-running server, or is a fragment of code an LLM writes inside the agent.

Any other block -- a runnable one that is neither run nor marked -- fails :func:`test_every_block_is_run_or_marked`.
The Python and Node.js clients of docs/protocol.md run against a real JSON-lines server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", ROOT / "README.zh-CN.md", *sorted((ROOT / "docs").glob("*.md"))]
DATA = {"text", "json", "toml", "protobuf"}
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>[^>]+?) -->")
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^`\s]*)[^`]*$")
# docs/protocol.md's clients, run by the tests at the end of this module
CLIENTS = {("protocol.md", "python"), ("protocol.md", "javascript")}
LLM_VARIABLES = ("API_KEY", "BASE_URL", "MODEL_ID", "OPENAI_API_KEY")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason given in the marker

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").split("\n")
    found, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = index + 1
        while lines[end].strip() != "```":
            end += 1
        before = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marker = NOT_RUN.search(before)
        indent = len(opening.group("indent"))
        code = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        found.append(Block(page, index + 1, opening.group("info"), code, marker and marker.group("reason")))
        index = end + 1
    return found


ALL = [block for page in PAGES for block in blocks(page)]


def is_client(block: Block) -> bool:
    return (block.page.name, block.language) in CLIENTS and (
        "class AgentClient" in block.code or "require('net')" in block.code
    )


def runs(block: Block) -> bool:
    if block.not_run or is_client(block):
        return False
    if block.language == "python":
        return True
    return block.language == "bash" and all(
        line.startswith(("curl ", "T=")) for line in command_lines(block.code)
    )


def command_lines(code: str) -> list[str]:
    return [line.strip() for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_pages_have_blocks():
    assert len(ALL) > 80
    assert sum(runs(block) for block in ALL) > 10


def test_every_block_is_run_or_marked():
    unaccounted = [
        f"{block.where} ```{block.language}"
        for block in ALL
        if not (runs(block) or block.not_run or is_client(block) or block.language in DATA)
    ]
    assert not unaccounted, (
        "these blocks are neither run by tests/test_docs.py nor marked '<!-- not run: REASON -->' "
        "(data blocks must name text, json, toml or protobuf): " + ", ".join(unaccounted)
    )


def offline_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in LLM_VARIABLES}
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", **extra}


# ---------------------------------------------------------------------------------------------- python

RUNNER = """
import json, linecache, sys, traceback
namespace = {"__name__": "__main__"}
for block in json.load(open(sys.argv[1], encoding="utf-8")):
    print(f"--- block {block['where']}", flush=True)
    # inspect.getsource (smolagents' @tool reads it) and tracebacks find the block's lines here
    lines = block["code"].splitlines(keepends=True)
    linecache.cache[block["where"]] = (len(block["code"]), None, lines, block["where"])
    try:
        exec(compile(block["code"], block["where"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: the block at {block['where']}", file=sys.stderr, flush=True)
        sys.exit(1)
"""


@pytest.mark.parametrize(
    "page",
    [page for page in PAGES if any(b.language == "python" and runs(b) for b in blocks(page))],
    ids=lambda page: str(page.relative_to(ROOT)),
)
def test_python_blocks_run(page, tmp_path):
    chosen = [{"where": b.where, "code": b.code} for b in blocks(page) if b.language == "python" and runs(b)]
    (tmp_path / "blocks.json").write_text(json.dumps(chosen), encoding="utf-8")
    (tmp_path / "runner.py").write_text(RUNNER, encoding="utf-8")
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the pages' paths are a checkout's
    proc = subprocess.run(
        [sys.executable, "runner.py", "blocks.json"],
        cwd=tmp_path,
        env=offline_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count("--- block ") == len(chosen)


# ---------------------------------------------------------------------------------------------- curl

TOKEN = "docs-test-token-0123456789"
DOCUMENTED_ID = "task_k3m9x2qa_1"  # the id the docs show; replaced by the first id a block returned


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    workdir = tmp_path_factory.mktemp("platform")
    http_port, ws_port = free_port(), free_port()
    env = offline_env(ASYNC_AGENT_TOKEN=TOKEN)
    cli = [sys.executable, "-m", "async_task_system"]
    server = subprocess.Popen(
        [*cli, "platform", "--db", f"sqlite:///{workdir / 'docs.db'}", "--no-grpc"]
        + ["--http-port", str(http_port), "--ws-port", str(ws_port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = None
    try:
        api = f"http://127.0.0.1:{http_port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"async-agent platform exited: {server.stderr.read()}"
            try:
                if httpx.get(f"{api}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "async-agent platform did not answer /healthz within 60 s"
            time.sleep(0.2)
        worker = subprocess.Popen(
            [
                *cli,
                "worker",
                "--hub",
                f"ws://127.0.0.1:{ws_port}",
                "--name",
                "agent-001",
                "--label",
                "zone=eu",
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not any(a["state"] == "online" for a in httpx.get(f"{api}/agents", headers=headers).json()):
            assert worker.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker did not connect within 60 s"
            time.sleep(0.2)
        yield {"port": http_port, "dir": workdir, "env": env}
    finally:
        for process in (worker, server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


def shell(platform: dict, code: str) -> str:
    proc = subprocess.run(
        ["bash", "-c", code],
        cwd=platform["dir"],
        env=platform["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


REFUSED = (
    '"error": "invalid request',
    '"error":"invalid request',
    "not found",
    "unauthorized",
    "Content-Type",
)


@pytest.mark.parametrize(
    "page",
    [page for page in PAGES if any(b.language == "bash" and runs(b) for b in blocks(page))],
    ids=lambda page: str(page.relative_to(ROOT)),
)
def test_curl_blocks_run(page, platform):
    """A page's curl blocks, in one shell session: each call is answered, none refused."""
    prelude, task_id = "", None
    for block in blocks(page):
        if block.language != "bash" or not runs(block):
            continue
        code = block.code.replace("127.0.0.1:8080", f"127.0.0.1:{platform['port']}")
        if task_id:
            code = code.replace(DOCUMENTED_ID, task_id)
        out = shell(platform, prelude + code)
        prelude += "".join(line + "\n" for line in command_lines(code) if line.startswith("T="))
        for refusal in REFUSED:
            assert refusal not in out, f"{block.where}: {out}"
        assert out.strip() or ">" in code, f"{block.where}: no answer"
        ids = re.findall(r'"task_id": ?"(task_[^"]+)"', out)
        if ids and task_id is None:
            task_id = ids[0]
        if DOCUMENTED_ID in block.code:
            assert task_id, f"{block.where} reads a task, but no block before it created one"


def test_the_quick_start_curl_runs(platform):
    """docs/platform.md's quick start starts a platform in the foreground (not run): its curl line is."""
    quick_start = next(b for b in blocks(ROOT / "docs" / "platform.md") if "async-agent platform" in b.code)
    (line,) = [line for line in command_lines(quick_start.code) if line.startswith("curl ")]
    out = shell(platform, line.replace("127.0.0.1:8080", f"127.0.0.1:{platform['port']}"))
    record = json.loads(out)
    assert record["agent_id"] == "agent-001" and record["type"] == "shell", out


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"],
)
def test_a_task_body_without_a_json_content_type_is_refused_with_415(platform, content_type):
    """What `curl -d` sends without -H 'Content-Type: application/json': a 415 that names the fix."""
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    if content_type:
        headers["Content-Type"] = content_type
    body = json.dumps({"agent_id": "agent-001", "type": "shell", "script": "echo hi"})
    response = httpx.post(
        f"http://127.0.0.1:{platform['port']}/tasks", content=body, headers=headers, timeout=10
    )
    assert response.status_code == 415, response.text
    assert response.json() == {
        "error": "send Content-Type: application/json",
        "detail": {"content_type": content_type.split(";")[0] if content_type else None},
    }


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/vnd.api+json"]
)
def test_a_task_body_with_a_json_content_type_is_accepted(platform, content_type):
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    body = json.dumps({"agent_id": "agent-001", "type": "shell", "script": "echo hi"})
    response = httpx.post(
        f"http://127.0.0.1:{platform['port']}/tasks", content=body, headers=headers, timeout=10
    )
    assert response.status_code == 201, response.text
    assert response.json()["agent_id"] == "agent-001"


# ---------------------------------------------------------------------------------------------- clients

PROTOCOL = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def example(heading: str, language: str) -> str:
    match = re.search(rf"### {re.escape(heading)}\n\n```{language}\n(.*?)```", PROTOCOL, re.S)
    assert match, f"no {language} example under '### {heading}' in docs/protocol.md"
    return match.group(1)


@pytest.fixture(scope="module")
def server_port():
    from async_task_system import create_async_agent
    from async_task_system.server import AgentServer
    from async_task_system.server.cli import scripted_agent_model, scripted_chat_model

    agent_model = scripted_agent_model()
    server = AgentServer(
        lambda: create_async_agent(model=agent_model, verbosity_level=-1), model=scripted_chat_model()
    )
    with server.start_in_thread() as running:
        yield running.port


def run_client(cmd: list[str], code: str, port: int, tmp_path: Path, suffix: str) -> list[str]:
    script = tmp_path / f"client{suffix}"
    script.write_text(code.replace("8080", str(port)), encoding="utf-8")
    proc = subprocess.run([*cmd, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_protocol_python_client(server_port, tmp_path):
    lines = run_client([sys.executable], example("Python", "python"), server_port, tmp_path, ".py")
    assert len(lines) == 3
    assert "You asked: Hello, what can you do?" in lines[0]
    assert "'ToolResult': {'name': 'list_tasks', 'result': []}" in lines[1]
    assert "'request_id': 'careful_001'" in lines[2] and "'error': None" in lines[2]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js (`node`) is not installed")
def test_protocol_nodejs_client(server_port, tmp_path):
    lines = run_client(["node"], example("Node.js", "javascript"), server_port, tmp_path, ".js")
    assert len(lines) == 3
    assert '"request_id":"a"' in lines[0] and "You asked: Hello" in lines[0]
    assert '"Stream":[' in lines[1] and "You said: Write a haiku" in "".join(lines[1].split('","'))
    assert '"ToolResult":{"name":"list_tasks","result":[]}' in lines[2]


# ---------------------------------------------------------------------------------------------- words


def test_help_texts_name_things_not_requirement_documents():
    """`async-agent --help` and every subcommand's --help say what a thing is, not which seed asked for it."""
    cli = [sys.executable, "-m", "async_task_system"]
    top = subprocess.run([*cli, "--help"], capture_output=True, text=True, timeout=60, env=offline_env())
    assert top.returncode == 0, top.stderr
    names = re.findall(r"^    ([a-z][a-z-]+)  ", top.stdout, re.M)
    assert {"demo", "run", "serve", "hub", "worker", "platform"} <= set(names)
    for name in ["", *names]:
        proc = subprocess.run(
            [*cli, *([name] if name else []), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=offline_env(),
        )
        assert proc.returncode == 0, proc.stderr
        assert "seed" not in proc.stdout.lower(), f"async-agent {name} --help: {proc.stdout}"
