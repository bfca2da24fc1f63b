"""The immutable, indexed view of a validated :class:`Config` that the data path reads.

A :class:`Snapshot` is built once per config version and never changes; a config
update builds a new one and swaps the reference, so calls in flight finish on the
snapshot they started with. Everything a call needs is a dictionary lookup:

* :meth:`Snapshot.view` gives the config *as seen by one client workload*
  (namespace + labels): which services it can reach under which names, which
  VirtualService and DestinationRule apply (exportTo, Istio's lookup order).
  Views are built lazily and cached, one per distinct client.
* :meth:`ClientView.policy` gives the merged traffic policy for a destination
  (host, subset, port), cached.
* :meth:`Snapshot.endpoints` gives the endpoints of a service port, optionally
  narrowed to a subset's labels, cached.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meshsdk.config.hosts import (
    DEFAULT_DOMAIN,
    expand_host,
    join_host_port,
    kube_service_parts,
    split_host_port,
    wildcard_matches,
    wildcard_specificity,
)
from meshsdk.config.mesh import MeshConfig
from meshsdk.config.resource import Config, Resource

_NO_LABELS: Mapping[str, str] = MappingProxyType({})
_NAME_CACHE_LIMIT = 10_000


# --- services and endpoints -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServicePort:
    """A port a service offers: number, protocol (upper case), name, endpoint target port."""

    number: int
    protocol: str
    name: str
    target_port: int | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One workload instance behind a service port, with the port to dial on it."""

    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)
    weight: int = 1
    locality: str = ""
    network: str = ""
    service_account: str | None = None
    source: str = ""
    # Derived once here, read on every call by the balancers, outlier detection and
    # telemetry (an endpoint is built once per snapshot, used by every call).
    key: tuple[str, int] = field(init=False, repr=False, compare=False)
    """``(address, port)``: what identifies the endpoint to load and health bookkeeping."""
    authority: str = field(init=False, repr=False, compare=False)
    """``address:port`` (IPv6 bracketed), for URLs and logs."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.address, self.port))
        object.__setattr__(self, "authority", join_host_port(self.address, self.port))

    def __hash__(self) -> int:
        # Identity is the address and port; labels (a mapping) cannot be hashed.
        return hash(self.key)


@dataclass(frozen=True, slots=True)
class _Workload:
    """An endpoint before its port is chosen: a WorkloadEntry or an inline SE endpoint."""

    address: str
    ports: Mapping[str, int]
    labels: Mapping[str, str]
    weight: int
    locality: str
    network: str
    service_account: str | None
    source: str


@dataclass(frozen=True, slots=True)
class Service:
    """A mesh service: one host of a ServiceEntry, with its ports and workloads."""

    hostname: str
    namespace: str
    ports: tuple[ServicePort, ...]
    resolution: str
    location: str
    addresses: tuple[str, ...]
    export_to: frozenset[str]
    subject_alt_names: tuple[str, ...]
    resource: Resource
    workloads: tuple[_Workload, ...] = ()

    def port(self, number: int | None) -> ServicePort | None:
        """The service port for a request: by number, or the only port when none is given."""
        if number is None:
            return self.ports[0] if len(self.ports) == 1 else None
        for p in self.ports:
            if p.number == number:
                return p
        return None

    @property
    def service_accounts(self) -> frozenset[str]:
        """Service accounts its workloads run as (for verifying peer identities)."""
        return frozenset(w.service_account for w in self.workloads if w.service_account)


# --- destination rules -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DestinationRuleView:
    """The DestinationRule that applies to one host for one client, merged as Istio merges
    several rules for the same host in one namespace (oldest policy; subsets united)."""

    host: str
    namespace: str
    traffic_policy: Any
    subsets: Mapping[str, Any]
    sources: tuple[Resource, ...]

    @property
    def resource(self) -> Resource:
        return self.sources[0]


def merge_traffic_policy(top: Any, subset: Any, port: int | None) -> Any:
    """Istio's MergeTrafficPolicy: the policy for a destination (subset, port).

    Port-level settings of the top-level policy replace its fields for that port;
    a subset's policy then overrides field by field, and the subset's own
    port-level settings replace again. A port-level entry *replaces* its four
    fields (load balancer, connection pool, outlier detection, TLS): what it
    leaves unset falls back to defaults, not to the level above.
    """
    merged = _apply_port_level(top, port) if top is not None else None
    if subset is None:
        return merged
    if merged is None:
        return _apply_port_level(subset, port)
    update = {name: getattr(subset, name) for name in _POLICY_FIELDS
              if getattr(subset, name, None) is not None}
    merged = merged.model_copy(update=update)
    pls = _port_level_for(subset, port)
    if pls is not None:
        merged = merged.model_copy(update={n: getattr(pls, n, None) for n in _PORT_FIELDS})
    return merged.model_copy(update={"port_level_settings": None})


_POLICY_FIELDS = ("load_balancer", "connection_pool", "outlier_detection", "tls", "tunnel",
                  "proxy_protocol", "retry_budget")
_PORT_FIELDS = ("load_balancer", "connection_pool", "outlier_detection", "tls")


def _port_level_for(policy: Any, port: int | None) -> Any:
    if port is None:
        return None
    for pls in getattr(policy, "port_level_settings", None) or ():
        if pls.port is not None and pls.port.number == port:
            return pls
    return None


def _apply_port_level(policy: Any, port: int | None) -> Any:
    pls = _port_level_for(policy, port)
    update: dict[str, Any] = {"port_level_settings": None}
    if pls is not None:
        update.update({n: getattr(pls, n, None) for n in _PORT_FIELDS})
    return policy.model_copy(update=update)


# --- the snapshot ----------------------------------------------------------------------


def visible(export_to: Iterable[str], owner_namespace: str, client_namespace: str) -> bool:
    """Istio's exportTo: ``*`` everyone, ``.`` own namespace, ``~`` nobody, else by name."""
    for target in export_to:
        if target == "*" or target == client_namespace:
            return True
        if target == "." and owner_namespace == client_namespace:
            return True
    return False


