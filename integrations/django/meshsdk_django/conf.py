"""``settings.MESHSDK`` -> the project's :class:`~meshsdk.Mesh`, built once at startup.

    MESHSDK = {
        "CONFIG": BASE_DIR / "mesh",          # Istio YAML (file or directory), or
        "CONNECT": "127.0.0.1:15010",         # the config service (Mesh.connect)
        "CACHE_DIR": "/var/cache/mesh",       # CONNECT only: last good config on disk
        "CONNECT_WAIT": 5.0,                  # CONNECT only: seconds to wait at startup
        "WORKLOAD": {"name": "reviews-v1", "namespace": "default",
                     "labels": {"app": "reviews", "version": "v1"},
                     "service_account": "reviews"},   # default: MESH_WORKLOAD_* variables
        "CERT_DIR": "/var/run/mesh",          # cert-chain.pem, key.pem, root-cert.pem
        "METRICS_PORT": 15090,                # Prometheus /metrics (absent: not served)
        "INBOUND": {...},                     # keyword options of the inbound adapter
        "MESH_OPTIONS": {...},                # more keyword arguments for the Mesh
    }                                         # (e.g. "telemetry": Telemetry(...))

Exactly one of ``CONFIG`` and ``CONNECT`` is required. Nothing here decides anything:
it only turns settings into the core's constructors' arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshsdk.errors import UsageError
from meshsdk.mesh import Mesh
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.telemetry.prometheus import MetricsServer
from meshsdk.workload import Workload

KNOWN = frozenset({"CONFIG", "CONNECT", "CACHE_DIR", "WORKLOAD", "CERT_DIR", "METRICS_PORT",
                   "INBOUND", "CONNECT_WAIT", "MESH_OPTIONS"})
"""The keys ``settings.MESHSDK`` may hold (anything else is a typo: an error)."""


@dataclass
class MeshRuntime:
    """The mesh of this process with what was started for it (closed together)."""

    mesh: Mesh
    identity: WorkloadIdentity | None = None
    metrics: MetricsServer | None = None
    inbound_options: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Stop the metrics server, the mesh (and its config client) and the identity."""
        if self.metrics is not None:
            self.metrics.close()
        self.mesh.close()
        if self.identity is not None:
            self.identity.close()


def workload_from(value: Any) -> Workload:
    """A Workload from the ``WORKLOAD`` setting: a Workload, a dict of its fields, or
    None for the ``MESH_WORKLOAD_*`` environment variables."""
    if value is None:
        return Workload.from_env()
    if isinstance(value, Workload):
        return value
    if isinstance(value, Mapping):
        try:
            return Workload(**dict(value))
        except TypeError as exc:
            raise UsageError(f"MESHSDK['WORKLOAD']: {exc}") from None
    raise UsageError(f"MESHSDK['WORKLOAD'] must be a dict or a Workload, got {value!r}")


def identity_from(cert_dir: str | os.PathLike[str]) -> WorkloadIdentity:
    """A rotating identity read from the files ``meshctl ca issue --out DIR`` writes (or
    an agent keeps current); its refresh thread is started."""
    directory = Path(cert_dir)
    identity = WorkloadIdentity.from_files(directory / "cert-chain.pem",
                                           directory / "key.pem",
                                           directory / "root-cert.pem")
    identity.start()
    return identity


def build(settings: Mapping[str, Any]) -> MeshRuntime:
    """Build the mesh (and identity and metrics server) that ``settings`` describe."""
    unknown = sorted(set(settings) - KNOWN)
    if unknown:
        raise UsageError(f"MESHSDK: unknown key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(KNOWN))}")
    if ("CONFIG" in settings) == ("CONNECT" in settings):
        raise UsageError("MESHSDK needs exactly one of 'CONFIG' (Istio YAML file or "
                         "directory) and 'CONNECT' (config service host:port)")
    workload = workload_from(settings.get("WORKLOAD"))
    options = dict(settings.get("MESH_OPTIONS", {}))
    identity = identity_from(settings["CERT_DIR"]) if settings.get("CERT_DIR") else None
    if identity is not None:
        options["identity"] = identity
    try:
        if "CONFIG" in settings:
            mesh = Mesh.from_config(settings["CONFIG"], workload, **options)
        else:
            mesh = Mesh.connect(str(settings["CONNECT"]), workload,
                                cache_dir=settings.get("CACHE_DIR"),
                                wait=float(settings.get("CONNECT_WAIT", 5.0)), **options)
    except BaseException:
        if identity is not None:
            identity.close()
        raise
    runtime = MeshRuntime(mesh, identity, inbound_options=dict(settings.get("INBOUND", {})))
    port = settings.get("METRICS_PORT")
    if port is not None:
        try:
            runtime.metrics = mesh.serve_metrics(int(port))
        except BaseException:
            runtime.close()
            raise
    return runtime
