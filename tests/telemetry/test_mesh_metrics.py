"""Istio's request metrics end to end: calls through the real mesh clients (sync and
async) to real servers on 127.0.0.1, recorded through OpenTelemetry's SDK into an
``InMemoryMetricReader`` or scraped from ``mesh.serve_metrics()``.

Every outcome a caller can meet (upstream answer, local reply, retries, fault, blocked
or passed-through host) is checked label by label against what Istio's sidecar reports
with ``reporter=source``; the label set is always exactly ``LABEL_NAMES``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from prometheus_client.parser import text_string_to_metric_families

from meshsdk.errors import ConfigError, UsageError
from meshsdk.mesh import Mesh
from meshsdk.telemetry.labels import BYTES_BUCKETS, DURATION_BUCKETS_MS, LABEL_NAMES
from meshsdk.telemetry.metrics import OtelMetrics, PrometheusMetrics
from meshsdk.telemetry.record import Peer, Service
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.testing.builders import config_from_yaml
from meshsdk.testing.clock import FakeClock
from meshsdk.testing.sandbox import MeshFaults, MeshTestConfig
from meshsdk.testing.upstream import Reply, Upstream, fail_every, free_port, respond, script
from meshsdk.workload import Workload
from tests.dataplane.harness import AsyncCaller, Caller, Got, SyncCaller

WORKLOAD = Workload("productpage-v1", "default", {"app": "productpage", "version": "v1"},
                    "bookinfo-productpage")
FQDN = "reviews.default.svc.cluster.local"
URL = "http://reviews/r"
# endpoint labels: app (added by the sandbox), version and Istio's canonical names
LABELS = {"version": "v2", "service.istio.io/canonical-name": "reviews-canonical",
          "service.istio.io/canonical-revision": "r2"}

REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
REQUEST_BYTES = "istio_request_bytes"
RESPONSE_BYTES = "istio_response_bytes"
HISTOGRAMS = (DURATION, REQUEST_BYTES, RESPONSE_BYTES)

SOURCE = {
    "reporter": "source",
    "source_workload": "productpage-v1", "source_workload_namespace": "default",
    "source_principal": "unknown", "source_app": "productpage", "source_version": "v1",
    "source_canonical_service": "productpage", "source_canonical_revision": "v1",
    "source_cluster": "Kubernetes",
}
# the endpoint that answered, described by its labels
DEST_ENDPOINT = {
    "destination_workload": "unknown", "destination_workload_namespace": "unknown",
    "destination_principal": "unknown", "destination_app": "reviews",
    "destination_version": "v2", "destination_service": FQDN,
    "destination_service_name": "reviews", "destination_service_namespace": "default",
    "destination_canonical_service": "reviews-canonical",
    "destination_canonical_revision": "r2", "destination_cluster": "Kubernetes",
}
# the service is known but no endpoint answered (local reply: fault, UH, NR, UF)
DEST_SERVICE_ONLY = {
    **DEST_ENDPOINT, "destination_app": "unknown", "destination_version": "unknown",
    "destination_canonical_service": "unknown", "destination_canonical_revision": "latest",
    "destination_cluster": "unknown",
}


def _outside(name: str) -> dict[str, str]:
    """A host outside the registry (blocked or passed through)."""
    return {**DEST_SERVICE_ONLY, "destination_service": "127.0.0.1",
            "destination_service_name": name, "destination_service_namespace": "unknown"}


def mesh_configmap(body: str) -> str:
    """Istio's ``istio`` ConfigMap carrying ``body`` as its MeshConfig."""
    return ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}"
            "\ndata:\n  mesh: |\n" + "".join(f"    {line}\n" for line in body.splitlines()))


REGISTRY_ONLY = mesh_configmap("outboundTrafficPolicy: {mode: REGISTRY_ONLY}")


def vs(extra: str = "", match: str = "") -> str:
    """A VirtualService for reviews; ``extra`` adds fields to its one route."""
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews}}}}]
{match}{extra}
"""


SUBSET_WITHOUT_ENDPOINTS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v9, labels: {version: v9}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v9}}]
"""

