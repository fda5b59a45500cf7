"""``async-agent demo`` and ``async-agent run``: seed 004's scenario on a real CodeAgent.

The demo analyses five datasets (1 to 2 s each) with an AsyncAgent. Without an LLM configured
in ``.env`` it uses the offline :class:`~async_task_system.agents.testing.ScriptedModel`, whose script
is exactly the calls seed 004 shows; with API_KEY, BASE_URL and MODEL_ID it uses LiteLLM and the
LLM plans on its own. It shows task progress live, the answer, the statistics, and the wall time
against the same tools run one after another, and at the end a timeline of what ran in parallel.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console
from rich.text import Text

from ..agents.agent import create_async_agent
from ..agents.config import llm_settings_from_env, model_from_env
from ..agents.live import TaskTable
from ..agents.testing import ScriptedModel
from ..core.manager import report_progress

__all__ = [
    "DATASETS",
    "analyze_dataset",
    "demo_script",
    "configure_demo_parser",
    "configure_run_parser",
    "run_demo",
    "run_run",
]

DATASETS: dict[str, float] = {
    "sales_2024": 1.0,
    "customers": 1.25,
    "inventory": 1.5,
    "web_traffic": 1.75,
    "support_tickets": 2.0,
}
"""The five datasets of the demo and how many seconds each analysis takes."""

DEMO_TASK = (
    "I need to analyze 5 datasets: "
    + ", ".join(DATASETS)
    + ". Each analysis takes 1-2 seconds. Design an efficient parallel plan, run it, and summarise the results."
)


def _make_analyze_dataset() -> Any:
    from smolagents import tool

    @tool
    def analyze_dataset(dataset: str) -> dict:
        """Analyze one dataset and return its summary statistics (takes 1-2 seconds).

        Args:
            dataset: the dataset name, one of sales_2024, customers, inventory, web_traffic, support_tickets.
        """
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        seconds = DATASETS[dataset]
        for step, stage in enumerate(("loading", "cleaning", "computing", "checking"), start=1):
            report_progress((step - 1) / 4, stage)  # shown in check_task, list_tasks and the live table
            time.sleep(seconds / 4)
        report_progress(1.0, "done")
        seed = sum(map(ord, dataset))
        return {
            "dataset": dataset,
            "rows": 1000 + seed * 7 % 9000,
            "mean": round(10 + seed % 90 + (seed % 7) / 10, 2),
            "anomalies": seed % 5,
            "seconds": seconds,
        }

    return analyze_dataset


analyze_dataset = _make_analyze_dataset()


def demo_script() -> list[str]:
    """The scripted model's two steps: seed 004's own calls."""
    names = list(DATASETS)
    return [
        "Thought: The five analyses are independent, so I submit them all in parallel, then wait once.\n"
        "<code>\n"
        f"datasets = {names!r}\n"
        "task_ids = []\n"
        "for name in datasets:\n"
        '    task_id = submit_task("tool", "analyze_dataset", {"dataset": name})\n'
        "    task_ids.append(task_id)\n"
        'print("submitted", task_ids)\n'
        "</code>",
        "Thought: All tasks are submitted; I wait for them together and combine the results.\n"
        "<code>\n"
        "summary = wait_for_tasks(task_ids, max_wait_time=30)\n"
        "results = get_task_results(task_ids)\n"
        "lines = []\n"
        "for task_id, name in zip(task_ids, datasets):\n"
        "    r = results[task_id]\n"
        "    lines.append(f\"{name}: {r['rows']} rows, mean {r['mean']}, {r['anomalies']} anomalies\")\n"
        'final_answer("Analysed 5 datasets in parallel:\\n" + "\\n".join(lines))\n'
        "</code>",
    ]


def configure_demo_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-workers", type=int, default=5, help="background tasks run at once (default 5)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip running the tools one after another for comparison"
    )
    parser.add_argument("--quiet", action="store_true", help="hide the agent's step-by-step log")


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    settings = llm_settings_from_env()
    if settings is None:
        model: Any = ScriptedModel(demo_script(), model_id="scripted-demo")
        console.print(
            "[bold yellow]No LLM configured[/] (.env has no API_KEY/MODEL_ID): using the offline ScriptedModel, "
            "which replays the calls an LLM would write for this scenario. Copy .env.example to .env to use a real LLM."
        )
    else:
        model = model_from_env()
        console.print(
            f"[bold green]Using LLM[/] {settings.model_id} at {settings.base_url or 'the provider default'}"
        )
    verbosity = 0 if args.quiet else 1
    agent = create_async_agent(
        tools=[analyze_dataset],
        model=model,
        max_workers=args.max_workers,
        verbosity_level=verbosity,
        max_steps=8,
    )
    progress = TaskTable(agent.task_manager, console)
    with agent:
        started = time.perf_counter()
        with progress.shown():
            answer = agent.run_with_async_guidance(DEMO_TASK)
        parallel_seconds = time.perf_counter() - started
        stats = agent.task_manager.get_statistics()
        timeline = agent.task_manager.timeline()
    console.rule("Answer")
    console.print(str(answer))
    console.rule("Statistics")
    console.print(
        {k: v for k, v in stats.items() if k in ("total", "completed", "failed", "cancelled", "running")}
    )
    console.print(f"AsyncAgent wall time: [bold]{parallel_seconds:.2f} s[/]")
    if not args.no_baseline:
        console.print(
            f"Baseline: the same {len(DATASETS)} tools one after another (about {sum(DATASETS.values()):g} s; "
            "--no-baseline skips it)"
        )
        started = time.perf_counter()
        for done, name in enumerate(DATASETS, start=1):
            call_started = time.perf_counter()
            analyze_dataset(dataset=name)
            console.print(
                f"  baseline {done}/{len(DATASETS)}: analyze_dataset({name!r}) "
                f"{time.perf_counter() - call_started:.2f} s"
            )
        sequential_seconds = time.perf_counter() - started
        console.print(f"Same tools one after another: [bold]{sequential_seconds:.2f} s[/]")
        console.print(f"Speedup: [bold green]{sequential_seconds / parallel_seconds:.2f}x[/]")
    console.rule("Timeline")  # what ran in parallel (manager.timeline(): also SVG/HTML, inline in Jupyter)
    console.print(Text.from_ansi(timeline.to_text(width=min(console.width, 120), color=console.is_terminal)))
    return 0 if stats["completed"] == len(DATASETS) or settings is not None else 1


def configure_run_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="what the agent should do")
    parser.add_argument("--max-workers", type=int, default=3, help="background tasks run at once (default 3)")
    parser.add_argument("--max-steps", type=int, default=20, help="most agent steps (default 20)")
    parser.add_argument(
        "--no-guidance",
        action="store_true",
        help="run the task as given, without the parallel-planning reminder",
    )


def run_run(args: argparse.Namespace) -> int:
    console = Console()
    settings = llm_settings_from_env()
    if settings is None:
        console.print(
            "[bold red]No LLM configured.[/] Set API_KEY, BASE_URL and MODEL_ID in .env (see .env.example), "
            "or try the offline demo: async-agent demo"
        )
        return 2
    agent = create_async_agent(
        tools=[analyze_dataset],
        model=model_from_env(),
        max_workers=args.max_workers,
        max_steps=args.max_steps,
    )
    progress = TaskTable(agent.task_manager, console)
    with agent, progress.shown():
        answer = agent.run(args.task) if args.no_guidance else agent.run_with_async_guidance(args.task)
    console.rule("Answer")
    console.print(str(answer))
    return 0
