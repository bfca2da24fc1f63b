"""Istio's standard metric labels for a :class:`~meshsdk.telemetry.record.CallRecord`.

The names, their order and the ``unknown``/``-``/empty conventions are what Istio's
Grafana dashboards and Kiali query, so they are kept exactly. No label is ever taken
from the request path or query: cardinality stays bounded by the mesh's own names.
"""

from __future__ import annotations

from meshsdk.telemetry.record import CallRecord

LABEL_NAMES: tuple[str, ...] = (
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal",
    "source_app", "source_version", "source_canonical_service",
    "source_canonical_revision", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service",
    "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision",
    "destination_cluster",
    "request_protocol", "response_code", "grpc_response_status", "response_flags",
    "connection_security_policy",
)
"""Every label of Istio's HTTP/gRPC request metrics."""

DURATION_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)
"""Envoy's default histogram bounds, which Istio uses for all four request metrics."""

BYTES_BUCKETS: tuple[float, ...] = DURATION_BUCKETS_MS
"""Istio reports request/response sizes into the same default bounds."""


def istio_labels(record: CallRecord) -> tuple[str, ...]:
    """The label values of ``record`` in :data:`LABEL_NAMES` order."""
    src, dst, svc = record.source, record.destination, record.service
    return (
        record.reporter,
        src.workload, src.namespace, src.principal, src.app, src.version,
        src.canonical_service, src.canonical_revision, src.cluster,
        dst.workload, dst.namespace, dst.principal, dst.app, dst.version,
        svc.host, svc.name, svc.namespace,
        dst.canonical_service, dst.canonical_revision, dst.cluster,
        record.request_protocol, str(record.status),
        "" if record.grpc_status is None else str(record.grpc_status),
        record.response_flags or "-",
        record.connection_security_policy,
    )


def label_dict(record: CallRecord) -> dict[str, str]:
    """:func:`istio_labels` as a name -> value mapping (OTel attributes)."""
    return dict(zip(LABEL_NAMES, istio_labels(record), strict=True))


__all__ = ["BYTES_BUCKETS", "DURATION_BUCKETS_MS", "LABEL_NAMES", "istio_labels", "label_dict"]
