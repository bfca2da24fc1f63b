"""The config service's wire format: Istio resources carried over xDS (ADS).

This follows what Istio's MCP-over-xDS did: the ``type_url`` of a request or
response is the kind's GroupVersionKind string, and each entry of a response's
``resources`` is an ``Any`` holding an Envoy ``envoy.service.discovery.v3.Resource``
(the wrapper Envoy accepts in state-of-the-world responses):

* ``name`` is ``namespace/name``;
* ``version`` is a content hash of the document (:func:`content_version`);
* ``resource`` is a ``google.protobuf.Any`` holding a ``google.protobuf.Struct``
  of the Kubernetes-style document (apiVersion, kind, metadata, spec), i.e. the
  YAML the user wrote, as JSON.

A receiver never trusts the wire: :func:`decode_resource` re-validates each
document through the project's loader, and any problem is a :class:`WireError`
naming the resource, ready to become a NACK (:func:`nack_request`).

Everything protobuf is confined to this module. Callers see typed dataclasses
(:class:`NodeIdentity`, :class:`Subscribe`, :class:`Ack`, :class:`Nack`,
:class:`Push`) and opaque :class:`ProtoMessage` values to hand to gRPC.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeAlias, cast

from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.discovery.v3 import discovery_pb2  # type: ignore[import-untyped]
from google.protobuf import any_pb2, json_format, struct_pb2  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.rpc import status_pb2  # type: ignore[import-untyped]

from meshsdk import __version__
from meshsdk.config.kinds import KINDS
from meshsdk.config.loader import (
    LoadResult,
    config_from_result,
    load_mesh_config_string,
    load_string,
)
from meshsdk.config.mesh import MeshConfig
from meshsdk.config.resource import Config, Resource
from meshsdk.errors import MeshError
from meshsdk.workload import Workload

# --- type URLs -----------------------------------------------------------------------

TYPE_URLS: Final[Mapping[str, str]] = MappingProxyType({
    "VirtualService": "networking.istio.io/v1alpha3/VirtualService",
    "DestinationRule": "networking.istio.io/v1alpha3/DestinationRule",
    "ServiceEntry": "networking.istio.io/v1alpha3/ServiceEntry",
    "WorkloadEntry": "networking.istio.io/v1alpha3/WorkloadEntry",
    "WorkloadGroup": "networking.istio.io/v1alpha3/WorkloadGroup",
    "Gateway": "networking.istio.io/v1alpha3/Gateway",
    "Sidecar": "networking.istio.io/v1alpha3/Sidecar",
    "PeerAuthentication": "security.istio.io/v1beta1/PeerAuthentication",
    "AuthorizationPolicy": "security.istio.io/v1beta1/AuthorizationPolicy",
    "RequestAuthentication": "security.istio.io/v1beta1/RequestAuthentication",
    "Telemetry": "telemetry.istio.io/v1alpha1/Telemetry",
})
"""Kind -> xDS type URL: Istio's GVK string at its internal (storage) version, as
Istio's MCP-over-xDS config sources used. The document inside keeps its own
``apiVersion`` (``v1`` and friends); the type URL only names the collection."""

STRUCT_TYPE_URL: Final = "type.googleapis.com/google.protobuf.Struct"
"""The ``Any`` type of every resource body."""

RESOURCE_TYPE_URL: Final = "type.googleapis.com/envoy.service.discovery.v3.Resource"
"""The ``Any`` type of each ``DiscoveryResponse.resources`` entry: Envoy's Resource
wrapper (name, version, body), as Envoy accepts it in state-of-the-world responses."""

INVALID_ARGUMENT: Final = 3
"""google.rpc.Code for a NACK: the pushed config was rejected as invalid."""

_MAX_SAFE_INT: Final = 2**53
"""Struct numbers are doubles: integers beyond this would silently change."""

_NODE_TYPES: Final = frozenset({"sidecar", "router", "waypoint", "ztunnel"})
"""Istio's proxy types, the first field of a node id."""


class ProtoMessage(Protocol):
    """An opaque generated protobuf message: hand it to gRPC or serialize it."""

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes:
        """The message's wire bytes."""
        ...


class WireError(MeshError):
    """A message or resource that cannot be accepted; ``str()`` is the NACK message.

    ``resource`` names the offending resource (``namespace/name``) when there is one.
    """

    def __init__(self, message: str, resource: str | None = None) -> None:
        self.resource = resource
        super().__init__(f"{resource}: {message}" if resource else message)


