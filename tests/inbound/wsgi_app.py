"""The tiny WSGI app the gunicorn tests serve, behind MeshWSGIMiddleware.

Loaded by gunicorn's worker (``tests.inbound.wsgi_app:app``) and configured by
environment variables the test sets: the mesh config file, where to write finished
spans (one JSON object per line) and the access log, and the Prometheus port.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from meshsdk.inbound.handler import current_request, set_route
from meshsdk.inbound.wsgi import REQUEST_KEY, MeshWSGIMiddleware
from meshsdk.mesh import Mesh
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.workload import Workload

REVIEWS = Workload("reviews-v1", "default", {"app": "reviews", "version": "v1"}, "reviews")


class FileSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line (the test process reads the file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as fh:
            for span in spans:
                assert span.context is not None
                fh.write(json.dumps({
                    "name": span.name, "kind": span.kind.name,
                    "trace_id": f"{span.context.trace_id:032x}",
                    "span_id": f"{span.context.span_id:016x}",
                    "parent": f"{span.parent.span_id:016x}" if span.parent else None,
                    "attributes": {k: v for k, v in (span.attributes or {}).items()
                                   if isinstance(v, str | int | float | bool)}}) + "\n")
        return SpanExportResult.SUCCESS


def _telemetry() -> Telemetry:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(
        os.environ["MESHSDK_TEST_SPANS"])))
    logger = logging.Logger("test.inbound.access", logging.INFO)
    handler = logging.FileHandler(os.environ["MESHSDK_TEST_ACCESS_LOG"])
    logger.addHandler(handler)
    return Telemetry(REVIEWS, tracer_provider=provider, otel_metrics=False,
                     access_logger=logger)


mesh = Mesh.from_config(os.environ["MESHSDK_TEST_CONFIG"], REVIEWS, telemetry=_telemetry())
metrics_server = mesh.serve_metrics(int(os.environ["MESHSDK_TEST_METRICS_PORT"]))
client = mesh.client()


def _json(start_response: Any, status: str, data: object) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _stream() -> Iterator[bytes]:
    for i in range(5):
        # produced while the server iterates: the request is still current
        assert current_request() is not None
        yield f"chunk{i};".encode()


def inner(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    request = environ[REQUEST_KEY]
    if path == "/call":
        set_route("/call")
        r = client.get("http://ratings.default.svc.cluster.local/ratings/1")
        return _json(start_response, f"{r.status_code} X", json.loads(r.content))
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream()
    if path == "/boom":
        raise RuntimeError("boom")
    if path.startswith("/reviews/"):
        environ["meshsdk.route"] = "/reviews/{id}"
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
               if k.startswith("HTTP_")}
    return _json(start_response, "200 OK", {
        "path": path, "query": environ.get("QUERY_STRING", ""), "headers": headers,
        "peer": request.peer, "request_principal": request.request_principal,
        "pid": os.getpid()})


app = MeshWSGIMiddleware(inner, mesh)
