"""Telemetry: Istio-standard metrics, W3C/B3 tracing and Envoy-format access logs.

Every :class:`~meshsdk.mesh.Mesh` has a :class:`Telemetry` (``mesh.telemetry``) unless
built with ``telemetry=False``. Run a ``/metrics`` endpoint for Prometheus:

    >>> import meshsdk
    >>> mesh = meshsdk.Mesh.from_config("examples/bookinfo")
    >>> server = mesh.serve_metrics(port=0)      # 15090 by default, as Istio's sidecar
    >>> server.url.startswith("http://127.0.0.1:")
    True
    >>> server.close(); mesh.close()
"""

from meshsdk.telemetry.accesslog import (
    DEFAULT_JSON_LABELS,
    DEFAULT_TEXT_FORMAT,
    AccessLogger,
    compile_format,
    compile_json,
)
from meshsdk.telemetry.expr import compile_filter, compile_value
from meshsdk.telemetry.labels import LABEL_NAMES
from meshsdk.telemetry.metrics import (
    LabelGuard,
    MetricsSink,
    MetricsView,
    OtelMetrics,
    PrometheusMetrics,
)
from meshsdk.telemetry.policy import TelemetryPolicy, resolve_telemetry
from meshsdk.telemetry.prometheus import (
    MetricsServer,
    metrics_asgi_app,
    metrics_wsgi_app,
    serve_metrics,
)
from meshsdk.telemetry.propagation import extract, inject
from meshsdk.telemetry.record import CallRecord, Peer, Service
from meshsdk.telemetry.recorder import (
    InboundCall,
    OutboundCall,
    Telemetry,
    current_request_id,
)

__all__ = [
    "DEFAULT_JSON_LABELS",
    "DEFAULT_TEXT_FORMAT",
    "LABEL_NAMES",
    "AccessLogger",
    "CallRecord",
    "InboundCall",
    "LabelGuard",
    "MetricsServer",
    "MetricsSink",
    "MetricsView",
    "OtelMetrics",
    "OutboundCall",
    "Peer",
    "PrometheusMetrics",
    "Service",
    "Telemetry",
    "TelemetryPolicy",
    "compile_filter",
    "compile_format",
    "compile_json",
    "compile_value",
    "current_request_id",
    "extract",
    "inject",
    "metrics_asgi_app",
    "metrics_wsgi_app",
    "resolve_telemetry",
    "serve_metrics",
]
