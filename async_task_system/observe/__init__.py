"""Observation: OpenTelemetry tracing (context carriers, a span per task, Phoenix setup) and the
timeline of a run.

The lowest layer: it reads task data through the attributes it needs and imports no other part
of the package, so the core can report through it.
"""