def type_url_of(kind: str) -> str:
    """The type URL for an Istio kind; a kind meshsdk does not serve is a WireError."""
    try:
        return TYPE_URLS[kind]
    except KeyError:
        raise WireError(f"no xDS type for kind {kind!r}") from None


def kind_of(type_url: str) -> str:
    """The kind a type URL names.

    Besides our canonical URLs, ``group/version/Kind`` at any version the kind
    serves (``networking.istio.io/v1/VirtualService``) is accepted, so peers that
    name newer versions interoperate.
    """
    group, _, rest = type_url.partition("/")
    version, _, kind = rest.partition("/")
    info = KINDS.get(kind)
    if info is None or info.group != group or version not in info.versions:
        raise WireError(f"unknown type URL {type_url!r}")
    return kind


# --- documents and hashes --------------------------------------------------------------


def resource_key(namespace: str, name: str) -> str:
    """The xDS resource name: ``namespace/name``."""
    return f"{namespace}/{name}"


def resource_document(resource: Resource) -> dict[str, Any]:
    """A validated Resource as its Kubernetes-style document (JSON-compatible).

    ``spec`` is dumped with only the fields that were set, under their wire
    (camelCase) names, so the document reads like the YAML it came from.
    """
    metadata: dict[str, Any] = {"name": resource.name, "namespace": resource.namespace}
    if resource.labels:
        metadata["labels"] = dict(resource.labels)
    if resource.annotations:
        metadata["annotations"] = dict(resource.annotations)
    if resource.creation_timestamp is not None:
        metadata["creationTimestamp"] = resource.creation_timestamp
    spec: dict[str, Any] = ({} if resource.spec is None else
                            resource.spec.model_dump(by_alias=True, exclude_unset=True,
                                                     mode="json"))
    return {"apiVersion": resource.api_version, "kind": resource.kind,
            "metadata": metadata, "spec": spec}


def _normalize(value: Any, where: str) -> Any:
    """JSON-compatible copy with integral floats as ints (Struct keeps only doubles).

    Applied identically on both ends, so the hash of what was sent equals the hash
    of what arrived.
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise WireError(f"non-string key {k!r} in the document", where)
            out[k] = _normalize(v, where)
        return out
    if isinstance(value, list | tuple):
        return [_normalize(v, where) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise WireError(f"integer {value} does not survive the wire (over 2**53)", where)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise WireError(f"number {value} is not valid JSON", where)
        return int(value) if value.is_integer() and abs(value) <= _MAX_SAFE_INT else value
    raise WireError(f"value of type {type(value).__name__} is not JSON-compatible", where)


def _canonical_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def content_version(document: Mapping[str, Any]) -> str:
    """A resource's version: sha256 of its canonical JSON (key order does not matter)."""
    text = _canonical_json(_normalize(document, _doc_key(document)))
    return hashlib.sha256(text.encode()).hexdigest()


def snapshot_version(versions: Mapping[str, str]) -> str:
    """A ``version_info`` for a set of resources: hash of their sorted names and versions."""
    h = hashlib.sha256()
    for name in sorted(versions):
        h.update(f"{name}\0{versions[name]}\n".encode())
    return h.hexdigest()[:16]


def _doc_key(document: Mapping[str, Any]) -> str:
    meta = document.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return resource_key(str(meta.get("namespace", "")), str(meta.get("name", "")))


# --- resources --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireResource:
    """One resource as sent: its xDS name, content version and document."""

    name: str
    version: str
    document: Mapping[str, Any]


def encode_resource(resource: Resource | Mapping[str, Any]) -> ProtoMessage:
    """A Resource (or its document) as an ``envoy.service.discovery.v3.Resource``."""
    document = resource_document(resource) if isinstance(resource, Resource) else resource
    key = _doc_key(document)
    normal = _normalize(document, key)
    text = _canonical_json(normal)
    body = struct_pb2.Struct()
    json_format.Parse(text, body)
    packed = any_pb2.Any()
    packed.Pack(body)
    version = hashlib.sha256(text.encode()).hexdigest()
    return cast(ProtoMessage, discovery_pb2.Resource(name=key, version=version, resource=packed))


