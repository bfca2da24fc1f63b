"""Spans to a file, for the end-to-end tests (``MESH_SPAN_FILE``); a no-op otherwise."""

from __future__ import annotations

import os


def export_spans_to_file() -> None:
    """Install OpenTelemetry's SDK with spans written to ``$MESH_SPAN_FILE``, if set."""
    path = os.environ.get("MESH_SPAN_FILE")
    if not path:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
    exporter = ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
