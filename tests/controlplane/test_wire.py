"""The xDS wire format: encode, serialize, parse, decode and re-validate, plus a real gRPC hop."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from envoy.service.discovery.v3 import (  # type: ignore[import-untyped]
    ads_pb2_grpc,
    discovery_pb2,
)
from google.protobuf import any_pb2, json_format, struct_pb2  # type: ignore[import-untyped]

from meshsdk.config import Resource, load_path, load_string
from meshsdk.config.kinds import KINDS
from meshsdk.controlplane.wire import (
    STRUCT_TYPE_URL,
    TYPE_URLS,
    Ack,
    Nack,
    NodeIdentity,
    ProtoMessage,
    Subscribe,
    WireError,
    ack_request,
    config_for,
    content_version,
    decode_resource,
    decode_response,
    discovery_response,
    encode_resource,
    kind_of,
    nack_request,
    parse_request,
    read_resource,
    request_from_bytes,
    resource_document,
    response_from_bytes,
    subscribe_request,
    type_url_of,
)
from meshsdk.workload import Workload

MORE_KINDS = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge, labels: {team: a}, annotations: {note: x}}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: edge, creationTimestamp: "2024-01-02T03:04:05Z"}
spec:
  egress:
  - hosts: ["./*"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: edge}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: edge}
spec:
  action: ALLOW
  rules:
  - to:
    - operation: {methods: [GET]}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: edge}
spec:
  tracing:
  - randomSamplingPercentage: 12.5
"""


def _by_kind(resources: list[Resource]) -> dict[str, list[Resource]]:
    out: dict[str, list[Resource]] = {}
    for r in resources:
        out.setdefault(r.kind, []).append(r)
    return out


@pytest.fixture(scope="module")
def bookinfo() -> list[Resource]:
    result = load_path(Path(__file__).resolve().parents[2] / "examples" / "bookinfo")
    assert not result.errors
    return list(result.resources)


def _over_the_wire(message: ProtoMessage) -> ProtoMessage:
    return response_from_bytes(message.SerializeToString())


# --- type URLs ---------------------------------------------------------------------------


def test_type_urls_cover_every_kind_at_a_served_version() -> None:
    assert set(TYPE_URLS) == set(KINDS)
    for kind, url in TYPE_URLS.items():
        group, version, name = url.split("/")
        assert (group, name) == (KINDS[kind].group, kind)
        assert version in KINDS[kind].versions
        assert kind_of(url) == kind == kind_of(f"{group}/v1/{kind}")
    assert type_url_of("VirtualService") == "networking.istio.io/v1alpha3/VirtualService"
    for bad in ("networking.istio.io/v9/VirtualService", "security.istio.io/v1/VirtualService",
                "type.googleapis.com/envoy.config.cluster.v3.Cluster", ""):
        with pytest.raises(WireError):
            kind_of(bad)
    with pytest.raises(WireError):
        type_url_of("EnvoyFilter")


# --- resources ---------------------------------------------------------------------------


def test_every_bookinfo_kind_round_trips_and_revalidates(bookinfo: list[Resource]) -> None:
    decoded: list[Resource] = []
    for kind, group in _by_kind(bookinfo).items():
        url = type_url_of(kind)
        response = discovery_response(url, "v1", "nonce-1", group)
        push = decode_response(_over_the_wire(response))
        assert (push.type_url, push.version_info, push.nonce) == (url, "v1", "nonce-1")
        assert [resource_document(r) for r in push.resources] == \
            [resource_document(r) for r in group]
        assert [r.spec for r in push.resources] == [r.spec for r in group]
        decoded.extend(push.resources)
    assert {r.kind for r in decoded} >= {"VirtualService", "DestinationRule", "ServiceEntry",
                                         "WorkloadEntry"}
    config = config_for(decoded)
    assert sorted(r.key for r in config.resources) == sorted(r.key for r in bookinfo)
    assert [r.order for r in config.resources] == list(range(len(decoded)))


def test_other_kinds_with_metadata_round_trip() -> None:
    result = load_string(MORE_KINDS)
    assert not result.errors, [d.format() for d in result.errors]
    assert len(result.resources) == 5
    for r in result.resources:
        back = decode_resource(encode_resource(r), type_url_of(r.kind))
        assert resource_document(back) == resource_document(r)
        assert (back.labels, back.annotations) == (r.labels, r.annotations)
        assert back.creation_timestamp == r.creation_timestamp
    telemetry = result.resources[-1]
    assert resource_document(telemetry)["spec"]["tracing"][0]["randomSamplingPercentage"] == 12.5


def test_istio_corpus_round_trips(corpus_dir: Path) -> None:
    """Every supported document of Istio's own YAML survives the wire unchanged."""
    for folder in ("bookinfo", "validation-dataset", "validation-valid"):
        result = load_path(corpus_dir / folder)
        for kind, group in _by_kind(list(result.resources)).items():
            response = discovery_response(type_url_of(kind), "v", "n", group)
            push = decode_response(_over_the_wire(response))
            assert [(resource_document(r), r.spec) for r in push.resources] == \
                [(resource_document(r), r.spec) for r in group], f"{folder} {kind}"