def _export_to(values: Iterable[str] | None, default: Iterable[str]) -> frozenset[str]:
    chosen = list(values or ())
    return frozenset(chosen or default)


class Snapshot:
    """Immutable indexed view of one configuration version. Build it with ``Snapshot(config)``."""

    def __init__(self, config: Config, *, domain: str = DEFAULT_DOMAIN) -> None:
        self.config = config
        self.mesh: MeshConfig = config.mesh
        self.domain = domain
        self.root_namespace: str = config.mesh.root_namespace
        self._lock = threading.Lock()
        self._views: dict[tuple[str, frozenset[tuple[str, str]]], ClientView] = {}
        self._endpoint_cache: dict[tuple[str, int, frozenset[tuple[str, str]]],
                                   tuple[Endpoint, ...]] = {}
        self._version: str | None = None
        mesh_defaults = config.mesh
        self._vs_default = tuple(mesh_defaults.default_virtual_service_export_to or ("*",))
        self._dr_default = tuple(mesh_defaults.default_destination_rule_export_to or ("*",))
        self._se_default = tuple(mesh_defaults.default_service_export_to or ("*",))
        self.services: dict[str, list[Service]] = {}
        self._index_services(config)
        self._names = self._index_names()
        self._wildcard_hosts = sorted((h for h in self.services if h.startswith("*")),
                                      key=wildcard_specificity, reverse=True)
        self._vs_by_host: dict[str, list[tuple[Resource, str]]] = {}
        self._vs_wild: list[tuple[str, Resource]] = []
        self._index_virtual_services(config)
        self._dr_by_ns: dict[str, list[tuple[str, Resource]]] = {}
        for dr in sorted(config.of_kind("DestinationRule"), key=lambda r: r.age_key):
            host = expand_host(dr.spec.host, dr.namespace, domain)
            self._dr_by_ns.setdefault(dr.namespace, []).append((host, dr))

    # -- construction -----------------------------------------------------------------

    def _index_services(self, config: Config) -> None:
        entries: dict[str, list[Resource]] = {}  # by namespace: selectors never cross one
        for we in config.of_kind("WorkloadEntry"):
            entries.setdefault(we.namespace, []).append(we)
        for se in sorted(config.of_kind("ServiceEntry"), key=lambda r: r.age_key):
            spec = se.spec
            ports = tuple(
                ServicePort(p.number, (p.protocol or "").upper(), p.name or "", p.target_port)
                for p in spec.ports or ())
            workloads = self._workloads_of(se, entries.get(se.namespace, ()))
            for raw_host in spec.hosts:
                host = raw_host.lower()
                if spec.resolution in ("DNS", "DNS_ROUND_ROBIN") and not workloads \
                        and not host.startswith("*"):
                    host_workloads: tuple[_Workload, ...] = (
                        _Workload(host, MappingProxyType({}), _NO_LABELS, 1, "", "", None,
                                  se.ref),)
                else:
                    host_workloads = workloads
                svc = Service(
                    hostname=host, namespace=se.namespace, ports=ports,
                    resolution=spec.resolution or "NONE", location=spec.location or "MESH_EXTERNAL",
                    addresses=tuple(spec.addresses or ()),
                    export_to=_export_to(spec.export_to, self._se_default),
                    subject_alt_names=tuple(spec.subject_alt_names or ()), resource=se,
                    workloads=host_workloads)
                self.services.setdefault(host, []).append(svc)

    @staticmethod
    def _workloads_of(se: Resource, entries: Iterable[Resource]) -> tuple[_Workload, ...]:
        spec = se.spec
        out: list[_Workload] = []
        if spec.workload_selector is not None:
            want = spec.workload_selector.labels or {}
            for we in entries:
                if we.namespace == se.namespace and _labels_match(we.spec.labels or {}, want):
                    out.append(_workload(we.spec, we.ref))
        for i, ep in enumerate(spec.endpoints or ()):
            out.append(_workload(ep, f"{se.ref} endpoints[{i}]"))
        return tuple(out)

    def _index_names(self) -> dict[str, list[tuple[str, str | None]]]:
        """Every name a client may use for a service -> (FQDN, namespace it is valid in).

        Exact host names come first, then Kubernetes-style aliases (``name.ns``,
        ``name.ns.svc`` from anywhere; the bare ``name`` only inside ``ns``).
        """
        names: dict[str, list[tuple[str, str | None]]] = {}
        for host in self.services:
            names.setdefault(host, []).insert(0, (host, None))
        for host in self.services:
            parts = kube_service_parts(host, self.domain)
            if parts is None:
                continue
            name, namespace = parts
            for alias in (f"{name}.{namespace}", f"{name}.{namespace}.svc"):
                names.setdefault(alias, []).append((host, None))
            names.setdefault(name, []).append((host, namespace))
        return names

    def _index_virtual_services(self, config: Config) -> None:
        for vs in sorted(config.of_kind("VirtualService"), key=lambda r: r.age_key):
            gateways = vs.spec.gateways or []
            if gateways and "mesh" not in gateways:
                continue  # applies to named gateways only, not to sidecars / the SDK
            for raw in vs.spec.hosts or ():
                host = expand_host(raw, vs.namespace, self.domain)
                if host.startswith("*"):
                    self._vs_wild.append((host, vs))
                else:
                    self._vs_by_host.setdefault(host, []).append((vs, host))
        self._vs_wild.sort(key=lambda item: -wildcard_specificity(item[0]))

    # -- queries ----------------------------------------------------------------------

    @property
    def version(self) -> str:
        """A content hash of the configuration (stable across reloads of the same files)."""
        if self._version is None:
            h = hashlib.sha256()
            for r in sorted(self.config.resources, key=lambda r: r.key):
                h.update("|".join(r.key).encode())
                h.update(r.spec.model_dump_json(by_alias=True, exclude_none=True).encode())
            h.update(self.mesh.model_dump_json(by_alias=True, exclude_none=True).encode())
            self._version = h.hexdigest()[:16]
        return self._version

    def view(self, namespace: str, labels: Mapping[str, str] | None = None) -> ClientView:
        """The config as one client workload sees it; cached per (namespace, labels)."""
        key = (namespace, frozenset((labels or {}).items()))
        view = self._views.get(key)
        if view is None:
            with self._lock:
                view = self._views.get(key)
                if view is None:
                    view = ClientView(self, namespace, dict(labels or {}))
                    self._views[key] = view
        return view

    def endpoints(self, service: Service, port: int,
                  subset_labels: Mapping[str, str] | None = None) -> tuple[Endpoint, ...]:
        """Endpoints of ``service`` on service port ``port``, narrowed to ``subset_labels``."""
        key = (service.hostname + "|" + service.namespace, port,
               frozenset((subset_labels or {}).items()))
        cached = self._endpoint_cache.get(key)
        if cached is not None:
            return cached
        sp = service.port(port)
        result: list[Endpoint] = []
        if sp is not None:
            for w in service.workloads:
                if subset_labels and not _labels_match(w.labels, subset_labels):
                    continue
                target = w.ports.get(sp.name) if sp.name else None
                if target is None:
                    target = sp.target_port or sp.number
                result.append(Endpoint(w.address, target, w.labels, w.weight, w.locality,
                                       w.network, w.service_account, w.source))
        out = tuple(result)
        self._endpoint_cache[key] = out
        return out

    def all_services(self) -> Iterable[Service]:
        """Every service, oldest definition first for each host."""
        for services in self.services.values():
            yield from services


