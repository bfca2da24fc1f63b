"""The direct path: with the transport's own default inner transport, attempts go to
its httpcore pool without a second httpx.Request/Response; a transport you pass is
used as is. Both must look the same to the caller."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from meshsdk import Mesh, Workload
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.upstream import Reply, Upstream, free_port, respond, script

CLIENT = Workload("productpage", "default", {"app": "productpage"})
URL = "http://reviews:9080/d"


def _mesh(up: Upstream | int) -> Mesh:
    return Mesh(config_from_yaml([service_entry("reviews", [(up, {})], port=9080)]),
                CLIENT, rng=random.Random(1))


def test_default_inner_uses_the_pool_a_given_one_does_not() -> None:
    with Upstream("r") as up:
        mesh = _mesh(up)
        assert mesh.transport()._pool is not None
        assert mesh.async_transport()._pool is not None
        assert mesh.transport(httpx.HTTPTransport())._pool is None
        assert mesh.async_transport(httpx.AsyncHTTPTransport())._pool is None


def test_sync_response_head_body_and_extensions() -> None:
    body = b"x" * 70_000
    with Upstream("r", script(Reply(200, body, {"X-Thing": "a", "grpc-status": "0"}))) as up:
        mesh = _mesh(up)
        with mesh.client() as client:
            for _ in range(3):  # the slot and the connection come back each time
                r = client.get(URL)
                assert r.status_code == 200 and r.content == body
                assert r.headers["x-thing"] == "a"
                assert ("x-thing", "a") in r.headers.multi_items()
                assert r.extensions["http_version"] == b"HTTP/1.1"
                assert r.extensions["reason_phrase"] == b"OK"
                assert "network_stream" in r.extensions
                assert r.extensions["meshsdk"].response_flags == "-"
            with client.stream("GET", URL) as s:  # closed unread: the slot is released
                assert s.status_code == 200
            assert client.get(URL).content == body


def test_async_response_head_body_and_extensions() -> None:
    async def run(up: Upstream) -> None:
        async with _mesh(up).async_client() as client:
            for _ in range(3):
                r = await client.get(URL)
                assert r.status_code == 200 and r.content == b"ok"
                assert r.extensions["http_version"] == b"HTTP/1.1"
                assert r.extensions["meshsdk"].attempts == 1
            async with client.stream("GET", URL) as s:
                assert s.status_code == 200
            assert (await client.get(URL)).content == b"ok"

    with Upstream("r", script(Reply(200, b"ok"))) as up:
        asyncio.run(run(up))


def test_connect_failure_and_reset_are_classified() -> None:
    mesh = _mesh(free_port())  # nothing listens: connection refused
    with mesh.client() as client:
        r = client.get(URL)
    assert r.status_code == 503 and "UF" in r.extensions["meshsdk"].response_flags

    async def run() -> httpx.Response:
        async with mesh.async_client() as client:
            return await client.get(URL)
    r = asyncio.run(run())
    assert r.status_code == 503 and "UF" in r.extensions["meshsdk"].response_flags

    with Upstream("r", script(Reply(reset=True))) as up, _mesh(up).client() as client:
        r = client.get(URL)
    assert r.status_code == 503 and "UR" in r.extensions["meshsdk"].response_flags


def test_body_errors_are_httpx_errors() -> None:
    reply = Reply(200, b"y" * 200_000, reset_mid_body=True)
    with (Upstream("r", script(reply)) as up, _mesh(up).client() as client,
          pytest.raises(httpx.TransportError)):
        client.get(URL)


def test_an_answered_verdict_has_every_field_set() -> None:
    """The flow builds an answered call's CallResult field by field (the hot path skips
    the dataclass __init__): a field added to the class and forgotten there would be
    unset, and reading it raise."""
    import dataclasses

    from meshsdk.dataplane.flow import CallResult

    verdicts: list[CallResult] = []
    with Upstream("r") as up:
        mesh = _mesh(up)
        mesh.add_observer(lambda request, result, info: verdicts.append(result))
        with mesh.client() as client:
            assert client.get(URL).status_code == 200
    [verdict] = verdicts
    values = {f.name: getattr(verdict, f.name) for f in dataclasses.fields(CallResult)}
    assert values["local_reply"] is None and values["status"] == 200
    assert values["attempts"] == 1 and values["flags"] == () and values["mtls"] is False
    assert values["cluster"] == "outbound|9080||reviews.default.svc.cluster.local"


NON_ASCII_ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: "José"}}}]
    route: [{destination: {host: reviews}}]
    headers: {request: {set: {x-greeting: "olá"}}}
    mirror: {host: shadow}
  - route: [{destination: {host: reviews}}]
"""


