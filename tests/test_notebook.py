"""examples/notebook.ipynb on a real Jupyter kernel (nbclient, headless, offline): the answer, the live
task table, the timeline's SVG, the pipeline and ``await agent.arun`` in the kernel's running loop."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


def _outputs(cell: dict) -> tuple[str, str]:
    """A cell's stream text and its HTML/markdown display data."""
    text, rich = [], []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            text.append(output["text"])
        elif output["output_type"] in ("display_data", "execute_result", "update_display_data"):
            data = output.get("data", {})
            rich.append(data.get("text/html", "") + data.get("text/markdown", ""))
    return "".join(text), "".join(rich)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_notebook_runs_headless_and_shows_the_answer_the_table_and_the_timeline(tmp_path, monkeypatch):
    # A kernelspec for this venv's Python, in a temporary Jupyter path (nothing installed for the user).
    spec_dir = tmp_path / "kernels" / "async-task-system"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "async_task_system", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    for name in ("API_KEY", "BASE_URL", "MODEL_ID"):
        monkeypatch.delenv(name, raising=False)  # offline: ScriptedModel
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="async-task-system",
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},  # cwd without a .env
    )
    client.execute()

    cells = notebook.cells
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == []
    texts = [_outputs(c) for c in cells if c.cell_type == "code"]
    everything = "".join(t for t, _ in texts)
    assert "ScriptedModel (offline)" in everything
    run_text, run_html = texts[2]
    assert run_text.startswith("Analysed 5 datasets in parallel:") and "support_tickets" in run_text
    assert "async-task-table" in run_html  # the live table, displayed with a display id
    # shown empty when the cell started, then updated in place (display id) as the tasks ran
    assert "(5 tasks)" in run_html and run_html.count(">completed<") == 5
    _timeline_text, timeline_html = texts[3]
    assert "<svg" in timeline_html and "analyze_dataset" in timeline_html
    pipeline_text, _ = texts[4]
    assert "'dataset': 'sales_2024'" in pipeline_text and "'dataset': 'customers'" in pipeline_text
    arun_text, arun_html = texts[5]
    assert arun_text.startswith("Analysed 5 datasets in parallel:") and "async-task-table" in arun_html
    assert os.environ.get("JUPYTER_PATH") == str(tmp_path)
