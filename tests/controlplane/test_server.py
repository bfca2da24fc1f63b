"""ConfigServer over real gRPC and DebugServer over real HTTP, fed by a real watched
directory (bounded polling with deadlines, never fixed sleeps for results)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc  # type: ignore[import-untyped]

from meshsdk.controlplane.filestore import ConfigStore
from meshsdk.controlplane.server import ConfigServer, DebugServer
from meshsdk.controlplane.wire import (
    SNAPSHOT_TYPE_URL,
    TYPE_URLS,
    NodeIdentity,
    ProtoMessage,
    Push,
    ack_request,
    decode_response,
    nack_request,
    read_snapshot,
    subscribe_request,
    type_url_of,
)
from tests.controlplane.conftest import WAIT, wait_for

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews}}
    timeout: {timeout}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
"""

PRIVATE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private, namespace: other}
spec:
  hosts: [secret.other.svc.cluster.local]
  exportTo: ["."]
  http:
  - route:
    - destination: {host: secret.other.svc.cluster.local}
"""

DEFAULT_NODE = NodeIdentity(ip="127.0.0.1", name="productpage-v1", namespace="default",
                            labels={"app": "productpage"})
OTHER_NODE = NodeIdentity(ip="127.0.0.2", name="secret-v1", namespace="other",
                          labels={"app": "secret"})


class Client:
    """A raw ADS stream: requests go through a queue, responses are read by a thread."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.outbox: queue.Queue[ProtoMessage | None] = queue.Queue()
        self.inbox: queue.Queue[Any] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.StreamAggregatedResources(self._requests(), timeout=30)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[ProtoMessage]:
        while (item := self.outbox.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for response in self.call:
                self.inbox.put(response)
        except grpc.RpcError as exc:
            self.inbox.put(exc)

    def send(self, request: ProtoMessage) -> None:
        self.outbox.put(request)

    def next(self, timeout: float = WAIT) -> Push:
        item = self.inbox.get(timeout=timeout)
        if isinstance(item, Exception):
            raise item
        return decode_response(item)

    def subscribe_all(self, node: NodeIdentity) -> dict[str, Push]:
        """Subscribe to every type (node on the first request) and collect one push each."""
        for i, url in enumerate(TYPE_URLS.values()):
            self.send(subscribe_request(url, node=node if i == 0 else None))
        return self.round()

    def round(self) -> dict[str, Push]:
        """One push per type URL (e.g. after a new version)."""
        pushes: dict[str, Push] = {}
        while len(pushes) < len(TYPE_URLS):
            push = self.next()
            assert push.type_url not in pushes, f"{push.type_url} pushed twice"
            pushes[push.type_url] = push
        return pushes

    def ack_all(self, pushes: dict[str, Push]) -> None:
        for push in pushes.values():
            self.send(ack_request(push.type_url, push.version_info, push.nonce))

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()
        self.channel.close()
        self._thread.join(WAIT)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "routes.yaml").write_text(ROUTES.format(timeout="5s"))
    (tmp_path / "private.yaml").write_text(PRIVATE)
    return tmp_path


@pytest.fixture
def store(config_dir: Path) -> Iterator[ConfigStore]:
    with ConfigStore(config_dir, quiet=0.05) as s:
        yield s


@pytest.fixture
def server(store: ConfigStore) -> Iterator[ConfigServer]:
    with ConfigServer(store, port=0) as s:
        yield s


@pytest.fixture
def connect(server: ConfigServer) -> Iterator[Callable[[], Client]]:
    clients: list[Client] = []

    def make() -> Client:
        clients.append(Client(server.port))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def names(push: Push) -> list[str]:
    return [f"{r.namespace}/{r.name}" for r in push.resources]


def syncz_one(server: ConfigServer) -> dict[str, Any]:
    entries = server.syncz()
    assert len(entries) == 1, entries
    return entries[0]