def read_resource(message: ProtoMessage) -> WireResource:
    """Unpack an ``envoy.service.discovery.v3.Resource`` without validating the document.

    Checks the body type and that the version matches the content, so a resource
    altered in transit or by a confused server is caught here.
    """
    pb: Any = message
    name: str = pb.name
    if pb.resource.type_url != STRUCT_TYPE_URL:
        raise WireError(f"body is {pb.resource.type_url or 'empty'!r}, not a Struct", name)
    body = struct_pb2.Struct()
    try:
        body.ParseFromString(pb.resource.value)
    except DecodeError as exc:
        raise WireError(f"body does not parse: {exc}", name) from None
    document = _normalize(json_format.MessageToDict(body), name)
    if not isinstance(document, dict):  # pragma: no cover - a Struct is always an object
        raise WireError("body is not an object", name)
    version = hashlib.sha256(_canonical_json(document).encode()).hexdigest()
    if pb.version != version:
        raise WireError(f"version {pb.version!r} does not match the content ({version})", name)
    return WireResource(name, version, MappingProxyType(document))


def decode_resource(message: ProtoMessage, type_url: str | None = None) -> Resource:
    """Unpack and re-validate one resource through the loader: a validated Resource.

    With ``type_url`` (the response's), the document's kind must match it. Every
    failure is a WireError naming the resource, fit to send back as a NACK.
    """
    wire = read_resource(message)
    return validate_document(wire.document, wire.name, type_url)


def validate_document(document: Mapping[str, Any], name: str,
                      type_url: str | None = None) -> Resource:
    """Validate a received document as the loader would a file; ``name`` is its xDS name."""
    kind = document.get("kind")
    if type_url is not None and kind != kind_of(type_url):
        raise WireError(f"kind {kind!r} sent as {type_url!r}", name)
    if _doc_key(document) != name:
        raise WireError(f"metadata says {_doc_key(document)!r}", name)
    text = json.dumps(_normalize(document, name), indent=1, ensure_ascii=False)
    result = load_string(text, source=f"xds:{name}")
    if result.errors:
        detail = "; ".join(f"{_where(d.path)}{d.message}" for d in result.errors)
        raise WireError(f"invalid {kind}: {detail}", name)
    if len(result.resources) != 1:
        why = "; ".join(d.message for d in result.diagnostics) or "no resource in the document"
        raise WireError(f"not accepted: {why}", name)
    return result.resources[0]


def _where(path: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in path) + ": " if path else ""


# --- responses ----------------------------------------------------------------------------


def discovery_response(type_url: str, version_info: str, nonce: str,
                       resources: Iterable[Resource | Mapping[str, Any]]) -> ProtoMessage:
    """A ``DiscoveryResponse`` (state of the world) for one type."""
    kind_of(type_url)
    wrapped = []
    for r in resources:
        packed = any_pb2.Any()
        packed.Pack(encode_resource(r))
        wrapped.append(packed)
    return cast(ProtoMessage, discovery_pb2.DiscoveryResponse(
        version_info=version_info, nonce=nonce, type_url=type_url, resources=wrapped))


SNAPSHOT_TYPE_URL: Final = "meshsdk.io/v1/Snapshot"
"""The snapshot marker: after the responses of the types that changed in a version,
the server sends one response of this type whose single resource lists, for every type
the subscriber holds, the version of its current response. A client applies its
responses together when it holds exactly those, so only changed types travel (a weight
edit sends VirtualServices alone) and the mesh still never runs half a snapshot.
Subscribers that do not subscribe to it get every type on every version instead."""


MESH_CONFIG_TYPE_URL: Final = "meshsdk.io/v1/MeshConfig"
"""The mesh-wide options (Istio's MeshConfig: outbound traffic policy, root namespace,
trust domain, exportTo defaults, access log...) as one resource named ``mesh``, so a
connected mesh runs with the server's options, not the defaults."""

EXTENSION_TYPE_URLS: Final = frozenset({SNAPSHOT_TYPE_URL, MESH_CONFIG_TYPE_URL})
"""meshsdk's own types beside the Istio kinds."""


def check_type_url(type_url: str) -> None:
    """A WireError unless ``type_url`` names an Istio kind or one of meshsdk's own types."""
    if type_url not in EXTENSION_TYPE_URLS:
        kind_of(type_url)


