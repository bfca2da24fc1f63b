"""Who is calling: the workload identity the mesh uses for routing and telemetry.

``sourceLabels`` and ``sourceNamespace`` matches, DestinationRule workload
selectors, metrics' ``source_*`` labels and (later) the mTLS identity all read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshsdk.errors import UsageError

ENV_NAME = "MESH_WORKLOAD_NAME"
ENV_NAMESPACE = "MESH_WORKLOAD_NAMESPACE"
ENV_LABELS = "MESH_WORKLOAD_LABELS"
ENV_SERVICE_ACCOUNT = "MESH_WORKLOAD_SERVICE_ACCOUNT"
ENV_LOCALITY = "MESH_WORKLOAD_LOCALITY"
_TOPOLOGY = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone",
             "topology.istio.io/subzone")


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload: name, namespace, labels and the service account it runs as."""

    name: str = "unknown"
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    service_account: str = "default"
    locality: str = ""
    """``region/zone/subzone`` for locality-aware load balancing; empty = unknown.
    Taken from the Kubernetes topology labels when not given."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        if not self.locality and any(k in self.labels for k in _TOPOLOGY):
            parts = [self.labels.get(k, "") for k in _TOPOLOGY]
            object.__setattr__(self, "locality", "/".join(parts).rstrip("/"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Workload:
        """Build from ``MESH_WORKLOAD_NAME``, ``MESH_WORKLOAD_NAMESPACE``,
        ``MESH_WORKLOAD_LABELS`` (``app=reviews,version=v2``) and
        ``MESH_WORKLOAD_SERVICE_ACCOUNT`` and ``MESH_WORKLOAD_LOCALITY``
        (``region/zone/subzone``); unset ones keep the defaults."""
        env = os.environ if environ is None else environ
        return cls(
            name=env.get(ENV_NAME) or "unknown",
            namespace=env.get(ENV_NAMESPACE) or "default",
            labels=parse_labels(env.get(ENV_LABELS, ""), source=ENV_LABELS),
            service_account=env.get(ENV_SERVICE_ACCOUNT) or "default",
            locality=env.get(ENV_LOCALITY) or "",
        )

    @property
    def app(self) -> str:
        """Canonical service: ``service.istio.io/canonical-name``, else ``app``, else name."""
        return (self.labels.get("service.istio.io/canonical-name")
                or self.labels.get("app.kubernetes.io/name")
                or self.labels.get("app") or self.name)

    @property
    def version(self) -> str:
        """Canonical revision: ``service.istio.io/canonical-revision``, else ``version``."""
        return (self.labels.get("service.istio.io/canonical-revision")
                or self.labels.get("app.kubernetes.io/version")
                or self.labels.get("version") or "latest")


def parse_labels(text: str, *, source: str = "labels") -> dict[str, str]:
    """``"app=reviews,version=v2"`` -> dict; a malformed pair is a UsageError naming it."""
    labels: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{source}: expected key=value pairs separated by commas, "
                             f"got {item!r}")
        labels[key.strip()] = value.strip()
    return labels
