"""The snapshot as clients see it: names, endpoints, exportTo, rule lookup and merging,
plus the analyzer warnings computed from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshsdk.config import Config, Diagnostic, Snapshot, load_config
from meshsdk.config.hosts import expand_host

Write = Callable[..., Path]
REVIEWS = "reviews.default.svc.cluster.local"


def doc(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None,
        **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, **meta}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": metadata,
            "spec": spec}


def se(name: str, hosts: list[str], namespace: str | None = None, *,
       ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body = {"hosts": hosts, "location": "MESH_INTERNAL", "resolution": "STATIC",
            "ports": ports or [{"number": 9080, "name": "http", "protocol": "HTTP"}], **spec}
    if body["resolution"] == "STATIC" and "endpoints" not in spec:
        body.setdefault("workloadSelector", {"labels": {"app": name}})
    return doc("ServiceEntry", name, body, namespace)


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def load(write: Write, *docs: dict[str, Any], name: str = "c.yaml") -> Config:
    return load_config(write(name, dump(*docs)))


def snap_of(write: Write, *docs: dict[str, Any]) -> Snapshot:
    return Snapshot(load(write, *docs))


def codes(config: Config) -> list[str | None]:
    return [w.code for w in config.warnings]


def line_containing(path: Path, text: str, start: int = 0) -> int:
    lines = path.read_text().splitlines()
    return next(i + 1 for i, line in enumerate(lines) if i >= start and text in line)


@pytest.fixture(scope="module")
def bookinfo(bookinfo_dir: Path) -> Snapshot:
    return Snapshot(load_config(bookinfo_dir))


# --- names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["reviews", "reviews.default", "reviews.default.svc", REVIEWS,
                                  "REVIEWS", "Reviews.Default"])
def test_short_names_in_the_service_namespace(bookinfo: Snapshot, name: str) -> None:
    svc, fqdn, port = bookinfo.view("default").resolve(f"{name}:9080")
    assert svc is not None
    assert svc.hostname == fqdn == REVIEWS
    assert port == 9080


def test_resolve_without_port(bookinfo: Snapshot) -> None:
    svc, fqdn, port = bookinfo.view("default").resolve("reviews")
    assert svc is not None and fqdn == REVIEWS and port is None


@pytest.mark.parametrize("name", ["reviews.default", "reviews.default.svc", REVIEWS])
def test_qualified_names_from_another_namespace(bookinfo: Snapshot, name: str) -> None:
    svc, fqdn, _ = bookinfo.view("shop").resolve(f"{name}:9080")
    assert svc is not None and fqdn == REVIEWS


def test_bare_short_name_from_another_namespace_is_not_the_service(bookinfo: Snapshot) -> None:
    svc, fqdn, port = bookinfo.view("shop").resolve("reviews:9080")
    assert svc is None
    assert fqdn == "reviews.shop.svc.cluster.local"
    assert port == 9080
    assert bookinfo.view("shop").service("reviews") is None


def test_unknown_host_keeps_its_name(bookinfo: Snapshot) -> None:
    svc, fqdn, port = bookinfo.view("default").resolve("httpbin.org:443")
    assert (svc, fqdn, port) == (None, "httpbin.org", 443)


def test_rule_hosts_expand_in_the_rule_namespace() -> None:
    assert expand_host("reviews", "foo") == "reviews.foo.svc.cluster.local"
    assert expand_host("reviews.foo", "default") == "reviews.foo"
    assert expand_host("*.example.com", "default") == "*.example.com"
    assert expand_host("10.0.0.1", "default") == "10.0.0.1"


def test_dotted_rule_host_is_not_expanded(write: Write) -> None:
    route = {"hosts": ["reviews.foo"], "http": [{"route": [{"destination": {"host": "x"}}]}]}
    snap = snap_of(write, doc("VirtualService", "r", route),
                   doc("DestinationRule", "r", {"host": "reviews.foo"}))
    view = snap.view("default")
    assert view.virtual_service("reviews.foo") is not None
    assert view.virtual_service("reviews.foo.svc.cluster.local") is None
    dr = view.destination_rule("reviews.foo")
    assert dr is not None and dr.host == "reviews.foo"
    assert view.destination_rule("reviews.foo.svc.cluster.local") is None


def test_short_rule_host_uses_the_rule_namespace(write: Write) -> None:
    route = {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
    snap = snap_of(write, doc("VirtualService", "r", route, namespace="foo"))
    assert snap.view("foo").virtual_service("reviews.foo.svc.cluster.local") is not None
    assert snap.view("default").virtual_service("reviews.foo.svc.cluster.local") is not None
    assert snap.view("foo").virtual_service("reviews.default.svc.cluster.local") is None


# --- endpoints -----------------------------------------------------------------------


def test_service_port_to_workload_port_by_port_name(bookinfo: Snapshot) -> None:
    svc = bookinfo.view("default").service("reviews")
    assert svc is not None
    eps = bookinfo.endpoints(svc, 9080)
    assert sorted(e.authority for e in eps) == [
        "127.0.0.1:19082", "127.0.0.1:19083", "127.0.0.1:19084"]
    assert {e.service_account for e in eps} == {"bookinfo-reviews"}
    assert bookinfo.endpoints(svc, 9999) == ()


def test_subset_endpoints_by_labels(bookinfo: Snapshot) -> None:
    view = bookinfo.view("default")
    svc = view.service("reviews")
    assert svc is not None
    labels = view.subset_labels(REVIEWS, "v2")
    assert labels == {"version": "v2"}
    [ep] = bookinfo.endpoints(svc, 9080, labels)
    assert ep.authority == "127.0.0.1:19083"
    assert ep.labels["version"] == "v2"
    assert bookinfo.endpoints(svc, 9080, {"version": "v9"}) == ()
    assert view.subset_labels(REVIEWS, "v9") is None


def test_endpoint_port_by_target_port_and_name(write: Write) -> None:
    ports = [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080},
             {"number": 81, "name": "admin", "protocol": "HTTP"}]
    endpoints = [{"address": "10.0.0.1"},
                 {"address": "10.0.0.2", "ports": {"http": 9090}},
                 {"address": "10.0.0.3", "ports": {"admin": 7070}}]
    snap = snap_of(write, se("web", ["web.default.svc.cluster.local"], ports=ports,
                             endpoints=endpoints))
    svc = snap.view("default").service("web")
    assert svc is not None
    assert [e.authority for e in snap.endpoints(svc, 80)] == [
        "10.0.0.1:8080", "10.0.0.2:9090", "10.0.0.3:8080"]
    assert [e.authority for e in snap.endpoints(svc, 81)] == [
        "10.0.0.1:81", "10.0.0.2:81", "10.0.0.3:7070"]
    assert snap.endpoints(svc, 82) == ()


def test_workload_entries_selected_in_the_service_namespace_only(write: Write) -> None:
    we = {"address": "10.0.0.9", "labels": {"app": "api"}, "ports": {"http": 8000}}
    snap = snap_of(
        write,
        se("api", ["api.backend.svc.cluster.local"], "backend",
           workloadSelector={"labels": {"app": "api"}}),
        doc("WorkloadEntry", "api-1", we, "backend"),
        doc("WorkloadEntry", "api-2", {**we, "address": "10.0.0.10"}, "elsewhere"),
        doc("WorkloadEntry", "other", {**we, "labels": {"app": "web"}}, "backend"),
    )
    svc = snap.view("default").service("api.backend")
    assert svc is not None
    assert [e.authority for e in snap.endpoints(svc, 9080)] == ["10.0.0.9:8000"]


def test_dns_service_entry_without_endpoints_uses_its_host(write: Write) -> None:
    ports = [{"number": 443, "name": "https", "protocol": "HTTPS"}]
    external = se("ext", ["api.example.com", "www.example.com"], ports=ports,
                  resolution="DNS", location="MESH_EXTERNAL")
    static = se("static", ["static.example.com"], ports=ports, resolution="STATIC")
    snap = snap_of(write, external, static)
    view = snap.view("default")
    for host in ("api.example.com", "www.example.com"):
        svc = view.service(host)
        assert svc is not None
        assert [e.authority for e in snap.endpoints(svc, 443)] == [f"{host}:443"]
    static_svc = view.service("static.example.com")
    assert static_svc is not None
    assert snap.endpoints(static_svc, 443) == ()


def test_dns_service_entry_with_endpoints_uses_them(write: Write) -> None:
    ports = [{"number": 443, "name": "https", "protocol": "HTTPS"}]
    snap = snap_of(write, se("ext", ["api.example.com"], ports=ports, resolution="DNS",
                             endpoints=[{"address": "eu.api.example.com"}]))
    svc = snap.view("default").service("api.example.com")
    assert svc is not None
    assert [e.authority for e in snap.endpoints(svc, 443)] == ["eu.api.example.com:443"]


# --- exportTo --------------------------------------------------------------------------

EXT = "api.example.com"


def _vs(name: str, host: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body = {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}], **spec}
    return doc("VirtualService", name, body, namespace)


@pytest.mark.parametrize(("export_to", "visible_in", "hidden_in"), [
    (None, ["a", "b", "c"], []),
    (["*"], ["a", "b", "c"], []),
    (["."], ["a"], ["b", "c"]),
    (["b"], ["b"], ["c"]),
    ([".", "b"], ["a", "b"], ["c"]),
])
def test_virtual_service_export_to(write: Write, export_to: list[str] | None,
                                   visible_in: list[str], hidden_in: list[str]) -> None:
    extra = {"exportTo": export_to} if export_to else {}
    snap = snap_of(write, _vs("api", EXT, "a", **extra))
    for ns in visible_in:
        assert snap.view(ns).virtual_service(EXT) is not None, ns
    for ns in hidden_in:
        assert snap.view(ns).virtual_service(EXT) is None, ns


@pytest.mark.parametrize(("export_to", "visible_in", "hidden_in"), [
    (None, ["a", "b", "c"], []),
    (["*"], ["a", "b", "c"], []),
    (["."], ["a"], ["b", "c"]),
    (["b"], ["b"], ["c"]),
])
def test_destination_rule_export_to(write: Write, export_to: list[str] | None,
                                    visible_in: list[str], hidden_in: list[str]) -> None:
    extra = {"exportTo": export_to} if export_to else {}
    ports = [{"number": 443, "name": "https", "protocol": "HTTPS"}]
    snap = snap_of(write, se("api", [EXT], "a", ports=ports),
                   doc("DestinationRule", "api", {"host": EXT, **extra}, "a"))
    for ns in visible_in:
        dr = snap.view(ns).destination_rule(EXT)
        assert dr is not None and dr.namespace == "a", ns
    for ns in hidden_in:
        assert snap.view(ns).destination_rule(EXT) is None, ns


@pytest.mark.parametrize(("export_to", "visible_in", "hidden_in"), [
    (None, ["a", "b"], []),
    (["*"], ["a", "b"], []),
    (["."], ["a"], ["b"]),
    (["b"], ["b"], ["c"]),
    (["~"], [], ["a", "b"]),
])
def test_service_entry_export_to(write: Write, export_to: list[str] | None,
                                 visible_in: list[str], hidden_in: list[str]) -> None:
    extra = {"exportTo": export_to} if export_to else {}
    snap = snap_of(write, se("api", [EXT], "a", **extra))
    for ns in visible_in:
        assert snap.view(ns).service(EXT) is not None, ns
        assert snap.view(ns).resolve(f"{EXT}:9080")[0] is not None, ns
    for ns in hidden_in:
        assert snap.view(ns).service(EXT) is None, ns


def test_mesh_default_export_to(write: Write, tmp_path: Path) -> None:
    write("mesh.yaml", "defaultVirtualServiceExportTo: ['.']\n")
    write("r.yaml", dump(_vs("api", EXT, "a")))
    snap = Snapshot(load_config(tmp_path))
    assert snap.view("a").virtual_service(EXT) is not None
    assert snap.view("b").virtual_service(EXT) is None


# --- DestinationRule lookup ------------------------------------------------------------

API = "api.backend.svc.cluster.local"


def _dr(name: str, host: str, namespace: str, lb: str, **spec: Any) -> dict[str, Any]:
    body = {"host": host, "trafficPolicy": {"loadBalancer": {"simple": lb}}, **spec}
    return doc("DestinationRule", name, body, namespace)


def test_destination_rule_lookup_order(write: Write) -> None:
    snap = snap_of(write,
                   se("api", [API], "backend"),
                   _dr("client-side", API, "client", "RANDOM"),
                   _dr("service-side", "api", "backend", "ROUND_ROBIN"),
                   _dr("mesh-wide", API, "istio-system", "LEAST_REQUEST"))
    dr = snap.view("client").destination_rule(API)
    assert dr is not None and (dr.namespace, dr.resource.name) == ("client", "client-side")
    dr = snap.view("elsewhere").destination_rule(API)
    assert dr is not None and dr.resource.name == "service-side"
    dr = snap.view("backend").destination_rule(API)
    assert dr is not None and dr.resource.name == "service-side"
    assert snap.view("client").policy(API).load_balancer.simple == "RANDOM"
    assert snap.view("elsewhere").policy(API).load_balancer.simple == "ROUND_ROBIN"


def test_destination_rule_falls_back_to_root_namespace(write: Write) -> None:
    snap = snap_of(write, se("api", [API], "backend"),
                   _dr("mesh-wide", API, "istio-system", "LEAST_REQUEST"))
    dr = snap.view("elsewhere").destination_rule(API)
    assert dr is not None and dr.namespace == "istio-system"
    assert snap.view("elsewhere").policy(API).load_balancer.simple == "LEAST_REQUEST"


def test_root_namespace_comes_from_mesh_config(write: Write, tmp_path: Path) -> None:
    write("mesh.yaml", "rootNamespace: mesh-root\n")
    write("r.yaml", dump(se("api", [API], "backend"),
                         _dr("old-root", API, "istio-system", "RANDOM"),
                         _dr("new-root", API, "mesh-root", "ROUND_ROBIN")))
    snap = Snapshot(load_config(tmp_path))
    dr = snap.view("elsewhere").destination_rule(API)
    assert dr is not None and dr.resource.name == "new-root"


def test_destination_rule_in_unrelated_namespace_is_not_used(write: Write) -> None:
    snap = snap_of(write, se("api", [API], "backend"), _dr("stray", API, "third", "RANDOM"))
    assert snap.view("client").destination_rule(API) is None
    assert snap.view("client").policy(API) is None


# --- wildcards ---------------------------------------------------------------------------


def test_most_specific_wildcard_virtual_service_wins(write: Write) -> None:
    snap = snap_of(write,
                   _vs("broad", "*.example.com", "default"),
                   _vs("narrow", "*.api.example.com", "default"),
                   _vs("exact", "exact.api.example.com", "default"))
    view = snap.view("default")

    def name(host: str) -> str | None:
        vs = view.virtual_service(host)
        return vs.name if vs is not None else None

    assert name("x.api.example.com") == "narrow"
    assert name("a.b.api.example.com") == "narrow"
    assert name("www.example.com") == "broad"
    assert name("exact.api.example.com") == "exact"
    assert name("example.com") is None
    assert name("other.org") is None


def test_most_specific_wildcard_destination_rule_wins(write: Write) -> None:
    snap = snap_of(write,
                   _dr("broad", "*.example.com", "default", "RANDOM"),
                   _dr("narrow", "*.api.example.com", "default", "ROUND_ROBIN"),
                   _dr("exact", "exact.api.example.com", "default", "LEAST_REQUEST"))
    view = snap.view("default")
    for host, expected in (("x.api.example.com", "narrow"), ("www.example.com", "broad"),
                           ("exact.api.example.com", "exact")):
        dr = view.destination_rule(host)
        assert dr is not None and dr.resource.name == expected, host
    assert view.destination_rule("example.org") is None


# --- which VirtualService applies ----------------------------------------------------------


def test_oldest_virtual_service_wins_by_creation_timestamp(write: Write) -> None:
    newer = _vs("newer", "reviews", "default")
    newer["metadata"]["creationTimestamp"] = "2024-06-01T00:00:00Z"
    older = _vs("older", "reviews", "default")
    older["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    config = load(write, newer, older)
    vs = Snapshot(config).view("default").virtual_service(REVIEWS)
    assert vs is not None and vs.name == "older"


def test_oldest_virtual_service_with_unquoted_and_offset_timestamps(write: Write) -> None:
    # 10:00+02:00 is 08:00Z, so "older" is older although its text sorts later.
    text = dump(_vs("newer", "reviews", "default"), _vs("older", "reviews", "default"))
    text = text.replace("name: newer", "name: newer\n  creationTimestamp: 2024-01-01T09:00:00Z")
    text = text.replace("name: older",
                        "name: older\n  creationTimestamp: '2024-01-01T10:00:00+02:00'")
    config = load_config(write("c.yaml", text))
    vs = Snapshot(config).view("default").virtual_service(REVIEWS)
    assert vs is not None and vs.name == "older"


def test_without_timestamps_load_order_decides(write: Write) -> None:
    config = load(write, _vs("first", "reviews", "default"), _vs("second", "reviews", "default"))
    vs = Snapshot(config).view("default").virtual_service(REVIEWS)
    assert vs is not None and vs.name == "first"


def test_a_timestamp_counts_as_older_than_none(write: Write) -> None:
    stamped = _vs("stamped", "reviews", "default")
    stamped["metadata"]["creationTimestamp"] = "2030-01-01T00:00:00Z"
    config = load(write, _vs("plain", "reviews", "default"), stamped)
    vs = Snapshot(config).view("default").virtual_service(REVIEWS)
    assert vs is not None and vs.name == "stamped"


def test_gateway_only_virtual_service_is_ignored_for_the_mesh(write: Write) -> None:
    config = load(write, _vs("edge", "reviews", "default", gateways=["bookinfo-gateway"]))
    assert Snapshot(config).view("default").virtual_service(REVIEWS) is None
    config = load(write, _vs("edge", "reviews", "default", gateways=["bookinfo-gateway"]),
                  _vs("mesh", "reviews", "default"))
    vs = Snapshot(config).view("default").virtual_service(REVIEWS)
    assert vs is not None and vs.name == "mesh"
    assert "IST0109" not in codes(config)


def test_virtual_service_bound_to_gateway_and_mesh_applies(write: Write) -> None:
    config = load(write, _vs("both", "reviews", "default", gateways=["bookinfo-gateway", "mesh"]))
    vs = Snapshot(config).view("default").virtual_service(REVIEWS)
    assert vs is not None and vs.name == "both"


# --- merged policies ----------------------------------------------------------------------

POLICY_DR = doc("DestinationRule", "reviews", {
    "host": "reviews",
    "trafficPolicy": {
        "loadBalancer": {"simple": "LEAST_REQUEST"},
        "connectionPool": {"tcp": {"maxConnections": 100}},
        "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s"},
        "portLevelSettings": [{"port": {"number": 9080},
                               "loadBalancer": {"simple": "RANDOM"}}],
    },
    "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"},
         "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
        {"name": "v3", "labels": {"version": "v3"},
         "trafficPolicy": {
             "connectionPool": {"tcp": {"maxConnections": 5}},
             "portLevelSettings": [{"port": {"number": 9080},
                                    "outlierDetection": {"consecutive5xxErrors": 9}}]}},
    ],
})


@pytest.fixture
def policy_view(write: Write) -> Any:
    return snap_of(write, se("reviews", [REVIEWS]), POLICY_DR).view("default")


def test_top_level_policy(policy_view: Any) -> None:
    p = policy_view.policy(REVIEWS)
    assert p.load_balancer.simple == "LEAST_REQUEST"
    assert p.connection_pool.tcp.max_connections == 100
    assert p.outlier_detection.consecutive_5xx_errors == 3
    assert not p.port_level_settings
    assert policy_view.policy(REVIEWS, "v1") == p


def test_subset_overrides_top_level_field_by_field(policy_view: Any) -> None:
    p = policy_view.policy(REVIEWS, "v2")
    assert p.load_balancer.simple == "ROUND_ROBIN"
    assert p.connection_pool.tcp.max_connections == 100
    assert p.outlier_detection.consecutive_5xx_errors == 3


def test_port_level_settings_replace_fields_for_that_port(policy_view: Any) -> None:
    p = policy_view.policy(REVIEWS, None, 9080)
    assert p.load_balancer.simple == "RANDOM"
    assert p.connection_pool is None  # not inherited from the top level
    assert p.outlier_detection is None
    other_port = policy_view.policy(REVIEWS, None, 9443)
    assert other_port.load_balancer.simple == "LEAST_REQUEST"
    assert other_port.connection_pool.tcp.max_connections == 100


def test_subset_over_port_level_settings(policy_view: Any) -> None:
    p = policy_view.policy(REVIEWS, "v2", 9080)
    assert p.load_balancer.simple == "ROUND_ROBIN"
    assert p.connection_pool is None


def test_subset_port_level_settings_replace_again(policy_view: Any) -> None:
    p = policy_view.policy(REVIEWS, "v3", 9080)
    assert p.outlier_detection.consecutive_5xx_errors == 9
    assert p.connection_pool is None
    assert p.load_balancer is None
    p = policy_view.policy(REVIEWS, "v3")
    assert p.connection_pool.tcp.max_connections == 5
    assert p.load_balancer.simple == "LEAST_REQUEST"


def test_no_policy_for_unknown_host(policy_view: Any) -> None:
    assert policy_view.policy("ratings.default.svc.cluster.local") is None


def test_two_destination_rules_for_one_host_merge_subsets(write: Write) -> None:
    first = doc("DestinationRule", "a-first", {
        "host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}]})
    second = doc("DestinationRule", "b-second", {
        "host": REVIEWS, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
        "subsets": [{"name": "v1", "labels": {"version": "other"}},
                    {"name": "v2", "labels": {"version": "v2"}}]})
    view = snap_of(write, se("reviews", [REVIEWS]), first, second).view("default")
    dr = view.destination_rule(REVIEWS)
    assert dr is not None
    assert [r.name for r in dr.sources] == ["a-first", "b-second"]
    assert sorted(dr.subsets) == ["v1", "v2"]
    assert view.subset_labels(REVIEWS, "v1") == {"version": "v1"}
    assert view.subset_labels(REVIEWS, "v2") == {"version": "v2"}
    assert view.policy(REVIEWS, "v2").load_balancer.simple == "RANDOM"


def test_bookinfo_policies(bookinfo: Snapshot) -> None:
    view = bookinfo.view("default")
    v1 = view.policy(REVIEWS, "v1", 9080)
    assert v1.load_balancer.simple == "LEAST_REQUEST"
    assert v1.outlier_detection.consecutive_5xx_errors == 3
    v3 = view.policy(REVIEWS, "v3", 9080)
    assert v3.load_balancer.simple == "ROUND_ROBIN"
    assert v3.outlier_detection.consecutive_5xx_errors == 3
    ratings = view.policy("ratings.default.svc.cluster.local")
    assert ratings.connection_pool.tcp.max_connections == 100


def test_views_are_cached_and_version_is_stable(bookinfo: Snapshot, bookinfo_dir: Path,
                                                write: Write) -> None:
    assert bookinfo.view("default") is bookinfo.view("default")
    assert bookinfo.view("default", {"app": "x"}) is not bookinfo.view("default")
    again = Snapshot(load_config(bookinfo_dir))
    assert again.version == bookinfo.version
    other = snap_of(write, se("reviews", [REVIEWS]))
    assert other.version != bookinfo.version


# --- analyzer warnings -------------------------------------------------------------------------


def only(config: Config, code: str) -> Diagnostic:
    found = [w for w in config.warnings if w.code == code]
    assert len(found) == 1, [w.format() for w in config.warnings]
    return found[0]


def test_bookinfo_has_no_analyzer_warnings(bookinfo: Snapshot) -> None:
    assert bookinfo.config.warnings == ()


def test_ist0101_missing_subset(write: Write) -> None:
    route = {"hosts": ["reviews"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v9"}, "weight": 50},
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50}]}]}
    path = write("c.yaml", dump(se("reviews", [REVIEWS]), POLICY_DR,
                                doc("VirtualService", "reviews", route)))
    config = load_config(path)
    w = only(config, "IST0101")
    assert w.severity == "warning"
    assert w.file == str(path)
    assert w.path == ("spec", "http", 0, "route", 0, "destination", "subset")
    assert w.line == line_containing(path, "subset: v9")
    assert "v9" in w.message
    assert w.format().startswith(
        f"{path}:{w.line}: VirtualService default/reviews: "
        "spec.http[0].route[0].destination.subset: warning IST0101: ")
    assert len(config.resources) == 3  # a warning never drops a resource


def test_ist0101_unknown_destination_host(write: Write) -> None:
    path = write("c.yaml", dump(_vs("ghost", "ghost", "default")))
    w = only(load_config(path), "IST0101")
    assert w.path == ("spec", "http", 0, "route", 0, "destination", "host")
    assert "ghost.default.svc.cluster.local" in w.message


def test_ist0109_two_virtual_services_for_one_host(write: Write) -> None:
    path = write("c.yaml", dump(se("reviews", [REVIEWS]), _vs("first", "reviews", "default"),
                                _vs("second", REVIEWS, "default")))
    config = load_config(path)
    w = only(config, "IST0109")
    assert w.name == "second"
    assert w.path == ("spec", "hosts", 0)
    second_start = line_containing(path, "name: second")
    assert w.line == line_containing(path, f"- {REVIEWS}", second_start)
    assert "first" in w.message


def test_mesh0103_destination_rule_for_unknown_host(write: Write) -> None:
    path = write("c.yaml", dump(se("reviews", [REVIEWS]),
                                doc("DestinationRule", "ghost", {"host": "ghost"})))
    w = only(load_config(path), "MESH0103")
    assert w.name == "ghost"
    assert w.path == ("spec", "host")
    assert w.line == line_containing(path, "host: ghost")


def test_known_wildcard_service_satisfies_the_analyzers(write: Write) -> None:
    ports = [{"number": 443, "name": "https", "protocol": "HTTPS"}]
    config = load(write, se("wild", ["*.example.com"], ports=ports, resolution="NONE",
                            location="MESH_EXTERNAL"),
                  doc("DestinationRule", "api", {"host": "api.example.com"}),
                  _vs("api", "api.example.com", "default"))
    assert codes(config) == []
