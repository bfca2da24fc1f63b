"""Bodies that stream: big responses pass through unbuffered, streamed requests are sent
once and never replayed. Sync and async clients."""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from meshsdk.mesh import Mesh
from meshsdk.testing.sandbox import MeshTestConfig
from meshsdk.testing.upstream import Received, Reply, Upstream, free_port, respond, script
from tests.dataplane.conftest import Build
from tests.dataplane.harness import AsyncCaller, Caller, SyncCaller

Connect = Callable[[Mesh], Caller]
URL = "http://reviews/stream"
MB = 1 << 20

RETRY_5XX_AND_RESET = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 3, retryOn: "5xx,reset"}
"""


# --- large responses -------------------------------------------------------------------------


class GatedBody:
    """A body of ``chunks`` x 1 MiB whose upstream, after the first chunk, waits until
    the client says it has received data. A mesh that buffered the body would hold the
    first chunk back until the whole body arrived, so the wait would run out instead."""

    def __init__(self, chunks: int, wait: float = 5.0) -> None:
        self.chunks = chunks
        self.wait = wait
        self.client_has_data = threading.Event()
        self.released_by_client: bool | None = None
        self.finished = threading.Event()

    def behaviour(self, req: Received, n: int) -> Reply:
        if req.path != "/stream":
            return Reply(200, b"small")
        return Reply(200, stream=self._chunks())

    def _chunks(self) -> Iterator[bytes]:
        yield bytes([0]) * MB
        self.released_by_client = self.client_has_data.wait(self.wait)
        for i in range(1, self.chunks):
            yield bytes([i % 256]) * MB
        self.finished.set()

    def check_chunk(self, received_so_far: int) -> None:
        """Called by the client for each chunk it gets, with the byte count so far."""
        if received_so_far > 0 and not self.client_has_data.is_set():
            # the upstream must still be waiting at this point: it has sent 1 chunk only
            assert not self.finished.is_set()
            self.client_has_data.set()


def _stream_sync(caller: SyncCaller, gate: GatedBody) -> tuple[int, int, int]:
    """(bytes, first byte value, last byte value) of the streamed body."""
    total, first, last = 0, -1, -1
    with caller.client.stream("GET", URL) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            if first < 0 and chunk:
                first = chunk[0]
            total += len(chunk)
            last = chunk[-1] if chunk else last
            gate.check_chunk(total)
    return total, first, last


def _stream_async(caller: AsyncCaller, gate: GatedBody) -> tuple[int, int, int]:
    async def go() -> tuple[int, int, int]:
        total, first, last = 0, -1, -1
        async with caller.client.stream("GET", URL) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                if first < 0 and chunk:
                    first = chunk[0]
                total += len(chunk)
                last = chunk[-1] if chunk else last
                gate.check_chunk(total)
        return total, first, last
    return caller.run(go())


def _stream(caller: Caller, gate: GatedBody) -> tuple[int, int, int]:
    if isinstance(caller, SyncCaller):
        return _stream_sync(caller, gate)
    assert isinstance(caller, AsyncCaller)
    return _stream_async(caller, gate)


def test_large_response_streams_through_unbuffered(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    gate = GatedBody(chunks=8)
    up = mesh_upstream("reviews", gate.behaviour)
    caller = connect(build(RETRY_5XX_AND_RESET))
    total, first, last = _stream(caller, gate)
    assert gate.released_by_client is True, \
        "the caller got no byte before the upstream finished: the body was buffered"
    assert (total, first, last) == (8 * MB, 0, 7)
    assert up.hits == 1


def test_large_response_does_not_sit_in_memory(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    # 24 MiB streamed; the peak of memory allocated meanwhile (client, mesh and the
    # in-process server together) stays a small multiple of one 1 MiB chunk. Holding
    # the body anywhere would need 24 MiB at least.
    gate = GatedBody(chunks=24, wait=0)
    mesh_upstream("reviews", gate.behaviour)
    caller = connect(build())
    caller.get("http://reviews/warm-up")  # connections and caches exist before measuring
    tracemalloc.start()
    try:
        total, _, _ = _stream(caller, gate)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 24 * MB
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MiB while streaming 24 MiB"


# --- request bodies ------------------------------------------------------------------------

CHUNKS = [b"part-1;", b"part-2;", b"part-3"]


def _post_streamed(caller: Caller, url: str = URL) -> tuple[int, str, int]:
    """POST a generator body (sync) / async generator body (async)."""
    if isinstance(caller, SyncCaller):
        def body() -> Iterator[bytes]:
            yield from CHUNKS
        r = caller.client.post(url, content=body())
        info = r.extensions["meshsdk"]
        return r.status_code, info.response_flags, info.attempts
    assert isinstance(caller, AsyncCaller)

    async def abody() -> AsyncIterator[bytes]:
        for c in CHUNKS:
            yield c

    async def go() -> tuple[int, str, int]:
        r = await caller.client.post(url, content=abody())
        info = r.extensions["meshsdk"]
        return r.status_code, info.response_flags, info.attempts
    return caller.run(go())


def test_streamed_request_body_is_sent_once_not_retried(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    up = mesh_upstream("reviews", script(Reply(503, b"once"), Reply(200, b"twice")))
    caller = connect(build(RETRY_5XX_AND_RESET))
    assert _post_streamed(caller) == (503, "-", 1)
    assert up.hits == 1
    assert up.requests[0].body == b"".join(CHUNKS)


def test_in_memory_request_body_is_retried_whole(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    # the contrast: the same call with the body in memory is replayed
    up = mesh_upstream("reviews", script(Reply(503, b"once"), Reply(200, b"twice")))
    caller = connect(build(RETRY_5XX_AND_RESET))
    got = caller.request("POST", URL, content=b"".join(CHUNKS))
    assert (got.status, got.attempts, got.body) == (200, 2, b"twice")
    assert [r.body for r in up.requests] == [b"".join(CHUNKS)] * 2


def test_streamed_request_reset_is_not_retried(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    up = mesh_upstream("reviews", lambda req, n: Reply(reset=True))
    caller = connect(build(RETRY_5XX_AND_RESET))
    assert _post_streamed(caller) == (503, "UR", 1)
    assert up.hits == 1


def test_streamed_request_that_could_not_connect_goes_to_the_next_endpoint(
        mesh_config: MeshTestConfig, mesh_upstream: Callable[..., Upstream], build: Build,
        connect: Connect) -> None:
    # Nothing of the body left on a refused connection, so the default policy's
    # connect-failure retry may send it, whole, to another endpoint.
    mesh_config.endpoint("reviews", free_port())
    live = mesh_upstream("reviews", respond(200, "live"))
    caller = connect(build("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"""))
    results = [_post_streamed(caller) for _ in range(3)]
    assert [r[0] for r in results] == [200] * 3
    # round robin alternates dead, live: from the second call on, every call is
    # refused first (the retry took live's turn)
    assert [r[2] for r in results][1:] == [2, 2]
    assert live.hits == 3
    assert [r.body for r in live.requests] == [b"".join(CHUNKS)] * 3


@pytest.mark.parametrize(("size", "replayed"), [(MB, True), (MB + 1, False)],
                         ids=["1MiB-replayed", "over-1MiB-sent-once"])
def test_in_memory_body_is_replayed_up_to_1_mib(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect,
        size: int, replayed: bool) -> None:
    up = mesh_upstream("reviews", script(Reply(503, b"once"), Reply(200, b"twice")))
    caller = connect(build(RETRY_5XX_AND_RESET))
    got = caller.request("POST", URL, content=b"z" * size)
    assert got.status == (200 if replayed else 503)
    assert up.hits == (2 if replayed else 1)
    assert all(len(r.body) == size for r in up.requests)
