"""The Istio kinds meshsdk understands, and the ones it knowingly skips."""

from __future__ import annotations

from meshsdk.config.kinds.authorization_policy import KIND as AUTHORIZATION_POLICY
from meshsdk.config.kinds.base import KindInfo
from meshsdk.config.kinds.destination_rule import KIND as DESTINATION_RULE
from meshsdk.config.kinds.gateway import KIND as GATEWAY
from meshsdk.config.kinds.peer_authentication import KIND as PEER_AUTHENTICATION
from meshsdk.config.kinds.request_authentication import KIND as REQUEST_AUTHENTICATION
from meshsdk.config.kinds.service_entry import KIND as SERVICE_ENTRY
from meshsdk.config.kinds.sidecar import KIND as SIDECAR
from meshsdk.config.kinds.telemetry import KIND as TELEMETRY
from meshsdk.config.kinds.virtual_service import KIND as VIRTUAL_SERVICE
from meshsdk.config.kinds.workload_entry import KIND as WORKLOAD_ENTRY
from meshsdk.config.kinds.workload_entry import WORKLOAD_GROUP_KIND as WORKLOAD_GROUP

KINDS: dict[str, KindInfo] = {
    k.kind: k
    for k in (
        VIRTUAL_SERVICE,
        DESTINATION_RULE,
        SERVICE_ENTRY,
        WORKLOAD_ENTRY,
        WORKLOAD_GROUP,
        GATEWAY,
        SIDECAR,
        PEER_AUTHENTICATION,
        AUTHORIZATION_POLICY,
        REQUEST_AUTHENTICATION,
        TELEMETRY,
    )
}
"""Supported kinds by name."""

UNSUPPORTED_ISTIO_KINDS: dict[str, str] = {
    "EnvoyFilter": "it patches Envoy's own configuration, which meshsdk does not run",
    "WasmPlugin": "it loads Envoy WebAssembly filters, which meshsdk does not run",
    "TrafficExtension": "it loads Envoy extensions, which meshsdk does not run",
    "ProxyConfig": "it tunes Envoy proxy settings that have no meshsdk equivalent",
}
"""Istio kinds that only make sense for Envoy: skipped with a warning saying why."""

__all__ = ["KINDS", "UNSUPPORTED_ISTIO_KINDS", "KindInfo"]
