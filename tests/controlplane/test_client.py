"""The config service client against a fake ADS server on real gRPC, plus its backoff and cache."""

from __future__ import annotations

import itertools
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc  # type: ignore[import-untyped]

from meshsdk.config import load_string
from meshsdk.controlplane.client import CACHE_FILE, ConfigClient, empty_config, next_backoff
from meshsdk.controlplane.wire import (
    EXTENSION_TYPE_URLS,
    TYPE_URLS,
    Ack,
    ClientMessage,
    Nack,
    ProtoMessage,
    Subscribe,
    discovery_response,
    kind_of,
    parse_request,
    resource_document,
)
from meshsdk.errors import UsageError
from meshsdk.mesh import Mesh
from meshsdk.workload import Workload

WORKLOAD = Workload(name="productpage-v1", namespace="default", labels={"app": "productpage"})

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

Docs = list[dict[str, Any]]


def _documents(text: str) -> Docs:
    result = load_string(text)
    assert not result.errors
    return [resource_document(r) for r in result.resources]


def _with_subset(docs: Docs, subset: str) -> Docs:
    out = [dict(d) for d in docs]
    vs = out[0]
    vs["spec"] = {**vs["spec"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": subset}}]}]}
    return out


class FakeADS(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Follows the protocol: answers each Subscribe with the current snapshot for its type,
    pushes every type again on :meth:`publish`, and records every request it gets."""

    def __init__(self, version: str, documents: Docs) -> None:
        self.lock = threading.Lock()
        self.version = version
        self.documents = documents
        self.seen: list[ClientMessage] = []
        self.sent: dict[tuple[str, str], str] = {}  # (type_url, version) -> nonce
        self.outboxes: list[queue.Queue[ProtoMessage]] = []
        self._nonces = itertools.count(1)

    def _response(self, type_url: str) -> ProtoMessage:
        nonce = f"n{next(self._nonces)}"
        self.sent[(type_url, self.version)] = nonce
        kind = kind_of(type_url)
        return discovery_response(type_url, self.version, nonce,
                                  [d for d in self.documents if d.get("kind") == kind])

    def publish(self, version: str, documents: Docs) -> None:
        with self.lock:
            self.version, self.documents = version, documents
            for outbox in self.outboxes:
                for url in TYPE_URLS.values():
                    outbox.put(self._response(url))

    def StreamAggregatedResources(  # gRPC's generated method name
            self, request_iterator: Iterator[Any], context: Any) -> Iterator[ProtoMessage]:
        outbox: queue.Queue[ProtoMessage] = queue.Queue()

        def read() -> None:
            try:
                for request in request_iterator:
                    message = parse_request(request)
                    with self.lock:
                        self.seen.append(message)
                        # a server without meshsdk's own types: it ignores them
                        if isinstance(message, Subscribe) and \
                                message.type_url not in EXTENSION_TYPE_URLS:
                            outbox.put(self._response(message.type_url))
            except grpc.RpcError:
                pass

        with self.lock:
            self.outboxes.append(outbox)
        threading.Thread(target=read, daemon=True).start()
        try:
            while context.is_active():
                try:
                    yield outbox.get(timeout=0.05)
                except queue.Empty:
                    continue
        finally:
            with self.lock:
                self.outboxes.remove(outbox)

    def of_version(self, kind: type, version: str) -> list[Any]:
        with self.lock:
            return [m for m in self.seen if isinstance(m, kind) and m.version_info == version]


def _serve(servicer: FakeADS, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def _subset(mesh: Mesh) -> str:
    (vs,) = mesh.snapshot.config.of_kind("VirtualService")
    return str(vs.spec.http[0].route[0].destination.subset)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def docs() -> Docs:
    return _documents(ROUTES)


def _connect(port: int, cache: Path, wait: float = 5.0) -> Mesh:
    return Mesh.connect(f"127.0.0.1:{port}", WORKLOAD, cache_dir=cache, wait=wait,
                        telemetry=False)


def test_subscribe_apply_ack_nack_and_update(docs: Docs, tmp_path: Path) -> None:
    servicer = FakeADS("v1", docs)
    server, port = _serve(servicer)
    mesh = _connect(port, tmp_path)
    try:
        status = mesh.status()
        assert (status.connected, status.version, status.source) == (True, "v1", "server")
        assert _subset(mesh) == "v1"
        assert {r.kind for r in mesh.snapshot.config.resources} == \
            {"VirtualService", "DestinationRule"}
        def subscribed() -> set[str]:
            with servicer.lock:
                return {m.type_url for m in servicer.seen if isinstance(m, Subscribe)}
        # the marker is asked for last, maybe after the types already applied
        _eventually(lambda: subscribed() == {*TYPE_URLS.values(), *EXTENSION_TYPE_URLS})
        subscribes = [m for m in servicer.seen if isinstance(m, Subscribe)]
        assert all(m.node is not None and m.node.name == "productpage-v1" for m in subscribes)
        _eventually(lambda: len(servicer.of_version(Ack, "v1")) == len(TYPE_URLS))
        for ack in servicer.of_version(Ack, "v1"):
            assert ack.nonce == servicer.sent[(ack.type_url, "v1")]
        assert (tmp_path / CACHE_FILE).is_file()

        # an invalid VirtualService: every type NACKed, the old config stays
        bad = [dict(d) for d in docs]
        bad[0]["spec"] = {**bad[0]["spec"], "hostz": ["x"]}
        servicer.publish("v2", bad)
        _eventually(lambda: len(servicer.of_version(Nack, "v1")) == len(TYPE_URLS))
        for nack in servicer.of_version(Nack, "v1"):
            assert nack.nonce == servicer.sent[(nack.type_url, "v2")]
            assert "default/reviews" in nack.message and "hostz" in nack.message
        assert _subset(mesh) == "v1"
        status = mesh.status()
        assert status.version == "v1" and status.last_error is not None
        assert "default/reviews" in status.last_error

        # a new valid version: swapped in and ACKed
        before = status.last_change
        servicer.publish("v3", _with_subset(docs, "v2"))
        _eventually(lambda: len(servicer.of_version(Ack, "v3")) == len(TYPE_URLS))
        assert _subset(mesh) == "v2"
        status = mesh.status()
        assert status.version == "v3" and status.last_change is not None
        assert before is not None and status.last_change >= before
    finally:
        mesh.close()
        server.stop(grace=None)
    assert not mesh.status().connected


def test_reconnects_after_server_restart(docs: Docs, tmp_path: Path) -> None:
    servicer = FakeADS("v1", docs)
    server, port = _serve(servicer)
    mesh = Mesh(empty_config(), WORKLOAD, telemetry=False)
    client = ConfigClient(mesh, f"127.0.0.1:{port}", workload=WORKLOAD, cache_dir=tmp_path,
                          rng=random.Random(1), initial_backoff=0.05, max_backoff=0.2)
    client.start()
    try:
        assert client.wait_ready(5)
        server.stop(grace=None).wait()
        _eventually(lambda: not client.status().connected)
        assert client.status().last_error is not None
        restarted = FakeADS("v2", _with_subset(docs, "v2"))
        server, _ = _serve(restarted, port)
        _eventually(lambda: client.status().connected and client.status().version == "v2")
        assert _subset(mesh) == "v2"
        # the resubscription told the new server which version the client runs
        assert any(isinstance(m, Subscribe) and m.version_info == "v1" for m in restarted.seen)
    finally:
        client.close()
        server.stop(grace=None)


def test_cache_serves_when_the_server_is_down(docs: Docs, tmp_path: Path) -> None:
    servicer = FakeADS("v1", docs)
    server, port = _serve(servicer)
    mesh = _connect(port, tmp_path)
    try:
        assert mesh.status().version == "v1"
    finally:
        mesh.close()
        server.stop(grace=None)

    again = _connect(_free_port(), tmp_path)
    try:
        status = again.status()
        assert (status.connected, status.version, status.source) == (False, "v1", "cache")
        assert _subset(again) == "v1"
    finally:
        again.close()

    # no cache and no server: returns after the wait, empty and not connected
    empty = _connect(_free_port(), tmp_path / "none", wait=0.3)
    try:
        status = empty.status()
        assert (status.connected, status.version, status.source) == (False, None, None)
        assert status.last_error is not None and not empty.snapshot.config.resources
    finally:
        empty.close()


def test_status_needs_connect() -> None:
    with pytest.raises(UsageError):
        Mesh(empty_config(), WORKLOAD, telemetry=False).status()


def test_next_backoff_grows_caps_and_jitters() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        base = min(30.0, 0.5 * 2**attempt)
        delays = [next_backoff(attempt, rng) for _ in range(200)]
        assert all(0.8 * base <= d <= 1.2 * base for d in delays)
        assert max(delays) - min(delays) > 0.2 * base  # actually jittered
    assert next_backoff(10_000, rng) <= 36.0
    no_jitter = [next_backoff(a, rng, jitter=0.0) for a in range(8)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
