"""OpenTelemetry across threads, processes and Phoenix: one connected trace per agent run.

Three pieces:

* **A span per task attempt.** The task manager captures the submitter's ``contextvars``
  context at ``submit`` (a fresh ``copy_context()`` per submit) and runs every attempt in a copy
  of it, so the OpenTelemetry context the submitter had is the one the worker thread sees. Inside
  it, :func:`task_span` opens a span ``task <name>`` whose parent is the span that submitted the
  task, even when the task starts after that span has ended. A copy is entered per attempt, so
  nothing leaks from one task to the next on a pooled thread, and a task submitted from inside a
  task nests under that task's span.
* **Carriers** for hops between processes and machines: :func:`inject_context` writes the
  current context into a dict (W3C ``traceparent``/``tracestate``, plus baggage), and
  :func:`run_with_context` / :func:`attached_context` run code under the context extracted from
  such a dict on the other side.
* **Phoenix in one call**: :func:`setup_tracing` wraps ``phoenix.otel.register`` and
  ``SmolagentsInstrumentor``, so agent runs, steps, model calls, tool calls and background tasks
  are exported to Phoenix as one trace.

Only ``opentelemetry-api`` is needed to import this module. With no SDK tracer provider
configured, :func:`task_span` returns a shared no-op object after one ``isinstance`` check, so
tracing costs next to nothing when it is off.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = [
    "task_span",
    "setup_tracing",
    "set_tracer_provider",
    "get_tracer_provider",
    "tracing_enabled",
    "inject_context",
    "extract_context",
    "run_with_context",
    "attached_context",
    "TRACER_NAME",
    "TRACEPARENT_HEADER",
]

T = TypeVar("T")

TRACER_NAME = "async_task_system"
TRACEPARENT_HEADER = "traceparent"
DEFAULT_PHOENIX_ENDPOINT = "http://127.0.0.1:6006/v1/traces"

_MAX_VALUE_CHARS = 4000
"""Arguments and results are recorded on the span as text, cut to this length."""

# OpenInference attribute names (Phoenix reads them to show span kinds, inputs and outputs).
_SPAN_KIND = "openinference.span.kind"
_INPUT_VALUE = "input.value"
_INPUT_MIME = "input.mime_type"
_OUTPUT_VALUE = "output.value"

_OK = Status(StatusCode.OK)

_override_provider: Any = None
"""A provider set by :func:`set_tracer_provider`; ``None`` means the global OpenTelemetry one."""

_cache: tuple[Any, Any] = (object(), None)
"""``(provider, tracer or None)`` for the provider seen last, so the hot path skips ``get_tracer``."""


# ---------------------------------------------------------------------------- provider


def set_tracer_provider(provider: Any | None) -> None:
    """Make task spans use ``provider`` instead of the global OpenTelemetry tracer provider.

    Useful when the global provider must not be replaced (it can be set only once per process)
    or when a library set it already. ``None`` goes back to the global provider.
    """
    global _override_provider
    _override_provider = provider


def get_tracer_provider() -> Any:
    """The tracer provider task spans are created with (ours if set, else the global one)."""
    return _override_provider if _override_provider is not None else trace.get_tracer_provider()


_UNSET = object()
_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def _global_provider() -> Any:
    """The global tracer provider, or ``None`` while none is set.

    ``trace.get_tracer_provider()`` looks the environment up on every call while no provider is
    set (about 1.3 us here, as much as the rest of the no-op path), so read the module attribute
    it returns first; fall back to the public call if OpenTelemetry's internals ever change or a
    provider is configured through ``OTEL_PYTHON_TRACER_PROVIDER``.
    """
    provider = getattr(trace, "_TRACER_PROVIDER", _UNSET)
    if provider is None and not _ENV_PROVIDER:
        return None
    if provider is _UNSET or provider is None:
        return trace.get_tracer_provider()
    return provider


def _tracer() -> Any:
    """The tracer for task spans, or ``None`` when no SDK provider is configured (the no-op path)."""
    global _cache
    provider = _override_provider
    if provider is None:
        provider = _global_provider()
        if provider is None:
            return None
    cached_provider, tracer = _cache
    if provider is cached_provider:
        return tracer
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        tracer = None
    else:
        from .._version import __version__

        tracer = provider.get_tracer(TRACER_NAME, __version__)
        if isinstance(tracer, trace.NoOpTracer):  # e.g. an SDK provider disabled by OTEL_SDK_DISABLED
            tracer = None
    _cache = (provider, tracer)
    return tracer


def tracing_enabled() -> bool:
    """True when task spans are recorded (an SDK tracer provider is configured)."""
    return _tracer() is not None


# ---------------------------------------------------------------------------- task spans


class _NoSpan:
    """What :func:`task_span` returns when tracing is off: enters and exits doing nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_result(self, result: Any) -> None:
        """Ignored: no span to record it on."""

    def wrap_coroutine(self, coroutine: Any) -> Any:
        """Nothing to keep open: the coroutine itself."""
        return coroutine


