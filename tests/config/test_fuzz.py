"""Robustness: whatever the input, loading returns diagnostics and never raises.

Arbitrary text, arbitrary YAML structures, and valid resources broken in random
ways all go through the loader; the only exception ``load_config`` may raise is
``ConfigError``. When a mutated document still loads, the rest of the pipeline
(analyzers, snapshot, describe) must cope with it too.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshsdk.config import (
    Diagnostic,
    LoadResult,
    Snapshot,
    config_from_result,
    load_config,
    load_string,
)
from meshsdk.config.describe import describe_host
from meshsdk.config.kinds import KINDS
from meshsdk.errors import ConfigError

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BOOKINFO = Path(__file__).resolve().parents[2] / "examples" / "bookinfo"


def check_result(result: LoadResult) -> None:
    """Every diagnostic is well formed and printable; invalid documents were dropped."""
    assert isinstance(result, LoadResult)
    for d in result.diagnostics:
        assert isinstance(d, Diagnostic)
        assert d.severity in ("error", "warning")
        assert isinstance(d.format(), str)
        assert isinstance(d.to_dict(), dict)
        assert d.line is None or d.line >= 1
    dropped = {(d.kind, d.namespace, d.name) for d in result.errors if d.kind}
    for r in result.resources:
        assert (r.kind, r.namespace, r.name) not in dropped or any(
            (x.kind, x.namespace, x.name) == (r.kind, r.namespace, r.name)
            for x in result.resources if x is not r)


def exercise(result: LoadResult) -> None:
    """A valid load must survive analysis, the snapshot and describe."""
    if result.errors:
        return
    config = config_from_result(result)
    snap = Snapshot(config)
    for r in config.resources:
        hosts = list(getattr(r.spec, "hosts", None) or [])
        host = getattr(r.spec, "host", None)
        if isinstance(host, str):
            hosts.append(host)
        for h in hosts[:3]:
            describe_host(snap, h, r.namespace)
            describe_host(snap, f"{h}:9080", "default")
    for svc in snap.all_services():
        for p in svc.ports:
            snap.endpoints(svc, p.number, {"version": "v1"})


# --- (a) arbitrary text and structures ---------------------------------------------------

YAML_TOKENS = [*"ab01:-[]{}#&*!|>'\"%@`,?=~<\n\n   \t.", "---\n", "apiVersion: ", "kind: ",
               "spec:\n  ", "- ", "<<: ", "&a ", "*a", "networking.istio.io/v1", "VirtualService"]
YAMLISH = st.lists(st.sampled_from(YAML_TOKENS), max_size=80).map("".join)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text: str) -> None:
    check_result(load_string(text, source="fuzz.yaml"))


@FUZZ
@given(YAMLISH)
def test_yaml_like_text_never_raises(text: str) -> None:
    check_result(load_string(text, source="fuzz.yaml"))


SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["5s", "100ms", "reviews", "*", "*.example.com", "v1", "HTTP",
                              "ISTIO_MUTUAL", "ALLOW", "1.2.3.4", "0.0.0.0/0", ".", "~"]))
KEYS = st.text(max_size=12) | st.sampled_from(
    ["hosts", "host", "http", "route", "destination", "weight", "subset", "match", "uri",
     "exact", "prefix", "regex", "headers", "port", "number", "name", "labels", "subsets",
     "trafficPolicy", "loadBalancer", "simple", "tls", "mode", "timeout", "retries",
     "attempts", "fault", "delay", "abort", "percentage", "value", "exportTo", "gateways",
     "ports", "endpoints", "address", "resolution", "selector", "matchLabels", "rules",
     "from", "to", "when", "source", "operation", "action", "mtls", "portLevelSettings"])
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30)


def safe_dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@FUZZ
@given(STRUCTURES)
def test_arbitrary_structures_never_raise(data: Any) -> None:
    check_result(load_string(safe_dump(data), source="fuzz.yaml"))


@FUZZ
@given(st.sampled_from(sorted(KINDS)), st.sampled_from(["v1", "v1beta1", "v1alpha3", "v2"]),
       st.dictionaries(KEYS, STRUCTURES, max_size=6), STRUCTURES)
def test_random_specs_for_every_kind_never_raise(kind: str, version: str,
                                                 spec: dict[str, Any], meta: Any) -> None:
    group = KINDS[kind].group
    for metadata in ({"name": "fuzzed"}, meta):
        doc = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": metadata,
               "spec": spec}
        result = load_string(safe_dump(doc), source="fuzz.yaml")
        check_result(result)
        exercise(result)


# --- (b) mutations of valid resources ------------------------------------------------------

EXTRA_DOCS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: full, namespace: shop}
spec:
  hosts: [web, "*.example.com"]
  gateways: [mesh]
  exportTo: ["*"]
  http:
  - name: main
    match:
    - uri: {prefix: /api}
      headers: {x-user: {regex: "^a.*"}}
      queryParams: {v: {exact: "1"}}
      port: 9080
      sourceLabels: {app: front}
    route:
    - destination: {host: web, subset: v1, port: {number: 9080}}
      weight: 70
      headers: {request: {set: {x-a: b}}}
    - destination: {host: web, subset: v2}
      weight: 30
    timeout: 5s
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,reset"}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 1.5}}
    mirror: {host: web-shadow}
    mirrorPercentage: {value: 5}
    corsPolicy: {allowOrigins: [{exact: "https://a.example"}], allowMethods: [GET]}
  - redirect: {uri: /new, redirectCode: 302}
  tcp:
  - match: [{port: 3306}]
    route: [{destination: {host: db, port: {number: 3306}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 1s}
      http: {http1MaxPendingRequests: 5, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 2, interval: 5s, baseEjectionTime: 30s}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}, ports: {http: 8081}, weight: 2}
  - {address: 10.0.0.2, labels: {version: v2}, locality: eu/west/a}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-front, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/front]}}]
    to: [{operation: {methods: [GET], paths: [/api/*]}}]
    when: [{key: "request.headers[x-user]", values: [alice]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
"""


