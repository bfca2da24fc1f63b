"""Fault injection: a route's ``fault`` as Envoy's fault filter applies it.

:func:`decide_fault` draws, once per request, whether to delay it and whether to
abort it; the driver sleeps (flag ``DI``) and/or answers locally with
``outcome.FAULT_ABORT`` as the body (flag ``FI``) without calling the upstream.

* Delay and abort are independent draws (Envoy checks the delay, then, after it,
  the abort): a request can be delayed *and* aborted.
* ``percentage.value`` is a double in [0, 100] (Envoy works in parts per million).
  No ``percentage`` means no request is faulted, except that the deprecated integer
  ``delay.percent`` (still in bookinfo's samples) is honoured when ``percentage`` is
  absent. A zero ``fixedDelay`` is no delay.
* What an abort answers, as Envoy's local replies do:

  =====================  ================================  ===============================
  configured             plain HTTP request                gRPC request
  =====================  ================================  ===============================
  ``httpStatus: N``      status N                          status 200, ``grpc-status`` from
                                                           N (gRPC's HTTP mapping: 503 ->
                                                           14 UNAVAILABLE, 404 -> 12 ...)
  ``grpcStatus: NAME``   status 200, no ``grpc-status``    status 200, ``grpc-status`` NAME
                         (Envoy sends a plain 200 with the
                         abort text)
  =====================  ================================  ===============================

  :class:`FaultDecision` carries exactly that: ``abort_status`` is the HTTP status
  to send and ``abort_grpc_status`` the ``grpc-status`` (``None`` for plain HTTP).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meshsdk.config.kinds.virtual_service import HTTPFaultInjection

GRPC_STATUS_CODES: dict[str, int] = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}


def http_to_grpc_status(status: int) -> int:
    """gRPC's HTTP-to-gRPC status mapping, as Envoy applies it to local replies."""
    if status == 400:
        return 13  # INTERNAL
    if status == 401:
        return 16  # UNAUTHENTICATED
    if status == 403:
        return 7   # PERMISSION_DENIED
    if status == 404:
        return 12  # UNIMPLEMENTED
    if status in (429, 502, 503, 504):
        return 14  # UNAVAILABLE
    return 2       # UNKNOWN


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What fault injection does to one request."""

    delay: float | None            # seconds to wait before going on
    abort_status: int | None       # HTTP status of the local answer (None: no abort)
    abort_grpc_status: int | None  # its grpc-status (gRPC requests only)

    @property
    def aborted(self) -> bool:
        return self.abort_status is not None


NO_FAULT = FaultDecision(None, None, None)


def _chance(percent: float, rng: random.Random) -> bool:
    if percent <= 0:
        return False
    return percent >= 100 or rng.random() * 100.0 < percent


def decide_fault(fault: HTTPFaultInjection | None, rng: random.Random, *,
                 grpc: bool) -> FaultDecision:
    """Draw this request's faults (one draw for the delay, one for the abort)."""
    if fault is None:
        return NO_FAULT
    delay: float | None = None
    if (d := fault.delay) is not None:
        # The deprecated integer ``percent`` counts only when ``percentage`` is absent.
        percent = d.percentage.value if d.percentage is not None else float(d.percent or 0)
        if _chance(percent, rng) and d.fixed_delay:
            delay = d.fixed_delay
    status: int | None = None
    grpc_status: int | None = None
    if (a := fault.abort) is not None and a.percentage is not None \
            and (a.http_status is not None or a.grpc_status is not None) \
            and _chance(a.percentage.value, rng):
        if a.http_status is not None:
            status = a.http_status
            if grpc:
                status, grpc_status = 200, http_to_grpc_status(a.http_status)
        else:
            status = 200
            if grpc:
                grpc_status = GRPC_STATUS_CODES.get((a.grpc_status or "").upper(), 2)
    if delay is None and status is None:
        return NO_FAULT
    return FaultDecision(delay, status, grpc_status)
