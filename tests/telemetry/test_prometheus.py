"""The /metrics endpoints over real sockets on 127.0.0.1: the standalone server, the
WSGI app under wsgiref, and the ASGI app driven with a minimal scope."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
from collections.abc import Iterator, MutableMapping
from dataclasses import replace
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from meshsdk.telemetry.labels import DURATION_BUCKETS_MS, LABEL_NAMES, label_dict
from meshsdk.telemetry.metrics import PrometheusMetrics, request_size, response_size
from meshsdk.telemetry.prometheus import (
    ISTIO_PROMETHEUS_PORT,
    MetricsServer,
    metrics_asgi_app,
    metrics_wsgi_app,
    serve_metrics,
)
from meshsdk.telemetry.record import CallRecord, Peer, Service

RECORD = CallRecord(
    reporter="destination", start_time=1_700_000_000.0, duration=0.0305, method="GET",
    path="/details/0", authority="details:9080", status=200, bytes_sent=178,
    request_headers=(("user-agent", "curl/8.5.0"),),
    response_headers=(("content-type", "application/json"),),
    source=Peer(workload="productpage-v1", namespace="default",
                canonical_service="productpage", canonical_revision="v1"),
    destination=Peer(workload="details-v1", namespace="default",
                     canonical_service="details", canonical_revision="v1"),
    service=Service(host="details.default.svc.cluster.local", name="details",
                    namespace="default"),
    connection_security_policy="mutual_tls")
FAILED = replace(RECORD, status=503, response_flags="UF", duration=0.001, bytes_sent=91)

FAMILIES = ("istio_requests", "istio_request_duration_milliseconds", "istio_request_bytes",
            "istio_response_bytes")


@pytest.fixture
def registry() -> CollectorRegistry:
    sink = PrometheusMetrics()
    sink.record(RECORD)
    sink.record(RECORD)
    sink.record(FAILED)
    return sink.registry


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    server = serve_metrics(registry, port=0)
    yield server
    server.close()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def wsgi_url(registry: CollectorRegistry) -> Iterator[str]:
    httpd: WSGIServer = make_server("127.0.0.1", 0, metrics_wsgi_app(registry),
                                    handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def parse(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def check_families(families: dict[str, Metric]) -> None:
    """The scrape holds Istio's four families with the records' labels and values."""
    assert set(FAMILIES) <= set(families)
    counter = families["istio_requests"]
    assert counter.type == "counter"
    assert {s.name for s in counter.samples} == {"istio_requests_total"}
    by_code = {s.labels["response_code"]: s for s in counter.samples}
    assert by_code["200"].value == 2 and by_code["503"].value == 1
    assert by_code["200"].labels == label_dict(RECORD)
    assert set(by_code["503"].labels) == set(LABEL_NAMES)
    assert by_code["503"].labels["response_flags"] == "UF"
    assert by_code["200"].labels["reporter"] == "destination"
    assert by_code["200"].labels["connection_security_policy"] == "mutual_tls"
    expected_sum = {"istio_request_duration_milliseconds": 2 * 30.5,
                    "istio_request_bytes": 2 * request_size(RECORD),
                    "istio_response_bytes": 2 * response_size(RECORD)}
    for name in FAMILIES[1:]:
        family = families[name]
        assert family.type == "histogram"
        ok = [s for s in family.samples if s.labels.get("response_code") == "200"]
        buckets = [s for s in ok if s.name == name + "_bucket"]
        assert [float(s.labels["le"]) for s in buckets] == [*DURATION_BUCKETS_MS, math.inf]
        assert all(set(s.labels) == {*LABEL_NAMES, "le"} for s in buckets)
        assert buckets[-1].value == 2
        (count,) = [s.value for s in ok if s.name == name + "_count"]
        (total,) = [s.value for s in ok if s.name == name + "_sum"]
        assert count == 2
        assert total == pytest.approx(expected_sum[name])
    duration = families["istio_request_duration_milliseconds"]
    le = {s.labels["le"]: s.value for s in duration.samples
          if s.name.endswith("_bucket") and s.labels["response_code"] == "200"}
    assert le["25.0"] == 0 and le["50.0"] == 2     # 30.5 ms falls in (25, 50]


def test_serve_metrics_on_a_free_port(server: MetricsServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    response = httpx.get(server.url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    check_families(parse(response.text))


def test_istio_scrape_path_is_served_too(server: MetricsServer) -> None:
    response = httpx.get(f"http://127.0.0.1:{server.port}/stats/prometheus")
    assert response.status_code == 200
    check_families(parse(response.text))


def test_openmetrics_when_asked(server: MetricsServer) -> None:
    response = httpx.get(server.url, headers={
        "Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(response.text)}  # type: ignore[no-untyped-call]
    assert families["istio_requests"].type == "counter"
    totals = [s for s in families["istio_requests"].samples if s.name == "istio_requests_total"]
    assert sorted(s.value for s in totals) == [1, 2]
    assert families["istio_request_bytes"].type == "histogram"


def test_gzip_when_accepted(server: MetricsServer) -> None:
    response = httpx.get(server.url, headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    check_families(parse(response.text))     # httpx decodes it


def test_scrapes_see_new_records(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics()
    with serve_metrics(sink.registry, port=0) as server:
        assert "istio_requests_total{" not in httpx.get(server.url).text
        sink.record(RECORD)
        (family,) = [f for f in parse(httpx.get(server.url).text).values()
                     if f.name == "istio_requests"]
        assert [s.value for s in family.samples] == [1]


def test_close_stops_serving_and_is_idempotent(registry: CollectorRegistry) -> None:
    server = serve_metrics(registry, port=0)
    url = server.url
    assert httpx.get(url).status_code == 200
    server.close()
    server.close()
    assert "closed" in repr(server)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_context_manager_closes(registry: CollectorRegistry) -> None:
    with serve_metrics(registry, port=0, host="127.0.0.1") as server:
        url = server.url
        assert httpx.get(url).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_wildcard_host_url_points_at_loopback(registry: CollectorRegistry) -> None:
    with serve_metrics(registry, port=0, host="0.0.0.0") as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(server.url).status_code == 200


def test_default_port_is_istios() -> None:
    assert ISTIO_PROMETHEUS_PORT == 15090
    assert inspect.signature(serve_metrics).parameters["port"].default == 15090
    assert inspect.signature(serve_metrics).parameters["host"].default == "127.0.0.1"


def test_wsgi_app_under_wsgiref(wsgi_url: str) -> None:
    response = httpx.get(wsgi_url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    check_families(parse(response.text))


async def _asgi_get(app: Any, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return requests.pop(0) if requests else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/metrics", "raw_path": b"/metrics",
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    return sent


def test_asgi_app(registry: CollectorRegistry) -> None:
    app = metrics_asgi_app(registry)
    start, body = asyncio.run(_asgi_get(app, [(b"host", b"localhost")]))
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert body["type"] == "http.response.body"
    check_families(parse(body["body"].decode()))


def test_asgi_app_openmetrics(registry: CollectorRegistry) -> None:
    app = metrics_asgi_app(registry)
    start, body = asyncio.run(_asgi_get(app, [(b"accept", b"application/openmetrics-text")]))
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body["body"].decode().endswith("# EOF\n")


def test_asgi_app_answers_lifespan(registry: CollectorRegistry) -> None:
    app = metrics_asgi_app(registry)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    async def main() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    asyncio.run(main())
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                        "lifespan.shutdown.complete"]


def test_each_label_bearing_field_counts_apart_and_equal_peers_together() -> None:
    """Every record field behind a standard label separates series; equal peers that
    are other objects share one."""
    sink = PrometheusMetrics()
    twin = replace(RECORD, source=replace(RECORD.source))   # equal, another object
    other_caller = replace(RECORD, source=replace(RECORD.source, workload="reviews-v1"))
    variants = [RECORD, twin, other_caller, FAILED, replace(RECORD, grpc_status=14),
                replace(RECORD, request_protocol="grpc"),
                replace(RECORD, connection_security_policy="none"),
                replace(RECORD, reporter="source")]
    for _ in range(3):
        for record in variants:
            sink.record(record)
    text = generate_latest(sink.registry).decode()
    counts = {tuple(sorted(s.labels.items())): s.value
              for f in parse(text).values() if f.name == "istio_requests" for s in f.samples}
    expected: dict[tuple[tuple[str, str], ...], float] = {}
    for record in variants:
        key = tuple(sorted(label_dict(record).items()))
        expected[key] = expected.get(key, 0) + 3
    assert counts == expected
    assert expected[tuple(sorted(label_dict(RECORD).items()))] == 6  # RECORD and its twin
