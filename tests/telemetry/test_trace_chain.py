"""One trace across A -> B -> C on real sockets, with OpenTelemetry's SDK exporting
to memory: A is this test sending W3C or B3 headers, B is a real HTTP server whose
handler runs inside ``Telemetry.inbound`` and calls C with ``mesh.client()``, C is a
real upstream that records what it received."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshsdk.mesh import Mesh
from meshsdk.telemetry.recorder import Telemetry, current_request_id
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.upstream import Upstream, respond, wait_until
from meshsdk.workload import Workload

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
A_SPAN = "00f067aa0ba902b7"
B_WORKLOAD = Workload("b-v1", "default", {"app": "b", "version": "v1"}, "b")


class Chain:
    """B (server + mesh client) in front of C (upstream), spans of B in ``exporter``."""

    def __init__(self, c: Upstream, sampling: float = 1.0) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.telemetry = Telemetry(B_WORKLOAD, tracer_provider=provider,
                                   rng=random.Random(3), otel_metrics=False)
        telemetry_yaml = f"""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing: [{{randomSamplingPercentage: {sampling}}}]
"""
        self.mesh = Mesh(config_from_yaml(service_entry("c", [(c, {"version": "v1"})]),
                                          telemetry_yaml),
                         B_WORKLOAD, telemetry=self.telemetry)
        self.client = self.mesh.client()
        chain = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                headers = [(k.lower(), v) for k, v in self.headers.items()]
                call = chain.telemetry.inbound("GET", "http", self.headers["host"],
                                               self.path, headers)
                with call:
                    downstream = chain.client.get("http://c.default.svc.cluster.local/c")
                    chain.seen_request_id = current_request_id()
                body = downstream.content
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                call.finish(200, bytes_sent=len(body))

        self.seen_request_id: str | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/b"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.client.close()
        self.mesh.close()

    def spans(self, expected: int = 0) -> dict[SpanKind, ReadableSpan]:
        """B's finished spans; waits for ``expected`` of them (B ends its server span
        after writing the response, so the caller can be faster than B)."""
        wait_until(lambda: len(self.exporter.get_finished_spans()) >= expected)
        return {s.kind: s for s in self.exporter.get_finished_spans()}


@pytest.fixture
def c() -> Iterator[Upstream]:
    with Upstream("c", respond(200, "from c")) as up:
        yield up


@pytest.fixture
def chain(c: Upstream) -> Iterator[Chain]:
    ch = Chain(c)
    yield ch
    ch.close()


def _span_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


@pytest.mark.parametrize("a_headers", [
    {"traceparent": f"00-{TRACE}-{A_SPAN}-01"},
    {"x-b3-traceid": TRACE, "x-b3-spanid": A_SPAN, "x-b3-sampled": "1"},
    {"b3": f"{TRACE}-{A_SPAN}-1"},
], ids=["w3c", "b3-multi", "b3-single"])
def test_one_trace_through_a_b_c(chain: Chain, c: Upstream, a_headers: dict[str, str]) -> None:
    r = httpx.get(chain.url, headers={**a_headers, "x-request-id": "rid-1"})
    assert r.status_code == 200 and r.text == "from c"

    spans = chain.spans(expected=2)
    server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert server.context is not None and client.context is not None
    # B's server span is A's child, B's client span is the server span's child
    assert f"{server.context.trace_id:032x}" == TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == A_SPAN
    assert client.context.trace_id == server.context.trace_id
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    # C received the client span as its parent, in both formats, with the request id
    got = c.requests[0].headers
    assert got["traceparent"] == f"00-{TRACE}-{_span_hex(client)}-01"
    assert got["x-b3-traceid"] == TRACE and got["x-b3-spanid"] == _span_hex(client)
    assert got["x-b3-parentspanid"] == _span_hex(server)
    assert got["x-b3-sampled"] == "1"
    assert got["x-request-id"] == "rid-1" and chain.seen_request_id == "rid-1"
    # attributes: OTel HTTP conventions and the mesh's own
    attrs = client.attributes or {}
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.response.status_code"] == 200
    assert attrs["mesh.destination.service"] == "c.default.svc.cluster.local"
    assert attrs["mesh.response_flags"] == "-" and attrs["mesh.attempts"] == 1
    assert attrs["network.peer.address"] == "127.0.0.1" and attrs["network.peer.port"] == c.port
    assert client.name == "c.default.svc.cluster.local:80/*"
    assert (server.attributes or {})["http.response.status_code"] == 200


def test_unsampled_caller_is_honoured_and_still_propagated(chain: Chain, c: Upstream) -> None:
    httpx.get(chain.url, headers={"traceparent": f"00-{TRACE}-{A_SPAN}-00"})
    assert chain.spans() == {}  # nothing recorded: the caller decided "not sampled"
    got = c.requests[0].headers
    _version, trace_id, span_id, flags = got["traceparent"].split("-")
    assert trace_id == TRACE and flags == "00" and span_id != A_SPAN
    assert got["x-b3-sampled"] == "0"
    assert len(got["x-request-id"]) == 36  # generated: the caller sent none


def test_no_caller_context_samples_at_the_configured_rate(c: Upstream) -> None:
    ch = Chain(c, sampling=0.0)
    try:
        for _ in range(20):
            httpx.get(ch.url)
        assert ch.spans() == {}
        traces = {r.headers["traceparent"].split("-")[1] for r in c.requests}
        assert len(traces) == 20  # each request still starts its own trace downstream
    finally:
        ch.close()
    c.reset_hits()
    ch = Chain(c, sampling=100.0)
    try:
        httpx.get(ch.url)
        spans = ch.spans(expected=2)
        assert set(spans) == {SpanKind.SERVER, SpanKind.CLIENT}
        assert spans[SpanKind.SERVER].parent is None  # the root of a new trace
    finally:
        ch.close()


def test_app_forwarded_headers_become_the_parent_without_inbound_context(
        c: Upstream) -> None:
    """Istio's model for apps with no tracing of their own: the app copies the inbound
    trace headers onto its outbound call and the mesh continues that trace."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry(B_WORKLOAD, tracer_provider=provider, otel_metrics=False)
    mesh = Mesh(config_from_yaml(service_entry("c", [(c, {})])), B_WORKLOAD, telemetry=tel)
    with mesh.client() as client:
        client.get("http://c.default.svc.cluster.local/",
                   headers={"x-b3-traceid": TRACE, "x-b3-spanid": A_SPAN, "x-b3-sampled": "1"})
    mesh.close()
    (span,) = exporter.get_finished_spans()
    assert span.context is not None and f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == A_SPAN
    got = c.requests[0].headers
    assert got["x-b3-spanid"] == _span_hex(span)  # replaced, not duplicated
    assert got["traceparent"].split("-")[2] == _span_hex(span)


