"""gRPC status codes for the mesh's HTTP answers.

The core speaks HTTP: a local reply is ``503 UH`` or ``504 UT``. A gRPC caller sees a
status code instead; Envoy converts with its ``httpToGrpcStatus`` table (the core's
:func:`~meshsdk.resilience.fault.http_to_grpc_status`), with one departure here: a
timeout the mesh enforced (``UT``) is ``DEADLINE_EXCEEDED``, what a gRPC caller
expects from a deadline, where Envoy says ``UNAVAILABLE``.
"""

from __future__ import annotations

from typing import Any

import grpc  # type: ignore[import-untyped]

from meshsdk.outcome import Flag
from meshsdk.resilience.fault import http_to_grpc_status

_BY_NUMBER: dict[int, Any] = {code.value[0]: code for code in grpc.StatusCode}

OK = 0
DEADLINE_EXCEEDED = 4


def status_code(number: int) -> Any:
    """The ``grpc.StatusCode`` of a status number (UNKNOWN for a number gRPC lacks)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def number_of(code: Any) -> int:
    """The number of a ``grpc.StatusCode`` (``UNAVAILABLE`` -> 14)."""
    return int(code.value[0])


def grpc_status_for_http(status: int, flags: tuple[Flag, ...] = ()) -> int:
    """The gRPC status a caller sees for a mesh answer given as an HTTP status."""
    if Flag.UPSTREAM_REQUEST_TIMEOUT in flags:
        return DEADLINE_EXCEEDED
    if 200 <= status < 300:
        return OK
    return http_to_grpc_status(status)


__all__ = ["DEADLINE_EXCEEDED", "OK", "grpc_status_for_http", "number_of", "status_code"]