def test_subscribe_all_types_then_ack_and_nack(server: ConfigServer, store: ConfigStore,
                                               connect: Callable[[], Client]) -> None:
    client = connect()
    pushes = client.subscribe_all(DEFAULT_NODE)
    assert set(pushes) == set(TYPE_URLS.values())
    assert {p.version_info for p in pushes.values()} == {store.version}
    assert len({p.nonce for p in pushes.values()}) == len(pushes)
    assert names(pushes[type_url_of("VirtualService")]) == ["default/reviews"]  # private hidden
    assert names(pushes[type_url_of("DestinationRule")]) == ["default/reviews"]
    assert all(not p.resources for url, p in pushes.items()
               if url not in {type_url_of("VirtualService"), type_url_of("DestinationRule")})

    entry = syncz_one(server)
    assert (entry["node_id"], entry["namespace"], entry["workload"]) == \
        (DEFAULT_NODE.node_id, "default", "productpage-v1")
    assert entry["acked_version"] is None
    client.ack_all(pushes)
    wait_for(lambda: syncz_one(server)["acked_version"] == store.version, "the ACK")

    dr = pushes[type_url_of("DestinationRule")]
    client.send(nack_request(dr.type_url, dr.version_info, dr.nonce, "default/reviews: nope"))
    wait_for(lambda: syncz_one(server)["last_nack"] is not None, "the NACK")
    nack = syncz_one(server)["last_nack"]
    assert (nack["type_url"], nack["version"], nack["message"]) == \
        (dr.type_url, store.version, "default/reviews: nope")
    # a stale nonce is ignored, as istiod does
    client.send(ack_request(dr.type_url, "v0-old", "not-a-nonce"))
    client.send(nack_request(dr.type_url, dr.version_info, dr.nonce, "second"))
    wait_for(lambda: syncz_one(server)["last_nack"]["message"] == "second", "the 2nd NACK")
    assert syncz_one(server)["acked_version"] == store.version


def test_export_to_dot_is_scoped_to_its_namespace(connect: Callable[[], Client]) -> None:
    other = connect().subscribe_all(OTHER_NODE)
    assert sorted(names(other[type_url_of("VirtualService")])) == \
        ["default/reviews", "other/private"]
    default = connect().subscribe_all(DEFAULT_NODE)
    assert names(default[type_url_of("VirtualService")]) == ["default/reviews"]


def test_edit_pushes_every_type_and_invalid_edit_pushes_nothing(
        server: ConfigServer, store: ConfigStore, config_dir: Path,
        connect: Callable[[], Client]) -> None:
    client = connect()
    first = client.subscribe_all(DEFAULT_NODE)
    client.ack_all(first)
    v1 = store.version

    (config_dir / "routes.yaml").write_text(ROUTES.format(timeout="9s"))
    second = client.round()
    v2 = store.version
    assert v2 != v1
    assert {p.version_info for p in second.values()} == {v2}
    vs = second[type_url_of("VirtualService")].resources[0]
    old = first[type_url_of("VirtualService")].resources[0]
    assert vs.spec.http[0].timeout != old.spec.http[0].timeout
    client.ack_all(second)
    wait_for(lambda: syncz_one(server)["acked_version"] == v2, "the ACK of v2")

    (config_dir / "routes.yaml").write_text(ROUTES.format(timeout="banana"))
    wait_for(lambda: store.last_error is not None, "the store to reject the edit")
    assert store.version == v2
    with pytest.raises(queue.Empty):
        client.inbox.get(timeout=0.3)
    dump = server.config_dump()
    assert dump["version"] == v2
    assert "'banana'" in dump["last_error"]["message"]
    assert dump["last_error"]["serving"] == v2
    assert sorted(d["metadata"]["name"] for d in dump["resources"]["VirtualService"]) == \
        ["private", "reviews"]


def test_disconnect_removes_the_subscriber(server: ConfigServer,
                                           connect: Callable[[], Client]) -> None:
    client = connect()
    client.subscribe_all(DEFAULT_NODE)
    assert syncz_one(server)["node_id"] == DEFAULT_NODE.node_id
    client.close()
    wait_for(lambda: server.syncz() == [], "the subscriber to go away")
    gone = server.recently_disconnected()
    assert [g["node_id"] for g in gone] == [DEFAULT_NODE.node_id]
    assert "disconnected_at" in gone[0]


def test_first_request_without_node_is_refused(connect: Callable[[], Client]) -> None:
    client = connect()
    client.send(subscribe_request(type_url_of("Gateway")))
    with pytest.raises(grpc.RpcError) as err:
        client.next()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node" in err.value.details()


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_debug_http_endpoints(server: ConfigServer, store: ConfigStore,
                              connect: Callable[[], Client]) -> None:
    client = connect()
    client.ack_all(client.subscribe_all(OTHER_NODE))
    wait_for(lambda: syncz_one(server)["acked_version"] == store.version, "the ACK")
    with DebugServer(server, port=0) as debug:
        assert _get(debug.port, "/healthz")[0] == 200
        assert _get(debug.port, "/readyz")[0] == 200
        status, ctype, body = _get(debug.port, "/debug/syncz")
        assert (status, ctype) == (200, "application/json")
        [entry] = json.loads(body)
        assert (entry["namespace"], entry["workload"], entry["acked_version"]) == \
            ("other", "secret-v1", store.version)
        status, _, body = _get(debug.port, "/debug/config_dump")
        dump = json.loads(body)
        assert status == 200 and dump["version"] == store.version
        assert dump["last_error"] is None
        assert sorted(dump["resources"]) == ["DestinationRule", "VirtualService"]
        assert _get(debug.port, "/nope")[0] == 404
        server.stop(grace=0)
        assert _get(debug.port, "/readyz")[0] == 503
        assert _get(debug.port, "/healthz")[0] == 200


