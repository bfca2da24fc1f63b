"""The asyncio mesh channel on real gRPC servers: the same flow as the sync channel
(the conformance table runs through both), here the gRPC-specific parts: retries on
gRPC statuses, deadlines, faults, streaming, and mesh mTLS to an intercepted server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from meshsdk_grpc import MeshRpcError, aio

from meshsdk.mesh import Mesh
from meshsdk.security.ca import MeshCA
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.upstream import Reply, respond, script
from tests.integrations.grpc.test_grpc_data_path import DR, Env, hang, vs
from tests.integrations.grpc.test_server import (
    CLIENT_DR,
    PRODUCTPAGE,
    Server,
    _start_server,
    _stop_server,
    bearer,
)


@pytest.fixture
def env() -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(behaviours: dict[str, Any], rules: list[str]) -> Env:
        e = Env(behaviours, rules)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def run(e: Env, body: Callable[[aio.AsyncMeshChannel], Awaitable[Any]]) -> Any:
    assert e.mesh is not None
    mesh: Mesh = e.mesh

    async def main() -> Any:
        async with aio.channel(mesh, "reviews:9080") as ch:
            return await body(ch)
    return asyncio.run(main())


def test_retry_on_unavailable_and_weighted_routing(env: Callable[..., Env]) -> None:
    e = env({"v1": script(Reply(503, b"no"), then=respond(200, "v1")),
             "v2": respond(200, "v2")}, [DR, vs("""\
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - retries: {attempts: 2, retryOn: unavailable}
    route: [{destination: {host: reviews, subset: v1}}]""")])

    async def body(ch: aio.AsyncMeshChannel) -> tuple[Any, Any, Any]:
        get = ch.unary_unary("/reviews.Reviews/Get")
        first = await get.with_call(b"hi")
        jason = await get(b"hi", metadata=[("end-user", "jason")])
        return first, jason, None

    (answer, done), jason, _ = run(e, body)
    assert answer == b"v1" and done.info.attempts == 2
    assert jason == b"v2"
    assert e.hits() == {"v1": 2, "v2": 1}


def test_deadline_and_fault(env: Callable[..., Env]) -> None:
    e = env({"v1": hang()}, [vs("""\
  - match: [{headers: {x-fault: {exact: "1"}}}]
    fault: {abort: {grpcStatus: INTERNAL, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]
  - timeout: 0.2s
    route: [{destination: {host: reviews}}]""")])

    async def body(ch: aio.AsyncMeshChannel) -> list[MeshRpcError]:
        errors = []
        for metadata in ([], [("x-fault", "1")]):
            with pytest.raises(MeshRpcError) as caught:
                await ch.unary_unary("/reviews.Reviews/Get")(b"hi", timeout=30,
                                                             metadata=metadata)
            errors.append(caught.value)
        return errors

    late, faulted = run(e, body)
    assert late.code() is grpc.StatusCode.DEADLINE_EXCEEDED and late.info.response_flags == "UT"
    assert faulted.code() is grpc.StatusCode.INTERNAL and faulted.info.response_flags == "FI"
    assert e.hits() == {"v1": 1}


def test_unary_stream_retried_then_streamed(env: Callable[..., Env]) -> None:
    e = env({"v1": script(Reply(503, b"no"), Reply(200, b"v1"))}, [vs("""\
  - retries: {attempts: 2, retryOn: unavailable}
    route: [{destination: {host: reviews}}]""")])

    async def body(ch: aio.AsyncMeshChannel) -> tuple[list[bytes], int]:
        stream = ch.unary_stream("/reviews.Reviews/Stream")(b"hi")
        messages = [m async for m in stream]
        return messages, stream.info.attempts

    assert run(e, body) == ([b"v1", b"end"], 2)
    assert e.hits() == {"v1": 2}


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA.create()


def test_mesh_mtls_to_an_intercepted_server(ca: MeshCA) -> None:
    server: Server = _start_server(ca, use_aio=True)
    identity = WorkloadIdentity.from_ca(ca, "default", "productpage")
    se = service_entry("reviews", [(server.port, {"version": "v1"})], port=9080,
                       protocol="GRPC", service_account="reviews")
    mesh = Mesh(config_from_yaml(se, CLIENT_DR), PRODUCTPAGE, identity=identity,
                telemetry=False)

    async def main() -> bytes:
        async with aio.channel(mesh, "reviews:9080") as ch:
            return await ch.unary_unary("/reviews.Reviews/Get")(b"hi", metadata=bearer())  # type: ignore[no-any-return]

    try:
        assert asyncio.run(main()) == b"ok"
        assert len(server.seen) == 1
    finally:
        mesh.close()
        identity.close()
        _stop_server(server)