@pytest.mark.parametrize("given_transport", [False, True])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_non_ascii_request_headers_go_out_byte_for_byte(mode: str,
                                                        given_transport: bool) -> None:
    """A header value bare httpx sends (UTF-8 or Latin-1 bytes) reaches the endpoint,
    and a mirror, as the same bytes; a UTF-8 value matches a route written in UTF-8
    YAML; a non-ASCII value from the route's header operations goes as UTF-8 (the
    bytes Envoy sends for a config string)."""
    from meshsdk.testing.upstream import echo, wait_until

    utf8, latin1 = "José".encode(), "Zoë".encode("latin-1")
    with Upstream("r", echo) as up, Upstream("shadow", echo) as shadow:
        mesh = Mesh(config_from_yaml(service_entry("reviews", [(up, {})], port=9080),
                                     service_entry("shadow", [(shadow, {})], port=9080),
                                     NON_ASCII_ROUTES), CLIENT, rng=random.Random(1))
        heads = [{"end-user": utf8, "x-note": utf8}, {"end-user": b"bob", "x-note": latin1}]

        def sync_calls() -> list[httpx.Response]:
            transport = mesh.transport(httpx.HTTPTransport()) if given_transport else None
            with httpx.Client(transport=transport or mesh.transport()) as client:
                return [client.get(URL, headers=h) for h in heads]

        async def async_calls() -> list[httpx.Response]:
            transport = (mesh.async_transport(httpx.AsyncHTTPTransport()) if given_transport
                         else mesh.async_transport())
            async with httpx.AsyncClient(transport=transport) as client:
                return [await client.get(URL, headers=h) for h in heads]

        responses = sync_calls() if mode == "sync" else asyncio.run(async_calls())
        assert [r.status_code for r in responses] == [200, 200]
        assert wait_until(lambda: shadow.hits == 1)
        # http.server decodes a head as Latin-1: encoding back gives the bytes received
        sent = [{k: v.encode("latin-1") for k, v in r.headers.items()} for r in up.requests]
        assert [(s["end-user"], s["x-note"]) for s in sent] == [(utf8, utf8), (b"bob", latin1)]
        assert [s.get("x-greeting") for s in sent] == ["olá".encode(), None]  # route 1 only
        [mirrored] = [{k: v.encode("latin-1") for k, v in r.headers.items()}
                      for r in shadow.requests]
        assert (mirrored["end-user"], mirrored["x-note"]) == (utf8, utf8)


