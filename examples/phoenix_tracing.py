"""See an AsyncAgent run in Phoenix as ONE connected trace: agent, steps, async tools, background tasks.

Offline by default: the agents run on ScriptedModel unless ``.env`` sets API_KEY, BASE_URL and
MODEL_ID (then the same run uses your LLM through LiteLLM).

Phoenix itself needs its own virtual environment (its ``openai>=3`` conflicts with litellm's pin):

    make phoenix                                   # installs it into ~/.cache/async_task_system/phoenix-venv
    ~/.cache/async_task_system/phoenix-venv/bin/phoenix serve     # UI and collector on http://127.0.0.1:6006
    .venv/bin/python examples/phoenix_tracing.py

or let this script start Phoenix from that venv and keep it open until you press Enter:

    .venv/bin/python examples/phoenix_tracing.py --start-phoenix
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
from pathlib import Path

from opentelemetry import trace
from smolagents import CodeAgent, tool

from async_task_system import ScriptedModel, create_async_agent, model_from_env, setup_tracing
from async_task_system.observe.tracing import DEFAULT_PHOENIX_ENDPOINT

PHOENIX_VENV = Path(
    os.environ.get("ASYNC_TASK_SYSTEM_PHOENIX_VENV") or Path.home() / ".cache/async_task_system/phoenix-venv"
)
DATASETS = ["sales", "marketing", "operations"]


@tool
def analyze_dataset(dataset: str) -> str:
    """Analyze one dataset and return a one-line summary (takes about half a second).

    Args:
        dataset: the dataset's name, e.g. 'sales'.
    """
    time.sleep(0.5)
    return f"{dataset}: {len(dataset) * 7} records, trend up {len(dataset) % 5 + 2}%"


def _code(body: str) -> str:
    return f"Thought: next step.\n<code>\n{textwrap.dedent(body).strip()}\n</code>"


def build_agent(model: object | None):
    """The coordinating AsyncAgent with a tool and a managed 'researcher' agent."""
    offline = model is None
    researcher_model = (
        ScriptedModel(
            [
                _code("note = analyze_dataset(dataset='competitors')\nprint(note)"),
                _code("final_answer('competitor check: ' + note)"),
            ]
        )
        if offline
        else model
    )
    researcher = CodeAgent(
        tools=[analyze_dataset],
        model=researcher_model,
        name="researcher",
        description="Researches a question in depth with analyze_dataset; give it a 'task'.",
        max_steps=4,
        verbosity_level=0,
    )
    if offline:
        model = ScriptedModel(
            [
                _code(
                    f"""
                    ids = [submit_task('tool', 'analyze_dataset', {{'dataset': d}}) for d in {DATASETS!r}]
                    ids.append(submit_task('agent', 'researcher', {{'task': 'How do competitors compare?'}}))
                    summary = wait_for_tasks(ids, max_wait_time=60)
                    results = get_task_results(ids)
                    print(summary)
                    """
                ),
                _code("final_answer('\\n'.join(str(results[i]) for i in ids))"),
            ]
        )
    return create_async_agent(
        tools=[analyze_dataset],
        managed_agents=[researcher],
        model=model,
        max_workers=4,
        max_steps=6,
        verbosity_level=1,
    )


def reachable(endpoint: str) -> bool:
    url = urllib.parse.urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=2):
            return True
    except OSError:
        return False


def start_phoenix(port: int) -> subprocess.Popen[str]:
    """Start Phoenix from the ``make phoenix`` venv on 127.0.0.1 and return once it serves."""
    python = PHOENIX_VENV / "bin" / "python"
    if not python.exists():
        sys.exit(f"No Phoenix venv at {PHOENIX_VENV}: run `make phoenix` first.")
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_WORKING_DIR": tempfile.mkdtemp(prefix="phoenix-example-"),
        "PHOENIX_SQL_DATABASE_URL": "sqlite:///:memory:",
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    print(f"Starting Phoenix on http://127.0.0.1:{port} (about 10 s)...")
    proc = subprocess.Popen(
        [str(python), "-m", "phoenix.server.main", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # its own log says when the socket is bound
        if "Uvicorn running on" in line:
            # Keep draining its log, or Phoenix blocks once the pipe is full.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc
    sys.exit(f"Phoenix exited with code {proc.wait()} before it was ready.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--endpoint", default=os.environ.get("PHOENIX_COLLECTOR_ENDPOINT") or DEFAULT_PHOENIX_ENDPOINT
    )
    parser.add_argument("--project", default="async-agent-demo", help="Phoenix project name")
    parser.add_argument(
        "--start-phoenix", action="store_true", help="start Phoenix from the `make phoenix` venv"
    )
    args = parser.parse_args(argv)

    endpoint = args.endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    server = None
    if args.start_phoenix:
        server = start_phoenix(urllib.parse.urlparse(endpoint).port or 6006)
    elif not reachable(endpoint):
        print(
            f"Phoenix is not listening at {endpoint}.\n"
            f"Start it with `{PHOENIX_VENV}/bin/phoenix serve` (after `make phoenix`), or rerun with --start-phoenix.",
            file=sys.stderr,
        )
        return 2

    model = model_from_env()
    print("LLM:", "from .env" if model is not None else "none configured, using ScriptedModel (offline)")
    provider = setup_tracing(args.project, endpoint=endpoint)
    try:
        tracer = trace.get_tracer("phoenix-example")
        request = (
            f"Analyze the {', '.join(DATASETS)} datasets in parallel and ask the researcher how "
            "competitors compare; combine everything into a short report."
        )
        # A span of your own around the run: the agent's whole trace nests under it.
        root = tracer.start_as_current_span(
            "phoenix_tracing example", attributes={"openinference.span.kind": "CHAIN", "input.value": request}
        )
        with build_agent(model) as agent, root as span:
            answer = agent.run_with_async_guidance(request)
            span.set_attribute("output.value", str(answer))
            trace_id = f"{span.get_span_context().trace_id:032x}"
        provider.force_flush(30_000)
    finally:
        provider.shutdown()

    ui = endpoint[: -len("/v1/traces")]
    print("\nAnswer:\n" + str(answer))
    print(
        f"\nTrace {trace_id} was sent to Phoenix project {args.project!r}.\n"
        f"Open {ui}/projects, choose {args.project!r}, and open the newest trace. You will see one tree:\n"
        "  phoenix_tracing example\n"
        "    CodeAgent.run -> Step 1 -> SubmitTaskTool -> task analyze_dataset -> SimpleTool (the tool itself)\n"
        "                             SubmitTaskTool -> task researcher -> researcher.run -> its own steps\n"
        "                  -> WaitForTasksTool, GetTaskResultsTool -> Step 2 -> FinalAnswerTool\n"
        "Task spans carry task.id, task.kind, task.name, task.status, task.attempt and, on failure, task.error.*;\n"
        "their bars overlap on the timeline because the tasks ran in parallel."
    )
    if server is not None:
        try:
            input("\nPhoenix keeps running until you press Enter... ")
        except EOFError:
            pass
        server.terminate()
        server.wait(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