def mesh_config_document(mesh: MeshConfig) -> dict[str, Any]:
    """The options that were set (as in mesh.yaml), camelCase, JSON-compatible."""
    document: dict[str, Any] = _normalize(
        mesh.model_dump(by_alias=True, exclude_unset=True, mode="json"), "mesh")
    return document


def mesh_config_response(version_info: str, nonce: str, mesh: MeshConfig) -> ProtoMessage:
    """The MeshConfig response: one resource ``mesh`` holding the options document."""
    text = _canonical_json(mesh_config_document(mesh))
    body = struct_pb2.Struct()
    json_format.Parse(text, body)
    packed = any_pb2.Any()
    packed.Pack(body)
    wrapped = any_pb2.Any()
    wrapped.Pack(discovery_pb2.Resource(
        name="mesh", version=hashlib.sha256(text.encode()).hexdigest(), resource=packed))
    return cast(ProtoMessage, discovery_pb2.DiscoveryResponse(
        version_info=version_info, nonce=nonce, type_url=MESH_CONFIG_TYPE_URL,
        resources=[wrapped]))


def read_mesh_config(message: ProtoMessage) -> MeshConfig:
    """The MeshConfig a response carries, validated as a ``mesh.yaml`` (WireError if not)."""
    pb: Any = message
    if pb.type_url != MESH_CONFIG_TYPE_URL or len(pb.resources) != 1:
        raise WireError("not a MeshConfig response")
    wire = read_resource(_unwrap(pb.resources[0], 0))
    mesh, diagnostics = load_mesh_config_string(json.dumps(dict(wire.document)),
                                                source="xds:mesh")
    if mesh is None:
        detail = "; ".join(d.message for d in diagnostics if d.is_error)
        raise WireError(f"invalid MeshConfig: {detail}", "mesh")
    return mesh


def snapshot_response(version_info: str, nonce: str,
                      types: Mapping[str, str]) -> ProtoMessage:
    """The marker response of ``version_info``: ``types`` maps type URL -> version."""
    body = struct_pb2.Struct()
    body.update({"types": dict(types)})
    packed = any_pb2.Any()
    packed.Pack(body)
    wrapped = any_pb2.Any()
    wrapped.Pack(discovery_pb2.Resource(name="snapshot", version=version_info,
                                        resource=packed))
    return cast(ProtoMessage, discovery_pb2.DiscoveryResponse(
        version_info=version_info, nonce=nonce, type_url=SNAPSHOT_TYPE_URL,
        resources=[wrapped]))


def read_snapshot(message: ProtoMessage) -> dict[str, str]:
    """The type URL -> version map of a marker response (WireError if malformed)."""
    pb: Any = message
    if pb.type_url != SNAPSHOT_TYPE_URL or len(pb.resources) != 1:
        raise WireError("not a snapshot marker")
    resource = discovery_pb2.Resource()
    body = struct_pb2.Struct()
    try:
        pb.resources[0].Unpack(resource)
        resource.resource.Unpack(body)
    except (DecodeError, ValueError) as exc:
        raise WireError(f"snapshot marker does not parse: {exc}") from None
    types = json_format.MessageToDict(body).get("types")
    if not isinstance(types, dict) or not all(isinstance(v, str) for v in types.values()):
        raise WireError("snapshot marker without a types map")
    return {str(k): v for k, v in types.items()}


@dataclass(frozen=True, slots=True)
class Push:
    """A received, fully validated DiscoveryResponse."""

    type_url: str
    version_info: str
    nonce: str
    resources: tuple[Resource, ...]

    def config(self) -> Config:
        """The resources as a validated Config (with the cross-resource analysis)."""
        return config_for(self.resources)


def decode_response(message: ProtoMessage) -> Push:
    """Validate every resource of a DiscoveryResponse; the first failure is a WireError.

    All-or-nothing, as Envoy applies a response: one bad resource rejects the push.
    """
    pb: Any = message
    type_url: str = pb.type_url
    kind_of(type_url)
    resources = tuple(decode_resource(_unwrap(a, i), type_url)
                      for i, a in enumerate(pb.resources))
    seen: set[str] = set()
    for r in resources:
        key = resource_key(r.namespace, r.name)
        if key in seen:
            raise WireError("sent twice in one response", key)
        seen.add(key)
    return Push(type_url, pb.version_info, pb.nonce, resources)


