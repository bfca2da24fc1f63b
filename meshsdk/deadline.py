"""Request deadlines that flow from an inbound request to the outbound calls it makes.

An inbound driver (middleware, sidecar) that learns the caller's remaining time
(``x-envoy-expected-rq-timeout-ms`` or ``grpc-timeout``) opens a
:func:`deadline_scope`; every outbound mesh call inside it is then capped so no
downstream call outlives its caller. Context variables carry it across threads
started with ``contextvars.copy_context()`` and across ``await``.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

ENVOY_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"
GRPC_TIMEOUT_HEADER = "grpc-timeout"

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "meshsdk_deadline", default=None)


def current_deadline() -> float | None:
    """The absolute deadline (``time.monotonic()`` seconds) of the current request, if any."""
    return _deadline.get()


@contextmanager
def deadline_scope(seconds: float | None, *,
                   clock: Callable[[], float] = time.monotonic,
                   at: float | None = None) -> Iterator[float | None]:
    """Run a block with at most ``seconds`` left; an enclosing tighter deadline wins.

    ``at`` gives the deadline itself instead (``clock`` seconds), for a request entered
    several times (a streamed body): each entry gets the deadline fixed at the first."""
    outer = _deadline.get()
    if at is not None:
        new: float | None = at
    else:
        new = None if seconds is None else clock() + max(seconds, 0.0)
    if outer is not None and (new is None or outer < new):
        new = outer
    token = _deadline.set(new)
    try:
        yield new
    finally:
        _deadline.reset(token)


def format_grpc_timeout(seconds: float) -> str:
    """gRPC's ``grpc-timeout`` header value: at most 8 digits and a unit."""
    millis = max(int(seconds * 1000), 0)
    if millis < 100_000_000:
        return f"{millis}m"
    return f"{min(int(seconds), 99_999_999)}S"


_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(value: str) -> float | None:
    """Seconds from a ``grpc-timeout`` header, None when malformed."""
    value = value.strip()
    if len(value) < 2 or value[-1] not in _GRPC_UNITS or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * _GRPC_UNITS[value[-1]]


def timeout_from_headers(headers: Mapping[str, str]) -> float | None:
    """The caller's remaining time in seconds, from Envoy's or gRPC's header."""
    raw = headers.get(ENVOY_TIMEOUT_HEADER)
    if raw is not None and raw.strip().isdigit():
        return int(raw.strip()) / 1000.0
    grpc = headers.get(GRPC_TIMEOUT_HEADER)
    return parse_grpc_timeout(grpc) if grpc is not None else None
