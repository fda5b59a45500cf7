"""The LiteLLM path: .env settings -> LiteLLMModel -> real HTTP to an OpenAI-compatible stub."""

from __future__ import annotations

import os
import subprocess
import sys

from openai_stub import OpenAIStub

from async_task_system import TaskStatus, create_async_agent, model_from_env
from async_task_system.cli.demo import DATASETS, demo_script


def test_async_agent_on_litellm_against_a_stub_server(monkeypatch, tmp_path):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with OpenAIStub(demo_script()) as stub:
        # Settings come from a .env file in the working directory, as a user would write them.
        (tmp_path / ".env").write_text(
            f"API_KEY=sk-test-123\nBASE_URL={stub.base_url}\nMODEL_ID=openai/stub-model\n"
        )
        monkeypatch.chdir(tmp_path)
        for key in ("API_KEY", "BASE_URL", "MODEL_ID"):
            monkeypatch.delenv(key, raising=False)
        model = model_from_env()
        assert type(model).__name__ == "LiteLLMModel"
        from async_task_system.cli.demo import analyze_dataset

        with create_async_agent(
            tools=[analyze_dataset], model=model, max_workers=5, verbosity_level=0
        ) as agent:
            answer = agent.run("Analyse the five datasets in parallel.")
            infos = agent.task_manager.list()
    assert answer.startswith("Analysed 5 datasets in parallel")
    assert all(name in answer for name in DATASETS)
    assert [i.status for i in infos] == [TaskStatus.COMPLETED] * 5
    assert max(i.started_at for i in infos) < min(i.finished_at for i in infos)
    # litellm really spoke HTTP to the stub: two calls, our key, our model, the async tools in the prompt.
    assert len(stub.requests) == 2
    first = stub.requests[0]
    assert first["headers"].get("Authorization") == "Bearer sk-test-123"
    assert first["body"]["model"] == "stub-model"
    assert "submit_task" in first["body"]["messages"][0]["content"][0]["text"]
    assert "submitted" in str(stub.requests[1]["body"]["messages"])


def test_cli_run_on_litellm_stub(tmp_path):
    reply = '<code>\nfinal_answer("the stub says hello")\n</code>'
    with OpenAIStub([reply]) as stub:
        env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "BASE_URL", "MODEL_ID")}
        env.update(
            API_KEY="sk-cli",
            BASE_URL=stub.base_url,
            MODEL_ID="openai/stub-model",
            LITELLM_LOCAL_MODEL_COST_MAP="True",
        )
        proc = subprocess.run(
            [sys.executable, "-m", "async_task_system", "run", "Say hello", "--no-guidance"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the stub says hello" in proc.stdout
    assert len(stub.requests) == 1