ONLY_PREFIX_ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /only}}]
    route: [{destination: {host: reviews}}]
"""


# --- reading the OpenTelemetry SDK --------------------------------------------------------


class Metrics:
    """An OTel SDK meter provider exporting to memory, and readers for Istio's metrics."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        out: list[Any] = []
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        out.extend(metric.data.data_points)
        return out

    def requests(self) -> list[tuple[dict[str, Any], int]]:
        """``istio_requests_total`` as (attributes, count) per series."""
        out = []
        for p in self.points(REQUESTS):
            assert isinstance(p, NumberDataPoint)
            out.append((dict(p.attributes or {}), int(p.value)))
        return out

    def histogram(self, name: str) -> list[HistogramDataPoint]:
        points = self.points(name)
        assert all(isinstance(p, HistogramDataPoint) for p in points)
        return points


@pytest.fixture
def mesh_workload() -> Workload:
    """The calling workload of the plugin's meshes (``mesh_config`` builds with it)."""
    return WORKLOAD


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.provider.shutdown()


@pytest.fixture
def tel(metrics: Metrics) -> Telemetry:
    return Telemetry(WORKLOAD, meter_provider=metrics.provider, rng=random.Random(5))


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Connect = Callable[[Mesh], Caller]


@pytest.fixture
def connect(mode: str) -> Iterator[Connect]:
    """``connect(mesh)``: a caller on the sync or the async client (per ``mode``)."""
    callers: list[Caller] = []

    def make(mesh: Mesh) -> Caller:
        caller: Caller = SyncCaller(mesh) if mode == "sync" else AsyncCaller(mesh)
        callers.append(caller)
        return caller

    yield make
    for caller in callers:
        caller.close()