def test_context_flows_through_await_and_stays_per_task(c: Upstream) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry(B_WORKLOAD, tracer_provider=provider, otel_metrics=False)
    mesh = Mesh(config_from_yaml(service_entry("c", [(c, {})])), B_WORKLOAD, telemetry=tel)

    async def handle(trace_id: str, client: httpx.AsyncClient) -> None:
        call = tel.inbound("GET", "http", "b:80", "/", [
            ("traceparent", f"00-{trace_id}-{A_SPAN}-01"), ("x-request-id", trace_id)])
        with call:
            await asyncio.sleep(0)  # let the other task interleave
            await client.get("http://c.default.svc.cluster.local/")
        call.finish(200)

    async def main() -> None:
        async with mesh.async_client() as client:
            await asyncio.gather(*(handle(f"{i:032x}", client) for i in range(1, 6)))

    asyncio.run(main())
    mesh.close()
    for req in c.requests:  # each downstream call carries its own request's trace
        assert req.headers["traceparent"].split("-")[1] == req.headers["x-request-id"]
    servers = {s.context.span_id: s for s in exporter.get_finished_spans()
               if s.kind is SpanKind.SERVER and s.context is not None}
    clients = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(servers) == 5 and len(clients) == 5
    for span in clients:
        assert span.parent is not None
        parent = servers[span.parent.span_id]
        assert parent.context is not None and span.context is not None
        assert parent.context.trace_id == span.context.trace_id


def test_retries_are_events_on_one_client_span(c: Upstream) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry(B_WORKLOAD, tracer_provider=provider, otel_metrics=False)
    flaky = Upstream("flaky", respond(503, "no")).start()
    try:
        config = config_from_yaml(
            service_entry("c", [(flaky, {})]), """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: c}
spec:
  hosts: [c.default.svc.cluster.local]
  http:
  - route: [{destination: {host: c.default.svc.cluster.local}}]
    retries: {attempts: 2, retryOn: 5xx}
""")
        mesh = Mesh(config, B_WORKLOAD, telemetry=tel)
        with mesh.client() as client:
            r = client.get("http://c.default.svc.cluster.local/",
                           headers={"traceparent": f"00-{TRACE}-{A_SPAN}-01"})
        mesh.close()
    finally:
        flaky.stop()
    assert r.status_code == 503
    (span,) = exporter.get_finished_spans()
    events = [e for e in span.events if e.name == "mesh.attempt"]
    assert len(events) == 3 and flaky.hits == 3
    assert [e.attributes["http.response.status_code"] for e in events  # type: ignore[index]
            ] == [503, 503, 503]
    attrs = span.attributes or {}
    assert attrs["mesh.attempts"] == 3 and attrs["mesh.response_flags"] == "URX"
    assert span.status.is_ok is False


def test_an_unsampled_server_span_keeps_the_callers_trace_and_one_context() -> None:
    """The span of an unsampled request builds its SpanContext when first asked (after
    the response, usually): the ids are fixed when it starts, the caller's trace id,
    state and decision are kept, every read gives the same context, and the record
    carries those ids."""
    tel = Telemetry(B_WORKLOAD, rng=random.Random(5), otel_metrics=False)
    call = tel.inbound("GET", "http", "b:80", "/", [
        ("traceparent", f"00-{TRACE}-{A_SPAN}-00"), ("tracestate", "vendor=1")])
    assert call.span is not None and not call.span.is_recording()
    first = call.span.get_span_context()
    assert call.span.get_span_context() is first
    assert f"{first.trace_id:032x}" == TRACE and f"{first.span_id:016x}" != A_SPAN
    assert not first.trace_flags.sampled and first.trace_state.get("vendor") == "1"
    with call:
        headers = dict(call.trace_headers)
    assert headers["traceparent"] == f"00-{TRACE}-{first.span_id:016x}-00"
    record = call.finish(200)
    assert (record.trace_id, record.span_id) == (TRACE, f"{first.span_id:016x}")


def test_a_sampled_server_span_names_the_client_address_and_port() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry(B_WORKLOAD, tracer_provider=provider, otel_metrics=False)
    call = tel.inbound("GET", "http", "b:80", "/", [
        ("traceparent", f"00-{TRACE}-{A_SPAN}-01")], remote_address=("::1", 50123),
        local_address=("::1", 80))
    record = call.finish(200)
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert (span.attributes["client.address"], span.attributes["client.port"]) == ("::1", 50123)
    # the record writes the addresses out as Envoy logs them
    assert record.downstream_remote_address == "[::1]:50123"
    assert record.downstream_local_address == record.upstream_host == "[::1]:80"
