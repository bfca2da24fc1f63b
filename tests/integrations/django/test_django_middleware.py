"""meshsdk-django's middleware in process, under WSGI (wsgiref's server in a thread) and
ASGI (uvicorn in a thread), plaintext (mesh mTLS is covered end to end): route names
from URL patterns (``include`` prefixes too), the JWT's header changes reaching the view,
streamed responses (sync and async generators) counted whole and recorded when the
server closes them, an exception in a view recorded as 500, denials answered before
the view.

Django's settings are global to a process: this module configures them once, with
``MESHSDK["MESH_OPTIONS"]`` giving the mesh a Telemetry that exports to memory.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import include, path
from meshsdk_django import get_mesh, inbound_request
from meshsdk_django.middleware import response_headers
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshsdk.deadline import current_deadline
from meshsdk.inbound.handler import current_request
from meshsdk.inbound.servers import UvicornThread, uvicorn_config
from meshsdk.telemetry.metrics import DEFAULT_VIEW, MetricsView
from meshsdk.telemetry.record import CallRecord
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.workload import Workload
from tests.integrations.webapp_harness import ISSUER, TRACEPARENT, _jwks, token

WORKLOAD = Workload("shop-v1", "default", {"app": "shop", "version": "v1"}, "shop")
POLICY = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: shop}}}}
  jwtRules: [{{issuer: "{ISSUER}", jwks: '{_jwks()}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: shop}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin/*]}}}}]}}]
"""


class Records:
    """A metrics sink keeping every finished request's record (what metrics see)."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def record(self, record: CallRecord, view: MetricsView = DEFAULT_VIEW) -> None:
        self.records.append(record)


EXPORTER = InMemorySpanExporter()
RECORDS = Records()
CHUNKS = [b"x" * 1000, b"y" * 500, b"z"]


# -- the project -------------------------------------------------------------------------


def order(request: HttpRequest, order_id: int) -> JsonResponse:
    mesh_request = inbound_request(request)
    return JsonResponse({"order": order_id, "user": mesh_request.request_principal,
                         "authorization": request.headers.get("authorization"),
                         "same_mesh": get_mesh() is mesh_request.handler.mesh})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter(CHUNKS), content_type="text/plain")


async def astream(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in CHUNKS:
            yield chunk
    return StreamingHttpResponse(chunks(), content_type="text/plain")


def deadlines(request: HttpRequest) -> StreamingHttpResponse:
    """Each chunk says what it sees: the caller's deadline and whether a request is current."""
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield f"{current_deadline()!r} {current_request() is not None}\n".encode()
    return StreamingHttpResponse(chunks(), content_type="text/plain")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


def admin(request: HttpRequest) -> HttpResponse:
    return HttpResponse("admin")