_NO_SPAN = _NoSpan()


def _text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + "..."


class _TaskSpan:
    """One task attempt's span: opened on enter, made current in the worker, ended on exit."""

    __slots__ = ("_tracer", "_info", "_attempt", "_span", "_token", "_deferred")

    def __init__(self, tracer: Any, info: Any, attempt: int) -> None:
        self._tracer = tracer
        self._info = info
        self._attempt = attempt
        self._span: Span | None = None
        self._token: object | None = None
        self._deferred = False

    def __enter__(self) -> _TaskSpan:
        info = self._info
        kind = getattr(info.kind, "value", info.kind)
        attributes: dict[str, Any] = {
            "task.id": info.id,
            "task.kind": str(kind),
            "task.name": info.name,
            "task.attempt": self._attempt,
            _SPAN_KIND: "CHAIN",
            _INPUT_VALUE: _text(info.arguments),
            _INPUT_MIME: "application/json",
        }
        if info.created_at and info.started_at:
            attributes["task.queued_seconds"] = max(0.0, info.started_at - info.created_at)
        if info.timeout is not None:
            attributes["task.timeout_seconds"] = float(info.timeout)
        # The parent is whatever span is current in the task's context: the submitter's.
        span = self._tracer.start_span(f"task {info.name}", kind=SpanKind.INTERNAL, attributes=attributes)
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return self

    def set_result(self, result: Any) -> None:
        """Record the attempt's return value as the span's output."""
        if self._span is not None:
            self._span.set_attribute(_OUTPUT_VALUE, _text(result))

    def wrap_coroutine(self, coroutine: Any) -> Any:
        """Keep the span open for an async target: it ends when ``coroutine`` finishes.

        The attempt's code only created the coroutine; the manager awaits it later on its event
        loop. The returned coroutine makes the span current while it runs (attached and detached
        within its own asyncio task) and records the outcome at its end.
        """
        self._deferred = True
        span = self._span

        async def traced() -> Any:
            token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
            error: BaseException | None = None
            try:
                result = await coroutine
                self.set_result(result)
                return result
            except BaseException as exc:
                error = exc
                raise
            finally:
                if token is not None:
                    otel_context.detach(token)
                self._end(error)

        return traced()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        # Detach in this thread (OpenTelemetry requires it); end now unless a coroutine carries on.
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        if not self._deferred or exc is not None:
            self._end(exc)
        return None

    def _end(self, exc: BaseException | None) -> None:
        span = self._span
        if span is None:
            return
        self._span = None
        try:
            status, error_type, error_message = self._outcome(exc)
            attributes: dict[str, Any] = {"task.status": status}  # one set_attributes call: one lock
            if error_type is not None:
                attributes["task.error.type"] = error_type
                attributes["task.error.message"] = error_message or ""
            if self._info.retries and status == "failed":
                attributes["task.will_retry"] = self._attempt <= self._info.retries
            span.set_attributes(attributes)
            if exc is not None:
                span.record_exception(exc)
            if status == "failed":
                span.set_status(Status(StatusCode.ERROR, f"{error_type}: {error_message}"))
            elif status == "completed":
                span.set_status(_OK)
        finally:
            span.end()

    def _outcome(self, exc: BaseException | None) -> tuple[str, str | None, str | None]:
        """The attempt's final status as the manager will record it (or already has)."""
        info = self._info
        status = getattr(info.status, "value", str(info.status))
        live = info.attempts == self._attempt and status in ("running", "waiting_remote")
        if not live:
            # The manager ended this attempt while it ran: a timeout (maybe retried) or a cancel.
            error = info.error
            final = status if status in ("failed", "cancelled", "completed") else "failed"
            if error is not None:
                return final, error.type, error.message
            return final, None, None
        if exc is None:
            # A remote task's code may return after handing its command to a remote executor:
            # the task then waits (holding no thread) and the response finishes it later.
            return ("waiting_remote" if status == "waiting_remote" else "completed"), None, None
        return "failed", type(exc).__name__, str(exc) or type(exc).__name__


