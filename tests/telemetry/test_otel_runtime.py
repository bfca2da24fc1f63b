"""``meshsdk.telemetry.otel_runtime`` reaches OpenTelemetry's context variable directly;
it must behave exactly as the API's functions do, and fall back to them when another
runtime context is installed. Also: an unsampled request's record carries its span's
ids, read without building a ``SpanContext``."""

from __future__ import annotations

import importlib
import logging
import random
import threading
from collections.abc import Iterator

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from meshsdk.telemetry import Telemetry, otel_runtime
from meshsdk.telemetry.tracing import UnsampledSpan
from meshsdk.workload import Workload

SPAN = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=False,
                                    trace_flags=TraceFlags(TraceFlags.SAMPLED)))


def test_direct_on_the_default_runtime_context() -> None:
    assert otel_runtime.DIRECT  # the API's default: what every test here exercises


def test_attach_get_detach_are_the_apis() -> None:
    before = otel_context.get_current()
    ctx = otel_runtime.with_span(SPAN, before)
    token = otel_runtime.attach(ctx)
    try:
        assert otel_context.get_current() is ctx is otel_runtime.get_current()
        assert trace.get_current_span() is SPAN is otel_runtime.current_span()
    finally:
        otel_runtime.detach(token)
    assert otel_context.get_current() is before
    # and the other way round: what the API attaches, this module sees
    token = otel_context.attach(trace.set_span_in_context(SPAN))
    try:
        assert otel_runtime.current_span() is SPAN
    finally:
        otel_context.detach(token)
    assert otel_runtime.current_span() is trace.INVALID_SPAN


def test_with_span_keeps_the_base_contexts_other_values() -> None:
    key = otel_context.create_key("test")
    base = otel_context.set_value(key, "kept", otel_context.Context())
    ctx = otel_runtime.with_span(SPAN, base)
    assert ctx.get(key) == "kept"
    assert trace.get_current_span(ctx) is SPAN
    assert trace.get_current_span(base) is trace.INVALID_SPAN  # base left as it was
    assert dict(ctx) == dict(trace.set_span_in_context(SPAN, base))


def test_detach_of_a_foreign_token_logs_as_the_api_does(
        caplog: pytest.LogCaptureFixture) -> None:
    tokens = []
    worker = threading.Thread(target=lambda: tokens.append(
        otel_runtime.attach(otel_runtime.with_span(SPAN, otel_context.Context()))))
    worker.start()
    worker.join()
    with caplog.at_level(logging.ERROR):
        otel_runtime.detach(tokens[0])  # made in another thread's context: not raised
    assert "Failed to detach context" in caplog.text


@pytest.fixture
def other_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A runtime context of another type installed (what OTEL_PYTHON_CONTEXT picks),
    the module reloaded to see it; reloaded again afterwards."""
    class Other(ContextVarsRuntimeContext):
        pass

    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", Other())
    importlib.reload(otel_runtime)
    yield
    monkeypatch.undo()
    importlib.reload(otel_runtime)
    assert otel_runtime.DIRECT


def test_falls_back_to_the_api_with_another_runtime(other_runtime: None) -> None:
    assert not otel_runtime.DIRECT
    assert otel_runtime.attach is otel_context.attach
    assert otel_runtime.get_current is otel_context.get_current
    token = otel_runtime.attach(otel_runtime.with_span(SPAN, otel_context.get_current()))
    try:
        assert otel_runtime.current_span() is SPAN is trace.get_current_span()
    finally:
        otel_runtime.detach(token)
    assert otel_runtime.current_span() is trace.INVALID_SPAN


def test_an_unsampled_requests_record_carries_its_span_ids() -> None:
    tel = Telemetry(Workload("ratings-v1", "default", {"app": "ratings"}, "ratings"),
                    otel_metrics=False, rng=random.Random(7))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"  # not sampled
    call = tel.inbound("GET", "http", "ratings:9080", "/ratings/0",
                       [("host", "ratings:9080"), ("traceparent", parent)])
    assert type(call.span) is UnsampledSpan
    record = call.finish(200)
    ctx = call.span.get_span_context()
    assert record.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" == f"{ctx.trace_id:032x}"
    assert record.span_id == f"{ctx.span_id:016x}"
    assert record.span_id != "00f067aa0ba902b7"  # the server's own span, not the caller's
