"""The server interceptors on real gRPC servers over mesh mTLS, called through the mesh
channel: authorization by the caller's SPIFFE ID, JWT, server span, Istio metrics and
access log, trace and deadline carried into a downstream mesh call, the client's check
of the server's identity, and certificate rotation for new connections."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from meshsdk_grpc import (
    AsyncMeshServerInterceptor,
    MeshRpcError,
    MeshServerInterceptor,
    channel,
    server_credentials,
)
from meshsdk_grpc._pool import mesh_client_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest

from meshsdk.deadline import current_deadline
from meshsdk.mesh import Mesh
from meshsdk.security.ca import MeshCA
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.jwt import TestIssuer
from meshsdk.testing.upstream import respond, wait_until
from meshsdk.workload import Workload
from tests.integrations.grpc.harness import GrpcUpstream

ISSUER = "https://issuer.test"
JWT = TestIssuer(ISSUER)
KEY = JWT.key
token = JWT.token
REVIEWS = Workload("reviews-v1", "default", {"app": "reviews", "version": "v1"}, "reviews")
PRODUCTPAGE = Workload("productpage-v1", "default", {"app": "productpage", "version": "v1"},
                       "productpage")
RATINGS_CLIENT = Workload("ratings-v1", "default", {"app": "ratings", "version": "v1"},
                          "ratings")
ACCESS = logging.getLogger("grpc-test-access")


SERVER_POLICIES = f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  mtls: {{mode: STRICT}}
---
{JWT.request_authentication("reviews", outputPayloadToHeader="x-jwt-payload")}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-callers, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/productpage]}}}}]
    to: [{{operation: {{paths: [/reviews.Reviews/*]}}}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing: [{{randomSamplingPercentage: 100}}]
  accessLogging: [{{providers: [{{name: envoy}}]}}]
"""


@dataclass
class Server:
    """``reviews``: a real gRPC server behind the interceptor, over mesh mTLS, calling
    ``ratings`` (a plain gRPC upstream) through its own mesh channel."""

    ca: MeshCA
    identity: WorkloadIdentity
    ratings: GrpcUpstream
    mesh: Mesh
    exporter: InMemorySpanExporter
    telemetry: Telemetry
    grpc_server: Any = None
    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None

    def handle(self, method: str, request: bytes, context: Any) -> bytes:
        """The app: report what it saw; ``Chain`` calls ratings through the mesh."""
        seen: dict[str, Any] = {
            "metadata": dict(context.invocation_metadata()),
            "trace_id": f"{trace.get_current_span().get_span_context().trace_id:032x}",
            "deadline": current_deadline()}
        if method.endswith("/Chain"):
            downstream = channel(self.mesh, "ratings:9080")
            try:
                seen["downstream"] = downstream.unary_unary("/ratings.Ratings/Get")(b"r")
            finally:
                downstream.close()
        self.seen.append(seen)
        return b"ok"