@pytest.mark.parametrize("value", ["Zoë", "José".encode().decode("latin-1")])
def test_response_headers_decode_as_bare_httpx_decodes_them(value: str) -> None:
    """The caller's response head is built without httpx.Headers' constructor; it must
    still decode (Latin-1, UTF-8) and look up exactly as bare httpx's does."""
    with Upstream("r", respond(200, "ok", {"X-Name": value, "X-Plain": "a"})) as up:
        with httpx.Client() as bare:
            expected = bare.get(f"http://127.0.0.1:{up.port}/d").headers
        with _mesh(up).client() as client:
            got = client.get(URL).headers
    mine = [(k, v) for k, v in got.multi_items() if k in ("x-name", "x-plain")]
    theirs = [(k, v) for k, v in expected.multi_items() if k in ("x-name", "x-plain")]
    assert mine == theirs and got.encoding == expected.encoding
    assert got["X-NAME"] == expected["x-name"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_closed_body_gives_its_connection_back_to_the_pool(mode: str) -> None:
    """Closing the caller's body closes the upstream body stream: the next call reuses
    the same connection instead of opening another."""
    with Upstream("r") as up:
        mesh = _mesh(up)
        if mode == "sync":
            with mesh.client() as client:
                for _ in range(5):
                    assert client.get(URL).content == b"r"
                connections = client._transport._pool.connections
                assert len(connections) == 1 and connections[0].is_idle()
            return

        async def run() -> None:
            async with mesh.async_client() as client:
                for _ in range(5):
                    assert (await client.get(URL)).content == b"r"
                connections = client._transport._pool.connections
                assert len(connections) == 1 and connections[0].is_idle()
        asyncio.run(run())


def test_header_items_is_multi_items() -> None:
    import httpx

    from meshsdk.transport.common import header_items

    for raw in ([(b"Host", b"a"), (b"X-A", b"1"), (b"x-a", b"2")],
                [(b"X-Name", "José".encode())], [(b"X-Name", "Zoë".encode("latin-1"))]):
        headers = httpx.Headers(raw)
        assert header_items(headers) == headers.multi_items()
        # on a block whose encoding nobody has looked up yet: the same pairs, and the
        # encoding it leaves on the block is the one httpx's own check finds
        fresh = httpx.Headers(raw)
        assert header_items(fresh) == headers.multi_items()
        assert fresh.encoding == httpx.Headers(raw).encoding


def test_a_closed_body_lets_go_of_the_upstream_response() -> None:
    """httpx keeps the caller's response in a reference cycle; the mesh's own objects
    (the upstream response, the call's state) must not wait in it for the garbage
    collector, and closing twice gives the call's slot back once."""
    import gc

    import httpcore

    with Upstream("r") as up:
        mesh = _mesh(up)
        with mesh.client() as client:
            client.get(URL)  # warm: the connection exists
            gc.collect()
            gc.disable()
            try:  # type(), not isinstance: a lazy proxy (Django's settings) would resolve
                before = sum(type(o) is httpcore.Response for o in gc.get_objects())
                kept = [client.get(URL) for _ in range(20)]
                after = sum(type(o) is httpcore.Response for o in gc.get_objects())
            finally:
                gc.enable()
            assert after - before == 0, f"{after - before} upstream responses still held"
            kept[0].close()  # again: nothing more is released
            cluster = next(iter(mesh._clusters._clusters.values()))
            assert cluster.limits._in_flight == 0


MIRRORED = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    mirror: {host: shadow}
"""


def test_closing_the_client_does_not_cut_off_a_mirror_copy_in_flight() -> None:
    """A copy still on its way when the client closes goes out through an open
    transport, which is closed when the copy ends."""
    import threading

    from meshsdk.testing.upstream import wait_until

    gate = threading.Event()

    class GatedTransport(httpx.HTTPTransport):
        closed = False

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.headers["host"].endswith("-shadow:9080"):  # the copy waits
                gate.wait(5)
            return super().handle_request(request)

        def close(self) -> None:
            self.closed = True
            super().close()

    with Upstream("r") as up, Upstream("shadow") as shadow:
        mesh = Mesh(config_from_yaml(service_entry("reviews", [(up, {})], port=9080),
                                     service_entry("shadow", [(shadow, {})], port=9080),
                                     MIRRORED), CLIENT, rng=random.Random(1))
        inner = GatedTransport()
        try:
            with httpx.Client(transport=mesh.transport(inner)) as client:
                assert client.get(URL).status_code == 200
            assert not inner.closed  # the copy is still at the gate
            gate.set()
            assert wait_until(lambda: shadow.hits == 1)
            assert wait_until(lambda: inner.closed)
            assert (mesh._mirrors.sent, mesh._mirrors.failed) == (1, 0)
        finally:
            gate.set()
            mesh.close()


def test_closing_an_async_client_does_not_cut_off_a_mirror_copy_in_flight() -> None:
    """The async twin: the copy's task closes the transport when it ends."""
    from meshsdk.testing.upstream import wait_until

    class GatedTransport(httpx.AsyncHTTPTransport):
        closed = False
        gate: asyncio.Event

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.headers["host"].endswith("-shadow:9080"):
                await asyncio.wait_for(self.gate.wait(), 5)
            return await super().handle_async_request(request)

        async def aclose(self) -> None:
            self.closed = True
            await super().aclose()

    async def run(mesh: Mesh, shadow: Upstream) -> None:
        inner = GatedTransport()
        inner.gate = asyncio.Event()
        async with httpx.AsyncClient(transport=mesh.async_transport(inner)) as client:
            assert (await client.get(URL)).status_code == 200
        assert not inner.closed  # the copy is still at the gate
        inner.gate.set()
        for _ in range(500):  # the copy's task runs on this loop
            if inner.closed:
                break
            await asyncio.sleep(0.01)
        assert inner.closed and shadow.hits == 1
        assert (mesh._mirrors.sent, mesh._mirrors.failed) == (1, 0)

    with Upstream("r") as up, Upstream("shadow") as shadow:
        mesh = Mesh(config_from_yaml(service_entry("reviews", [(up, {})], port=9080),
                                     service_entry("shadow", [(shadow, {})], port=9080),
                                     MIRRORED), CLIENT, rng=random.Random(1))
        try:
            asyncio.run(run(mesh, shadow))
            assert wait_until(lambda: shadow.hits == 1)
        finally:
            mesh.close()
