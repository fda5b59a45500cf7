"""An AsyncAgent whose background tasks run on a Dask cluster, and the timeline of what ran.

Offline by default (a ScriptedModel plays the LLM: a pipeline of clean -> analyze -> report over
five datasets, then a managed agent reviews the report, all submitted in one step).
The tasks run on an embedded LocalCluster (2 worker processes, 1 thread each), or on a real
cluster with ``--scheduler tcp://host:8786``. At the end the terminal shows the timeline and
``--save timeline.html`` (or ``.svg``) writes the picture.

    pip install 'async_task_system[dask]'
    .venv/bin/python examples/dask_scaleout.py --save timeline.html

Everything sent to Dask must pickle: tools and functions are module-level, and the managed agent
is registered as a *factory* that each run calls on the worker (an agent instance cannot travel).
"""

from __future__ import annotations

import argparse
import os
import time

from async_task_system import ScriptedModel, create_async_agent
from async_task_system.cli.demo import DATASETS
from async_task_system.scaleout import dask_executor


def clean(dataset: str) -> dict:
    """Load and clean one dataset (0.3 s)."""
    time.sleep(0.3)
    return {"dataset": dataset, "rows": 1000 + sum(map(ord, dataset)) * 7 % 9000, "worker_pid": os.getpid()}


def analyze(dataset: str, cleaned: dict) -> dict:
    """Analyze one cleaned dataset (0.5 to 1 s, as in the demo)."""
    time.sleep(DATASETS[dataset] / 2)
    seed = sum(map(ord, dataset))
    return {**cleaned, "mean": round(10 + seed % 90 + (seed % 7) / 10, 2), "anomalies": seed % 5}


def report(analyses: list) -> str:
    """Combine the analyses into one report."""
    lines = [
        f"{a['dataset']}: {a['rows']} rows, mean {a['mean']}, {a['anomalies']} anomalies" for a in analyses
    ]
    pids = sorted({a["worker_pid"] for a in analyses})
    return "\n".join([*lines, f"(cleaned on worker processes {pids})"])


def make_reviewer():
    """The managed agent's factory: called on the worker for every run (agents do not pickle)."""
    from smolagents import CodeAgent

    script = [
        "<code>\nimport os\nfinal_answer(f'report reviewed on worker pid {os.getpid()}: looks right')\n</code>"
    ]
    return CodeAgent(
        tools=[],
        model=ScriptedModel(script),
        additional_authorized_imports=["os"],
        name="reviewer",
        description="Reviews a report and says whether it looks right.",
        verbosity_level=0,
    )


def coordinator_script() -> list[str]:
    """What the scripted LLM writes: the whole pipeline in one step, then one wait."""
    return [
        "<code>\n"
        f"datasets = {list(DATASETS)!r}\n"
        "cleaned = {n: submit_task('function', 'clean', {'dataset': n}) for n in datasets}\n"
        "analyses = [submit_task('function', 'analyze', {'dataset': n, 'cleaned': {'$result': cleaned[n]}}) "
        "for n in datasets]\n"
        "summary = submit_task('function', 'report', {'analyses': [{'$result': a} for a in analyses]})\n"
        "review = submit_task('agent', 'reviewer', {'task': 'Review the report.'}, after=[summary])\n"
        "</code>",
        "<code>\n"
        "wait_for_tasks([summary, review], max_wait_time=60)\n"
        "results = get_task_results([summary, review])\n"
        "final_answer(results[summary] + '\\n' + results[review])\n"
        "</code>",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheduler", help="a Dask scheduler's address (default: an embedded LocalCluster)")
    parser.add_argument("--save", help="write the timeline picture to this .svg or .html file")
    args = parser.parse_args()
    with dask_executor(args.scheduler) as executor:
        print(f"Dask: {executor!r}, {executor.total_threads()} worker threads")
        agent = create_async_agent(
            model=ScriptedModel(coordinator_script()),
            executor=executor,
            max_workers=executor.total_threads(),
            verbosity_level=0,
        )
        for function in (clean, analyze, report):
            agent.task_manager.register_function(function)
        agent.task_manager.register_agent(make_reviewer, name="reviewer")
        with agent:
            started = time.perf_counter()
            answer = agent.run(
                "Clean, analyze and report on the five datasets, then have the report reviewed."
            )
            print(f"\n{answer}\n\n{time.perf_counter() - started:.2f} s on Dask\n")
            timeline = agent.task_manager.timeline(title="AsyncAgent on a 2-worker Dask LocalCluster")
    print(timeline.to_text(width=100))
    if args.save:
        print(f"\ntimeline written to {timeline.save(args.save)}")


if __name__ == "__main__":
    main()