class ClientView:
    """The snapshot from one client's point of view. Build through :meth:`Snapshot.view`."""

    def __init__(self, snapshot: Snapshot, namespace: str, labels: Mapping[str, str]) -> None:
        self.snapshot = snapshot
        self.namespace = namespace
        self.labels = labels
        self._by_name: dict[str, Service | None] = {}
        self._vs_cache: dict[str, Resource | None] = {}
        self._dr_cache: dict[tuple[str, str | None], DestinationRuleView | None] = {}
        self._policy_cache: dict[tuple[str, str | None, int | None], Any] = {}
        self.derived: dict[object, Any] = {}
        """What other modules compute from this view (the router's route tables),
        keyed by an object of theirs: it lives and goes with the view, and costs one
        dict lookup per call where a weak-keyed registry cost a Python-level call."""

    # Names -----------------------------------------------------------------------

    def resolve(self, authority: str) -> tuple[Service | None, str, int | None]:
        """Map a request authority (``reviews:9080``) to (service, FQDN, port).

        An unknown host keeps its own name as FQDN (for ALLOW_ANY passthrough and for
        VirtualServices on external hosts); short names expand in the client's
        namespace, as Kubernetes DNS would.
        """
        host, port = split_host_port(authority)
        svc = self.service(host)
        if svc is not None:
            # a wildcard ServiceEntry (*.example.com) keeps the name that was asked for
            return svc, (host if svc.hostname.startswith("*") else svc.hostname), port
        return None, self.fqdn(host), port

    def service(self, host: str) -> Service | None:
        """The service a client reaches under ``host`` (any accepted alias); cached."""
        try:
            return self._by_name[host]
        except KeyError:
            pass
        found: Service | None = None
        for fqdn, only_namespace in self.snapshot._names.get(host.lower(), ()):
            if only_namespace is not None and only_namespace != self.namespace:
                continue
            found = next((s for s in self.snapshot.services[fqdn]
                          if visible(s.export_to, s.namespace, self.namespace)), None)
            if found is not None:
                break
        if found is None and "." in host:
            for pattern in self.snapshot._wildcard_hosts:  # most specific first
                if wildcard_matches(pattern, host.lower()):
                    found = next((s for s in self.snapshot.services[pattern]
                                  if visible(s.export_to, s.namespace, self.namespace)), None)
                    if found is not None:
                        break
        if len(self._by_name) < _NAME_CACHE_LIMIT:  # unknown hosts are unbounded
            self._by_name[host] = found
        return found

    def fqdn(self, host: str) -> str:
        """A request host without a known service: short names expand like k8s DNS."""
        host = host.lower()
        if "." not in host and ":" not in host:
            return f"{host}.{self.namespace}.svc.{self.snapshot.domain}"
        return host

    # VirtualService -----------------------------------------------------------------

    def virtual_service(self, fqdn: str) -> Resource | None:
        """The VirtualService for a host: exact host first, else the most specific wildcard;
        among several, the oldest wins (Istio's rule for sidecars)."""
        if fqdn in self._vs_cache:
            return self._vs_cache[fqdn]
        found: Resource | None = None
        for vs, _host in self.snapshot._vs_by_host.get(fqdn, ()):
            if self._vs_visible(vs):
                found = vs
                break
        if found is None:
            for pattern, vs in self.snapshot._vs_wild:
                if wildcard_matches(pattern, fqdn) and self._vs_visible(vs):
                    found = vs
                    break
        self._vs_cache[fqdn] = found
        return found

    def _vs_visible(self, vs: Resource) -> bool:
        export = _export_to(vs.spec.export_to, self.snapshot._vs_default)
        return visible(export, vs.namespace, self.namespace)

    # DestinationRule -----------------------------------------------------------------

    def destination_rule(self, fqdn: str, service_namespace: str | None = None
                         ) -> DestinationRuleView | None:
        """Istio's lookup order: the client's namespace, the service's, then the root."""
        key = (fqdn, service_namespace)
        if key in self._dr_cache:
            return self._dr_cache[key]
        snap = self.snapshot
        if service_namespace is None:
            svc = self.service(fqdn)
            service_namespace = svc.namespace if svc is not None else None
        order = [self.namespace]
        for ns in (service_namespace, snap.root_namespace):
            if ns is not None and ns not in order:
                order.append(ns)
        found: DestinationRuleView | None = None
        for ns in order:
            found = self._dr_in_namespace(ns, fqdn)
            if found is not None:
                break
        self._dr_cache[key] = found
        return found

    def _dr_in_namespace(self, ns: str, fqdn: str) -> DestinationRuleView | None:
        candidates: list[tuple[int, str, Resource]] = []
        for host, dr in self.snapshot._dr_by_ns.get(ns, ()):
            if not wildcard_matches(host, fqdn):
                continue
            export = _export_to(dr.spec.export_to, self.snapshot._dr_default)
            if not visible(export, dr.namespace, self.namespace):
                continue
            selector = dr.spec.workload_selector
            if selector is not None and (dr.namespace != self.namespace or not _labels_match(
                    self.labels, selector.match_labels or {})):
                continue
            # workload-specific rules beat namespace-wide ones; exact beats wildcard
            rank = wildcard_specificity(host) + (100_000 if selector is not None else 0)
            candidates.append((rank, host, dr))
        if not candidates:
            return None
        best = max(c[0] for c in candidates)
        chosen = [(h, dr) for rank, h, dr in candidates if rank == best]
        host = chosen[0][0]
        rules = tuple(dr for _h, dr in chosen)  # already oldest first
        policy = next((r.spec.traffic_policy for r in rules if r.spec.traffic_policy), None)
        subsets: dict[str, Any] = {}
        for r in rules:
            for s in r.spec.subsets or ():
                subsets.setdefault(s.name, s)
        return DestinationRuleView(host, ns, policy, MappingProxyType(subsets), rules)

    def policy(self, fqdn: str, subset: str | None = None, port: int | None = None) -> Any:
        """The merged TrafficPolicy model for (host, subset, port), or None when none applies."""
        key = (fqdn, subset, port)
        if key in self._policy_cache:
            return self._policy_cache[key]
        dr = self.destination_rule(fqdn)
        result: Any = None
        if dr is not None:
            sub = dr.subsets.get(subset) if subset else None
            result = merge_traffic_policy(dr.traffic_policy,
                                          sub.traffic_policy if sub is not None else None, port)
        self._policy_cache[key] = result
        return result

    def subset_labels(self, fqdn: str, subset: str) -> Mapping[str, str] | None:
        """Labels that select a subset's endpoints; None when the subset is not defined."""
        dr = self.destination_rule(fqdn)
        if dr is None:
            return None
        sub = dr.subsets.get(subset)
        return None if sub is None else (sub.labels or {})


def _labels_match(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def _workload(spec: Any, source: str) -> _Workload:
    return _Workload(
        address=spec.address or "",
        ports=MappingProxyType(dict(spec.ports or {})),
        labels=MappingProxyType(dict(spec.labels or {})),
        weight=spec.weight if spec.weight else 1,
        locality=spec.locality or "",
        network=spec.network or "",
        service_account=spec.service_account or None,
        source=source,
    )


__all__ = [
    "ClientView",
    "DestinationRuleView",
    "Endpoint",
    "Service",
    "ServicePort",
    "Snapshot",
    "merge_traffic_policy",
    "visible",
]

