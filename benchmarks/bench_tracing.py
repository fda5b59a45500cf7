"""Per-task cost of tracing: task spans on (OpenTelemetry SDK) against off (no SDK configured).

Runs the same workload, N no-op function tasks submitted from one thread and waited for, with
tracing off (the no-op path) and on (an SDK ``TracerProvider`` whose exporter drops the spans, and
one that keeps them in memory). Rounds are interleaved and the median is reported, so machine
noise hits every variant alike. Also times ``task_span`` enter/exit alone.

    .venv/bin/python benchmarks/bench_tracing.py [--tasks 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from async_task_system import TaskManager, tracing
from async_task_system.core.tasks import TaskInfo, TaskKind, TaskStatus


class DropExporter(SpanExporter):
    """Accepts spans and throws them away: the cost of creating and ending spans, no export."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def noop() -> None:
    return None


def run_tasks(n: int, provider: TracerProvider | None, parent: bool) -> float:
    """Seconds for n no-op tasks, submit to last result, with task spans on (provider) or off."""
    tracing.set_tracer_provider(provider)
    manager = TaskManager(max_workers=4, functions=[noop], retention=n)
    try:
        start = time.perf_counter()
        if parent and provider is not None:
            with provider.get_tracer("bench").start_as_current_span("submitter"):
                ids = [manager.submit("function", "noop") for _ in range(n)]
        else:
            ids = [manager.submit("function", "noop") for _ in range(n)]
        manager.wait(ids)
        elapsed = time.perf_counter() - start
    finally:
        manager.shutdown()
        tracing.set_tracer_provider(None)
    return elapsed


def time_span_calls(n: int, provider: TracerProvider | None) -> float:
    """Seconds per task_span enter/exit pair (what the worker adds around each attempt)."""
    tracing.set_tracer_provider(provider)
    info = TaskInfo(id="task_1", kind=TaskKind.FUNCTION, name="noop", arguments={}, status=TaskStatus.RUNNING)
    info.attempts = 1
    try:
        start = time.perf_counter()
        for _ in range(n):
            with tracing.task_span(info, 1) as span:
                span.set_result(None)
        return (time.perf_counter() - start) / n
    finally:
        tracing.set_tracer_provider(None)


def time_raw_sdk_span(n: int, provider: TracerProvider) -> float:
    """Seconds per bare SDK ``start_span``/``end`` made current: the floor any span per task costs."""
    tracer = provider.get_tracer("bench")
    start = time.perf_counter()
    for _ in range(n):
        with tracer.start_as_current_span("bare"):
            pass
    return (time.perf_counter() - start) / n


def provider_with(exporter: SpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per variant (default 5)")
    args = parser.parse_args(argv)
    n = args.tasks

    memory = InMemorySpanExporter()
    variants: dict[str, Callable[[], float]] = {
        "off (no SDK configured)": lambda: run_tasks(n, None, parent=False),
        "on, SDK + dropping exporter": lambda: run_tasks(n, provider_with(DropExporter()), parent=False),
        "on, SDK + dropping exporter, under a parent span": lambda: run_tasks(
            n, provider_with(DropExporter()), parent=True
        ),
        "on, SDK + in-memory exporter": lambda: run_tasks(n, provider_with(memory), parent=False),
    }
    run_tasks(min(n, 500), None, parent=False)  # warm up imports, thread pool, caches
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            samples[name].append(run())
            memory.clear()

    print(
        f"Tracing overhead per task: {n} no-op function tasks, max_workers=4, median of {args.rounds} rounds"
    )
    baseline = statistics.median(samples["off (no SDK configured)"]) / n
    for name, values in samples.items():
        per_task = statistics.median(values) / n
        print(
            f"  {name:<52} {per_task * 1e6:8.2f} us/task   ratio {per_task / baseline:5.2f}x"
            f"   (+{(per_task - baseline) * 1e6:6.2f} us)"
        )

    calls = 50_000
    off = statistics.median(time_span_calls(calls, None) for _ in range(3))
    on = statistics.median(time_span_calls(calls, provider_with(DropExporter())) for _ in range(3))
    raw = statistics.median(time_raw_sdk_span(calls, provider_with(DropExporter())) for _ in range(3))
    print(f"task_span enter/exit alone ({calls} calls, median of 3):")
    print(f"  off (no-op object)                                   {off * 1e9:8.0f} ns/call")
    print(
        f"  on (SDK span, dropping exporter)                     {on * 1e6:8.2f} us/call   ratio {on / off:6.0f}x"
    )
    print(f"  bare SDK span made current, no attributes (floor)    {raw * 1e6:8.2f} us/call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