def test_resource_envelope(bookinfo: list[Resource]) -> None:
    reviews = next(r for r in bookinfo if r.ref == "VirtualService default/reviews")
    pb: Any = encode_resource(reviews)
    assert pb.name == "default/reviews"
    assert pb.resource.type_url == STRUCT_TYPE_URL
    document = resource_document(reviews)
    assert pb.version == content_version(document)
    assert read_resource(pb).document == document
    # a plain document encodes the same as the Resource it describes
    assert encode_resource(document).SerializeToString() == pb.SerializeToString()
    # integral numbers come back as ints (Struct only has doubles)
    weights = [d["weight"] for d in read_resource(pb).document["spec"]["http"][1]["route"]]
    assert weights == [80, 20] and all(type(w) is int for w in weights)


def _tamper(resource: Resource, edit: Any) -> ProtoMessage:
    """Re-encode a resource after ``edit`` changed its document (so the hash is consistent)."""
    document = resource_document(resource)
    edit(document)
    return encode_resource(document)


def test_invalid_document_fails_with_the_resource_name(bookinfo: list[Resource]) -> None:
    reviews = next(r for r in bookinfo if r.ref == "VirtualService default/reviews")
    bad = _tamper(reviews, lambda d: d["spec"].update(hostz=["x"]))
    with pytest.raises(WireError) as err:
        decode_resource(bad, type_url_of("VirtualService"))
    assert err.value.resource == "default/reviews"
    assert "default/reviews" in str(err.value) and "hostz" in str(err.value)
    # and a whole response carrying it is rejected
    packed = any_pb2.Any()
    packed.Pack(bad)
    response = discovery_pb2.DiscoveryResponse(type_url=type_url_of("VirtualService"),
                                               version_info="v2", nonce="n2",
                                               resources=[packed])
    with pytest.raises(WireError, match="default/reviews"):
        decode_response(_over_the_wire(response))


def test_semantic_rules_run_on_decode(bookinfo: list[Resource]) -> None:
    reviews = next(r for r in bookinfo if r.ref == "VirtualService default/reviews")
    bad = _tamper(reviews, lambda d: d["spec"]["http"][1]["route"][0].update(weight=-5))
    with pytest.raises(WireError, match="default/reviews"):
        decode_resource(bad)


def test_altered_body_breaks_the_version(bookinfo: list[Resource]) -> None:
    reviews = next(r for r in bookinfo if r.ref == "VirtualService default/reviews")
    pb: Any = encode_resource(reviews)
    document = resource_document(reviews)
    document["spec"]["hosts"] = ["evil"]
    body = struct_pb2.Struct()
    json_format.ParseDict(document, body)
    packed = any_pb2.Any()
    packed.Pack(body)
    pb.resource.CopyFrom(packed)
    with pytest.raises(WireError, match=r"default/reviews: version .* does not match"):
        read_resource(pb)


def test_envelope_mismatches_are_rejected(bookinfo: list[Resource]) -> None:
    reviews = next(r for r in bookinfo if r.ref == "VirtualService default/reviews")
    pb: Any = encode_resource(reviews)
    with pytest.raises(WireError, match="kind 'VirtualService' sent as"):
        decode_resource(pb, type_url_of("DestinationRule"))
    pb.name = "other/reviews"
    with pytest.raises(WireError, match="other/reviews: metadata says 'default/reviews'"):
        decode_resource(pb)
    pb.resource.type_url = "type.googleapis.com/google.protobuf.Value"
    with pytest.raises(WireError, match="not a Struct"):
        read_resource(pb)


def test_duplicates_and_unencodable_values(bookinfo: list[Resource]) -> None:
    reviews = next(r for r in bookinfo if r.ref == "VirtualService default/reviews")
    response = discovery_response(type_url_of("VirtualService"), "v", "n", [reviews, reviews])
    with pytest.raises(WireError, match="sent twice"):
        decode_response(response)
    document = resource_document(reviews)
    document["spec"]["bad"] = object()
    with pytest.raises(WireError, match="not JSON-compatible"):
        encode_resource(document)
    document["spec"]["bad"] = 2**60
    with pytest.raises(WireError, match="2\\*\\*53"):
        encode_resource(document)
    with pytest.raises(WireError, match="malformed"):
        response_from_bytes(b"\xff\xff\xff")


# --- requests ----------------------------------------------------------------------------

NODE = NodeIdentity(
    ip="10.0.0.7", name="reviews-v2-abc", namespace="bookinfo",
    labels={"app": "reviews", "version": "v2"}, service_account="bookinfo-reviews",
    instance_ips=("10.0.0.7", "fd00::7"), ports={"http": 9080, "admin": 15000},
    locality="us-east1/us-east1-b",
)


