"""Istio configuration: models, loading with located errors, validation, snapshots.

    >>> from meshsdk.config import load_config, Snapshot
    >>> config = load_config("examples/bookinfo")          # raises ConfigError if invalid
    >>> view = Snapshot(config).view("default")
    >>> view.resolve("reviews:9080")[1]
    'reviews.default.svc.cluster.local'
"""

from meshsdk.config.diagnostics import Diagnostic, Finding, format_path
from meshsdk.config.loader import (
    LoadResult,
    config_from_result,
    load_config,
    load_mesh_config_string,
    load_path,
    load_string,
)
from meshsdk.config.mesh import MeshConfig
from meshsdk.config.resource import Config, Resource
from meshsdk.config.snapshot import ClientView, Endpoint, Service, ServicePort, Snapshot

__all__ = [
    "ClientView",
    "Config",
    "Diagnostic",
    "Endpoint",
    "Finding",
    "LoadResult",
    "MeshConfig",
    "Resource",
    "Service",
    "ServicePort",
    "Snapshot",
    "config_from_result",
    "format_path",
    "load_config",
    "load_mesh_config_string",
    "load_path",
    "load_string",
]
