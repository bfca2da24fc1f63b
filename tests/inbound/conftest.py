"""Fixtures for the inbound tests: mesh identities, the policies of a ``reviews``
workload, an in-process telemetry capture (spans, Prometheus metrics, access log), a
tiny ASGI app served by uvicorn with mesh mTLS, and mesh clients to call it.

Everything runs on 127.0.0.1 with real TLS handshakes; every server is stopped by
its fixture, also when the test fails.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshsdk.inbound.asgi import REQUEST_KEY, MeshASGIMiddleware
from meshsdk.inbound.handler import set_route
from meshsdk.inbound.servers import UvicornThread, uvicorn_config
from meshsdk.mesh import Mesh
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.telemetry.metrics import PrometheusMetrics
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.jwt import TestIssuer
from meshsdk.testing.upstream import Upstream, echo, wait_until
from meshsdk.workload import Workload
from tests.security.conftest import IdentityFactory, make_identity, mesh_ca

__all__ = ["make_identity", "mesh_ca"]  # fixtures re-registered for this directory

ISSUER = "https://issuer.test"
HOST = "reviews.default.svc.cluster.local"
URL = f"http://{HOST}"
REVIEWS = Workload("reviews-v1", "default", {"app": "reviews", "version": "v1"}, "reviews")
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
JWT = TestIssuer(ISSUER)
SIGNING_KEY = JWT.key
jwks_json = JWT.jwks_json
token = JWT.token


def policies(mode: str = "STRICT", downstream_port: int | None = None) -> str:
    """reviews' policies: JWT from ISSUER, productpage may call everything but /open,
    anyone may call /open/*, mTLS ``mode``; traces sampled 100%, access log on."""
    docs = f"""
{JWT.request_authentication("reviews")}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-callers, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/productpage]}}}}]
    to: [{{operation: {{paths: [/reviews/*, /call, /stream, /boom]}}}}]
  - to: [{{operation: {{paths: [/open/*]}}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: mtls, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  mtls: {{mode: {mode}}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing: [{{randomSamplingPercentage: 100}}]
  accessLogging: [{{providers: [{{name: envoy}}]}}]
"""
    if downstream_port is not None:
        docs += "---\n" + service_entry("ratings", [(downstream_port, {})])
    return docs


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Capture:
    """Spans (OTel SDK, in memory), Prometheus metrics and access log lines of one mesh."""

    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    prometheus: PrometheusMetrics = field(default_factory=PrometheusMetrics)
    log: _ListHandler = field(default_factory=_ListHandler)

    def telemetry(self, workload: Workload) -> Telemetry:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        logger = logging.Logger("test.inbound.access", logging.INFO)
        logger.addHandler(self.log)
        return Telemetry(workload, tracer_provider=provider, otel_metrics=False,
                         metrics=[self.prometheus], access_logger=logger,
                         rng=random.Random(7))

    def spans(self, expected: int) -> list[ReadableSpan]:
        """The finished spans, once there are ``expected`` of them (the server ends its
        span after the last byte, so the client can be faster)."""
        wait_until(lambda: len(self.exporter.get_finished_spans()) >= expected)
        return list(self.exporter.get_finished_spans())

    def requests(self) -> list[tuple[dict[str, str], float]]:
        """``istio_requests_total`` series: (labels, value)."""
        text = generate_latest(self.prometheus.registry).decode()
        out = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "istio_requests_total":
                    out.append((dict(sample.labels), sample.value))
        return out

    def wait_requests(self, total: int) -> list[tuple[dict[str, str], float]]:
        wait_until(lambda: sum(v for _, v in self.requests()) >= total)
        return self.requests()

    def lines(self, expected: int) -> list[str]:
        wait_until(lambda: len(self.log.lines) >= expected)
        return list(self.log.lines)


async def _send_json(send: Any, status: int, data: object) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def asgi_app(mesh: Mesh) -> Callable[..., Any]:
    """The tiny ASGI app: echoes what it saw (``/reviews/*``, ``/open/*``), calls ratings
    through the mesh (``/call``), streams (``/stream``), fails (``/boom``)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        request = scope[REQUEST_KEY]
        if path == "/call":
            set_route("/call")
            async with mesh.async_client() as client:
                r = await client.get("http://ratings.default.svc.cluster.local/ratings/1")
            await _send_json(send, r.status_code, json.loads(r.content))
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            for i in range(5):
                await send({"type": "http.response.body", "body": f"chunk{i};".encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/boom":
            raise RuntimeError("boom")
        else:
            if path.startswith("/reviews/"):
                scope["meshsdk.route"] = "/reviews/{id}"
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            await _send_json(send, 200, {
                "path": path, "query": scope["query_string"].decode(), "headers": headers,
                "peer": request.peer, "request_principal": request.request_principal})

    return app


@dataclass
class Served:
    """reviews behind MeshASGIMiddleware on uvicorn, its mesh, capture and downstream."""

    server: UvicornThread
    mesh: Mesh
    capture: Capture
    identity: WorkloadIdentity
    ratings: Upstream
    make_identity: IdentityFactory
    caller_meshes: list[Mesh] = field(default_factory=list)

    def caller(self, service_account: str | None, **mesh_options: Any) -> Mesh:
        """A mesh client as ``default/<service_account>`` (None: no identity, plaintext)."""
        identity = (self.make_identity("default", service_account)
                    if service_account is not None else None)
        se = service_entry("reviews", [(self.server.port,
                                        {"security.istio.io/tlsMode": "istio"})],
                           service_account="reviews")
        mesh = Mesh(config_from_yaml(se), Workload(f"{service_account}-v1", "default"),
                    telemetry=False, identity=identity, **mesh_options)
        self.caller_meshes.append(mesh)
        return mesh

    def get(self, service_account: str | None, path: str, **headers: str) -> httpx.Response:
        with self.caller(service_account).client() as client:
            return client.get(f"{URL}{path}", headers=headers)


@pytest.fixture
def serve_reviews(make_identity: IdentityFactory) -> Iterator[Callable[..., Served]]:
    """``serve_reviews(mode="STRICT", server_mode=None, **middleware_options)``: reviews
    on uvicorn; all stopped after the test."""
    stack: list[Callable[[], None]] = []

    def start(mode: str = "STRICT", server_mode: str | None = None,
              **options: Any) -> Served:
        ratings = Upstream("ratings", echo).start()
        stack.append(ratings.stop)
        capture = Capture()
        identity = make_identity("default", "reviews")
        mesh = Mesh(config_from_yaml(policies(mode, ratings.port)), REVIEWS,
                    identity=identity, telemetry=capture.telemetry(REVIEWS))
        stack.append(mesh.close)
        app = MeshASGIMiddleware(asgi_app(mesh), mesh, **options)
        config = uvicorn_config(app, mesh, mode=server_mode,  # type: ignore[arg-type]
                                log_level="critical")
        server = UvicornThread(config).start()
        stack.append(server.stop)
        served = Served(server, mesh, capture, identity, ratings, make_identity)
        stack.append(lambda: [m.close() for m in served.caller_meshes] and None)
        return served

    yield start
    for stop in reversed(stack):
        stop()
