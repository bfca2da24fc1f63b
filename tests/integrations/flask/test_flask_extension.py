"""meshsdk-flask's own pieces, in process on a real socket (werkzeug's WSGI server in a
thread, plaintext; mesh mTLS is covered by the end-to-end test): the ``init_app``
pattern with an app factory, route naming from URL rules (also when an earlier hook
answers), the JWT's header changes reaching the view, and misuse errors."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, request
from meshsdk_flask import MeshFlask, inbound_request
from meshsdk_flask import mesh as current_mesh
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from werkzeug.serving import BaseWSGIServer, make_server

from meshsdk.errors import UsageError
from meshsdk.mesh import Mesh
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.testing.builders import config_from_yaml
from meshsdk.workload import Workload
from tests.integrations.webapp_harness import ISSUER, TRACEPARENT, _jwks, token

WORKLOAD = Workload("shop-v1", "default", {"app": "shop", "version": "v1"}, "shop")
POLICY = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: shop}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{_jwks()}'
    outputPayloadToHeader: x-jwt-payload
"""


@pytest.fixture
def traced() -> Iterator[tuple[Mesh, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(WORKLOAD, tracer_provider=provider, otel_metrics=False,
                          rng=random.Random(1))
    mesh = Mesh(config_from_yaml(POLICY), WORKLOAD, telemetry=telemetry)
    yield mesh, exporter
    mesh.close()


class Served:
    """A WSGI app on 127.0.0.1 in a thread; stopped by ``close``."""

    def __init__(self, app: Any) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"traceparent": TRACEPARENT, **headers},
                         timeout=10)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def create_app(ext: MeshFlask, name: str) -> Flask:
    """An app factory, as the init_app pattern expects."""
    app = Flask(name)

    @app.before_request
    def maintenance() -> Any:
        if request.path.startswith("/closed/"):
            return "closed", 503
        return None

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, Any]:
        mesh_request = inbound_request()
        return {"order": order_id, "app": name, "user": mesh_request.request_principal,
                "authorization": request.headers.get("authorization"),
                "payload": request.headers.get("x-jwt-payload"),
                "same_mesh": current_mesh() is ext.mesh}

    @app.get("/closed/<path:rest>")
    def closed(rest: str) -> str:
        return rest

    ext.init_app(app)
    return app


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


def wait_spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The spans end when the server closes the response: poll, bounded."""
    deadline = time.monotonic() + 5
    while len(server_spans(exporter)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return server_spans(exporter)


def test_one_extension_two_apps_routes_named_and_jwt_applied(
        traced: tuple[Mesh, InMemorySpanExporter]) -> None:
    mesh, exporter = traced
    ext = MeshFlask(mesh=mesh)
    first, second = Served(create_app(ext, "first")), Served(create_app(ext, "second"))
    try:
        r = first.get("/orders/1", authorization=f"Bearer {token()}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["app"] == "first" and body["same_mesh"] is True
        assert body["user"] == f"{ISSUER}/alice"
        assert body["authorization"] is None         # forwardOriginalToken: false
        assert body["payload"]                        # outputPayloadToHeader reached the view
        forged = token(ec.generate_private_key(ec.SECP256R1()))
        r = second.get("/orders/2", authorization=f"Bearer {forged}")
        assert r.status_code == 401 and r.text == "Jwt verification fails"
        assert second.get("/orders/3").json()["app"] == "second"
        assert first.get("/closed/now").status_code == 503  # an earlier hook answered
    finally:
        first.close()
        second.close()
    spans = wait_spans(exporter, 4)
    named = sorted((s.name, (s.attributes or {}).get("http.response.status_code"))
                   for s in spans)
    assert named == sorted([
        ("/orders/<int:order_id>", 200), ("/orders/<int:order_id>", 200),
        ("/closed/<path:rest>", 503),                  # named although a hook answered
        (f"127.0.0.1:{second.server.server_port}/*", 401)])  # denied before routing


def test_misuse_is_a_usage_error(traced: tuple[Mesh, InMemorySpanExporter]) -> None:
    mesh, _ = traced
    with pytest.raises(UsageError, match="needs a mesh"):
        MeshFlask(Flask("no-mesh"))
    app = Flask("twice")
    MeshFlask(app, mesh=mesh)
    with pytest.raises(UsageError, match="already installed"):
        MeshFlask(app, mesh=mesh)
    with Flask("bare").test_request_context("/"), pytest.raises(UsageError):
        inbound_request()
