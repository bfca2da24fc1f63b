"""meshsdk: a service mesh for Python, configured with Istio's own YAML.

    >>> import meshsdk
    >>> config = meshsdk.load_config("examples/bookinfo")
    >>> snapshot = meshsdk.Snapshot(config)
    >>> sorted(s.hostname for s in snapshot.all_services())[0]
    'details.default.svc.cluster.local'
"""

from meshsdk.config import (
    Config,
    Diagnostic,
    LoadResult,
    MeshConfig,
    Resource,
    Snapshot,
    load_config,
    load_path,
    load_string,
)
from meshsdk.deadline import current_deadline, deadline_scope
from meshsdk.errors import ConfigError, MeshError, UsageError
from meshsdk.mesh import Mesh
from meshsdk.outcome import Flag, LocalReply
from meshsdk.transport import AsyncMeshTransport, CallInfo, MeshTransport
from meshsdk.workload import Workload

__version__ = "0.1.0"

_LAZY = {"Telemetry": "meshsdk.telemetry", "current_request_id": "meshsdk.telemetry",
         "InboundHandler": "meshsdk.inbound", "MeshASGIMiddleware": "meshsdk.inbound",
         "MeshWSGIMiddleware": "meshsdk.inbound", "ClientStatus": "meshsdk.controlplane.client"}


def __getattr__(name: str) -> object:
    """Telemetry, inbound and config-service names load on first use: OpenTelemetry,
    Prometheus, CEL and gRPC are not imported by ``import meshsdk`` alone."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshsdk' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AsyncMeshTransport",
    "CallInfo",
    "ClientStatus",
    "Config",
    "ConfigError",
    "Diagnostic",
    "Flag",
    "InboundHandler",
    "LoadResult",
    "LocalReply",
    "Mesh",
    "MeshASGIMiddleware",
    "MeshConfig",
    "MeshError",
    "MeshTransport",
    "MeshWSGIMiddleware",
    "Resource",
    "Snapshot",
    "Telemetry",
    "UsageError",
    "Workload",
    "__version__",
    "current_deadline",
    "current_request_id",
    "deadline_scope",
    "load_config",
    "load_path",
    "load_string",
]