def headed(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("ok", content_type="text/plain")
    response["X-Shop-Version"] = "7"
    response.set_cookie("session", "s1")  # a cookie: not among the recorded headers
    return response


shop_patterns = [path("orders/<int:order_id>", order), path("stream", stream),
                 path("astream", astream), path("deadlines", deadlines)]
urlpatterns = [path("shop/", include(shop_patterns)), path("boom", boom),
               path("admin/panel", admin), path("headed", headed)]


@pytest.fixture(scope="module", autouse=True)
def project(tmp_path_factory: pytest.TempPathFactory) -> None:
    if settings.configured:
        return
    config = Path(tmp_path_factory.mktemp("django-mesh")) / "policy.yaml"
    config.write_text(POLICY, encoding="utf-8")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    telemetry = Telemetry(WORKLOAD, tracer_provider=provider, otel_metrics=False,
                          metrics=[RECORDS], rng=random.Random(1))
    settings.configure(
        DEBUG=False, ALLOWED_HOSTS=["*"], SECRET_KEY="test", ROOT_URLCONF=__name__,
        INSTALLED_APPS=["meshsdk_django"], DATABASES={},
        MIDDLEWARE=["meshsdk_django.middleware.MeshMiddleware"],
        MESHSDK={"CONFIG": str(config), "WORKLOAD": WORKLOAD,
                 "MESH_OPTIONS": {"telemetry": telemetry}})
    django.setup()


# -- servers -----------------------------------------------------------------------------


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class WsgiThread:
    """Django's WSGI handler on wsgiref's server in a thread."""

    def __init__(self) -> None:
        from django.core.wsgi import get_wsgi_application
        self.server = make_server("127.0.0.1", 0, get_wsgi_application(),
                                  server_class=_ThreadingWSGIServer, handler_class=_Quiet)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(params=["wsgi", "asgi"])
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    EXPORTER.clear()
    RECORDS.records.clear()
    if request.param == "wsgi":
        running: Any = WsgiThread()
    else:
        from django.core.asgi import get_asgi_application
        running = UvicornThread(uvicorn_config(get_asgi_application(), mode="DISABLE",
                                               log_level="critical")).start()
    try:
        yield running
    finally:
        running.stop()


def get(server: Any, path: str, **headers: str) -> httpx.Response:
    return httpx.get(server.url(path), headers={"traceparent": TRACEPARENT, **headers},
                     timeout=10)


def spans(count: int) -> list[ReadableSpan]:
    """The mesh's server spans, once ``count`` have ended (bounded wait)."""
    def found() -> list[ReadableSpan]:
        return [s for s in EXPORTER.get_finished_spans() if s.kind == SpanKind.SERVER]
    deadline = time.monotonic() + 5
    while len(found()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return found()


def sent(span: ReadableSpan) -> Any:
    assert span.attributes is not None
    return span.attributes.get("http.response.body.size")


# -- tests -------------------------------------------------------------------------------


def test_routes_are_named_with_their_include_prefix_and_jwt_changes_apply(server: Any
                                                                          ) -> None:
    r = get(server, "/shop/orders/5", authorization=f"Bearer {token()}")
    assert r.status_code == 200, r.text
    assert r.json() == {"order": 5, "user": f"{ISSUER}/alice", "authorization": None,
                        "same_mesh": True}
    forged = token(ec.generate_private_key(ec.SECP256R1()))
    r = get(server, "/shop/orders/6", authorization=f"Bearer {forged}")
    assert r.status_code == 401 and r.text == "Jwt verification fails"
    r = get(server, "/admin/panel")
    assert r.status_code == 403 and r.text == "RBAC: access denied"
    names = [s.name for s in spans(3)]
    assert names[0] == "/shop/orders/<int:order_id>"
    assert "/admin/panel" not in names  # denied before Django routed it


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume")  # Django's hint
@pytest.mark.parametrize("view", ["stream", "astream"])
def test_streamed_bodies_are_counted_whole(server: Any, view: str) -> None:
    r = get(server, f"/shop/{view}")
    assert r.status_code == 200
    assert r.content == b"".join(CHUNKS)
    [span] = spans(1)
    assert span.name == f"/shop/{view}"
    [record] = RECORDS.records
    assert record.reporter == "destination"
    assert record.status == 200
    assert record.bytes_sent == len(r.content)


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume")  # Django's hint
def test_streamed_chunks_see_the_request_and_one_deadline(server: Any) -> None:
    r = get(server, "/shop/deadlines", **{"x-envoy-expected-rq-timeout-ms": "5000"})
    assert r.status_code == 200
    lines = r.text.splitlines()
    assert len(lines) == 3 and len(set(lines)) == 1  # anchored once, not per chunk
    deadline, current = lines[0].split()
    assert deadline != "None" and current == "True"


def test_a_view_that_raises_is_recorded_as_500(server: Any) -> None:
    r = get(server, "/boom")
    assert r.status_code == 500
    [span] = spans(1)
    assert span.name == "/boom"
    assert span.attributes is not None
    assert span.attributes.get("http.response.status_code") == 500
    [record] = RECORDS.records
    assert record.status == 500


def test_the_record_has_the_response_headers_in_lower_case(server: Any) -> None:
    r = get(server, "/headed")
    assert r.status_code == 200 and r.headers["x-shop-version"] == "7"
    spans(1)  # recorded when the server closed the response
    [record] = RECORDS.records
    recorded = list(record.response_headers)
    assert ("x-shop-version", "7") in recorded
    assert ("content-type", "text/plain") in recorded
    assert all(name == name.lower() for name, _ in recorded)
    assert "set-cookie" not in {name for name, _ in recorded}  # as response.items()
    assert record.bytes_sent == len(r.content) == 2  # the whole body, measured at close


def test_response_headers_read_any_mapping_as_items_does() -> None:
    response = HttpResponse("ok", content_type="text/plain")
    response["X-Shop-Version"] = "7"
    expected = [(name.lower(), value) for name, value in response.items()]
    assert response_headers(response) == expected  # from Django's own store
    response.headers = {"X-Other": "1"}  # a mapping without that store: items()
    assert response_headers(response) == [("x-other", "1")]
