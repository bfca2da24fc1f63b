"""Istio's request metrics from CallRecords: the OTel sink read back through the SDK's
in-memory reader, the prometheus_client sink through its own text output."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from meshsdk.telemetry.labels import DURATION_BUCKETS_MS, LABEL_NAMES, label_dict
from meshsdk.telemetry.metrics import (
    ALL_METRICS,
    DEFAULT_VIEW,
    OTHER,
    REQUEST_COUNT,
    REQUEST_DURATION,
    REQUEST_SIZE,
    RESPONSE_SIZE,
    LabelGuard,
    MetricsSink,
    MetricsView,
    OtelMetrics,
    PrometheusMetrics,
    label_name,
    request_size,
    response_size,
)
from meshsdk.telemetry.record import CallRecord, Peer, Service

NAMES = {
    "istio_requests_total", "istio_request_duration_milliseconds", "istio_request_bytes",
    "istio_response_bytes",
}
PRODUCTPAGE = Peer(workload="productpage-v1", namespace="default",
                   canonical_service="productpage", canonical_revision="v1", app="productpage",
                   version="v1", principal="spiffe://cluster.local/ns/default/sa/productpage",
                   cluster="Kubernetes")
REVIEWS = Peer(workload="reviews-v2", namespace="default", canonical_service="reviews",
               canonical_revision="v2", app="reviews", version="v2", cluster="Kubernetes")
REVIEWS_SVC = Service(host="reviews.default.svc.cluster.local", name="reviews",
                      namespace="default")


def call(**changes: Any) -> CallRecord:
    """An outbound productpage -> reviews call that succeeded in 12 ms."""
    base = CallRecord(
        reporter="source", start_time=1_700_000_000.0, duration=0.012, method="GET",
        path="/reviews/0", authority="reviews:9080", status=200, bytes_sent=295,
        request_headers=(("user-agent", "python-httpx/0.28.1"), ("accept", "*/*")),
        response_headers=(("content-type", "application/json"), ("content-length", "295")),
        response_duration=0.010, source=PRODUCTPAGE, destination=REVIEWS, service=REVIEWS_SVC)
    return replace(base, **changes)


OK = call()
UF = call(status=503, response_flags="UF", duration=0.002, bytes_sent=91,
          upstream_transport_failure_reason="connection refused")
FI = call(status=503, response_flags="FI", duration=0.0001, bytes_sent=18,
          destination=Peer(), response_headers=(("content-type", "text/plain"),))
URX = call(status=503, response_flags="URX", duration=0.3, attempts=3, bytes_sent=91)
UH = call(status=503, response_flags="UH", duration=0.0004, bytes_sent=19,
          destination=Peer())
GRPC = call(request_protocol="grpc", protocol="HTTP/2", method="POST",
            path="/reviews.Reviews/Get", status=200, grpc_status=14, duration=0.045,
            bytes_received=17, bytes_sent=5,
            request_headers=(("content-type", "application/grpc"), ("te", "trailers")),
            response_headers=(("content-type", "application/grpc"), ("grpc-status", "14")))
CASES = {"ok": OK, "UF": UF, "FI": FI, "URX": URX, "UH": UH, "grpc": GRPC}


# --- OTel -------------------------------------------------------------------------------

def make_otel(guard: LabelGuard | None = None) -> tuple[OtelMetrics, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return OtelMetrics(MeterProvider(metric_readers=[reader]), guard=guard), reader


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """metric name -> data points; also checks the metric metadata once."""
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
                if metric.name == "istio_requests_total":
                    assert isinstance(metric.data, Sum) and metric.data.is_monotonic
                    assert metric.unit == ""
                elif metric.name == "istio_request_duration_milliseconds":
                    assert metric.unit == "ms"
                else:
                    assert metric.unit == "By"
    return out


def by_code(points: list[Any]) -> dict[tuple[str, str], Any]:
    return {(p.attributes["response_code"], p.attributes["response_flags"]): p for p in points}


def test_otel_records_the_four_metrics_with_istio_labels() -> None:
    sink, reader = make_otel()
    for record in CASES.values():
        sink.record(record)
    points = otel_points(reader)
    assert set(points) == NAMES
    for name in NAMES:
        assert len(points[name]) == len(CASES)     # one series per case
        for point in points[name]:
            assert set(point.attributes) == set(LABEL_NAMES)
    counts = {tuple(sorted(p.attributes.items())): p.value for p in points["istio_requests_total"]}
    assert counts == {tuple(sorted(label_dict(r).items())): 1 for r in CASES.values()}


@pytest.mark.parametrize("case", list(CASES))
def test_otel_attributes_of_each_outcome(case: str) -> None:
    record = CASES[case]
    sink, reader = make_otel()
    sink.record(record)
    points = otel_points(reader)
    (counter,) = points["istio_requests_total"]
    assert isinstance(counter, NumberDataPoint) and counter.value == 1
    attributes = dict(counter.attributes or {})
    assert attributes == label_dict(record)
    assert attributes["reporter"] == "source"
    assert attributes["source_workload"] == "productpage-v1"
    assert attributes["destination_service"] == "reviews.default.svc.cluster.local"
    assert attributes["response_code"] == str(record.status)
    assert attributes["response_flags"] == {"ok": "-", "grpc": "-"}.get(case, case)
    if case == "grpc":
        assert attributes["request_protocol"] == "grpc"
        assert attributes["grpc_response_status"] == "14"
    else:
        assert attributes["request_protocol"] == "http"
        assert attributes["grpc_response_status"] == ""
    if case in ("FI", "UH"):   # no upstream was reached: the destination is unknown
        assert attributes["destination_workload"] == "unknown"
    (duration,) = points["istio_request_duration_milliseconds"]
    assert isinstance(duration, HistogramDataPoint)
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS_MS
    assert duration.count == 1
    assert duration.sum == pytest.approx(record.duration * 1000)
    bucket = next(i for i, b in enumerate(DURATION_BUCKETS_MS) if record.duration * 1000 <= b)
    assert duration.bucket_counts[bucket] == 1 and sum(duration.bucket_counts) == 1
    (req,) = points["istio_request_bytes"]
    (resp,) = points["istio_response_bytes"]
    assert tuple(req.explicit_bounds) == DURATION_BUCKETS_MS
    assert tuple(resp.explicit_bounds) == DURATION_BUCKETS_MS
    assert req.sum == request_size(record) and resp.sum == response_size(record)
    assert dict(req.attributes) == dict(resp.attributes) == attributes


def test_otel_counts_and_sums_accumulate() -> None:
    sink, reader = make_otel()
    for _ in range(3):
        sink.record(OK)
    sink.record(replace(OK, duration=2.0))
    sink.record(UF)
    points = otel_points(reader)
    counts = by_code(points["istio_requests_total"])
    assert counts[("200", "-")].value == 4 and counts[("503", "UF")].value == 1
    duration = by_code(points["istio_request_duration_milliseconds"])[("200", "-")]
    assert duration.count == 4
    assert duration.sum == pytest.approx(3 * 12 + 2000)
    assert duration.bucket_counts[DURATION_BUCKETS_MS.index(25)] == 3   # 12 ms <= 25
    assert duration.bucket_counts[DURATION_BUCKETS_MS.index(2500)] == 1  # 2000 ms <= 2500


def test_sizes_count_headers_like_envoy() -> None:
    # body + pseudo-headers (":method" "GET", ":path" "/reviews/0", ":authority"
    # "reviews:9080", ":scheme" "http") + name/value lengths, no separators
    pseudo = (7 + 3) + (5 + 10) + (10 + 12) + (7 + 4)
    headers = (10 + 19) + (6 + 3)
    assert request_size(OK) == 0 + pseudo + headers
    assert request_size(replace(OK, bytes_received=100)) == 100 + pseudo + headers
    # a Host header is Envoy's :authority, counted once
    with_host = replace(OK, request_headers=(*OK.request_headers, ("host", "reviews:9080")))
    assert request_size(with_host) == request_size(OK)
    # ":status" "200" + content-type + content-length + body
    assert response_size(OK) == 295 + (7 + 3) + (12 + 16) + (14 + 3)
    # no response at all: no :status, no headers
    assert response_size(replace(OK, status=0, bytes_sent=0, response_headers=())) == 0


def test_default_view_and_view_values() -> None:
    assert MetricsView() == DEFAULT_VIEW
    assert DEFAULT_VIEW.enabled(REQUEST_COUNT)
    a = MetricsView(disabled=frozenset({REQUEST_SIZE}), overrides={REQUEST_COUNT: {"x": None}})
    b = MetricsView(disabled=frozenset({REQUEST_SIZE}), overrides={REQUEST_COUNT: {"x": None}})
    assert a == b and hash(a) == hash(b)
    assert not a.enabled(REQUEST_SIZE) and a.enabled(RESPONSE_SIZE)
    assert MetricsView(overrides={ALL_METRICS: {"t": lambda r: r.method}}) != MetricsView()
    source: dict[str, dict[str, Any]] = {REQUEST_COUNT: {}}
    view = MetricsView(overrides=source)
    source[REQUEST_COUNT]["late"] = None        # copied on construction: no effect
    assert "late" not in view.overrides[REQUEST_COUNT]
    # TCP selectors and customMetric names are valid Telemetry values that these sinks
    # do not record: kept, harmless
    view = MetricsView(disabled=frozenset({"TCP_SENT_BYTES", "my_custom_metric"}),
                       overrides={"my_custom_metric": {"x": None}})
    assert view.enabled(REQUEST_COUNT) and len(view.groups()) == 1
    assert view.groups()[0].names == LABEL_NAMES


def test_tag_names_become_prometheus_label_names() -> None:
    assert label_name("request_host") == "request_host"
    assert label_name("request.host") == "request_host"
    assert label_name("9lives") == "_9lives"
    assert label_name("__name__") == "_name__"
    view = MetricsView(overrides={REQUEST_COUNT: {"app.team": lambda r: "t", "": None}})
    assert dict(view.overrides[REQUEST_COUNT]).keys() == {"app_team"}
    sink, reader = make_otel()
    sink.record(OK, view)
    (counter,) = otel_points(reader)["istio_requests_total"]
    assert counter.attributes["app_team"] == "t"


def test_otel_disabled_metrics_are_not_recorded() -> None:
    sink, reader = make_otel()
    sink.record(OK, MetricsView(disabled=frozenset({REQUEST_SIZE, REQUEST_DURATION})))
    assert set(otel_points(reader)) == {"istio_requests_total", "istio_response_bytes"}
    sink, reader = make_otel()
    sink.record(OK, MetricsView(disabled=frozenset({ALL_METRICS})))
    assert otel_points(reader) == {}


def test_otel_remove_and_upsert_tags() -> None:
    sink, reader = make_otel()
    view = MetricsView(overrides={
        ALL_METRICS: {"request_host": lambda r: r.authority,
                      "destination_service": lambda r: "svc-" + r.service.name},
        REQUEST_COUNT: {"source_principal": None, "destination_principal": None,
                        "not_a_label": None},
    })
    sink.record(OK, view)
    points = otel_points(reader)
    (counter,) = points["istio_requests_total"]
    expected = {k: v for k, v in label_dict(OK).items()
                if k not in ("source_principal", "destination_principal")}
    expected.update(request_host="reviews:9080", destination_service="svc-reviews")
    assert dict(counter.attributes) == expected
    (duration,) = points["istio_request_duration_milliseconds"]
    assert duration.attributes["source_principal"] == PRODUCTPAGE.principal   # not removed
    assert duration.attributes["request_host"] == "reviews:9080"
    assert duration.attributes["destination_service"] == "svc-reviews"


def test_metric_specific_override_beats_all_metrics() -> None:
    sink, reader = make_otel()
    sink.record(OK, MetricsView(overrides={ALL_METRICS: {"team": lambda r: "a"},
                                           RESPONSE_SIZE: {"team": lambda r: "b"}}))
    points = otel_points(reader)
    assert points["istio_requests_total"][0].attributes["team"] == "a"
    assert points["istio_response_bytes"][0].attributes["team"] == "b"


def test_failing_tag_expression_reports_unknown() -> None:
    sink, reader = make_otel()

    def broken(record: CallRecord) -> str:
        raise KeyError("no such attribute")

    sink.record(OK, MetricsView(overrides={REQUEST_COUNT: {"custom": broken}}))
    (counter,) = otel_points(reader)["istio_requests_total"]
    assert counter.attributes["custom"] == "unknown"


def test_otel_guard_bounds_destination_service_values() -> None:
    guard = LabelGuard()
    sink, reader = make_otel(guard)
    for i in range(1500):
        sink.record(replace(OK, service=Service(host=f"host-{i}.example.com",
                                                name=f"host-{i}.example.com")))
    points = otel_points(reader)["istio_requests_total"]
    hosts = {p.attributes["destination_service"] for p in points}
    assert len(hosts) == 1000 + 1 and OTHER in hosts
    other = [p for p in points if p.attributes["destination_service"] == OTHER]
    assert sum(p.value for p in other) == 500
    assert sum(p.value for p in points) == 1500
    assert guard.overflowed["destination_service"] == 500
    assert guard.overflowed["destination_service_name"] == 500


def test_guard_series_bound_folds_into_all_other_series() -> None:
    guard = LabelGuard(max_values_per_label=100, max_series_per_metric=10)
    sink, reader = make_otel(guard)
    for i in range(25):
        sink.record(replace(OK, path=f"/p/{i}", source=replace(PRODUCTPAGE, workload=f"w{i}")))
    points = otel_points(reader)["istio_requests_total"]
    assert len(points) == 11
    folded = [p for p in points if p.attributes["source_workload"] == OTHER]
    assert len(folded) == 1
    assert set(folded[0].attributes.values()) == {OTHER}
    assert folded[0].value == 15
    assert guard.series_overflowed == {m: 15 for m in
                                       (REQUEST_COUNT, REQUEST_DURATION, REQUEST_SIZE,
                                        RESPONSE_SIZE)}
    # values already admitted keep working
    sink.record(replace(OK, source=replace(PRODUCTPAGE, workload="w3")))
    points = otel_points(reader)["istio_requests_total"]
    assert [p.value for p in points if p.attributes["source_workload"] == "w3"] == [2]


def test_guard_validates_and_is_configurable() -> None:
    with pytest.raises(ValueError):
        LabelGuard(max_values_per_label=0)
    guard = LabelGuard(max_values_per_label=2)
    names = ("a", "b")
    assert guard.admit((REQUEST_COUNT,), names, ("1", "x")) == ("1", "x")
    assert guard.admit((REQUEST_COUNT,), names, ("2", "x")) == ("2", "x")
    assert guard.admit((REQUEST_COUNT,), names, ("3", "x")) == (OTHER, "x")
    assert guard.admit((REQUEST_COUNT,), names, ("1", "x")) == ("1", "x")
    assert guard.overflowed == {"a": 1}


def test_global_meter_provider_is_a_noop_by_default() -> None:
    # no SDK installed globally in the tests: recording must simply not fail
    OtelMetrics().record(OK)


def test_sinks_satisfy_the_protocol() -> None:
    sinks: list[MetricsSink] = [make_otel()[0], PrometheusMetrics()]
    for sink in sinks:
        sink.record(OK)


# --- prometheus_client ------------------------------------------------------------------

def scrape(registry: CollectorRegistry) -> dict[str, Metric]:
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family: Metric, suffix: str = "") -> list[Sample]:
    return [s for s in family.samples if s.name == family.name + suffix]


def test_prometheus_exposes_the_four_families() -> None:
    sink = PrometheusMetrics()
    for record in CASES.values():
        sink.record(record)
    families = scrape(sink.registry)
    assert set(families) == {"istio_requests", "istio_request_duration_milliseconds",
                             "istio_request_bytes", "istio_response_bytes"}
    counter = families["istio_requests"]
    assert counter.type == "counter"
    totals = samples(counter, "_total")
    assert len(totals) == len(CASES) == len(counter.samples)   # no _created samples
    assert {tuple(sorted(s.labels.items())): s.value for s in totals} == {
        tuple(sorted(label_dict(r).items())): 1.0 for r in CASES.values()}
    for name in ("istio_request_duration_milliseconds", "istio_request_bytes",
                 "istio_response_bytes"):
        family = families[name]
        assert family.type == "histogram"
        for record in CASES.values():
            labels = label_dict(record)
            buckets = [s for s in samples(family, "_bucket")
                       if {k: v for k, v in s.labels.items() if k != "le"} == labels]
            assert [float(s.labels["le"]) for s in buckets] == [*DURATION_BUCKETS_MS, math.inf]
            assert buckets[-1].value == 1
            assert [s.value for s in samples(family, "_count") if s.labels == labels] == [1]
            (total,) = [s.value for s in samples(family, "_sum") if s.labels == labels]
            expected = {"istio_request_duration_milliseconds": record.duration * 1000,
                        "istio_request_bytes": request_size(record),
                        "istio_response_bytes": response_size(record)}[name]
            assert total == pytest.approx(expected)


def test_prometheus_buckets_are_cumulative() -> None:
    sink = PrometheusMetrics()
    for duration in (0.0003, 0.012, 0.012, 2.0, 9000.0):   # 9000 s: beyond the last bound
        sink.record(replace(OK, duration=duration))
    family = scrape(sink.registry)["istio_request_duration_milliseconds"]
    cumulative = {float(s.labels["le"]): s.value for s in samples(family, "_bucket")}
    assert cumulative[0.5] == 1 and cumulative[10] == 1 and cumulative[25] == 3
    assert cumulative[2500] == 4 and cumulative[3600000] == 4 and cumulative[math.inf] == 5
    (count,) = samples(family, "_count")
    (total,) = samples(family, "_sum")
    assert count.value == 5
    assert total.value == pytest.approx(0.3 + 12 + 12 + 2000 + 9_000_000)


def test_prometheus_disabled_removed_and_custom_tags() -> None:
    sink = PrometheusMetrics()
    sink.record(OK)
    sink.record(UF, MetricsView(
        disabled=frozenset({REQUEST_SIZE}),
        overrides={ALL_METRICS: {"request_host": lambda r: r.authority,
                                 "source_principal": None}}))
    families = scrape(sink.registry)
    totals = {s.labels["response_code"]: s.labels for s in samples(families["istio_requests"],
                                                                   "_total")}
    # one family over the union of label names; absent labels are empty
    assert totals["503"]["request_host"] == "reviews:9080"
    assert totals["503"]["source_principal"] == ""
    assert totals["200"]["request_host"] == ""
    assert totals["200"]["source_principal"] == PRODUCTPAGE.principal
    assert set(totals["200"]) == {*LABEL_NAMES, "request_host"}
    request_codes = {s.labels["response_code"]
                     for s in samples(families["istio_request_bytes"], "_count")}
    assert request_codes == {"200"}   # REQUEST_SIZE disabled for the 503
    response_codes = {s.labels["response_code"]
                      for s in samples(families["istio_response_bytes"], "_count")}
    assert response_codes == {"200", "503"}


def test_prometheus_merges_series_that_expose_the_same_labels() -> None:
    sink = PrometheusMetrics()
    sink.record(OK, MetricsView(overrides={REQUEST_COUNT: {"source_principal": None}}))
    sink.record(OK, MetricsView(overrides={REQUEST_COUNT: {"source_principal": lambda r: ""}}))
    text = generate_latest(sink.registry).decode()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("istio_requests_total{")]
    assert line.endswith(" 2.0")


def test_prometheus_guard_bounds_destination_service_values() -> None:
    # a smaller bound than the OTel test's default 1000: prometheus_client writes and
    # parses 25-label lines slowly (~67 lines per label set), which is not under test
    sink = PrometheusMetrics(guard=LabelGuard(max_values_per_label=100))
    for i in range(150):
        sink.record(replace(OK, service=Service(host=f"host-{i}.example.com")))
    text = generate_latest(sink.registry).decode()
    counter = "\n".join(ln for ln in text.splitlines() if ln.startswith(
        ("# HELP istio_requests_total", "# TYPE istio_requests_total", "istio_requests_total")))
    (family,) = text_string_to_metric_families(counter + "\n")
    hosts = {s.labels["destination_service"]: s.value for s in samples(family, "_total")}
    assert len(hosts) == 101
    assert hosts[OTHER] == 50
    assert sink.guard.overflowed["destination_service"] == 50
    assert text.count('istio_request_duration_milliseconds_count{') == 101


def test_prometheus_registry_is_private_and_clashes_are_refused() -> None:
    from prometheus_client import REGISTRY

    sink = PrometheusMetrics()
    assert sink.registry is not REGISTRY
    assert b"istio_requests" not in generate_latest(REGISTRY)
    shared = CollectorRegistry()
    PrometheusMetrics(shared)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusMetrics(shared)


def test_prometheus_empty_families_have_no_samples() -> None:
    families = scrape(PrometheusMetrics().registry)
    assert all(not f.samples for f in families.values())


def test_prometheus_concurrent_records_are_all_counted() -> None:
    sink = PrometheusMetrics()
    records = list(CASES.values())

    def work() -> None:
        for i in range(600):
            sink.record(records[i % len(records)])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    families = scrape(sink.registry)
    assert sum(s.value for s in samples(families["istio_requests"], "_total")) == 4800
    assert sum(s.value for s in samples(families["istio_response_bytes"], "_count")) == 4800