def _unwrap(packed: Any, index: int) -> ProtoMessage:
    """The Resource wrapper inside a response's ``resources[index]`` Any."""
    if packed.type_url != RESOURCE_TYPE_URL:
        raise WireError(f"resources[{index}] is {packed.type_url or 'empty'!r}, "
                        f"not {RESOURCE_TYPE_URL!r}")
    try:
        return cast(ProtoMessage, discovery_pb2.Resource.FromString(packed.value))
    except DecodeError as exc:
        raise WireError(f"resources[{index}] does not parse: {exc}") from None


def config_for(resources: Iterable[Resource], mesh: MeshConfig | None = None) -> Config:
    """A Config from decoded resources (of one or several pushes), in the given order,
    with ``mesh`` as its mesh-wide options (Istio's defaults when None)."""
    result = LoadResult()
    for r in resources:
        result.extend(LoadResult(resources=[r]))
    return config_from_result(result, mesh=mesh)


def response_from_bytes(data: bytes) -> ProtoMessage:
    """Parse a serialized DiscoveryResponse (a malformed one is a WireError)."""
    try:
        return cast(ProtoMessage, discovery_pb2.DiscoveryResponse.FromString(data))
    except DecodeError as exc:
        raise WireError(f"malformed DiscoveryResponse: {exc}") from None


def request_from_bytes(data: bytes) -> ProtoMessage:
    """Parse a serialized DiscoveryRequest (a malformed one is a WireError)."""
    try:
        return cast(ProtoMessage, discovery_pb2.DiscoveryRequest.FromString(data))
    except DecodeError as exc:
        raise WireError(f"malformed DiscoveryRequest: {exc}") from None


