"""Service resolution end to end: unknown hosts, REGISTRY_ONLY, DNS names with a cached
lookup, resolution NONE, and locality preference, through the real sync transport."""

from __future__ import annotations

import random

import httpx

from meshsdk import Mesh, Workload
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.clock import FakeClock
from meshsdk.testing.upstream import Upstream
from meshsdk.transport.dns import DnsCache

CLIENT = Workload("productpage-v1", "default", {"app": "productpage"})
REGISTRY_ONLY = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata:\n  mesh: |\n" \
                "    outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"


def _mesh(*docs: str, workload: Workload = CLIENT) -> Mesh:
    return Mesh(config_from_yaml(list(docs)), workload, rng=random.Random(3))


def test_unknown_host_passes_through_under_allow_any() -> None:
    with Upstream("outside") as up:
        known = service_entry("reviews", [(up, {"version": "v1"})], port=9080)
        mesh = _mesh(known)
        with mesh.client() as client:
            r = client.get(f"http://127.0.0.1:{up.port}/direct")
        assert r.status_code == 200 and r.headers["x-upstream"] == "outside"
        assert r.extensions["meshsdk"].cluster == "PassthroughCluster"
        assert up.requests[-1].path == "/direct"


def test_unknown_host_is_502_under_registry_only() -> None:
    with Upstream("outside") as up:
        mesh = _mesh(service_entry("reviews", [(up, {})], port=9080), REGISTRY_ONLY)
        with mesh.client() as client:
            blocked = client.get(f"http://127.0.0.1:{up.port}/")
            allowed = client.get("http://reviews:9080/")
        assert blocked.status_code == 502 and blocked.extensions["meshsdk"].local_reply
        assert allowed.status_code == 200
        assert up.hits == 1


def test_dns_endpoint_is_resolved_once_per_refresh_interval() -> None:
    clock = FakeClock()
    cache = DnsCache(ttl=60.0, clock=clock.now)
    assert cache.resolve("localhost", 80) in ("127.0.0.1", "::1")
    cache.resolve("localhost", 80)
    assert cache.lookups == 1
    clock.advance(61.0)
    cache.resolve("localhost", 80)
    assert cache.lookups == 2
    assert cache.resolve("10.1.2.3", 80) == "10.1.2.3" and cache.lookups == 2


def test_dns_service_endpoints_by_name_reach_the_upstream() -> None:
    with Upstream("by-name") as up:
        se = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext}}
spec:
  hosts: [api.example.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: localhost, ports: {{http: {up.port}}}}}]
"""
        mesh = _mesh(se)
        with mesh.client() as client:
            r = client.get("http://api.example.test/x")
        assert r.status_code == 200 and r.headers["x-upstream"] == "by-name"
        assert up.requests[-1].headers["host"] == "api.example.test"
        assert mesh._dns.lookups == 1


def _none_entry(host: str, port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: none-svc}}
spec:
  hosts: ["{host}"]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
"""


def test_resolution_none_dials_the_name_asked_for() -> None:
    with Upstream("none") as up:
        mesh = _mesh(_none_entry("localhost", up.port), REGISTRY_ONLY)
        with mesh.client() as client:
            r = client.get(f"http://localhost:{up.port}/n")
        assert r.status_code == 200, r.text
        assert r.headers["x-upstream"] == "none"
        assert r.extensions["meshsdk"].cluster == f"outbound|{up.port}||localhost"


def test_wildcard_service_entry_makes_its_hosts_known() -> None:
    mesh = _mesh(_none_entry("*.example.test", 8080), REGISTRY_ONLY)
    with mesh.client() as client:
        r = client.get("http://api.example.test:8080/")
    # not the REGISTRY_ONLY 502: the host is known and dialled by the name asked for
    # (which does not resolve here, so the answer is a connect failure)
    assert r.status_code != 502
    assert r.extensions["meshsdk"].cluster == "outbound|8080||api.example.test"


def test_locality_preference_keeps_calls_in_the_clients_zone() -> None:
    with Upstream("near") as near, Upstream("far") as far:
        se = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {near.port}}}, locality: east/a}}
  - {{address: 127.0.0.1, ports: {{http: {far.port}}}, locality: west/b}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 5}}
"""
        east = Workload("productpage", "default", {"app": "productpage"}, locality="east/a")
        mesh = _mesh(se, workload=east)
        with mesh.client() as client:
            for _ in range(40):
                assert client.get("http://reviews:9080/").status_code == 200
        assert (near.hits, far.hits) == (40, 0)
        # without a known locality the same config spreads the load
        spread = _mesh(se, workload=CLIENT)
        with spread.client() as client:
            for _ in range(40):
                client.get("http://reviews:9080/")
        assert far.hits > 0


def test_connect_errors_are_not_raised_to_the_caller() -> None:
    """A dead endpoint is a 503 response with flags, never an httpx exception."""
    mesh = _mesh(service_entry("reviews", [(1, {})], port=9080))
    with mesh.client() as client:
        r = client.get("http://reviews:9080/")
    assert isinstance(r, httpx.Response) and r.status_code == 503
    assert "UF" in r.extensions["meshsdk"].response_flags
