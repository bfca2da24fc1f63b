"""OpenTelemetry SDK providers whose exporters drop everything, for the benchmarks:
what recording costs, not shipping. Each provider owns a thread (batch span processor,
periodic metric reader); shut it down when done."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class _NoSpans(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _NoMetrics(MetricExporter):
    def export(self, metrics_data: Any, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def dropping_tracer_provider() -> TracerProvider:
    """A TracerProvider with a batch processor whose exporter drops every span."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_NoSpans()))
    return provider


def dropping_meter_provider() -> MeterProvider:
    """A MeterProvider with a periodic reader whose exporter drops every metric."""
    return MeterProvider(metric_readers=[PeriodicExportingMetricReader(_NoMetrics())])
