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
from meshsdk.errors import ConfigError, MeshError, UsageError

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "Diagnostic",
    "LoadResult",
    "MeshConfig",
    "MeshError",
    "Resource",
    "Snapshot",
    "UsageError",
    "__version__",
    "load_config",
    "load_path",
    "load_string",
]