# --- node identity ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who a client is, as Istio's proxies tell istiod.

    ``node.id`` is ``<type>~<ip>~<name>.<namespace>~<namespace>.svc.<domain>``;
    ``node.metadata`` carries NAME, NAMESPACE, LABELS (a map), SERVICE_ACCOUNT,
    INSTANCE_IPS (comma-separated), POD_PORTS (JSON list of ``{name,
    containerPort, protocol}``, as Istio's injector writes it), AUTO_REGISTER
    (``"true"`` when the server should register a WorkloadEntry for the node, as
    istiod does for a WorkloadGroup's proxies), AUTO_REGISTER_GROUP (Istio's name:
    the WorkloadGroup whose template the entry is made from; implies AUTO_REGISTER)
    and, when known, ``node.locality`` holds region/zone/subzone.
    """

    ip: str
    name: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    service_account: str = "default"
    instance_ips: tuple[str, ...] = ()
    ports: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    locality: str = ""
    node_type: str = "sidecar"
    domain: str = "cluster.local"
    auto_register: bool = False
    group: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "ports", MappingProxyType(dict(self.ports)))
        object.__setattr__(self, "instance_ips", tuple(self.instance_ips or (self.ip,)))
        if self.group:
            object.__setattr__(self, "auto_register", True)

    @classmethod
    def from_workload(cls, workload: Workload, ip: str, *,
                      ports: Mapping[str, int] | None = None,
                      auto_register: bool = False, group: str = "") -> NodeIdentity:
        """The identity of a meshsdk Workload reachable at ``ip`` (its ``ports`` by name)."""
        return cls(ip=ip, name=workload.name, namespace=workload.namespace,
                   labels=workload.labels, service_account=workload.service_account,
                   ports=ports or {}, locality=workload.locality,
                   auto_register=auto_register, group=group)

    def workload(self) -> Workload:
        """The Workload this identity describes."""
        return Workload(name=self.name, namespace=self.namespace, labels=self.labels,
                        service_account=self.service_account, locality=self.locality)

    @property
    def node_id(self) -> str:
        """Istio's node id: ``sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local``."""
        return (f"{self.node_type}~{self.ip}~{self.name}.{self.namespace}"
                f"~{self.namespace}.svc.{self.domain}")


def _node_message(node: NodeIdentity) -> Any:
    meta: dict[str, Any] = {
        "NAME": node.name,
        "NAMESPACE": node.namespace,
        "LABELS": dict(node.labels),
        "SERVICE_ACCOUNT": node.service_account,
        "INSTANCE_IPS": ",".join(node.instance_ips),
        "POD_PORTS": json.dumps([{"name": n, "containerPort": p, "protocol": "TCP"}
                                 for n, p in node.ports.items()]),
    }
    if node.auto_register:
        meta["AUTO_REGISTER"] = "true"
    if node.group:
        meta["AUTO_REGISTER_GROUP"] = node.group
    metadata = struct_pb2.Struct()
    metadata.update(meta)
    msg = base_pb2.Node(id=node.node_id, cluster=f"{node.workload().app}.{node.namespace}",
                        metadata=metadata, user_agent_name="meshsdk",
                        user_agent_version=__version__)
    if node.locality:
        region, zone, subzone = [*node.locality.split("/"), "", "", ""][:3]
        msg.locality.CopyFrom(base_pb2.Locality(region=region, zone=zone, sub_zone=subzone))
    return msg


def _parse_node(pb: Any) -> NodeIdentity:
    node_id: str = pb.id
    parts = node_id.split("~")
    if len(parts) != 4 or parts[0] not in _NODE_TYPES or not parts[1] or "." not in parts[2]:
        raise WireError(f"node id {node_id!r} is not <type>~<ip>~<name>.<namespace>~<domain>")
    node_type, ip, pod, dns = parts
    meta = json_format.MessageToDict(pb.metadata)
    id_name, _, id_ns = pod.rpartition(".")
    name = _meta_text(meta, "NAME") or id_name
    namespace = _meta_text(meta, "NAMESPACE") or id_ns
    prefix = f"{namespace}.svc."
    domain = dns[len(prefix):] if dns.startswith(prefix) else "cluster.local"
    labels = meta.get("LABELS") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise WireError("node metadata LABELS must be a map of strings")
    ips = tuple(filter(None, _meta_text(meta, "INSTANCE_IPS").split(",")))
    ports = _parse_ports(_meta_text(meta, "POD_PORTS"))
    loc = pb.locality
    locality = "/".join((loc.region, loc.zone, loc.sub_zone)).rstrip("/")
    return NodeIdentity(ip=ip, name=name, namespace=namespace, labels=labels,
                        service_account=_meta_text(meta, "SERVICE_ACCOUNT") or "default",
                        instance_ips=ips, ports=ports, locality=locality,
                        node_type=node_type, domain=domain,
                        auto_register=_meta_text(meta, "AUTO_REGISTER").lower() == "true",
                        group=_meta_text(meta, "AUTO_REGISTER_GROUP"))


def _meta_text(meta: Mapping[str, Any], key: str) -> str:
    value = meta.get(key, "")
    if not isinstance(value, str):
        raise WireError(f"node metadata {key} must be a string")
    return value


def _parse_ports(text: str) -> dict[str, int]:
    if not text:
        return {}
    try:
        items = json.loads(text)
        return {str(p["name"]): int(p["containerPort"]) for p in items}
    except (ValueError, TypeError, KeyError) as exc:
        raise WireError(f"node metadata POD_PORTS is not a list of ports: {exc}") from None


# --- requests (client side) ----------------------------------------------------------------


def subscribe_request(type_url: str, resource_names: Iterable[str] = (), *,
                      node: NodeIdentity | None = None, version_info: str = "") -> ProtoMessage:
    """The first request for a type (no nonce). Empty ``resource_names`` means all.

    ``version_info`` may carry the last version applied, when resubscribing after
    a reconnect. ``node`` is required on a stream's first request only.
    """
    check_type_url(type_url)
    return _request(type_url, resource_names, node, version_info, "", None)


def ack_request(type_url: str, version_info: str, nonce: str,
                resource_names: Iterable[str] = (), *,
                node: NodeIdentity | None = None) -> ProtoMessage:
    """ACK: the applied response's ``version_info`` and its nonce."""
    return _request(type_url, resource_names, node, version_info, nonce, None)


def nack_request(type_url: str, previous_version: str, nonce: str, message: str,
                 resource_names: Iterable[str] = (), *, node: NodeIdentity | None = None,
                 code: int = INVALID_ARGUMENT) -> ProtoMessage:
    """NACK: the version still in use, the rejected response's nonce, and why.

    ``error_detail`` is a google.rpc.Status whose message is ``message``
    (typically ``str(WireError)``, which names the resource).
    """
    status = status_pb2.Status(code=code, message=message)
    return _request(type_url, resource_names, node, previous_version, nonce, status)


def _request(type_url: str, resource_names: Iterable[str], node: NodeIdentity | None,
             version_info: str, nonce: str, status: Any) -> ProtoMessage:
    msg = discovery_pb2.DiscoveryRequest(version_info=version_info, type_url=type_url,
                                         response_nonce=nonce,
                                         resource_names=list(resource_names))
    if node is not None:
        msg.node.CopyFrom(_node_message(node))
    if status is not None:
        msg.error_detail.CopyFrom(status)
    return cast(ProtoMessage, msg)


# --- requests (server side) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribe:
    """A request with no nonce: a new (or resumed) subscription to ``type_url``."""

    type_url: str
    resource_names: tuple[str, ...]
    node: NodeIdentity | None
    version_info: str = ""


@dataclass(frozen=True, slots=True)
class Ack:
    """The client applied the response with ``nonce``; it now runs ``version_info``."""

    type_url: str
    resource_names: tuple[str, ...]
    node: NodeIdentity | None
    version_info: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Nack:
    """The client rejected the response with ``nonce`` and keeps ``version_info``."""

    type_url: str
    resource_names: tuple[str, ...]
    node: NodeIdentity | None
    version_info: str
    nonce: str
    message: str
    code: int


@dataclass(frozen=True, slots=True)
class Health:
    """The workload reports its readiness (Istio's ``istio.io/health`` request): an
    ``error_detail`` means not ready, with why."""

    ready: bool
    message: str
    node: NodeIdentity | None


UNAVAILABLE: Final = 14
"""google.rpc.Code UNAVAILABLE: the code of a not-ready report."""
HEALTH_TYPE_URL: Final = "istio.io/health"
"""The type URL of readiness reports, as Istio's agent sends them to istiod."""


def health_request(ready: bool, message: str = "", *,
                   node: NodeIdentity | None = None) -> ProtoMessage:
    """A readiness report: ready, or not ready with ``message`` as the reason."""
    status = None if ready else status_pb2.Status(code=UNAVAILABLE,
                                                  message=message or "not ready")
    return _request(HEALTH_TYPE_URL, (), node, "", "", status)


ClientMessage: TypeAlias = Subscribe | Ack | Nack | Health
"""What a DiscoveryRequest means to the server."""


def parse_request(message: ProtoMessage) -> ClientMessage:
    """Classify a DiscoveryRequest: error_detail set -> Nack; no nonce -> Subscribe; else Ack.

    The type URL must name a served kind and the node, when present, must be a
    well-formed Istio node; otherwise WireError.
    """
    pb: Any = message
    type_url: str = pb.type_url
    node = _parse_node(pb.node) if pb.HasField("node") else None
    if type_url == HEALTH_TYPE_URL:
        if pb.HasField("error_detail"):
            return Health(False, str(pb.error_detail.message), node)
        return Health(True, "", node)
    check_type_url(type_url)
    names = tuple(str(n) for n in pb.resource_names)
    version: str = pb.version_info
    nonce: str = pb.response_nonce
    if pb.HasField("error_detail"):
        detail = pb.error_detail
        return Nack(type_url, names, node, version, nonce, str(detail.message),
                    int(detail.code))
    if not nonce:
        return Subscribe(type_url, names, node, version)
    return Ack(type_url, names, node, version, nonce)


__all__ = [
    "EXTENSION_TYPE_URLS",
    "HEALTH_TYPE_URL",
    "INVALID_ARGUMENT",
    "MESH_CONFIG_TYPE_URL",
    "RESOURCE_TYPE_URL",
    "SNAPSHOT_TYPE_URL",
    "STRUCT_TYPE_URL",
    "TYPE_URLS",
    "Ack",
    "ClientMessage",
    "Health",
    "Nack",
    "NodeIdentity",
    "ProtoMessage",
    "Push",
    "Subscribe",
    "WireError",
    "WireResource",
    "ack_request",
    "check_type_url",
    "config_for",
    "content_version",
    "decode_resource",
    "decode_response",
    "discovery_response",
    "encode_resource",
    "health_request",
    "kind_of",
    "mesh_config_document",
    "mesh_config_response",
    "nack_request",
    "parse_request",
    "read_mesh_config",
    "read_resource",
    "read_snapshot",
    "request_from_bytes",
    "resource_document",
    "resource_key",
    "response_from_bytes",
    "snapshot_response",
    "snapshot_version",
    "subscribe_request",
    "type_url_of",
    "validate_document",
]
