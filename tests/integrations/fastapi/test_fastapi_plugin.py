"""meshsdk-fastapi's own pieces, in process on real sockets: route naming on FastAPI and
plain Starlette (mounts included), the lifespan hooks connecting to a real config
service at startup and closing at shutdown, and ``instrument`` keeping the app's own
lifespan. Servers are uvicorn in a thread (``UvicornThread``), plaintext (DISABLE):
mesh mTLS is covered by the end-to-end tests."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from meshsdk_fastapi import MeshLifespan, MeshMiddleware, inbound_request, instrument
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from meshsdk.controlplane.filestore import ConfigStore
from meshsdk.controlplane.server import ConfigServer
from meshsdk.errors import UsageError
from meshsdk.inbound.servers import UvicornThread, uvicorn_config
from meshsdk.mesh import Mesh
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.testing.builders import config_from_yaml
from meshsdk.workload import Workload
from tests.integrations.webapp_harness import TRACEPARENT, wait_for

WORKLOAD = Workload("items-v1", "default", {"app": "items", "version": "v1"}, "items")
DENY_ADMIN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: items}}
  action: DENY
  rules: [{to: [{operation: {paths: [/admin/*]}}]}]
"""


class Traced:
    """A mesh whose server spans land in memory (every request carries a sampled parent)."""

    def __init__(self, *documents: str) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        telemetry = Telemetry(WORKLOAD, tracer_provider=provider, otel_metrics=False,
                              rng=random.Random(1))
        self.mesh = Mesh(config_from_yaml(*documents) if documents else
                         config_from_yaml(DENY_ADMIN), WORKLOAD, telemetry=telemetry)

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind == SpanKind.SERVER
                and s.attributes is not None and "mesh.request_id" in s.attributes]


@pytest.fixture
def traced() -> Iterator[Traced]:
    traced = Traced()
    yield traced
    traced.mesh.close()


def serve(app: Any, *, lifespan: str = "off") -> UvicornThread:
    return UvicornThread(uvicorn_config(app, mode="DISABLE", log_level="warning",
                                        lifespan=lifespan)).start()


def get(server: UvicornThread, path: str) -> httpx.Response:
    return httpx.get(server.url(path), headers={"traceparent": TRACEPARENT}, timeout=10)


def test_fastapi_routes_name_the_span_and_policies_apply(traced: Traced) -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int, request: Request) -> dict[str, Any]:
        return {"id": item_id, "request_id": inbound_request(request).request_id}

    @app.get("/admin/{what}")
    async def admin(what: str) -> str:
        return what

    app.add_middleware(MeshMiddleware, mesh=traced.mesh)
    server = serve(app)
    try:
        r = get(server, "/items/7")
        assert r.status_code == 200 and r.json()["id"] == 7
        assert r.json()["request_id"]
        assert get(server, "/admin/x").status_code == 403   # the DENY policy, not the app
        assert get(server, "/nowhere").status_code == 404
    finally:
        server.stop()
    names = [s.name for s in traced.server_spans()]
    assert names[0] == "/items/{item_id}"
    assert traced.server_spans()[0].attributes["http.route"] == "/items/{item_id}"
    assert names[1] != "/admin/{what}"  # denied before routing: no route to name it
    assert names[2] == f"127.0.0.1:{server.port}/*"  # no route matched: Istio's default


def test_plain_starlette_mounts_name_the_full_template(traced: Traced) -> None:
    async def item(request: Any) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def health(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    api = Starlette(routes=[Route("/items/{item_id}", item)])
    app = Starlette(routes=[Mount("/api", app=api), Route("/healthz", health)])
    server = serve(MeshMiddleware(app, mesh=traced.mesh))
    try:
        assert get(server, "/api/items/3").json() == {"id": "3"}
        assert get(server, "/healthz").text == "ok"
    finally:
        server.stop()
    assert [s.name for s in traced.server_spans()] == ["/api/items/{item_id}", "/healthz"]


def test_lifespan_connects_to_the_config_service_and_closes(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "policy.yaml").write_text(DENY_ADMIN, encoding="utf-8")
    seen: dict[str, Any] = {}

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        seen["mesh at app startup"] = app.state.mesh   # the mesh is up first
        yield
        seen["app shutdown while mesh open"] = lifespan.started

    with ConfigStore(config_dir).start() as store, ConfigServer(store, port=0) as cs:
        app = FastAPI(lifespan=own)

        @app.get("/items/{item_id}")
        async def item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        @app.get("/admin/{what}")
        async def admin(what: str) -> str:
            return what

        lifespan = instrument(app, lambda: Mesh.connect(
            f"127.0.0.1:{cs.port}", WORKLOAD, cache_dir=tmp_path / "cache", wait=5.0,
            telemetry=False))
        assert isinstance(lifespan, MeshLifespan)
        with pytest.raises(UsageError):
            _ = lifespan.mesh  # not started yet
        server = serve(app, lifespan="on")
        try:
            mesh = lifespan.mesh
            status = mesh.status()
            assert status.connected and status.source == "server"
            assert seen["mesh at app startup"] is mesh
            assert get(server, "/items/1").status_code == 200
            # the policy came from the config service: the DENY rule applies
            assert get(server, "/admin/x").status_code == 403
        finally:
            server.stop()
        assert seen["app shutdown while mesh open"] is True
        assert not lifespan.started
        wait_for("the config client to stop", lambda: not mesh.status().connected)


def test_instrument_with_a_ready_mesh_puts_it_on_app_state(traced: Traced) -> None:
    app = FastAPI()

    @app.get("/mesh")
    async def which(request: Request) -> dict[str, bool]:
        return {"same": request.app.state.mesh is traced.mesh}

    assert instrument(app, traced.mesh) is None
    server = serve(app)
    try:
        assert get(server, "/mesh").json() == {"same": True}
    finally:
        server.stop()
    assert [s.name for s in traced.server_spans()] == ["/mesh"]