def task_span(info: Any, attempt: int) -> _TaskSpan | _NoSpan:
    """A context manager running one task attempt inside its span ``task <name>``.

    The manager enters it in the worker thread, inside the copy of the submitter's context, so
    the span is a child of the submitting span. The object it yields has ``set_result(value)``.
    On exit the span gets ``task.status`` (completed, failed, cancelled, or waiting_remote when
    the attempt handed its work to a remote executor and returned) and, on failure,
    ``task.error.type`` / ``task.error.message``, the exception and an ERROR status. With no SDK
    tracer provider this is a shared no-op object.
    """
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    return _TaskSpan(tracer, info, attempt)


# ---------------------------------------------------------------------------- carriers


def inject_context(carrier: MutableMapping[str, str] | None = None, context: Any = None) -> dict[str, str]:
    """Write the current (or the given) OpenTelemetry context into a carrier dict and return it.

    The carrier holds W3C ``traceparent`` (and ``tracestate``, ``baggage`` when set), plain
    strings that travel in any JSON message, HTTP header or environment. It is empty when there
    is no valid span (tracing off): the other side then simply starts a new trace.
    """
    out: MutableMapping[str, str] = {} if carrier is None else carrier
    propagate.inject(out, context=context)
    return out if isinstance(out, dict) else dict(out)


def extract_context(carrier: Mapping[str, Any] | None) -> Any:
    """The OpenTelemetry context a carrier describes (the current context's values plus its span).

    Unknown or malformed entries are ignored; an empty or ``None`` carrier gives a context with
    no parent span.
    """
    clean = {str(k).lower(): str(v) for k, v in (carrier or {}).items() if isinstance(v, (str, bytes))}
    return propagate.extract(clean)


@contextlib.contextmanager
def attached_context(carrier: Mapping[str, Any] | None) -> Iterator[Any]:
    """Run the ``with`` body under the context extracted from ``carrier``.

    The context is attached and detached in the same thread (and, in asyncio, the same task):
    OpenTelemetry's ``detach`` must never run in another thread.
    """
    token = otel_context.attach(extract_context(carrier))
    try:
        yield otel_context.get_current()
    finally:
        otel_context.detach(token)


def run_with_context(
    carrier: Mapping[str, Any] | None, fn: Callable[..., T], /, *args: Any, **kwargs: Any
) -> T:
    """Call ``fn(*args, **kwargs)`` under the context extracted from ``carrier``.

    Spans ``fn`` starts become children of the remote span that wrote the carrier. For a
    coroutine function it returns a coroutine that attaches the context while it runs.
    """
    if inspect.iscoroutinefunction(fn):

        async def runner() -> Any:
            with attached_context(carrier):
                return await fn(*args, **kwargs)

        return runner()  # type: ignore[return-value]
    with attached_context(carrier):
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------------- Phoenix

_setup_lock = threading.Lock()


