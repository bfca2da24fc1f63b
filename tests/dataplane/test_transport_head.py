"""The response head and body the httpx drivers hand back, with an in-memory inner
transport (``mesh.transport(httpx.MockTransport(...))``): names lower-case as Envoy
forwards them, header bytes passed through as they came, route response operations
applied, and bodies of inner responses that were already read still delivered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from meshsdk.mesh import Mesh
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.workload import Workload

UTF8 = "café.txt".encode()

VS_WITH_RESPONSE_OPS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc, namespace: default}
spec:
  hosts: [svc]
  http:
  - route: [{destination: {host: svc}}]
    headers:
      response:
        set: {x-route: "yes"}
        remove: [x-secret]
"""

Handler = Callable[[httpx.Request], httpx.Response]


def _mesh(*extra: str) -> Mesh:
    config = config_from_yaml(service_entry("svc", [(18080, {})], port=8080), *extra)
    return Mesh(config, Workload("client", "default", {"app": "client"}))


def _get(mesh: Mesh, handler: Handler, mode: str) -> httpx.Response:
    if mode == "sync":
        with httpx.Client(transport=mesh.transport(httpx.MockTransport(handler))) as client:
            return client.get("http://svc:8080/")

    async def call() -> httpx.Response:
        transport = mesh.async_transport(httpx.MockTransport(handler))
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get("http://svc:8080/")
    return asyncio.run(call())


def _streamed(*headers: tuple[bytes, bytes]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=list(headers), stream=httpx.ByteStream(b"body"))
    return handler


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_header_names_are_lower_case_and_bytes_pass_through(mode: str) -> None:
    mesh = _mesh()
    response = _get(mesh, _streamed((b"Content-Type", b"text/plain"),
                                    (b"X-File", b'attachment; filename="' + UTF8 + b'"'),
                                    (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")), mode)
    assert response.status_code == 200
    assert response.content == b"body"
    raw = response.headers.raw
    assert (b"content-type", b"text/plain") in raw
    assert (b"x-file", b'attachment; filename="' + UTF8 + b'"') in raw  # not re-encoded
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.extensions["meshsdk"].upstream == "127.0.0.1:18080"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_route_response_operations_keep_the_upstream_encoding(mode: str) -> None:
    mesh = _mesh(VS_WITH_RESPONSE_OPS)
    response = _get(mesh, _streamed((b"X-File", UTF8), (b"X-Secret", b"s"),
                                    (b"X-Route", b"no")), mode)
    assert response.headers["x-route"] == "yes"
    assert "x-secret" not in response.headers
    assert (b"x-file", UTF8) in response.headers.raw


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_inner_response_that_was_already_read_is_delivered(mode: str) -> None:
    # httpx.Response(content=...) reads itself when built, as MockTransport handlers do
    mesh = _mesh()
    response = _get(mesh, lambda request: httpx.Response(200, json={"ok": True}), mode)
    assert response.json() == {"ok": True}
    assert response.headers["content-type"] == "application/json"
