"""Sidecar egress scoping (meshsdk.config.scope): which Sidecar applies, and what it imports."""

from __future__ import annotations

import pytest

from meshsdk.config.loader import config_from_result, load_string
from meshsdk.config.resource import Config
from meshsdk.config.scope import egress_scope, sidecar_for

SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: billing, namespace: payments}
spec:
  hosts: [billing.payments.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: billing, namespace: payments}
spec:
  host: billing
"""


def _config(sidecars: str) -> Config:
    result = load_string(SERVICES + "---\n" + sidecars if sidecars else SERVICES)
    assert not result.errors, result.errors
    return config_from_result(result)


def _imported(config: Config, namespace: str, labels: dict[str, str]) -> list[str]:
    scope = egress_scope(config, namespace, labels)
    return sorted(f"{r.kind}:{r.namespace}/{r.name}" for r in config.resources
                  if r.kind != "Sidecar" and scope(r))


NAMESPACE_DEFAULT = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: ["./*"]}]
"""

WORKLOAD = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: pp, namespace: default}
spec:
  workloadSelector: {labels: {app: productpage}}
  egress: [{hosts: ["payments/billing.payments.svc.cluster.local", "*/*.example.com"]}]
"""

ROOT = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: ["./*", "payments/*"]}]
"""

ALL = ["DestinationRule:payments/billing", "ServiceEntry:default/external",
       "ServiceEntry:default/reviews", "ServiceEntry:payments/billing",
       "VirtualService:default/reviews"]


def test_without_a_sidecar_everything_is_imported() -> None:
    assert _imported(_config(""), "default", {"app": "x"}) == ALL


def test_the_namespace_sidecar_imports_its_own_namespace_only() -> None:
    config = _config(NAMESPACE_DEFAULT)
    assert _imported(config, "default", {"app": "x"}) == [
        "ServiceEntry:default/external", "ServiceEntry:default/reviews",
        "VirtualService:default/reviews"]
    assert _imported(config, "payments", {}) == ALL  # not its namespace: no Sidecar


def test_a_selecting_sidecar_wins_over_the_namespace_default() -> None:
    config = _config(NAMESPACE_DEFAULT + "---" + WORKLOAD)
    sidecar = sidecar_for(config, "default", {"app": "productpage"})
    assert sidecar is not None and sidecar.name == "pp"
    assert _imported(config, "default", {"app": "productpage"}) == [
        "DestinationRule:payments/billing", "ServiceEntry:default/external",
        "ServiceEntry:payments/billing"]
    other = sidecar_for(config, "default", {"app": "reviews"})
    assert other is not None and other.name == "default"


@pytest.mark.parametrize("namespace, expected", [
    ("default", ["DestinationRule:payments/billing", "ServiceEntry:default/external",
                 "ServiceEntry:default/reviews", "ServiceEntry:payments/billing",
                 "VirtualService:default/reviews"]),
    # "." in the root namespace's default means the workload's own namespace
    ("shop", ["DestinationRule:payments/billing", "ServiceEntry:payments/billing"]),
])
def test_the_root_default_applies_where_a_namespace_has_none(
        namespace: str, expected: list[str]) -> None:
    config = _config(ROOT)
    assert _imported(config, namespace, {}) == expected


def test_tilde_imports_nothing_and_other_kinds_always_pass() -> None:
    config = _config("""
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: ["~/*"]}]
""")
    scope = egress_scope(config, "default", {})
    assert [r.name for r in config.resources if scope(r) and r.kind != "Sidecar"] == []
    assert all(scope(r) for r in config.of_kind("Sidecar"))
