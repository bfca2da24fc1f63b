"""What telemetry knows about one request: a :class:`CallRecord`, filled by a driver
(the outbound transports now; the inbound middlewares and the sidecar later) and read
by every sink (metrics, access log, span attributes).

One record type for both directions keeps the sinks free of I/O and of the question
"which side am I on": ``reporter`` says it, and the peers are described the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from meshsdk.config.snapshot import Endpoint
from meshsdk.workload import Workload

UNKNOWN = "unknown"
"""Istio's value for any label it cannot fill."""

DEFAULT_CLUSTER_ID = "Kubernetes"
"""istiod's default cluster ID, the value of ``source_cluster``/``destination_cluster``
when nothing else is configured."""

Reporter = Literal["source", "destination"]


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of a request as Istio's metric labels describe it.

    ``app``/``version`` are the raw ``app``/``version`` labels (``unknown`` when absent);
    ``canonical_service``/``canonical_revision`` follow Istio's canonical-name rules
    (``latest`` when no revision is known).
    """

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = "latest"
    app: str = UNKNOWN
    version: str = UNKNOWN
    principal: str = UNKNOWN
    cluster: str = UNKNOWN

    @classmethod
    def of_workload(cls, workload: Workload, cluster: str = DEFAULT_CLUSTER_ID,
                    principal: str = UNKNOWN) -> Peer:
        """The peer a :class:`~meshsdk.workload.Workload` is (this process, usually)."""
        return cls(workload=workload.name, namespace=workload.namespace,
                   canonical_service=workload.app, canonical_revision=workload.version,
                   app=workload.labels.get("app", UNKNOWN),
                   version=workload.labels.get("version", UNKNOWN),
                   principal=principal, cluster=cluster)

    @classmethod
    def of_endpoint(cls, endpoint: Endpoint, cluster: str = DEFAULT_CLUSTER_ID) -> Peer:
        """The peer behind a mesh endpoint, from its labels and the WorkloadEntry that
        declared it (``source`` is ``"WorkloadEntry <ns>/<name>"`` for those)."""
        if not endpoint.source:  # not from the registry (passthrough): nothing is known
            return cls()
        labels = endpoint.labels
        kind, _, ref = endpoint.source.partition(" ")
        namespace, _, name = ref.partition("/")
        if kind != "WorkloadEntry" or not name:
            namespace, name = UNKNOWN, UNKNOWN
        name = labels.get("service.istio.io/workload-name", name)
        app = labels.get("app", UNKNOWN)
        canonical = (labels.get("service.istio.io/canonical-name")
                     or labels.get("app.kubernetes.io/name") or labels.get("app") or name)
        revision = (labels.get("service.istio.io/canonical-revision")
                    or labels.get("app.kubernetes.io/version") or labels.get("version")
                    or "latest")
        return cls(workload=name, namespace=namespace, canonical_service=canonical,
                   canonical_revision=revision, app=app,
                   version=labels.get("version", UNKNOWN), cluster=cluster)


@dataclass(frozen=True, slots=True)
class Service:
    """The destination service of a request: ``host`` is its FQDN (or the authority
    for traffic outside the registry), ``name``/``namespace`` its short name and
    namespace, ``PassthroughCluster``/``BlackHoleCluster`` as Istio names them for
    traffic that is passed through or blocked."""

    host: str = UNKNOWN
    name: str = UNKNOWN
    namespace: str = UNKNOWN


@dataclass(slots=True)
class CallRecord:
    """One finished request, as both sides report it.

    Times are seconds: ``start_time`` on the wall clock (for logs), ``duration`` from
    the first request byte to the last response byte, ``response_duration`` to the
    first response byte (None without a response). Header sequences hold lower-case
    names. ``status`` is 0 when no response was sent at all.
    """

    reporter: Reporter
    start_time: float
    duration: float
    method: str
    path: str                     # as sent by the client, with the query string
    authority: str
    scheme: str = "http"
    protocol: str = "HTTP/1.1"    # Envoy's %PROTOCOL%
    request_protocol: str = "http"  # Istio's label: http | grpc
    status: int = 0
    grpc_status: int | None = None
    response_flags: str = "-"
    bytes_received: int = 0       # request body bytes
    bytes_sent: int = 0           # response body bytes
    response_duration: float | None = None
    request_headers: Sequence[tuple[str, str]] = ()
    response_headers: Sequence[tuple[str, str]] = ()
    request_id: str | None = None
    route_name: str = ""
    upstream_cluster: str | None = None
    upstream_host: str | None = None         # "address:port" of the endpoint that answered
    upstream_local_address: str | None = None
    upstream_transport_failure_reason: str | None = None
    downstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    requested_server_name: str | None = None
    response_code_details: str | None = None
    attempts: int = 1
    source: Peer = field(default_factory=Peer)
    destination: Peer = field(default_factory=Peer)
    service: Service = field(default_factory=Service)
    connection_security_policy: str = UNKNOWN  # mutual_tls | none; unknown at the source
    trace_id: str | None = None
    span_id: str | None = None
    request_header_bytes: int | None = None
    """Size of the request's header block (names + values, ``host`` excluded) when the
    driver measured it; else computed from ``request_headers``."""
    response_header_bytes: int | None = None
    """Size of the response's header block (names + values) when the driver knows it
    from the raw head; else sizes are computed from ``response_headers``."""

    @classmethod
    def start(cls, reporter: Reporter, start_time: float, duration: float, method: str,
              path: str, authority: str) -> CallRecord:
        """``CallRecord(reporter, start_time, duration, method, path, authority)``, every
        other field at its default, without the dataclass ``__init__``: the request
        paths fill about thirty fields per call, and binding thirty keyword arguments
        costs about 2 us there, against a fraction of that for plain attribute stores
        (the callers then set what they know). ``tests/telemetry/test_record.py``
        checks that this stays equal to the constructor's record."""
        r: CallRecord = object.__new__(cls)
        r.reporter = reporter
        r.start_time = start_time
        r.duration = duration
        r.method = method
        r.path = path
        r.authority = authority
        r.scheme = "http"
        r.protocol = "HTTP/1.1"
        r.request_protocol = "http"
        r.status = 0
        r.grpc_status = None
        r.response_flags = "-"
        r.bytes_received = 0
        r.bytes_sent = 0
        r.response_duration = None
        r.request_headers = ()
        r.response_headers = ()
        r.request_id = None
        r.route_name = ""
        r.upstream_cluster = None
        r.upstream_host = None
        r.upstream_local_address = None
        r.upstream_transport_failure_reason = None
        r.downstream_local_address = None
        r.downstream_remote_address = None
        r.requested_server_name = None
        r.response_code_details = None
        r.attempts = 1
        r.source = NO_PEER           # Peer and Service are frozen: one default is shared
        r.destination = NO_PEER
        r.service = _NO_SERVICE
        r.connection_security_policy = UNKNOWN
        r.trace_id = None
        r.span_id = None
        r.request_header_bytes = None
        r.response_header_bytes = None
        return r

    def request_header(self, name: str) -> str | None:
        """The first value of request header ``name`` (any case), or None.

        Envoy's pseudo-headers map to the record: ``:method``, ``:path``,
        ``:authority``, ``:scheme``."""
        return _header(self.request_headers, name, self._pseudo)

    def response_header(self, name: str) -> str | None:
        """The first value of response header ``name`` (any case), or None."""
        return _header(self.response_headers, name, None)

    @property
    def _pseudo(self) -> Mapping[str, str]:
        return {":method": self.method, ":path": self.path, ":authority": self.authority,
                ":scheme": self.scheme}


NO_PEER = Peer()
"""A peer nothing is known of (a plaintext caller): frozen, so one is shared."""
_NO_SERVICE = Service()


def _header(items: Sequence[tuple[str, str]], name: str,
            pseudo: Mapping[str, str] | None) -> str | None:
    key = name.lower()
    if pseudo is not None and key.startswith(":"):
        return pseudo.get(key)
    for k, v in items:
        if k == key:
            return v
    return None


__all__ = ["DEFAULT_CLUSTER_ID", "NO_PEER", "UNKNOWN", "CallRecord", "Peer", "Reporter", "Service"]
