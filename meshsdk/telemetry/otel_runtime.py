"""OpenTelemetry's current context, read and set by the shortest safe way.

The API's ``context.get_current``, ``attach`` and ``detach`` each pass through two
Python functions (the module function, then the runtime context's method) before they
reach one ``ContextVar``; ``trace.set_span_in_context`` and ``get_current_span`` add two
more. An inbound request sets and resets the context once before its response, and a
traced outbound call reads it: small, but on every request, and a server's requests
run with cold caches, where each extra function touched costs several times its
instruction count (``docs/performance.md``).

So when OpenTelemetry runs its default runtime context (``ContextVarsRuntimeContext``,
no ``OTEL_PYTHON_CONTEXT`` override), this module uses that runtime's ``ContextVar``
directly: the same variable, the same values, the same semantics. It reaches into two
private names of the API (the runtime object and its variable) and checks both at
import; with anything else installed it falls back to the public functions. No library
offers this: the API has no lower-level public accessor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar, Token

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import INVALID_SPAN, Span
from opentelemetry.trace import propagation as trace_propagation

log = logging.getLogger(__name__)


def _runtime_variable() -> ContextVar[Context] | None:
    """The ``ContextVar`` behind OpenTelemetry's current context, when its runtime context
    is the default one and still keeps it where this module expects; else None."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:
        return None
    variable = getattr(runtime, "_current_context", None)
    return variable if isinstance(variable, ContextVar) else None


def _span_key() -> str | None:
    """The context key under which the API keeps the current span, checked by a round
    trip through the public functions (None: it keeps it some other way)."""
    probe = trace.NonRecordingSpan(INVALID_SPAN.get_span_context())
    key = getattr(trace_propagation, "_SPAN_KEY", None)
    if not isinstance(key, str):
        return None
    context = trace.set_span_in_context(probe, Context())
    return key if dict(context) == {key: probe} and trace.get_current_span(
        Context({key: probe})) is probe else None


_VARIABLE = _runtime_variable()
_SPAN_KEY = _span_key()
DIRECT = _VARIABLE is not None and _SPAN_KEY is not None
"""Whether this module reaches the variable directly (else: the public API)."""

get_current: Callable[[], Context]
"""The current OpenTelemetry context (``opentelemetry.context.get_current``)."""
attach: Callable[[Context], Token[Context]]
"""Make a context current; returns the token for :func:`detach`."""

if DIRECT:
    assert _VARIABLE is not None and _SPAN_KEY is not None
    get_current = _VARIABLE.get
    attach = _VARIABLE.set
    _reset = _VARIABLE.reset
    _key: str = _SPAN_KEY

    def detach(token: Token[Context]) -> None:
        """Undo :func:`attach`; a token from another context is logged, not raised, as
        the API's ``detach`` does."""
        try:
            _reset(token)
        except ValueError:
            log.exception("Failed to detach context")

    def with_span(span: Span, base: Context) -> Context:
        """``base`` with ``span`` as its current span (``trace.set_span_in_context``)."""
        return Context({**base, _key: span})

    def current_span() -> Span:
        """The current span, or the API's invalid span (``trace.get_current_span``)."""
        span = get_current().get(_key)
        return span if isinstance(span, Span) else INVALID_SPAN
else:
    get_current = otel_context.get_current
    attach = otel_context.attach
    detach = otel_context.detach

    def with_span(span: Span, base: Context) -> Context:
        """``base`` with ``span`` as its current span (``trace.set_span_in_context``)."""
        return trace.set_span_in_context(span, base)

    def current_span() -> Span:
        """The current span, or the API's invalid span (``trace.get_current_span``)."""
        return trace.get_current_span()


__all__ = ["DIRECT", "attach", "current_span", "detach", "get_current", "with_span"]