def test_main_serves_until_sigterm(config_dir: Path) -> None:
    """``python -m meshsdk.controlplane.server`` starts, answers /readyz, stops cleanly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshsdk.controlplane.server", "--config", str(config_dir),
         "--port", "0", "--debug-port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 10
        while "serving" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        debug_port = int(line.rsplit(":", 1)[1])
        assert _get(debug_port, "/readyz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_meshctl_serve_refuses_an_invalid_directory(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from meshsdk.cli import main as meshctl
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: x}\nspec: {hosts: [x], http: [{route: [{weight: -1}]}]}\n")
    assert meshctl(["serve", "--config", str(tmp_path), "--port", "0",
                    "--debug-port", "0"]) == 1
    assert "bad.yaml" in capsys.readouterr().err


def _metrics(port: int) -> dict[str, Any]:
    """``/metrics`` parsed as Prometheus text: {family name: family}."""
    from prometheus_client.parser import text_string_to_metric_families
    status, ctype, body = _get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body)}


def _value(families: dict[str, Any], family: str, sample: str,
           **labels: str) -> float:
    return sum(float(s.value) for s in families[family].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_pushes_subscribers_latency_and_nacks(store: ConfigStore) -> None:
    now = [1000.0]
    with ConfigServer(store, port=0, clock=lambda: now[0]) as server, \
            DebugServer(server, port=0) as debug:
        client = Client(server.port)
        try:
            pushes = client.subscribe_all(DEFAULT_NODE)
            now[0] += 0.25
            client.ack_all(pushes)
            wait_for(lambda: syncz_one(server)["acked_version"] == store.version, "the ACK")
            m = _metrics(debug.port)
            for kind in TYPE_URLS:
                assert _value(m, "meshsdk_xds_pushes", "meshsdk_xds_pushes_total",
                              type=kind) == 1, kind
            assert _value(m, "meshsdk_xds_connected_subscribers",
                          "meshsdk_xds_connected_subscribers") == 1
            latency = "meshsdk_xds_push_latency_seconds"
            assert _value(m, latency, latency + "_count") == 1
            assert _value(m, latency, latency + "_sum") == pytest.approx(0.25)
            assert _value(m, "meshsdk_xds_nacks", "meshsdk_xds_nacks_total") == 0

            dr = pushes[type_url_of("DestinationRule")]
            client.send(nack_request(dr.type_url, dr.version_info, dr.nonce, "nope"))
            wait_for(lambda: syncz_one(server)["last_nack"] is not None, "the NACK")
            m = _metrics(debug.port)
            assert _value(m, "meshsdk_xds_nacks", "meshsdk_xds_nacks_total",
                          type="DestinationRule") == 1
            assert _value(m, latency, latency + "_count") == 1   # once per version
        finally:
            client.close()
        wait_for(lambda: server.syncz() == [], "the subscriber to go away")
        assert _value(_metrics(debug.port), "meshsdk_xds_connected_subscribers",
                      "meshsdk_xds_connected_subscribers") == 0


def test_with_the_marker_only_changed_types_are_pushed(
        server: ConfigServer, store: ConfigStore, config_dir: Path,
        connect: Callable[[], Client]) -> None:
    """A subscriber of the snapshot marker gets only the types whose resources changed
    for it, then a marker naming the version of every type it holds."""
    watcher = connect()
    first = watcher.subscribe_all(DEFAULT_NODE)
    watcher.ack_all(first)
    watcher.send(subscribe_request(SNAPSHOT_TYPE_URL))
    marker = watcher.inbox.get(timeout=WAIT)
    assert marker.type_url == SNAPSHOT_TYPE_URL
    assert read_snapshot(marker) == {url: store.version for url in TYPE_URLS.values()}
    watcher.send(ack_request(SNAPSHOT_TYPE_URL, marker.version_info, marker.nonce))

    # an endpoint registers: WorkloadEntries alone, then the marker
    node = NodeIdentity(ip="127.0.0.9", name="ratings-v1", namespace="default",
                        labels={"app": "ratings"}, auto_register=True)
    registering = connect()
    registering.send(subscribe_request(type_url_of("WorkloadEntry"), node=node))
    push = watcher.next()
    assert push.type_url == type_url_of("WorkloadEntry")
    assert names(push) == ["default/auto-ratings-v1-127-0-0-9"]
    assert push.version_info.startswith(store.version + "+r")
    marker = watcher.inbox.get(timeout=WAIT)
    held = read_snapshot(marker)
    assert held[type_url_of("WorkloadEntry")] == push.version_info == marker.version_info
    assert held[type_url_of("VirtualService")] == store.version
    watcher.send(ack_request(push.type_url, push.version_info, push.nonce))
    watcher.send(ack_request(SNAPSHOT_TYPE_URL, marker.version_info, marker.nonce))
    wait_for(lambda: any(e["acked_version"] == marker.version_info for e in server.syncz()),
             "the ACK of the incremental push")

    # an edit of the VirtualService: VirtualServices alone, then the marker
    (config_dir / "routes.yaml").write_text(ROUTES.format(timeout="9s"))
    push = watcher.next()
    assert push.type_url == type_url_of("VirtualService")
    marker = watcher.inbox.get(timeout=WAIT)
    assert marker.type_url == SNAPSHOT_TYPE_URL
    assert read_snapshot(marker)[type_url_of("VirtualService")] == push.version_info
    with pytest.raises(queue.Empty):  # nothing else follows
        watcher.inbox.get(timeout=0.3)


def test_a_sidecar_scopes_what_its_workloads_receive(
        store: ConfigStore, config_dir: Path, connect: Callable[[], Client]) -> None:
    (config_dir / "sidecar.yaml").write_text("""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage, namespace: default}