def setup_tracing(
    project_name: str,
    endpoint: str = DEFAULT_PHOENIX_ENDPOINT,
    *,
    set_global: bool = True,
    batch: bool = False,
    instrument_smolagents: bool = True,
    verbose: bool = False,
    headers: Mapping[str, str] | None = None,
    protocol: str | None = None,
    api_key: str | None = None,
    auto_instrument: bool = False,
    **provider_kwargs: Any,
) -> Any:
    """Send traces to Phoenix: seed 004's two-step snippet as one call. Returns the tracer provider.

    Does what ``phoenix.otel.register(project_name=..., endpoint=...)`` does, from the public
    pieces ``phoenix.otel`` exports for that (``TracerProvider``, ``SimpleSpanProcessor`` /
    ``BatchSpanProcessor``), then ``SmolagentsInstrumentor().instrument(tracer_provider=...)``, and
    makes this package's task spans use the same provider. Then an ``AsyncAgent`` run, its steps,
    model calls, async tool calls, each background task, the tools it runs and managed agents
    running in the background arrive in Phoenix as one trace. (``register`` itself is not called:
    the arize-phoenix-otel release that still supports Python 3.10 reads a private attribute of the
    OTLP exporter that opentelemetry-exporter-otlp-proto-http 1.45 removed, and fails.)

    Args:
        project_name: the Phoenix project the spans go to.
        endpoint: the collector URL; ``/v1/traces`` is OTLP over HTTP, a ``:4317`` URL gRPC.
        set_global: also install the provider as OpenTelemetry's global one (possible once per
            process; with ``False`` only this package and the smolagents instrumentation use it).
        batch: export in a background batch (production) instead of span by span.
        instrument_smolagents: instrument smolagents (agent runs, steps, model and tool calls).
            If it was instrumented already, it is re-instrumented with the new provider.
        verbose: print where the spans go.
        headers: sent with every export; without them Phoenix's ``PHOENIX_CLIENT_HEADERS`` and
            ``PHOENIX_API_KEY`` environment variables apply.
        protocol: ``"http/protobuf"`` or ``"grpc"``; inferred from ``endpoint`` when ``None``.
        api_key: sent as ``authorization: Bearer <api_key>`` (Phoenix Cloud, auth-enabled servers).
        auto_instrument: also instrument every installed OpenInference instrumentor.
        **provider_kwargs: passed to the tracer provider (``resource``, ``sampler``, ...); the
            project name is merged into a given ``resource``.

    Raises ``ImportError`` naming the extra to install when the telemetry packages are missing.
    Call ``provider.force_flush()`` before a short script exits, and ``provider.shutdown()`` at the end.
    """
    try:
        from opentelemetry.sdk.resources import Resource
        from phoenix.otel import PROJECT_NAME, BatchSpanProcessor, SimpleSpanProcessor, TracerProvider
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "setup_tracing needs the telemetry extra: pip install 'async_task_system[telemetry]' "
            f"(arize-phoenix-otel, opentelemetry-sdk, openinference-instrumentation-smolagents). {exc}"
        ) from exc
    export_headers = dict(headers) if headers else None
    if api_key:
        export_headers = {**(export_headers or {}), "authorization": f"Bearer {api_key}"}
    resource = provider_kwargs.pop("resource", None)
    if resource is None:
        resource = Resource.create({PROJECT_NAME: project_name})
    else:
        resource = resource.merge(Resource({PROJECT_NAME: project_name}))
    processor_type = BatchSpanProcessor if batch else SimpleSpanProcessor
    with _setup_lock:
        # The provider's own default processor (no headers, span by span) is replaced by ours.
        provider = TracerProvider(
            endpoint=endpoint, protocol=protocol, verbose=False, resource=resource, **provider_kwargs
        )
        provider.add_span_processor(
            processor_type(endpoint=endpoint, headers=export_headers, protocol=protocol)
        )
        if set_global:
            trace.set_tracer_provider(provider)
        set_tracer_provider(provider)
        if instrument_smolagents:
            instrument_smolagents_with(provider)
        if auto_instrument:
            _instrument_installed_openinference(provider)
    if verbose:
        print(
            f"async_task_system tracing: project {project_name!r} -> {endpoint} "
            f"({protocol or 'protocol from the URL'}, {processor_type.__name__}"
            f"{', headers ' + ', '.join(sorted(export_headers)) if export_headers else ''})"
            f"{'; set as the global OpenTelemetry tracer provider' if set_global else ''}"
        )
    return provider


def _instrument_installed_openinference(provider: Any) -> None:
    """Instrument every OpenInference instrumentor installed (their ``openinference_instrumentor``
    entry points), as ``phoenix.otel.register(auto_instrument=True)`` does."""
    from importlib.metadata import entry_points

    for entry_point in entry_points(group="openinference_instrumentor"):
        instrumentor = entry_point.load()()
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        instrumentor.instrument(tracer_provider=provider)


def instrument_smolagents_with(provider: Any) -> Any:
    """Instrument smolagents with ``provider`` (re-instrumenting if it was instrumented before)."""
    try:
        from openinference.instrumentation.smolagents import SmolagentsInstrumentor
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Instrumenting smolagents needs openinference-instrumentation-smolagents: "
            f"pip install 'async_task_system[telemetry]'. {exc}"
        ) from exc
    instrumentor = SmolagentsInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider)
    return instrumentor