@pytest.fixture
def outside() -> Iterator[Callable[[], Upstream]]:
    """``outside()``: a real server that is not in the mesh's registry."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(Upstream("outside"))


# --- one call, every outcome ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    setup: Callable[[MeshTestConfig, Callable[[], Upstream]], str]  # -> the URL to call
    status: int
    flags: str
    attempts: int
    destination: Mapping[str, str]
    unchecked: frozenset[str] = field(default_factory=frozenset)


def _ok(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.upstream("reviews", respond(200, "fine"), labels=LABELS)
    return URL


def _upstream_503(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.upstream("reviews", respond(503, "down"), labels=LABELS)
    return URL


def _fault_abort(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.upstream("reviews", labels=LABELS)
    MeshFaults(env).abort("reviews", 503)
    return URL


def _retries_exhausted(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.upstream("reviews", respond(503, "down"), labels=LABELS)
    env.add(vs("    retries: {attempts: 2, retryOn: 5xx}"))
    return URL


def _retried_then_ok(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.upstream("reviews", script(Reply(503, b"once"), Reply(200, b"ok")), labels=LABELS)
    env.add(vs("    retries: {attempts: 2, retryOn: 5xx}"))
    return URL


def _no_healthy_upstream(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.upstream("reviews", labels=LABELS)
    env.add(SUBSET_WITHOUT_ENDPOINTS)
    return URL


def _refused(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.endpoint("reviews", free_port(), labels=LABELS)
    return URL


def _no_route(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.upstream("reviews", labels=LABELS)
    env.add(ONLY_PREFIX_ROUTE)
    return URL


def _registry_only(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.upstream("reviews", labels=LABELS)
    env.add(REGISTRY_ONLY)
    return f"http://127.0.0.1:{outside().port}/x"


def _passthrough(env: MeshTestConfig, outside: Callable[[], Upstream]) -> str:
    env.upstream("reviews", labels=LABELS)
    return f"http://127.0.0.1:{outside().port}/x"


CASES = {
    "success": Case(_ok, 200, "-", 1, DEST_ENDPOINT),
    "upstream-503": Case(_upstream_503, 503, "-", 1, DEST_ENDPOINT),
    "fault-abort": Case(_fault_abort, 503, "FI", 0, DEST_SERVICE_ONLY),
    "retries-exhausted": Case(_retries_exhausted, 503, "URX", 3, DEST_ENDPOINT),
    # Envoy counts the request once, with the final answer, however many tries it took
    "retried-then-ok": Case(_retried_then_ok, 200, "-", 2, DEST_ENDPOINT),
    "no-healthy-upstream": Case(_no_healthy_upstream, 503, "UH", 0, DEST_SERVICE_ONLY),
    # Istio's default policy retries connect failures twice: URX with the last cause
    "connection-refused": Case(_refused, 503, "URX,UF", 3, DEST_SERVICE_ONLY),
    "no-route": Case(_no_route, 404, "NR", 0, DEST_SERVICE_ONLY),
    "registry-only": Case(_registry_only, 502, "-", 0, _outside("BlackHoleCluster")),
    # destination_cluster: see test_passthrough_destination_cluster_is_unknown
    "passthrough": Case(_passthrough, 200, "-", 1, _outside("PassthroughCluster"),
                        unchecked=frozenset({"destination_cluster"})),
}


def expected_labels(case: Case, status: int) -> dict[str, str]:
    return {**SOURCE, **case.destination, "request_protocol": "http",
            "response_code": str(status), "grpc_response_status": "",
            "response_flags": case.flags, "connection_security_policy": "unknown"}


@pytest.mark.parametrize("name", list(CASES))
def test_one_call_is_one_request_with_istios_labels(
        name: str, mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics,
        connect: Connect, outside: Callable[[], Upstream]) -> None:
    case = CASES[name]
    url = case.setup(mesh_config, outside)
    got = connect(mesh_config.build(telemetry=tel)).get(url)

    assert (got.status, got.flags, got.attempts) == (case.status, case.flags, case.attempts)
    requests = metrics.requests()
    assert len(requests) == 1, requests
    attributes, count = requests[0]
    assert count == 1
    assert tuple(attributes) == LABEL_NAMES  # every label, in Istio's order
    # the metric says what the caller was told
    assert attributes["response_flags"] == got.info.response_flags
    assert attributes["response_code"] == str(got.status)
    want = expected_labels(case, got.status)
    for key in case.unchecked:
        want[key] = attributes[key]
    assert attributes == want
    # the three histograms: one observation, same series
    for histogram in HISTOGRAMS:
        (point,) = metrics.histogram(histogram)
        assert point.count == 1
        assert dict(point.attributes or {}) == attributes


def test_passthrough_destination_cluster_is_unknown(
        mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics,
        outside: Callable[[], Upstream]) -> None:
    url = _passthrough(mesh_config, outside)
    with mesh_config.build(telemetry=tel).client() as client:
        assert client.get(url).status_code == 200
    ((attributes, _),) = metrics.requests()
    assert attributes["destination_service_name"] == "PassthroughCluster"
    assert attributes["destination_workload"] == "unknown"
    assert attributes["destination_cluster"] == "unknown"


def test_outcomes_are_separate_series_counted_per_call(
        mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics,
        connect: Connect) -> None:
    mesh_config.upstream("reviews", fail_every(3), labels=LABELS)
    seen = connect(mesh_config.build(telemetry=tel)).many(9, URL)
    assert [g.status for g in seen] == [200, 200, 503] * 3
    counts = {a["response_code"]: n for a, n in metrics.requests()}
    assert counts == {"200": 6, "503": 3}
    durations = {dict(p.attributes or {})["response_code"]: p.count
                 for p in metrics.histogram(DURATION)}
    assert durations == {"200": 6, "503": 3}


# --- histograms -----------------------------------------------------------------------------


def test_histograms_use_envoys_default_buckets(
        mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics) -> None:
    mesh_config.upstream("reviews", labels=LABELS)
    with mesh_config.build(telemetry=tel).client() as client:
        client.get(URL)
    (duration,) = metrics.histogram(DURATION)
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS_MS
    for name in (REQUEST_BYTES, RESPONSE_BYTES):
        (point,) = metrics.histogram(name)
        assert tuple(point.explicit_bounds) == BYTES_BUCKETS


def test_injected_delay_is_in_the_duration_on_a_fake_clock(
        mesh_config: MeshTestConfig, metrics: Metrics, connect: Connect) -> None:
    clock = FakeClock()
    tel = Telemetry(WORKLOAD, meter_provider=metrics.provider, clock=clock.now,
                    rng=random.Random(5))
    mesh_config.upstream("reviews", labels=LABELS)
    MeshFaults(mesh_config).delay("reviews", 2.0)
    got = connect(mesh_config.build(telemetry=tel, clock=clock)).get(URL)
    assert (got.status, got.flags) == (200, "DI")
    assert clock.sleeps == [2.0]  # the fault slept on the fake clock, nothing real
    (point,) = metrics.histogram(DURATION)
    assert point.count == 1
    assert point.sum >= 2000.0
    assert point.sum == pytest.approx(2000.0)  # only fake time passed
    # in the (1000, 2500] bucket
    bucket = DURATION_BUCKETS_MS.index(2500)
    assert point.bucket_counts[bucket] == 1 and sum(point.bucket_counts) == 1
    assert dict(point.attributes or {})["response_flags"] == "DI"


def test_response_bytes_are_body_plus_header_block(
        mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics,
        connect: Connect) -> None:
    body = b"x" * 1234
    mesh_config.upstream("reviews", respond(200, body, {"x-extra": "abc"}), labels=LABELS)
    caller = connect(mesh_config.build(telemetry=tel))
    got = caller.get(URL)
    assert got.body == body
    # metrics.response_size: body + ":status" + 3 digits + len(name) + len(value) per
    # header the caller received
    response = got.headers
    assert "x-extra" in response and "content-length" in response
    headers = sum(len(k) + len(v) for k, v in _multi_items(got))
    (point,) = metrics.histogram(RESPONSE_BYTES)
    assert point.sum == len(body) + len(":status") + 3 + headers
    assert point.sum > len(body)


def _multi_items(got: Got) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in got.headers.items()]


def test_request_bytes_grow_by_the_body(
        mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics) -> None:
    mesh_config.upstream("reviews", labels=LABELS)
    with mesh_config.build(telemetry=tel).client() as client:
        client.post(URL, content=b"")
        (first,) = metrics.histogram(REQUEST_BYTES)
        client.post(URL, content=b"y" * 1000)
        (both,) = metrics.histogram(REQUEST_BYTES)
    # same headers but content-length "0" -> "1000": 1000 body bytes + 3 characters
    assert both.count == 2
    assert both.sum - first.sum == first.sum + 1003


def test_request_bytes_count_a_repeated_header_like_distinct_ones(
        mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics) -> None:
    # a header block with a repeated name is counted by a scan, one without by
    # lookups: the same sizes either way
    mesh_config.upstream("reviews", labels=LABELS)
    with mesh_config.build(telemetry=tel).client() as client:
        client.get(URL, headers=[("x-a", "1"), ("x-b", "2")])
        (first,) = metrics.histogram(REQUEST_BYTES)
        client.get(URL, headers=[("x-a", "1"), ("x-a", "2")])
        (both,) = metrics.histogram(REQUEST_BYTES)
    assert both.count == 2
    assert both.sum == 2 * first.sum


# --- gRPC -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("grpc_status", "flags", "attempts"), [
    ("5", "-", 1),       # NOT_FOUND: answered, not retried
    ("14", "URX", 3),    # UNAVAILABLE: in Istio's default retryOn, retried to exhaustion
], ids=["not-found", "unavailable"])
def test_grpc_call_is_reported_as_grpc_with_its_status(
        grpc_status: str, flags: str, attempts: int, mesh_config: MeshTestConfig,
        tel: Telemetry, metrics: Metrics, connect: Connect) -> None:
    up = mesh_config.upstream("reviews", respond(
        200, b"\x00\x00\x00\x00\x00",
        {"content-type": "application/grpc", "grpc-status": grpc_status}), labels=LABELS)
    got = connect(mesh_config.build(telemetry=tel)).request(
        "POST", "http://reviews/pkg.Reviews/Get", content=b"\x00\x00\x00\x00\x00",
        headers={"content-type": "application/grpc", "te": "trailers"})
    assert (got.status, got.flags, got.attempts) == (200, flags, attempts)
    assert up.hits == attempts
    ((attributes, count),) = metrics.requests()
    assert count == 1
    assert attributes["request_protocol"] == "grpc"
    assert attributes["grpc_response_status"] == grpc_status
    assert attributes["response_code"] == "200"
    assert attributes["response_flags"] == flags


def test_plain_http_call_has_no_grpc_status(
        mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics) -> None:
    # a grpc-status header on a non-gRPC call is not a gRPC status
    mesh_config.upstream("reviews", respond(200, "x", {"grpc-status": "3"}), labels=LABELS)
    with mesh_config.build(telemetry=tel).client() as client:
        client.get(URL)
    ((attributes, _),) = metrics.requests()
    assert (attributes["request_protocol"], attributes["grpc_response_status"]) == ("http", "")


# --- Telemetry resources --------------------------------------------------------------------

TENANT = "request.headers['x-tenant']"


def telemetry_yaml(tenant: str = TENANT, *, count_disabled: bool = True) -> str:
    disabled = """
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      disabled: true""" if count_disabled else ""
    return f"""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  metrics:
  - overrides:{disabled}
    - match: {{metric: ALL_METRICS, mode: CLIENT}}
      tagOverrides:
        request_protocol: {{operation: REMOVE}}
        tenant: {{value: "{tenant}"}}
