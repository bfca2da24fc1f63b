"""PeerAuthentication (security.istio.io): which mTLS mode a workload's inbound side accepts.

Nothing configured means PERMISSIVE. Policies apply mesh-wide (root namespace, no
selector), per namespace (no selector) and per workload (selector); ``UNSET``
inherits from the level above. ``portLevelMtls`` overrides the mode per workload
port and only makes sense for a workload policy, so it needs a selector with labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from meshsdk.config.diagnostics import Finding
from meshsdk.config.kinds.base import SECURITY, SECURITY_VERSIONS, KindInfo
from meshsdk.config.types import (
    IstioModel,
    WorkloadSelector,
    check_port,
    check_selector_labels,
)

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class PeerAuthenticationMtls(IstioModel):
    """``mtls: {mode: STRICT}``. ``UNSET`` (the default) inherits from the parent scope."""

    mode: MtlsMode = "UNSET"


class PeerAuthenticationSpec(IstioModel):
    """``spec`` of a PeerAuthentication."""

    selector: WorkloadSelector | None = None
    mtls: PeerAuthenticationMtls | None = None
    # Keyed by workload (target) port. YAML writes the keys as numbers or strings;
    # both become ints. None (absent) differs from {} (present but empty, rejected).
    port_level_mtls: dict[int, PeerAuthenticationMtls] | None = None


def validate_peer_authentication(spec: PeerAuthenticationSpec) -> Iterator[Finding]:
    """Istio's PeerAuthentication validation, with paths relative to ``spec``."""
    yield from check_selector_labels(spec.selector, ("selector",))
    if spec.selector is not None and not spec.selector.match_labels:
        yield Finding(("selector",), "selector has no matchLabels: it selects every workload "
                                     "in the namespace", severity="warning")
    if spec.port_level_mtls is None:
        return
    if not spec.port_level_mtls:
        yield Finding(("portLevelMtls",), "portLevelMtls, if present, must have at least one "
                                          "port; remove it or add a port")
        return
    if spec.selector is None or not spec.selector.match_labels:
        yield Finding(("portLevelMtls",),
                      "portLevelMtls needs a selector with at least one label: mesh-wide and "
                      "namespace-wide PeerAuthentications cannot set port-level mTLS")
    for port in spec.port_level_mtls:
        # The int key matches YAML's usual unquoted `8080:` key (and pydantic's own paths).
        yield from check_port(port, ("portLevelMtls", port))


KIND = KindInfo("PeerAuthentication", SECURITY, SECURITY_VERSIONS, PeerAuthenticationSpec,
                rules=validate_peer_authentication)
