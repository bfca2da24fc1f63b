"""Per-destination state that outlives configuration updates.

A *cluster* is Envoy's word for "one destination": host, subset and port
(``outbound|9080|v1|reviews.default.svc.cluster.local``). Its balancer counters,
outlier ejections, connection-pool counters and retry budget must survive a
config push, or every push would forget which endpoints are failing. The
registry keeps one :class:`Cluster` per key and refreshes its policy and
endpoints when a new snapshot arrives.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshsdk.config.mesh import MeshConfig
from meshsdk.config.snapshot import ClientView, Endpoint, Service, Snapshot
from meshsdk.resilience.balancer import Balancer, make_balancer
from meshsdk.resilience.budget import RetryBudget, make_retry_budget
from meshsdk.resilience.limits import ConnectionLimits
from meshsdk.resilience.outlier import OutlierDetector
from meshsdk.security.origination import TLS_MODE_LABEL, TlsOrigination, plan_origination

PASSTHROUGH = "PassthroughCluster"


def cluster_name(fqdn: str, subset: str | None, port: int | None) -> str:
    """Istio's outbound cluster name, as metrics and access logs print it."""
    return f"outbound|{port or ''}|{subset or ''}|{fqdn}"


@dataclass(frozen=True, slots=True)
class ClusterKey:
    fqdn: str
    subset: str | None
    port: int | None


class Cluster:
    """Everything the flow needs about one destination under the current snapshot."""

    def __init__(self, key: ClusterKey, clock: Callable[[], float], rng: random.Random, *,
                 connect_timeout: float = 10.0) -> None:
        self.key = key
        self.name = cluster_name(key.fqdn, key.subset, key.port)
        self._clock = clock
        self._rng = rng
        self.snapshot: Snapshot | None = None
        self.service: Service | None = None
        self.policy: Any = None
        self.endpoints: tuple[Endpoint, ...] = ()
        self.balancer: Balancer = make_balancer(None, rng)
        self._lb_settings: Any = None
        self.outlier: OutlierDetector | None = None
        self.limits = ConnectionLimits(None, default_connect_timeout=connect_timeout)
        self.budget: RetryBudget = make_retry_budget(None, clock)
        self._budget_settings: Any = None
        # TLS to open, per "endpoint speaks mesh mTLS" (the only endpoint fact it reads)
        self._tls: dict[bool, TlsOrigination | None] = {}
        self.scheme: str | None = None  # of the service port; None: the request's
        self.hashing: Any = None  # the LoadBalancerSettings when it hashes requests

    def refresh(self, snapshot: Snapshot, service: Service | None, policy: Any,
                endpoints: tuple[Endpoint, ...]) -> None:
        """Adopt a new snapshot's policy and endpoints, keeping learned state."""
        self.snapshot, self.service, self.endpoints = snapshot, service, endpoints
        self._tls = {}
        self.scheme = _port_scheme(service, self.key.port)
        if policy is self.policy and policy is not None:
            return
        self.policy = policy
        lb = getattr(policy, "load_balancer", None)
        self.hashing = lb if lb is not None and lb.consistent_hash is not None else None
        if lb != self._lb_settings or self._lb_settings is None:
            self.balancer = make_balancer(lb, self._rng)
            self._lb_settings = lb
        od = getattr(policy, "outlier_detection", None)
        if od is None:
            self.outlier = None
        elif self.outlier is None:
            self.outlier = OutlierDetector(od, self._clock)
        else:
            self.outlier.update(od)
        self.limits.update(getattr(policy, "connection_pool", None))
        budget = getattr(policy, "retry_budget", None)
        if budget != self._budget_settings:
            self.budget = make_retry_budget(budget, self._clock)
            self._budget_settings = budget

    def tls_for(self, endpoint: Endpoint, mesh: MeshConfig, identity: bool
                ) -> TlsOrigination | None:
        """The TLS to open to ``endpoint`` (None: plaintext), decided once per cluster
        and kind of endpoint (:func:`~meshsdk.security.origination.plan_origination`)."""
        speaks_mtls = endpoint.labels.get(TLS_MODE_LABEL) == "istio"
        try:
            return self._tls[speaks_mtls]
        except KeyError:
            key = self.key
            plan = plan_origination(
                getattr(self.policy, "tls", None), fqdn=key.fqdn, subset=key.subset,
                port=key.port, service=self.service, endpoint=endpoint,
                trust_domain=mesh.trust_domain, auto_mtls=mesh.enable_auto_mtls,
                have_identity=identity)
            self._tls[speaks_mtls] = plan
            return plan

    def healthy(self) -> tuple[Endpoint, ...]:
        """Endpoints not ejected by outlier detection (all of them without it)."""
        return self.outlier.healthy(self.endpoints) if self.outlier else self.endpoints


def _port_scheme(service: Service | None, port: int | None) -> str | None:
    """Plain HTTP unless the service port speaks TLS (an ``HTTPS``/``TLS`` port: TLS
    origination by its own plan); None without a service (passthrough: the request's)."""
    if service is None:
        return None
    sp = service.port(port)
    return "https" if sp is not None and sp.protocol in ("HTTPS", "TLS") else "http"


class ClusterRegistry:
    """One Cluster per destination key, shared by every call of a Mesh and kept across
    configuration updates."""

    def __init__(self, clock: Callable[[], float], rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        # keyed by the plain (fqdn, subset, port) tuple: hashing a ClusterKey (a frozen
        # dataclass) on every call cost more than the lookup itself
        self._clusters: dict[tuple[str, str | None, int | None], Cluster] = {}
        self._lock = threading.Lock()

    def get(self, snapshot: Snapshot, view: ClientView, fqdn: str, subset: str | None,
            port: int | None) -> Cluster | None:
        """The cluster for a destination, or None when its subset is not defined (NC)."""
        key = (fqdn, subset, port)
        cluster = self._clusters.get(key)
        if cluster is not None and cluster.snapshot is snapshot:
            return cluster
        service = view.service(fqdn)
        labels = None
        if subset:
            labels = view.subset_labels(fqdn, subset)
            if labels is None:
                return None
        endpoints: tuple[Endpoint, ...] = ()
        if service is not None and port is not None:
            endpoints = snapshot.endpoints(service, port, labels)
        if not endpoints and (service is None or (service.resolution == "NONE"
                                                  and not service.workloads)):
            # An external name no ServiceEntry defines, or resolution NONE: the
            # destination is the host the app asked for, dialled by name.
            endpoints = (Endpoint(fqdn, port or 80),)
        policy = view.policy(fqdn, subset, port)
        with self._lock:
            cluster = self._clusters.get(key)
            if cluster is None:
                cluster = Cluster(ClusterKey(fqdn, subset, port), self._clock, self._rng,
                                  connect_timeout=snapshot.mesh.connect_timeout)
                self._clusters[key] = cluster
            cluster.refresh(snapshot, service, policy, endpoints)
        return cluster

    def passthrough(self, snapshot: Snapshot, host: str, port: int) -> Cluster:
        """A one-endpoint cluster for an unknown host under ALLOW_ANY."""
        key = (f"{PASSTHROUGH}|{host}", None, port)
        cluster = self._clusters.get(key)
        if cluster is None or cluster.snapshot is not snapshot:
            with self._lock:
                cluster = self._clusters.get(key)
                if cluster is None:
                    cluster = Cluster(ClusterKey(*key), self._clock, self._rng)
                    cluster.name = PASSTHROUGH
                    self._clusters[key] = cluster
                cluster.refresh(snapshot, None, None, (Endpoint(host, port),))
        return cluster

    def __len__(self) -> int:
        return len(self._clusters)
