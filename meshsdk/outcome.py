"""Response flags, local replies and call outcomes: the one vocabulary the data path,
telemetry and access logs share.

Envoy's response flags are how Istio users read what happened to a call (``UH``
no healthy upstream, ``UO`` overflow, ``URX`` retries exhausted...). Every local
reply and every classified outcome carries them, so metrics, logs and the caller
all see the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Flag(StrEnum):
    """Envoy response flags meshsdk sets (short names, as in access logs and metrics)."""

    NO_HEALTHY_UPSTREAM = "UH"
    UPSTREAM_CONNECTION_FAILURE = "UF"
    UPSTREAM_OVERFLOW = "UO"
    NO_ROUTE = "NR"
    UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"
    NO_CLUSTER = "NC"
    UPSTREAM_REQUEST_TIMEOUT = "UT"
    LOCAL_RESET = "LR"
    UPSTREAM_REMOTE_RESET = "UR"
    UPSTREAM_CONNECTION_TERMINATION = "UC"
    DOWNSTREAM_CONNECTION_TERMINATION = "DC"
    DELAY_INJECTED = "DI"
    FAULT_INJECTED = "FI"
    RATE_LIMITED = "RL"
    UNAUTHORIZED_EXTERNAL_SERVICE = "UAEX"
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"


def format_flags(flags: tuple[Flag, ...] | list[Flag]) -> str:
    """Flags as Envoy prints them: comma-joined, ``-`` when none."""
    return ",".join(f.value for f in flags) if flags else "-"


_DETAILS = {
    Flag.FAULT_INJECTED: "fault_filter_abort",
    Flag.NO_HEALTHY_UPSTREAM: "no_healthy_upstream",
    Flag.NO_ROUTE: "route_not_found",
    Flag.NO_CLUSTER: "cluster_not_found",
    Flag.UPSTREAM_REQUEST_TIMEOUT: "response_timeout",
    Flag.UPSTREAM_OVERFLOW: "upstream_reset_before_response_started{overflow}",
    Flag.UPSTREAM_CONNECTION_FAILURE:
        "upstream_reset_before_response_started{connection_failure}",
    Flag.UPSTREAM_REMOTE_RESET: "upstream_reset_before_response_started{remote_reset}",
}


def response_code_details(flags: tuple[Flag, ...], *, local: bool) -> str:
    """Envoy's ``%RESPONSE_CODE_DETAILS%``: ``via_upstream`` for an upstream's answer,
    else why the mesh answered itself (the last flag that explains it)."""
    if not local:
        return "via_upstream"
    for flag in reversed(flags):
        details = _DETAILS.get(flag)
        if details is not None:
            return details
    return "direct_response"


@dataclass(frozen=True, slots=True)
class LocalReply:
    """An answer the mesh gives itself, shaped like Envoy's (status, short text body)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    flags: tuple[Flag, ...] = ()
    grpc_status: int | None = None

    @classmethod
    def text(cls, status: int, message: str, *flags: Flag,
             headers: tuple[tuple[str, str], ...] = ()) -> LocalReply:
        """A ``text/plain`` reply such as ``503 no healthy upstream``."""
        return cls(status, message.encode(), (("content-type", "text/plain"), *headers),
                   tuple(flags))


# Envoy's own wording for its local replies; clients and dashboards grep for these.
NO_HEALTHY_UPSTREAM = "no healthy upstream"
UPSTREAM_OVERFLOW = "upstream connect error or disconnect/reset before headers. " \
    "reset reason: overflow"
CONNECT_FAILURE = "upstream connect error or disconnect/reset before headers. " \
    "reset reason: connection failure"
REMOTE_RESET = "upstream connect error or disconnect/reset before headers. " \
    "reset reason: remote reset"
UPSTREAM_TIMEOUT = "upstream request timeout"
FAULT_ABORT = "fault filter abort"
NO_ROUTE = ""  # Envoy answers 404 NR with an empty body


class Failure(StrEnum):
    """Ways an attempt can fail without a response from the upstream."""

    CONNECT_FAILURE = "connect-failure"   # TCP connect refused/unreachable/timed out
    REFUSED_STREAM = "refused-stream"     # HTTP/2 REFUSED_STREAM: safe to retry
    RESET = "reset"                       # connection reset/closed before a full response
    TIMEOUT = "timeout"                   # per-try timeout fired
    OVERFLOW = "overflow"                 # our own connection pool limit


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt produced, classified once for retry, outlier detection,
    metrics, logs and spans alike.

    Either ``status`` (a response arrived) or ``failure`` (none did) is set.
    ``grpc_status`` is the gRPC status from headers or trailers when known.
    """

    status: int | None = None
    failure: Failure | None = None
    grpc_status: int | None = None
    flags: tuple[Flag, ...] = field(default=())

    @property
    def is_5xx(self) -> bool:
        """A 5xx response, or no response at all (Envoy counts resets as 5xx)."""
        return self.failure is not None or (self.status is not None and self.status >= 500)

    @property
    def is_gateway_error(self) -> bool:
        """502/503/504, or a connect failure/reset/timeout (Envoy's gateway-error)."""
        if self.failure is not None:
            return self.failure != Failure.OVERFLOW
        return self.status in (502, 503, 504)

    @property
    def is_local_origin_failure(self) -> bool:
        """A failure seen locally (connect, reset, timeout), not an upstream's answer."""
        return self.failure is not None and self.failure != Failure.OVERFLOW
