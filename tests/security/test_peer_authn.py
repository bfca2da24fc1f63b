"""PeerAuthentication composition: Istio's mesh -> namespace -> workload -> port precedence."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from meshsdk.config.loader import config_from_result, load_string
from meshsdk.config.resource import Config
from meshsdk.security.peer_authn import MtlsPolicy, resolve_mtls

ROOT = "istio-system"


def pa(name: str, namespace: str, spec: str, *, created: str | None = None) -> str:
    """A PeerAuthentication document; ``spec`` is the YAML body under ``spec:``."""
    stamp = f"\n  creationTimestamp: '{created}'" if created else ""
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n"
            f"  name: {name}\n  namespace: {namespace}{stamp}\nspec:\n{body}\n")


def load(*docs: str) -> Config:
    result = load_string("---\n".join(docs) if docs else "")
    assert not result.errors, [d.format() for d in result.errors]
    return config_from_result(result)


MESH_STRICT = pa("default", ROOT, "mtls: {mode: STRICT}")
MESH_DISABLE = pa("default", ROOT, "mtls: {mode: DISABLE}")
NS_PERMISSIVE = pa("default", "foo", "mtls: {mode: PERMISSIVE}")
NS_STRICT = pa("default", "foo", "mtls: {mode: STRICT}")
WEB_DISABLE = pa("web", "foo", "selector: {matchLabels: {app: web}}\nmtls: {mode: DISABLE}")


@dataclass(frozen=True)
class Case:
    id: str
    docs: tuple[str, ...]
    mode: str
    namespace: str = "foo"
    labels: Mapping[str, str] = field(default_factory=lambda: {"app": "web"})
    ports: Mapping[int, str] = field(default_factory=dict)  # port -> expected mode_for(port)
    source: tuple[str, ...] | None = None


CASES = [
    Case("nothing-configured-is-permissive", (), "PERMISSIVE", source=()),
    Case("mesh-strict", (MESH_STRICT,), "STRICT",
         source=("PeerAuthentication istio-system/default",)),
    Case("mesh-disable", (MESH_DISABLE,), "DISABLE"),
    Case("namespace-overrides-mesh", (MESH_STRICT, NS_PERMISSIVE), "PERMISSIVE",
         source=("PeerAuthentication istio-system/default", "PeerAuthentication foo/default")),
    Case("other-namespace-keeps-mesh", (MESH_STRICT, NS_PERMISSIVE), "STRICT", namespace="bar"),
    Case("workload-overrides-namespace", (MESH_STRICT, NS_PERMISSIVE, WEB_DISABLE), "DISABLE",
         source=("PeerAuthentication istio-system/default", "PeerAuthentication foo/default",
                 "PeerAuthentication foo/web")),
    Case("selector-not-matching", (NS_STRICT, WEB_DISABLE), "STRICT", labels={"app": "db"}),
    Case("selector-in-other-namespace", (WEB_DISABLE,), "PERMISSIVE", namespace="bar"),
    Case("unset-inherits-mesh",
         (MESH_STRICT, pa("default", "foo", "mtls: {mode: UNSET}"),
          pa("web", "foo", "selector: {matchLabels: {app: web}}\nmtls: {}")),
         "STRICT", source=("PeerAuthentication istio-system/default",)),
    Case("absent-mtls-inherits", (MESH_DISABLE, pa("default", "foo", "{}")), "DISABLE"),
    Case("port-level",
         (pa("web", "foo", """
            selector: {matchLabels: {app: web}}
            mtls: {mode: STRICT}
            portLevelMtls:
              8080: {mode: PERMISSIVE}
              9090: {mode: UNSET}
            """),),
         "STRICT", ports={8080: "PERMISSIVE", 9090: "STRICT", 80: "STRICT"}),
    Case("port-level-unset-inherits-namespace",
         (NS_PERMISSIVE, pa("web", "foo", """
            selector: {matchLabels: {app: web}}
            portLevelMtls:
              "8443": {mode: STRICT}
              9000: {}
            """)),
         "PERMISSIVE", ports={8443: "STRICT", 9000: "PERMISSIVE", 80: "PERMISSIVE"}),
    Case("port-level-disable-under-strict-mesh",
         (MESH_STRICT, pa("web", "foo", """
            selector: {matchLabels: {app: web}}
            portLevelMtls: {15021: {mode: DISABLE}}
            """)),
         "STRICT", ports={15021: "DISABLE", 8080: "STRICT"},
         source=("PeerAuthentication istio-system/default", "PeerAuthentication foo/web")),
    Case("root-selector-ignored-elsewhere",
         (pa("web-strict", ROOT, "selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}"),),
         "PERMISSIVE", source=()),
    Case("root-selector-ignored-in-root-namespace",
         (MESH_DISABLE,
          pa("web-strict", ROOT, "selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}")),
         "DISABLE", namespace=ROOT),
    Case("root-namespace-workload-gets-mesh-policy", (MESH_STRICT,), "STRICT", namespace=ROOT),
    Case("two-namespace-policies-oldest-wins-by-timestamp",
         (pa("newer", "foo", "mtls: {mode: STRICT}", created="2024-05-02T00:00:00Z"),
          pa("older", "foo", "mtls: {mode: DISABLE}", created="2024-05-01T00:00:00Z")),
         "DISABLE", source=("PeerAuthentication foo/older",)),
    Case("two-namespace-policies-oldest-wins-by-load-order",
         (pa("first", "foo", "mtls: {mode: STRICT}"),
          pa("second", "foo", "mtls: {mode: DISABLE}")),
         "STRICT", source=("PeerAuthentication foo/first",)),
    Case("oldest-unset-still-wins-its-level",
         (MESH_DISABLE,
          pa("older", "foo", "mtls: {mode: UNSET}", created="2024-01-01T00:00:00Z"),
          pa("newer", "foo", "mtls: {mode: STRICT}", created="2024-02-01T00:00:00Z")),
         "DISABLE"),
    Case("two-workload-policies-oldest-wins",
         (pa("b", "foo", "selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}",
             created="2024-03-01T00:00:00Z"),
          pa("a", "foo", "selector: {matchLabels: {tier: front}}\nmtls: {mode: DISABLE}",
             created="2024-02-01T00:00:00Z")),
         "DISABLE", labels={"app": "web", "tier": "front"}),
    Case("empty-selector-is-namespace-level",
         (pa("all", "foo", "selector: {}\nmtls: {mode: STRICT}"),), "STRICT"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_resolve_mtls(case: Case) -> None:
    policy = resolve_mtls(load(*case.docs), case.namespace, case.labels, root_namespace=ROOT)
    assert policy.mode == case.mode, policy.server_mode_summary()
    for port, mode in case.ports.items():
        assert policy.mode_for(port) == mode, (port, policy.server_mode_summary())
    if not case.ports:
        assert policy.mode_for(8080) == case.mode
    if case.source is not None:
        assert policy.source == case.source


def test_ignored_policies_are_reported() -> None:
    root_selector = "selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}"
    config = load(pa("web-strict", ROOT, root_selector),
                  pa("first", "foo", "mtls: {mode: STRICT}"),
                  pa("second", "foo", "mtls: {mode: DISABLE}"))
    policy = resolve_mtls(config, "foo", {"app": "web"}, root_namespace=ROOT)
    assert any("istio-system/web-strict" in why and "root namespace" in why
               for why in policy.ignored)
    assert any(why.startswith("PeerAuthentication foo/second: ignored") for why in policy.ignored)


def test_no_root_namespace_means_no_mesh_level() -> None:
    policy = resolve_mtls(load(MESH_STRICT), "foo", {}, root_namespace="")
    assert policy.mode == "PERMISSIVE"


def test_defaults_and_summary() -> None:
    empty = resolve_mtls(load(), "foo", {}, root_namespace=ROOT)
    assert empty == MtlsPolicy()
    assert empty.decisions[0].level == "default"
    assert "Istio's default" in empty.server_mode_summary()

    config = load(MESH_STRICT, pa("web", "foo", """
        selector: {matchLabels: {app: web}}
        portLevelMtls: {8080: {mode: PERMISSIVE}}
        """))
    policy = resolve_mtls(config, "foo", {"app": "web"}, root_namespace=ROOT)
    assert policy.server_mode_summary() == (
        "STRICT (port 8080: PERMISSIVE) [PeerAuthentication istio-system/default; "
        "PeerAuthentication foo/web]")
    assert [d.describe() for d in policy.decisions] == [
        "mesh STRICT from PeerAuthentication istio-system/default",
        "port 8080 PERMISSIVE from PeerAuthentication foo/web",
    ]
    assert not policy.accepts_plaintext(9000) and policy.accepts_plaintext(8080)
    assert policy.accepts_mtls(8080)
    assert not resolve_mtls(load(MESH_DISABLE), "foo", {}, root_namespace=ROOT).accepts_mtls(80)