def _request_over_the_wire(message: ProtoMessage) -> Any:
    return parse_request(request_from_bytes(message.SerializeToString()))


def test_node_identity_round_trip() -> None:
    assert NODE.node_id == "sidecar~10.0.0.7~reviews-v2-abc.bookinfo~bookinfo.svc.cluster.local"
    request: Any = subscribe_request(type_url_of("ServiceEntry"), node=NODE)
    assert request.node.id == NODE.node_id
    assert request.node.metadata.fields["INSTANCE_IPS"].string_value == "10.0.0.7,fd00::7"
    assert request.node.cluster == "reviews.bookinfo"
    message = _request_over_the_wire(request)
    assert isinstance(message, Subscribe)
    assert message.node == NODE
    workload = message.node.workload()
    assert (workload.app, workload.version, workload.locality) == \
        ("reviews", "v2", "us-east1/us-east1-b")


def test_node_from_workload_and_malformed_ids() -> None:
    workload = Workload(name="ratings-v1", namespace="default", labels={"app": "ratings"},
                        service_account="sa")
    node = NodeIdentity.from_workload(workload, "127.0.0.1", ports={"http": 19085})
    assert node.instance_ips == ("127.0.0.1",)
    parsed = _request_over_the_wire(subscribe_request(type_url_of("Sidecar"), node=node))
    assert parsed.node == node and parsed.node.workload() == workload
    raw = discovery_pb2.DiscoveryRequest(type_url=type_url_of("Sidecar"))
    for bad_id in ("", "sidecar~1.2.3.4~noname~x", "robot~1.2.3.4~a.b~b.svc.cluster.local"):
        raw.node.id = bad_id
        with pytest.raises(WireError, match="node id"):
            parse_request(raw)


def test_subscribe_ack_and_nack_are_told_apart() -> None:
    url = type_url_of("DestinationRule")
    first = _request_over_the_wire(subscribe_request(url, ["default/reviews"], node=NODE))
    assert first == Subscribe(url, ("default/reviews",), NODE, "")
    ack = _request_over_the_wire(ack_request(url, "v7", "nonce-7", ["default/reviews"]))
    assert ack == Ack(url, ("default/reviews",), None, "v7", "nonce-7")
    message = "default/reviews: invalid DestinationRule: spec.hostz: unknown field"
    nack = _request_over_the_wire(nack_request(url, "v6", "nonce-7", message))
    assert nack == Nack(url, (), None, "v6", "nonce-7", message, 3)
    with pytest.raises(WireError, match="unknown type URL"):
        parse_request(discovery_pb2.DiscoveryRequest(type_url="nope"))


# --- a real gRPC hop -----------------------------------------------------------------------


class _EchoADS(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Answers each subscription with the resources it holds for that type; records the rest."""

    def __init__(self, resources: list[Resource]) -> None:
        self.resources = resources
        self.seen: list[Any] = []

    def StreamAggregatedResources(  # gRPC's generated method name
            self, request_iterator: Iterator[Any], context: Any) -> Iterator[ProtoMessage]:
        for request in request_iterator:
            message = parse_request(request)
            self.seen.append(message)
            if isinstance(message, Subscribe):
                kind = kind_of(message.type_url)
                yield discovery_response(message.type_url, "v1", "n1",
                                         [r for r in self.resources if r.kind == kind])


def test_grpc_stream_round_trip(bookinfo: list[Resource]) -> None:
    servicer = _EchoADS(bookinfo)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        outbox: queue.Queue[ProtoMessage | None] = queue.Queue()

        def requests() -> Iterator[ProtoMessage]:
            while (item := outbox.get(timeout=5)) is not None:
                yield item

        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        url = type_url_of("VirtualService")
        outbox.put(subscribe_request(url, node=NODE))
        stream = stub.StreamAggregatedResources(requests(), timeout=5)
        push = decode_response(next(stream))
        expected = [r for r in bookinfo if r.kind == "VirtualService"]
        assert [resource_document(r) for r in push.resources] == \
            [resource_document(r) for r in expected]
        outbox.put(ack_request(url, push.version_info, push.nonce))
        outbox.put(None)
        assert list(stream) == []
        assert servicer.seen == [Subscribe(url, (), NODE, ""), Ack(url, (), None, "v1", "n1")]
    finally:
        channel.close()
        server.stop(grace=None)


def test_health_reports_parse_as_istio_sends_them() -> None:
    from meshsdk.controlplane.wire import HEALTH_TYPE_URL, Health, health_request
    down = health_request(False, "draining")
    assert down.type_url == HEALTH_TYPE_URL
    assert parse_request(down) == Health(False, "draining", None)
    assert parse_request(health_request(True)) == Health(True, "", None)
    assert parse_request(health_request(False)) == Health(False, "not ready", None)