spec:
  workloadSelector: {labels: {app: productpage}}
  egress: [{hosts: ["istio-system/*"]}]
""")
    wait_for(lambda: len(store.current.config.of_kind("Sidecar")) == 1, "the Sidecar")
    scoped = connect().subscribe_all(DEFAULT_NODE)
    assert names(scoped[type_url_of("VirtualService")]) == []
    assert names(scoped[type_url_of("DestinationRule")]) == []
    assert names(scoped[type_url_of("Sidecar")]) == ["default/productpage"]
    other = NodeIdentity(ip="127.0.0.3", name="reviews-v1", namespace="default",
                         labels={"app": "reviews"})
    unscoped = connect().subscribe_all(other)
    assert names(unscoped[type_url_of("VirtualService")]) == ["default/reviews"]


@pytest.mark.parametrize("nonce", ["n1", "x" * 300])
def test_a_nonce_appended_to_the_serialized_response_is_the_nonce_set(nonce: str) -> None:
    from envoy.service.discovery.v3 import discovery_pb2  # type: ignore[import-untyped]

    from meshsdk.controlplane.server import _Response
    from meshsdk.controlplane.wire import discovery_response
    template = discovery_response(type_url_of("Sidecar"), "v7", "", [])
    sent = discovery_pb2.DiscoveryResponse.FromString(
        _Response(type_url_of("Sidecar"), template.SerializeToString(), nonce).wire_bytes())
    expected = discovery_pb2.DiscoveryResponse()
    expected.CopyFrom(template)
    expected.nonce = nonce
    assert sent == expected


def test_a_slow_subscriber_gets_the_latest_state_once_and_markers_last() -> None:
    """The outbox conflates: a waiting response of a type is replaced by a newer one in
    place, an older waiting marker is dropped and the new one goes last."""
    import asyncio

    from meshsdk.controlplane.server import _Outbox, _Response

    def response(url: str, nonce: str) -> _Response:
        return _Response(url, b"", nonce)

    vs, dr = type_url_of("VirtualService"), type_url_of("DestinationRule")

    async def drain(box: _Outbox, n: int) -> list[str]:
        out = []
        for _ in range(n):
            item = await box.get()
            assert isinstance(item, _Response)
            out.append(item.nonce)
        return out

    box = _Outbox()
    for item in (response(vs, "vs1"), response(SNAPSHOT_TYPE_URL, "m1"),  # version 1
                 response(dr, "dr2"), response(SNAPSHOT_TYPE_URL, "m2"),  # version 2
                 response(vs, "vs3"), response(SNAPSHOT_TYPE_URL, "m3")):  # version 3
        box.put(item)
    assert asyncio.run(drain(box, 3)) == ["vs3", "dr2", "m3"]

    box = _Outbox()  # once taken, a response is not replaced: the next one queues
    box.put(response(vs, "vs1"))
    assert asyncio.run(drain(box, 1)) == ["vs1"]
    box.put(response(vs, "vs2"))
    box.put(None)
    assert asyncio.run(drain(box, 1)) == ["vs2"]
    assert asyncio.run(box.get()) is None