def _seed_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(BOOKINFO.glob("*.yaml")):
        if path.name != "mesh.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    docs.extend(d for d in yaml.safe_load_all(EXTRA_DOCS) if d)
    return docs


SEEDS = _seed_documents()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


MUTATIONS = ["delete", "replace", "unknown_key", "number", "string", "duplicate", "empty"]


def mutate(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    path = data.draw(st.sampled_from(_paths(doc)[1:]), label="path")
    parent, key = _get(doc, path[:-1]), path[-1]
    value = parent[key]
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    if kind == "delete":
        del parent[key]
    elif kind == "replace":
        parent[key] = data.draw(STRUCTURES, label="new value")
    elif kind == "unknown_key":
        target = value if isinstance(value, dict) else parent
        if isinstance(target, dict):
            target[data.draw(KEYS, label="key")] = data.draw(SCALARS, label="value")
    elif kind == "number":
        parent[key] = data.draw(st.sampled_from(
            [-1, -5, 0, 2**31, 2**63, 10**30, -(10**30), 65536, math.inf, math.nan, 0.5,
             True]), label="number")
    elif kind == "string":
        parent[key] = data.draw(st.text(max_size=30) | st.sampled_from(
            ["", " ", "*", "-1s", "1x", "a" * 300, "UPPER", "../..", "\u00e9", "0"]),
            label="string")
    elif kind == "duplicate" and isinstance(value, list) and value:
        value.append(copy.deepcopy(value[0]))
    elif kind == "empty":
        parent[key] = type(value)() if isinstance(value, (dict, list, str)) else None
    return doc


@FUZZ
@given(st.data())
def test_mutated_resources_never_raise(data: st.DataObject) -> None:
    docs = [mutate(d, data) if data.draw(st.booleans(), label="mutate?") else d
            for d in data.draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=4,
                                        unique_by=id), label="docs")]
    text = yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True)
    result = load_string(text, source="mutated.yaml", namespace="default")
    check_result(result)
    exercise(result)


@FUZZ
@given(st.data())
def test_single_mutation_of_each_seed_never_raises(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(SEEDS), label="seed")
    mutated = mutate(mutate(seed, data), data)
    result = load_string(safe_dump(mutated), source="mutated.yaml")
    check_result(result)
    exercise(result)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_load_config_only_raises_config_error(fuzz_dir: Path, data: st.DataObject) -> None:
    docs = [mutate(d, data) for d in data.draw(
        st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3), label="docs")]
    path = fuzz_dir / "config.yaml"
    raw = data.draw(st.booleans(), label="raw text?")
    if raw:
        path.write_text(data.draw(YAMLISH, label="text"), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert any(d.is_error for d in exc.diagnostics)
        assert str(exc)
    else:
        assert all(not w.is_error for w in config.warnings)
        Snapshot(config).view("default")
