"""Spans through ``opentelemetry-api`` only: the user brings the SDK and exporter.

The mesh decides sampling the way Istio's sidecar does (the caller's decision if it
made one, else ``randomSamplingPercentage``, 1% by default) and then:

* sampled, reporting on: a real span from the user's tracer provider, as a child of
  the current or received context. Configure the SDK with its default sampler
  (``ParentBased(ALWAYS_ON)``) so it keeps the mesh's decision.
* not sampled, or no SDK installed, or ``disableSpanReporting``: a non-recording span
  with fresh ids, so the trace context still reaches the next hop (and its sampling
  decision with it) at the cost of two random numbers.

Retries do not get spans of their own: each attempt is an event on the call's span
(``mesh.attempt``), as Envoy reports one span per request by default; the span's
``mesh.attempts`` attribute counts them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)

from meshsdk.randomness import fresh_random
from meshsdk.telemetry.propagation import Parent

INSTRUMENTATION = "meshsdk"

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def decide_sampling(parent: Parent | None, percentage: float, rng: random.Random) -> bool:
    """Sample this request? The caller's decision when it made one, else a draw."""
    if parent is not None and parent.decided:
        return parent.sampled
    if percentage >= 100.0:
        return True
    return percentage > 0.0 and rng.random() * 100.0 < percentage


class SpanStarter:
    """Starts client and server spans under a sampling decision already made."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 rng: random.Random | None = None) -> None:
        self._tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)
        self._rng = rng if rng is not None else fresh_random()

    def start(self, name: str, kind: SpanKind, parent: SpanContext | None, sampled: bool,
              report: bool, attributes: Mapping[str, str | int | float | bool],
              start_time_ns: int | None = None) -> Span:
        """A span for one request; recording only when sampled and reported."""
        if sampled and report:
            ctx = (trace.set_span_in_context(NonRecordingSpan(parent),
                                             otel_context.Context())
                   if parent is not None else otel_context.Context())
            span = self._tracer.start_span(name, context=ctx, kind=kind,
                                           attributes=dict(attributes),
                                           start_time=start_time_ns)
            if span.get_span_context().is_valid:
                return span
            # the API's no-op tracer (no SDK installed): still propagate a context
        trace_id, span_id = self.ids(parent)
        return UnsampledSpan(trace_id, span_id, sampled,
                             parent.trace_state if parent is not None else None)

    def ids(self, parent: SpanContext | None) -> tuple[int, int]:
        """Trace and span id of a new span that records nothing: the parent's trace (or
        a new one) and a fresh span id, from this object's random source. For callers
        that only propagate and need no span object (the outbound path)."""
        rng = self._rng
        span_id = rng.getrandbits(64) or 1
        if parent is not None:
            return parent.trace_id, span_id
        return rng.getrandbits(128) or 1, span_id


class UnsampledSpan(NonRecordingSpan):
    """A span that records nothing (most requests): its ids are drawn when it starts,
    its :class:`SpanContext` is built when first asked for.

    Why: the API's ``SpanContext`` validates its ids in Python as it is built, a few
    microseconds that a server would spend before its response; most requests make no
    call that propagates the context, and their record reads the ids after the
    response. Concurrent first reads may each build one: equal values, either is kept.
    """

    def __init__(self, trace_id: int, span_id: int, sampled: bool,
                 trace_state: TraceState | None) -> None:
        self._context: SpanContext | None = None  # type: ignore[assignment]
        self._ids = (trace_id, span_id, sampled, trace_state)

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            trace_id, span_id, sampled, state = self._ids
            context = self._context = SpanContext(
                trace_id, span_id, is_remote=False,
                trace_flags=_SAMPLED if sampled else _NOT_SAMPLED, trace_state=state)
        return context

    @property
    def trace_and_span_id(self) -> tuple[int, int]:
        """The two ids, without building the :class:`SpanContext` (what a request's
        record reads after its response)."""
        return self._ids[0], self._ids[1]

    def __repr__(self) -> str:
        return f"UnsampledSpan({self.get_span_context()!r})"


__all__ = ["INSTRUMENTATION", "SpanStarter", "UnsampledSpan", "decide_sampling"]