def _handlers(server: Server) -> Any:
    def unary(method: str) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: server.handle(method, request, context))

    def listing(request: bytes, context: Any) -> Iterator[bytes]:
        for n in range(3):
            yield server.handle("/reviews.Reviews/List", request, context) + str(n).encode()

    def chat(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for message in requests:
            yield server.handle("/reviews.Reviews/Chat", message, context) + message

    return grpc.method_handlers_generic_handler("reviews.Reviews", {
        "Get": unary("/reviews.Reviews/Get"), "Chain": unary("/reviews.Reviews/Chain"),
        "List": grpc.unary_stream_rpc_method_handler(listing),
        "Chat": grpc.stream_stream_rpc_method_handler(chat)})


def _async_handlers(server: Server) -> Any:
    def unary(method: str) -> Any:
        async def behaviour(request: bytes, context: Any) -> bytes:
            return server.handle(method, request, context)
        return grpc.unary_unary_rpc_method_handler(behaviour)

    async def listing(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for n in range(3):
            yield server.handle("/reviews.Reviews/List", request, context) + str(n).encode()

    async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for message in requests:
            yield server.handle("/reviews.Reviews/Chat", message, context) + message

    return grpc.method_handlers_generic_handler("reviews.Reviews", {
        "Get": unary("/reviews.Reviews/Get"), "Chain": unary("/reviews.Reviews/Chain"),
        "List": grpc.unary_stream_rpc_method_handler(listing),
        "Chat": grpc.stream_stream_rpc_method_handler(chat)})


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA.create()


def _start_server(ca: MeshCA, use_aio: bool) -> Server:
    identity = WorkloadIdentity.from_ca(ca, "default", "reviews")
    ratings = GrpcUpstream("ratings", respond(200, "five stars")).start()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(REVIEWS, tracer_provider=provider, otel_metrics=False,
                          access_logger=ACCESS, rng=random.Random(5))
    config = config_from_yaml(SERVER_POLICIES, service_entry(
        "ratings", [(ratings, {"version": "v1"})], port=9080, protocol="GRPC"))
    mesh = Mesh(config, REVIEWS, telemetry=telemetry)
    server = Server(ca, identity, ratings, mesh, exporter, telemetry)
    creds = server_credentials(identity)
    if not use_aio:
        grpc_server = grpc.server(ThreadPoolExecutor(max_workers=8),
                                  interceptors=[MeshServerInterceptor(mesh, port=9080)])
        grpc_server.add_generic_rpc_handlers((_handlers(server),))
        server.port = grpc_server.add_secure_port("127.0.0.1:0", creds)
        grpc_server.start()
        server.grpc_server = grpc_server
        return server
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def serve() -> None:
        aio = grpc.aio.server(interceptors=[AsyncMeshServerInterceptor(mesh, port=9080)])
        aio.add_generic_rpc_handlers((_async_handlers(server),))
        server.port = aio.add_secure_port("127.0.0.1:0", creds)
        await aio.start()
        server.grpc_server = aio
        ready.set()

    server.loop = loop
    server.thread = threading.Thread(target=loop.run_forever, daemon=True)
    server.thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    assert ready.wait(10)
    return server


def _stop_server(server: Server) -> None:
    if server.loop is not None:
        if server.grpc_server is not None:
            asyncio.run_coroutine_threadsafe(server.grpc_server.stop(0), server.loop).result(10)
        server.loop.call_soon_threadsafe(server.loop.stop)
        if server.thread is not None:
            server.thread.join(10)
        server.loop.close()
    elif server.grpc_server is not None:
        server.grpc_server.stop(0).wait(5)
    server.mesh.close()
    server.ratings.stop()
    server.identity.close()


@pytest.fixture(params=["sync", "aio"])
def server(request: pytest.FixtureRequest, ca: MeshCA) -> Iterator[Server]:
    started = _start_server(ca, request.param == "aio")
    try:
        yield started
    finally:
        _stop_server(started)


CLIENT_DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"""


@pytest.fixture
def client() -> Iterator[Callable[..., tuple[Any, Mesh]]]:
    """``client(server, workload)``: a mesh channel to ``reviews`` over mesh mTLS, as
    ``workload`` (with its own certificate from the server's CA)."""
    made: list[tuple[Any, Mesh, WorkloadIdentity]] = []

    def make(server: Server, workload: Workload = PRODUCTPAGE, *,
             expect_service_account: str = "reviews", telemetry: Telemetry | bool = False
             ) -> tuple[Any, Mesh]:
        identity = WorkloadIdentity.from_ca(server.ca, "default", workload.service_account)
        se = service_entry("reviews", [(server.port, {"version": "v1"})], port=9080,
                           protocol="GRPC", service_account=expect_service_account)
        mesh = Mesh(config_from_yaml(se, CLIENT_DR), workload, identity=identity,
                    telemetry=telemetry)
        ch = channel(mesh, "reviews:9080")
        made.append((ch, mesh, identity))
        return ch, mesh

    yield make
    for ch, mesh, identity in made:
        ch.close()
        mesh.close()
        identity.close()


def metric_lines(server: Server) -> list[str]:
    text = generate_latest(server.telemetry.prometheus().registry).decode()
    return [line for line in text.splitlines() if line.startswith("istio_requests_total{")]


def bearer() -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token()}")]


# --- authorization and authentication ------------------------------------------------------


def test_allowed_principal_gets_an_answer(server: Server, client: Callable[..., Any],
                                          caplog: pytest.LogCaptureFixture) -> None:
    server.telemetry.prometheus()  # the sink records from now on
    ch, _ = client(server)
    with caplog.at_level(logging.INFO, logger=ACCESS.name):
        assert ch.unary_unary("/reviews.Reviews/Get")(b"hi", metadata=bearer()) == b"ok"
    seen = server.seen[-1]
    assert seen["metadata"]["x-jwt-payload"]  # the JWT output the policy forwards
    lines = metric_lines(server)
    assert len(lines) == 1
    line = lines[0]
    for label in ('reporter="destination"', 'request_protocol="grpc"',
                  'grpc_response_status="0"', 'response_code="200"',
                  'source_principal="spiffe://cluster.local/ns/default/sa/productpage"',
                  'connection_security_policy="mutual_tls"',
                  'destination_workload="reviews-v1"'):
        assert label in line, line
    spans = [s for s in server.exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [s.name for s in spans] == ["/reviews.Reviews/Get"]
    assert spans[0].attributes["rpc.grpc.status_code"] == 0
    logged = [r.getMessage() for r in caplog.records if r.name == ACCESS.name]
    assert len(logged) == 1
    assert '"POST /reviews.Reviews/Get HTTP/2" 200 -' in logged[0], logged[0]


def test_disallowed_principal_is_permission_denied(
        server: Server, client: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    server.telemetry.prometheus()
    ch, _ = client(server, RATINGS_CLIENT)
    with caplog.at_level(logging.INFO, logger=ACCESS.name), \
            pytest.raises(MeshRpcError) as caught:
        ch.unary_unary("/reviews.Reviews/Get")(b"hi", metadata=bearer())
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "RBAC: access denied"
    assert server.seen == []  # the app never ran
    lines = metric_lines(server)
    assert len(lines) == 1 and 'grpc_response_status="7"' in lines[0], lines
    assert 'source_principal="spiffe://cluster.local/ns/default/sa/ratings"' in lines[0]
    logged = [r.getMessage() for r in caplog.records if r.name == ACCESS.name]
    assert len(logged) == 1 and '"POST /reviews.Reviews/Get HTTP/2" 403' in logged[0]


def test_bad_jwt_is_unauthenticated(server: Server, client: Callable[..., Any]) -> None:
    server.telemetry.prometheus()
    ch, _ = client(server)
    forged = token(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(MeshRpcError) as caught:
        ch.unary_unary("/reviews.Reviews/Get")(
            b"hi", metadata=[("authorization", f"Bearer {forged}")])
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "Jwt verification fails"
    assert server.seen == []
    lines = metric_lines(server)
    assert len(lines) == 1 and 'grpc_response_status="16"' in lines[0], lines


def test_trace_and_deadline_continue_into_a_downstream_mesh_call(
        server: Server, client: Callable[..., Any]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sampled = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 100}]
"""
    caller_tel = Telemetry(PRODUCTPAGE, tracer_provider=provider, otel_metrics=False)
    ch, mesh = client(server, telemetry=caller_tel)
    mesh.update(config_from_yaml(
        service_entry("reviews", [(server.port, {"version": "v1"})], port=9080,
                      protocol="GRPC", service_account="reviews"), CLIENT_DR, sampled))
    assert ch.unary_unary("/reviews.Reviews/Chain")(b"hi", timeout=20,
                                                    metadata=bearer()) == b"ok"
    caller = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(caller) == 1
    trace_id = f"{caller[0].context.trace_id:032x}"
    seen = server.seen[-1]
    assert seen["trace_id"] == trace_id  # the handler ran inside the caller's trace
    assert seen["downstream"] == b"five stars"
    assert seen["deadline"] is not None  # grpc-timeout became the handler's deadline
    downstream = server.ratings.requests[-1].headers
    assert downstream["traceparent"].split("-")[1] == trace_id  # same trace, one more hop
    assert 0 < float(downstream["x-time-remaining"]) <= 20  # capped by the caller's time
    spans = server.exporter.get_finished_spans()
    by_kind = {s.kind: s for s in spans}
    assert by_kind[SpanKind.CLIENT].parent is not None
    assert by_kind[SpanKind.CLIENT].parent.span_id == by_kind[SpanKind.SERVER].context.span_id


def test_streaming_calls_are_guarded_and_recorded_once(
        server: Server, client: Callable[..., Any]) -> None:
    server.telemetry.prometheus()
    ch, _ = client(server)
    listed = ch.unary_stream("/reviews.Reviews/List")(b"hi", metadata=bearer())
    assert list(listed) == [b"ok0", b"ok1", b"ok2"]
    chat = ch.stream_stream("/reviews.Reviews/Chat")(iter([b"a", b"b"]), metadata=bearer())
    assert list(chat) == [b"oka", b"okb"]
    assert len(server.seen) == 5
    assert all(seen["trace_id"] != "0" * 32 for seen in server.seen)  # inside the span
    spans = [s for s in server.exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert sorted(s.name for s in spans) == ["/reviews.Reviews/Chat", "/reviews.Reviews/List"]
    lines = metric_lines(server)
    assert len(lines) == 1 and 'grpc_response_status="0"' in lines[0], lines
    assert lines[0].rstrip().endswith(" 2.0"), lines  # two calls, each counted once
    denied, _ = client(server, RATINGS_CLIENT)
    with pytest.raises(grpc.RpcError) as caught:
        list(denied.unary_stream("/reviews.Reviews/List")(b"hi", metadata=bearer()))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert len(server.seen) == 5


# --- the client's check of the server's identity ----------------------------------------------


def test_a_server_with_another_identity_never_sees_the_request(
        server: Server, client: Callable[..., Any]) -> None:
    ch, _ = client(server, expect_service_account="details")  # reviews is not who we want
    with pytest.raises(MeshRpcError) as caught:
        ch.unary_unary("/reviews.Reviews/Get")(b"hi", metadata=bearer())
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "UF" in caught.value.info.response_flags
    assert server.seen == []
    assert [s for s in server.exporter.get_finished_spans()] == []  # no request arrived


# --- rotation ----------------------------------------------------------------------------------


def _served_serial(port: int, client_identity: WorkloadIdentity) -> int:
    ctx = mesh_client_context(*client_identity.pem_credentials())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_rotation_applies_to_new_connections(ca: MeshCA) -> None:
    server = _start_server(ca, use_aio=False)
    probe = WorkloadIdentity.from_ca(ca, "default", "productpage")
    try:
        first = _served_serial(server.port, probe)
        assert first == server.identity.certificate.serial_number
        server.identity.rotate()
        rotated = server.identity.certificate.serial_number
        assert rotated != first
        assert wait_until(lambda: _served_serial(server.port, probe) == rotated)
    finally:
        probe.close()
        _stop_server(server)


def test_mesh_client_context_refuses_unknown_roots(ca: MeshCA) -> None:
    server = _start_server(ca, use_aio=False)
    stranger = WorkloadIdentity.from_ca(MeshCA.create(), "default", "productpage")
    try:
        with pytest.raises(ssl.SSLError):
            _served_serial(server.port, stranger)
    finally:
        stranger.close()
        _stop_server(server)
