"""Sidecar egress scoping: which services and rules a workload imports (Istio's Sidecar).

Istio's ``Sidecar`` resource narrows what a proxy knows of the mesh: its egress
listeners list ``namespace/host`` entries, and only services (ServiceEntry hosts),
VirtualServices and DestinationRules whose hosts match one of them are sent to the
workload. The rules, as istiod applies them:

* the Sidecar that applies is the oldest one in the workload's namespace whose
  ``workloadSelector`` matches its labels, else the one in that namespace without a
  selector, else the one without a selector in the root namespace (mesh default);
  with none, everything visible is imported;
* in an entry, the namespace part is ``*`` (any), ``.`` (the Sidecar's namespace, or
  the workload's when the Sidecar is the root namespace's default), ``~`` (none) or a
  namespace name; the host part is ``*``, ``*.suffix`` or an exact name;
* a resource is imported when its namespace fits an entry's namespace part and one of
  its hosts (short names expanded in the resource's namespace) matches the host part.

Pure functions over a :class:`~meshsdk.config.resource.Config`; the config service
uses them per subscriber, and the sidecar will too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meshsdk.config.hosts import expand_host, wildcard_matches
from meshsdk.config.resource import Config, Resource
from meshsdk.config.selection import labels_match

__all__ = ["EgressScope", "egress_scope", "sidecar_for"]

SCOPED_KINDS = frozenset({"ServiceEntry", "VirtualService", "DestinationRule"})
"""The kinds a Sidecar's egress hosts filter; every other kind passes."""

EgressScope = Callable[[Resource], bool]


def sidecar_for(config: Config, namespace: str, labels: Mapping[str, str]) -> Resource | None:
    """The Sidecar that applies to a workload, by Istio's precedence, or None."""
    root = config.mesh.root_namespace
    selected: list[Resource] = []
    plain: list[Resource] = []
    default: list[Resource] = []
    for sidecar in config.of_kind("Sidecar"):
        selector = sidecar.spec.workload_selector
        if sidecar.namespace == namespace:
            if selector is None or not selector.labels:
                plain.append(sidecar)
            elif labels_match(selector.labels, labels):
                selected.append(sidecar)
        elif sidecar.namespace == root and (selector is None or not selector.labels):
            default.append(sidecar)
    for level in (selected, plain, default):
        if level:
            return min(level, key=lambda r: r.age_key)
    return None


def _entries(sidecar: Resource, workload_namespace: str,
             root_namespace: str) -> list[tuple[str, str]]:
    """``(namespace, host)`` pairs of every egress listener, ``.`` resolved."""
    here = workload_namespace if sidecar.namespace == root_namespace else sidecar.namespace
    pairs: list[tuple[str, str]] = []
    for listener in sidecar.spec.egress:
        for entry in listener.hosts:
            ns, _, host = entry.partition("/")
            pairs.append((here if ns == "." else ns, host.lower()))
    return pairs


def _hosts_of(resource: Resource) -> Sequence[str]:
    spec: Any = resource.spec
    hosts = [spec.host] if resource.kind == "DestinationRule" else list(spec.hosts)
    return [expand_host(h, resource.namespace) for h in hosts]


def _host_fits(pattern: str, host: str) -> bool:
    if wildcard_matches(pattern, host):
        return True
    # a wildcard resource host (``*.example.com``) is imported by a narrower entry too
    return host.startswith("*") and pattern.endswith(host[1:])


def egress_scope(config: Config, namespace: str, labels: Mapping[str, str]) -> EgressScope:
    """A predicate: whether a resource is imported by the workload's Sidecar."""
    sidecar = sidecar_for(config, namespace, labels)
    if sidecar is None or not sidecar.spec.egress:
        return lambda resource: True
    entries = _entries(sidecar, namespace, config.mesh.root_namespace)

    def imported(resource: Resource) -> bool:
        if resource.kind not in SCOPED_KINDS:
            return True
        hosts = _hosts_of(resource)
        for ns, pattern in entries:
            if ns == "~" or (ns != "*" and ns != resource.namespace):
                continue
            if any(_host_fits(pattern, h) for h in hosts):
                return True
        return False

    return imported
