"""Which namespaced policies apply to one workload: Istio's root -> namespace -> workload scoping.

Telemetry, PeerAuthentication, RequestAuthentication and AuthorizationPolicy all pick
their workloads the same way, and only differ in how they combine what applies. This
module does the picking; each kind's resolver does the combining.

Rules (Istio's, ``pilot/pkg/model`` ``namespaceWideTelemetryConfig``,
``getConfigsForWorkload`` and ``WorkloadPolicyMatcher``):

* A policy is *namespace-wide* when it has no ``selector`` labels and no
  ``targetRef``/``targetRefs``. ``selector: {}`` (no ``matchLabels``) counts as no
  selector: Istio tests ``len(matchLabels) == 0``, so it selects every workload of the
  namespace at the namespace level, not at the workload level.
* A namespace-wide policy in the root namespace is mesh-wide (:attr:`PolicyScopes.root`).
  For a workload *in* the root namespace those policies are still ``root`` and
  ``namespace`` is empty, as Istio never reads the root namespace twice.
* A policy with ``selector.matchLabels`` applies to the workloads of its own namespace
  whose labels include all of them. Root-namespace selector policies only reach
  root-namespace workloads unless ``root_selectors=True`` (AuthorizationPolicy and
  RequestAuthentication match them mesh-wide in Istio; Telemetry and PeerAuthentication
  do not).
* A policy with ``targetRef``/``targetRefs`` applies when one reference names the
  workload: same ``kind`` and ``name`` as ``workload_kind``/``workload_name``, or a
  ``Gateway`` whose name is the workload's ``gateway.networking.k8s.io/gateway-name``
  label (how Istio recognises a Gateway API gateway's pods). References never cross
  namespaces.

Every tuple is ordered oldest first (:attr:`Resource.age_key`), so callers can apply
Istio's "the oldest wins" by taking the first element.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from meshsdk.config.resource import Resource

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
"""Label Istio puts on a Gateway API gateway's pods; a ``Gateway`` targetRef matches on it."""


@dataclass(frozen=True, slots=True)
class PolicyScopes:
    """The policies that apply to one workload, by level, each level oldest first."""

    root: tuple[Resource, ...] = ()
    """Mesh-wide: root namespace, no selector labels and no targetRefs."""
    namespace: tuple[Resource, ...] = ()
    """Namespace-wide in the workload's namespace (empty when that is the root namespace)."""
    workload: tuple[Resource, ...] = ()
    """Selecting the workload by labels or naming it in a targetRef."""

    def __iter__(self) -> Iterator[Resource]:
        """Root, then namespace, then workload policies: broadest to narrowest."""
        return iter((*self.root, *self.namespace, *self.workload))

    def __bool__(self) -> bool:
        return bool(self.root or self.namespace or self.workload)


def target_refs(spec: Any) -> tuple[Any, ...]:
    """``targetRefs``, or ``[targetRef]`` when only the singular form is set (Istio's rule)."""
    refs = tuple(getattr(spec, "target_refs", None) or ())
    if refs:
        return refs
    single = getattr(spec, "target_ref", None)
    return (single,) if single is not None else ()


def selector_labels(spec: Any) -> Mapping[str, str]:
    """``selector.matchLabels`` of a policy spec; empty when there is no selector."""
    selector = getattr(spec, "selector", None)
    labels = getattr(selector, "match_labels", None) if selector is not None else None
    return labels or {}


def is_namespace_wide(spec: Any) -> bool:
    """No selector labels and no targetRefs: the policy covers its whole namespace."""
    return not selector_labels(spec) and not target_refs(spec)


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every selector label is on the workload with the same value (Kubernetes matchLabels)."""
    return all(labels.get(key) == value for key, value in selector.items())


def refs_match(refs: Iterable[Any], resource_namespace: str, labels: Mapping[str, str],
               workload_kind: str, workload_name: str) -> bool:
    """One of ``refs`` names the workload (see the module docstring for the rules)."""
    gateway_name = labels.get(GATEWAY_NAME_LABEL)
    for ref in refs:
        if ref.namespace and ref.namespace != resource_namespace:
            continue
        if workload_name and ref.name == workload_name and ref.kind == workload_kind:
            return True
        if ref.kind == "Gateway" and gateway_name and ref.name == gateway_name:
            return True
    return False


def policies_for(resources: Iterable[Resource], workload_namespace: str,
                 workload_labels: Mapping[str, str], *, root_namespace: str,
                 workload_kind: str = "", workload_name: str = "",
                 root_selectors: bool = False) -> PolicyScopes:
    """Sort ``resources`` (one kind) into the levels that apply to a workload.

    ``root_namespace`` empty means there is no mesh-wide level. ``workload_kind`` and
    ``workload_name`` identify the workload for targetRefs (``"Service"``/``"reviews"``,
    ``"Gateway"``/``"ingress"``); leave them empty when it has no such identity.
    Resources that do not apply are left out. Pure: reads nothing but its arguments.
    """
    root: list[Resource] = []
    namespace: list[Resource] = []
    workload: list[Resource] = []
    in_root = bool(root_namespace) and workload_namespace == root_namespace
    for resource in resources:
        spec = resource.spec
        ns = resource.namespace
        if is_namespace_wide(spec):
            if root_namespace and ns == root_namespace:
                root.append(resource)
            elif ns == workload_namespace:
                namespace.append(resource)
            continue
        reachable = ns == workload_namespace or (
            root_selectors and bool(root_namespace) and ns == root_namespace and not in_root)
        if not reachable:
            continue
        refs = target_refs(spec)
        if refs:
            # References only ever name objects of the policy's own namespace.
            if ns == workload_namespace and refs_match(refs, ns, workload_labels,
                                                       workload_kind, workload_name):
                workload.append(resource)
        elif labels_match(selector_labels(spec), workload_labels):
            workload.append(resource)
    return PolicyScopes(_oldest_first(root), _oldest_first(namespace), _oldest_first(workload))


def _oldest_first(resources: list[Resource]) -> tuple[Resource, ...]:
    return tuple(sorted(resources, key=lambda r: r.age_key))
