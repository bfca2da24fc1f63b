"""Which mTLS mode a workload's inbound side accepts: Istio's PeerAuthentication composition.

Pure: :func:`resolve_mtls` reads a :class:`Config` and a workload's namespace and labels
and returns an :class:`MtlsPolicy` whose per-port answers are precomputed, so the data
path only does a dict lookup per connection.

Istio's rules (``pilot/pkg/security/authn`` ``ComposePeerAuthentication``):

* Nothing configured: ``PERMISSIVE`` (mTLS and plaintext both accepted).
* Levels, broadest first: mesh (root namespace, no selector labels), namespace (the
  workload's namespace, no selector labels), workload (selector labels matching the
  workload). A narrower level's mode replaces the broader one; ``UNSET`` (or no
  ``mtls``) inherits it.
* A selector policy in the root namespace is ignored, for every workload, including
  root-namespace workloads: Istio only counts selector policies outside the root
  namespace.
* Several policies at one level: only the oldest counts (creationTimestamp, then load
  order). A newer one is ignored even if the oldest is ``UNSET``.
* ``portLevelMtls`` (keyed by the workload's port, not the service port) is read from
  the chosen workload policy only; an ``UNSET`` port inherits the workload's mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from meshsdk.config.kinds.peer_authentication import PeerAuthenticationMtls, PeerAuthenticationSpec
from meshsdk.config.resource import Config, Resource
from meshsdk.config.selection import policies_for

__all__ = ["DEFAULT_MODE", "KIND", "Level", "Mode", "MtlsDecision", "MtlsPolicy", "resolve_mtls"]

KIND = "PeerAuthentication"
Mode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
Level = Literal["default", "mesh", "namespace", "workload", "port"]
DEFAULT_MODE: Mode = "PERMISSIVE"
"""Istio's mode when no PeerAuthentication sets one."""

_EMPTY_PORTS: Mapping[int, Mode] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class MtlsDecision:
    """One step of the composition: which resource set which mode at which level."""

    level: Level
    mode: Mode
    resource: str | None = None
    """``PeerAuthentication ns/name``; None for the built-in default."""
    port: int | None = None
    """The workload port, for ``level == "port"``."""

    def describe(self) -> str:
        """``namespace STRICT from PeerAuthentication foo/default``."""
        where = f"port {self.port}" if self.port is not None else self.level
        origin = f" from {self.resource}" if self.resource else " (Istio's default)"
        return f"{where} {self.mode}{origin}"


@dataclass(frozen=True, slots=True)
class MtlsPolicy:
    """The inbound mTLS mode of one workload, for every port.

    ``mode`` is the workload-wide mode; ``port_modes`` holds the ports that
    ``portLevelMtls`` sets (already resolved, UNSET replaced by ``mode``).
    """

    mode: Mode = DEFAULT_MODE
    port_modes: Mapping[int, Mode] = field(default_factory=lambda: _EMPTY_PORTS)
    source: tuple[str, ...] = ()
    """The resources that decided, broadest first (empty: Istio's default applies)."""
    decisions: tuple[MtlsDecision, ...] = (MtlsDecision("default", DEFAULT_MODE),)
    """Every step that set a mode, broadest first; the last workload-wide one wins."""
    ignored: tuple[str, ...] = ()
    """Applicable-looking resources Istio ignores, each with the reason (for ``describe``)."""

    def mode_for(self, port: int) -> Mode:
        """The mode for a connection to the workload's ``port`` (its target port)."""
        return self.port_modes.get(port, self.mode)

    def accepts_plaintext(self, port: int) -> bool:
        """Whether a plaintext connection to ``port`` is allowed (PERMISSIVE or DISABLE)."""
        return self.mode_for(port) != "STRICT"

    def accepts_mtls(self, port: int) -> bool:
        """Whether an mTLS connection to ``port`` is accepted (not DISABLE)."""
        return self.mode_for(port) != "DISABLE"

    def server_mode_summary(self) -> str:
        """One line for docs and ``describe``: ``STRICT (port 8080: PERMISSIVE) [from ...]``."""
        text: str = self.mode
        if self.port_modes:
            ports = ", ".join(f"{p}: {m}" for p, m in sorted(self.port_modes.items()))
            text += f" (port {ports})" if len(self.port_modes) == 1 else f" (ports {ports})"
        origin = "; ".join(self.source) if self.source else "no PeerAuthentication, Istio's default"
        return f"{text} [{origin}]"


def resolve_mtls(config: Config, namespace: str, labels: Mapping[str, str], *,
                 root_namespace: str) -> MtlsPolicy:
    """Compose the PeerAuthentications that apply to a workload into its inbound mTLS modes.

    ``namespace``/``labels`` identify the workload; ``root_namespace`` is the mesh's
    (``MeshConfig.root_namespace``; empty means no mesh-wide level).
    """
    # root_selectors=True only so matching root-namespace selector policies can be reported
    # as ignored below; Istio never applies them.
    scopes = policies_for(config.of_kind(KIND), namespace, labels, root_namespace=root_namespace,
                          root_selectors=True)
    ignored: list[str] = []
    mesh = _oldest(scopes.root, "mesh", ignored)
    ns = _oldest(scopes.namespace, "namespace", ignored)
    workload_candidates: list[Resource] = []
    for candidate in scopes.workload:
        if root_namespace and candidate.namespace == root_namespace:
            ignored.append(f"{candidate.ref}: ignored; a PeerAuthentication with a selector in "
                           f"the root namespace applies to no workload (Istio)")
        else:
            workload_candidates.append(candidate)
    workload = _oldest(tuple(workload_candidates), "workload", ignored)

    mode: Mode = DEFAULT_MODE
    decisions: list[MtlsDecision] = []
    sources: list[str] = []
    levels: tuple[tuple[Level, Resource | None], ...] = (
        ("mesh", mesh), ("namespace", ns), ("workload", workload))
    for level, resource in levels:
        if resource is None:
            continue
        set_mode = _mode_of(_spec(resource).mtls)
        if set_mode is not None:
            mode = set_mode
            decisions.append(MtlsDecision(level, mode, resource.ref))
            sources.append(resource.ref)

    port_modes: dict[int, Mode] = {}
    if workload is not None:
        for port, mtls in sorted((_spec(workload).port_level_mtls or {}).items()):
            port_mode = _mode_of(mtls) or mode
            port_modes[port] = port_mode
            decisions.append(MtlsDecision("port", port_mode, workload.ref, port))
        if port_modes and workload.ref not in sources:
            sources.append(workload.ref)
    if not decisions:
        decisions.append(MtlsDecision("default", DEFAULT_MODE))
    return MtlsPolicy(mode, MappingProxyType(port_modes) if port_modes else _EMPTY_PORTS,
                      tuple(sources), tuple(decisions), tuple(ignored))


def _oldest(level: tuple[Resource, ...], name: str, ignored: list[str]) -> Resource | None:
    """Istio's "the oldest wins" at one level; the others are recorded as ignored."""
    if not level:
        return None
    chosen = level[0]
    for other in level[1:]:
        ignored.append(f"{other.ref}: ignored; {chosen.ref} is older and also a {name}-level "
                       f"PeerAuthentication (Istio uses only the oldest)")
    return chosen


def _spec(resource: Resource) -> PeerAuthenticationSpec:
    spec: PeerAuthenticationSpec = resource.spec
    return spec


def _mode_of(mtls: PeerAuthenticationMtls | None) -> Mode | None:
    """The mode a ``mtls`` block sets; None when absent or UNSET (inherit)."""
    if mtls is None or mtls.mode == "UNSET":
        return None
    return mtls.mode