"""


def test_disabled_request_count_and_tag_overrides(
        mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics,
        connect: Connect) -> None:
    mesh_config.upstream("reviews", labels=LABELS)
    mesh_config.add(telemetry_yaml())
    caller = connect(mesh_config.build(telemetry=tel))
    assert caller.get(URL, headers={"x-tenant": "acme"}).status == 200
    assert caller.get(URL).status == 200

    assert metrics.requests() == []  # REQUEST_COUNT is off on the client side
    for name in HISTOGRAMS:
        points = metrics.histogram(name)
        by_tenant = {dict(p.attributes or {})["tenant"]: p for p in points}
        # a header that is absent makes the expression fail: Istio's "unknown"
        assert set(by_tenant) == {"acme", "unknown"}
        for point in points:
            attributes = dict(point.attributes or {})
            assert point.count == 1
            # REMOVE dropped request_protocol; the new label comes after Istio's
            assert tuple(attributes) == (*(n for n in LABEL_NAMES if n != "request_protocol"),
                                         "tenant")
            assert attributes["reporter"] == "source"
            assert attributes["destination_service"] == FQDN
            assert attributes["response_code"] == "200"

    # mode CLIENT: the server side (reporter=destination) still counts, unchanged labels
    call = tel.inbound("GET", "http", "productpage.default.svc.cluster.local:9080", "/",
                       [("x-tenant", "acme")])
    call.finish(200)
    ((attributes, count),) = metrics.requests()
    assert count == 1 and attributes["reporter"] == "destination"
    assert tuple(attributes) == LABEL_NAMES


def test_update_with_an_invalid_tag_expression_keeps_the_previous_config(
        mesh_config: MeshTestConfig, tel: Telemetry, metrics: Metrics) -> None:
    mesh_config.upstream("reviews", labels=LABELS)
    mesh_config.add(telemetry_yaml(count_disabled=False))
    mesh = mesh_config.build(telemetry=tel)
    policy = tel.policy
    # the new config would also abort every call to reviews
    documents = [d for d in mesh_config.documents() if "kind: Telemetry" not in d]
    bad = config_from_yaml(documents, telemetry_yaml("request.headers["),
                           vs("    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}"))
    with pytest.raises(ConfigError, match=r"tagOverrides\.tenant"):
        mesh.update(bad)
    assert tel.policy is policy

    with mesh.client() as client:
        response = client.get(URL, headers={"x-tenant": "acme"})
    assert response.status_code == 200  # the abort was not applied
    ((attributes, count),) = metrics.requests()
    assert count == 1 and attributes["tenant"] == "acme"
    assert "request_protocol" not in attributes


def test_sandbox_drops_a_telemetry_config_the_mesh_rejects(
        mesh_config: MeshTestConfig, tel: Telemetry) -> None:
    mesh_config.upstream("reviews", labels=LABELS)
    mesh_config.build(telemetry=tel)
    with pytest.raises(ConfigError):
        mesh_config.add(telemetry_yaml("request.headers["))
    assert not any("request.headers[" in d for d in mesh_config.documents())
    mesh_config.build(telemetry=False)  # the config in force is still the good one


# --- the Prometheus endpoint ----------------------------------------------------------------


def test_serve_metrics_exposes_istios_names_and_counts(
        mesh_config: MeshTestConfig, connect: Connect) -> None:
    mesh_config.upstream("reviews", fail_every(3), labels=LABELS)
    mesh = mesh_config.build()  # default telemetry: no OTel SDK needed for /metrics
    with mesh.serve_metrics(port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        seen = connect(mesh).many(6, URL)
        assert [g.status for g in seen] == [200, 200, 503] * 2
        response = httpx.get(server.url, timeout=5)
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}

    requests = {s.labels["response_code"]: s.value for s in families["istio_requests"].samples
                if s.name == "istio_requests_total"}
    assert requests == {"200": 4.0, "503": 2.0}
    sample = families["istio_requests"].samples[0]
    assert set(sample.labels) == set(LABEL_NAMES)
    assert sample.labels["reporter"] == "source"
    assert sample.labels["destination_service"] == FQDN

    for name in ("istio_request_duration_milliseconds", "istio_request_bytes",
                 "istio_response_bytes"):
        family = families[name]
        assert family.type == "histogram"
        for code, calls in (("200", 4.0), ("503", 2.0)):
            samples = [s for s in family.samples if s.labels["response_code"] == code]
            buckets = [s for s in samples if s.name == f"{name}_bucket"]
            bounds = [float(s.labels["le"]) for s in buckets]
            assert bounds == [*DURATION_BUCKETS_MS, math.inf]
            assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == calls
            values = [s.value for s in buckets]
            assert values == sorted(values)  # cumulative
            (count,) = [s.value for s in samples if s.name == f"{name}_count"]
            (total,) = [s.value for s in samples if s.name == f"{name}_sum"]
            assert count == calls
            assert total > 0


def test_serve_metrics_needs_telemetry_and_telemetry_false_records_nothing(
        mesh_config: MeshTestConfig, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    recorded: list[str] = []
    for cls in (OtelMetrics, PrometheusMetrics):
        original = cls.record

        def spy(self: Any, record: Any, *args: Any, _o: Any = original,
                _n: str = cls.__name__) -> None:
            recorded.append(_n)
            _o(self, record, *args)
        monkeypatch.setattr(cls, "record", spy)

    up = mesh_config.upstream("reviews", labels=LABELS)
    # an access log is configured: telemetry=False must not write it either
    mesh_config.add(mesh_configmap("accessLogFile: /dev/stdout"))
    off = mesh_config.build(telemetry=False)
    assert off.telemetry is None
    with pytest.raises(UsageError, match="telemetry=False"):
        off.serve_metrics(port=0)
    with off.client() as client:
        assert client.get(URL).status_code == 200
    assert recorded == []
    assert capsys.readouterr().out == ""
    assert "traceparent" not in up.requests[-1].headers

    # control: the same call with telemetry on is recorded and logged
    on = mesh_config.build()
    with on.client() as client:
        assert client.get(URL).status_code == 200
    assert recorded == ["OtelMetrics"]
    assert '"GET /r HTTP/1.1" 200' in capsys.readouterr().out


# --- inbound (reporter=destination) ---------------------------------------------------------

SERVER = {
    "destination_workload": "productpage-v1", "destination_workload_namespace": "default",
    "destination_principal": "unknown", "destination_app": "productpage",
    "destination_version": "v1", "destination_canonical_service": "productpage",
    "destination_canonical_revision": "v1", "destination_cluster": "Kubernetes",
}


def test_inbound_call_reports_as_destination(tel: Telemetry, metrics: Metrics) -> None:
    gateway = Peer(workload="istio-ingressgateway", namespace="istio-system",
                   canonical_service="istio-ingressgateway", canonical_revision="latest",
                   app="istio-ingressgateway", version="unknown",
                   principal="spiffe://cluster.local/ns/istio-system/sa/gateway",
                   cluster="Kubernetes")
    call = tel.inbound("GET", "http", "productpage.default.svc.cluster.local:9080",
                       "/productpage", [("user-agent", "curl"), ("content-length", "0")],
                       source=gateway, security_policy="mutual_tls",
                       remote_address="10.0.0.7:51234", local_address="10.0.0.9:9080")
    record = call.finish(200, bytes_sent=512, response_headers=[("content-type", "text/html")])
    assert record.reporter == "destination"

    ((attributes, count),) = metrics.requests()
    assert count == 1
    assert attributes == {
        "reporter": "destination",
        "source_workload": "istio-ingressgateway", "source_workload_namespace": "istio-system",
        "source_principal": "spiffe://cluster.local/ns/istio-system/sa/gateway",
        "source_app": "istio-ingressgateway", "source_version": "unknown",
        "source_canonical_service": "istio-ingressgateway",
        "source_canonical_revision": "latest", "source_cluster": "Kubernetes",
        **SERVER,
        # over mTLS the server reports its own SPIFFE ID
        "destination_principal": "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        "destination_service": "productpage.default.svc.cluster.local",
        "destination_service_name": "productpage", "destination_service_namespace": "default",
        "request_protocol": "http", "response_code": "200", "grpc_response_status": "",
        "response_flags": "-", "connection_security_policy": "mutual_tls",
    }
    (response_bytes,) = metrics.histogram(RESPONSE_BYTES)
    assert response_bytes.sum == 512 + len(":status") + 3 + len("content-type") + len("text/html")

    # twice finished: recorded once
    call.finish(200, bytes_sent=512)
    assert metrics.requests()[0][1] == 1


def test_inbound_call_without_a_known_source(tel: Telemetry, metrics: Metrics) -> None:
    call = tel.inbound("POST", "http", "productpage.default.svc.cluster.local", "/api",
                       [("content-type", "application/grpc")],
                       service=Service("productpage.default.svc.cluster.local", "productpage",
                                       "default"))
    call.finish(200, grpc_status=7)
    ((attributes, _),) = metrics.requests()
    assert {k: v for k, v in attributes.items() if k.startswith("source_")} == {
        "source_workload": "unknown", "source_workload_namespace": "unknown",
        "source_principal": "unknown", "source_app": "unknown", "source_version": "unknown",
        "source_canonical_service": "unknown", "source_canonical_revision": "latest",
        "source_cluster": "unknown"}
    assert {k: attributes[k] for k in SERVER} == SERVER
    assert attributes["connection_security_policy"] == "none"
    assert (attributes["request_protocol"], attributes["grpc_response_status"]) == ("grpc", "7")


def test_inbound_grpc_status_and_size_come_from_one_walk_of_the_response_head(
        tel: Telemetry, metrics: Metrics) -> None:
    """The first numeric ``grpc-status`` labels the request; the head's bytes (pseudo
    headers aside) count toward ``istio_response_bytes``."""
    call = tel.inbound("POST", "http", "productpage.default.svc.cluster.local", "/pkg.S/M",
                       [("content-type", "application/grpc")])
    head = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "x"),
            ("grpc-status", "14"), ("grpc-status", "0")]
    call.finish(200, bytes_sent=5, response_headers=head)
    ((attributes, _),) = metrics.requests()
    assert attributes["grpc_response_status"] == "14"
    (response_bytes,) = metrics.histogram(RESPONSE_BYTES)
    assert response_bytes.sum == (5 + len(":status") + 3
                                  + sum(len(k) + len(v) for k, v in head[1:]))
