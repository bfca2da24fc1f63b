"""Trace context on the wire: W3C ``traceparent``/``tracestate`` and Zipkin's B3.

Extraction accepts either (W3C first, then B3 multi-header or single ``b3``) and is
done by OpenTelemetry's own propagators, which validate ids and flags. Injection
writes both W3C and B3 multi-header, as Istio's sidecars send B3 and most OTel
backends read W3C; it is plain string formatting, so it is done here.

A B3 context without ``x-b3-sampled``/``x-b3-flags`` (or a single ``b3`` with only
ids) carries *no* sampling decision: B3 says the receiver decides, and Envoy does
so. OpenTelemetry's propagator reads such headers as "not sampled"; :func:`extract`
reports ``decided=False`` for them so the mesh's own sampling applies.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
B3_SINGLE = "b3"
B3_TRACE_ID = "x-b3-traceid"
B3_SPAN_ID = "x-b3-spanid"
B3_PARENT_SPAN_ID = "x-b3-parentspanid"
B3_SAMPLED = "x-b3-sampled"
B3_FLAGS = "x-b3-flags"
REQUEST_ID = "x-request-id"

TRACE_HEADERS = frozenset({TRACEPARENT, TRACESTATE, B3_SINGLE, B3_TRACE_ID, B3_SPAN_ID,
                           B3_PARENT_SPAN_ID, B3_SAMPLED, B3_FLAGS})
"""Headers that carry a trace context; the mesh replaces them with its own span's."""

_W3C = TraceContextTextMapPropagator()
_B3 = B3MultiFormat()


@dataclass(slots=True)
class Parent:
    """A trace context received from the caller (read-only by convention: not frozen,
    for the cost of building one per request)."""

    context: trace.SpanContext
    decided: bool  # the caller made a sampling decision (else the receiver decides)

    @property
    def sampled(self) -> bool:
        return bool(self.context.trace_flags & trace.TraceFlags.SAMPLED)


def _carrier(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    carrier: dict[str, list[str]] = {}
    for name, value in headers:
        key = name.lower()
        if key in TRACE_HEADERS:
            carrier.setdefault(key, []).append(value)
    return carrier


def extract(headers: Iterable[tuple[str, str]]) -> Parent | None:
    """The caller's trace context from request headers (W3C, else B3), or None."""
    carrier = _carrier(headers)
    if not carrier:
        return None
    if TRACEPARENT in carrier:
        span = trace.get_current_span(_W3C.extract(carrier))
        ctx = span.get_span_context()
        if ctx.is_valid:
            return Parent(ctx, decided=True)
    if B3_SINGLE in carrier or B3_TRACE_ID in carrier:
        span = trace.get_current_span(_B3.extract(carrier))
        ctx = span.get_span_context()
        if ctx.is_valid:
            return Parent(ctx, decided=_b3_decided(carrier))
    return None


def _b3_decided(carrier: dict[str, list[str]]) -> bool:
    single = carrier.get(B3_SINGLE)
    if single:
        return single[0].count("-") >= 2  # traceid-spanid-sampled[-parent]
    return B3_SAMPLED in carrier or B3_FLAGS in carrier


def inject(context: trace.SpanContext, parent_span_id: int | None = None, *,
           w3c: bool = True, b3: bool = True) -> list[tuple[str, str]]:
    """The headers that carry ``context`` to the next hop."""
    return inject_hex(f"{context.trace_id:032x}", f"{context.span_id:016x}",
                      bool(context.trace_flags & trace.TraceFlags.SAMPLED),
                      context.trace_state,
                      f"{parent_span_id:016x}" if parent_span_id else None, w3c=w3c, b3=b3)


def inject_hex(trace_id: str, span_id: str, sampled: bool,
               state: trace.TraceState | None = None, parent_span_id: str | None = None, *,
               w3c: bool = True, b3: bool = True) -> list[tuple[str, str]]:
    """:func:`inject` from ids already in hex (32 and 16 digits): the outbound path keeps
    them for the call record, so they are formatted once per call."""
    out: list[tuple[str, str]] = []
    if w3c:
        out.append((TRACEPARENT, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"))
        if state:
            out.append((TRACESTATE, state.to_header()))
    if b3:
        out.append((B3_TRACE_ID, trace_id))
        out.append((B3_SPAN_ID, span_id))
        if parent_span_id:
            out.append((B3_PARENT_SPAN_ID, parent_span_id))
        out.append((B3_SAMPLED, "1" if sampled else "0"))
    return out


def strip(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without any trace-context header (names compared lower-case)."""
    return [(k, v) for k, v in headers if k.lower() not in TRACE_HEADERS]


def new_request_id() -> str:
    """A fresh ``x-request-id`` (a random UUID, as Envoy generates)."""
    return str(uuid.uuid4())


__all__ = ["REQUEST_ID", "TRACE_HEADERS", "Parent", "extract", "inject", "inject_hex",
           "new_request_id", "strip"]
