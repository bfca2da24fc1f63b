"""The config service over gRPC: Istio config pushed to subscribers on one ADS stream each.

:class:`ConfigServer` serves a :class:`~meshsdk.controlplane.filestore.ConfigStore` with
``StreamAggregatedResources`` (state of the world). The protocol, fixed for the client:

* the client subscribes (a request without nonce, carrying its node on the stream's
  first request) to every type URL of :data:`~meshsdk.controlplane.wire.TYPE_URLS`;
* each subscribed type is answered with every resource of that kind the subscriber may
  see, ``version_info`` being the store's version (one version for all types of one
  snapshot) and a fresh nonce;
* on every new store version, *all* subscribed types are pushed again, so a client
  applies a version once it holds all its types;
* ACKs and NACKs are recorded per subscriber (:meth:`ConfigServer.syncz`). As istiod
  does, an ACK or NACK whose nonce is not the latest one sent for its type is stale
  and ignored. ``resource_names`` are ignored (every subscription is a wildcard),
  and a node sent again later on the same stream does not replace the first one.

Visibility follows ``exportTo`` for VirtualService, DestinationRule and ServiceEntry
(an empty list means the mesh-wide default, ``*`` unless MeshConfig says otherwise).
The Sidecar that applies to a subscriber (:mod:`meshsdk.config.scope`) narrows its
ServiceEntries, VirtualServices and DestinationRules to the hosts its egress listeners
import, as istiod does. Not done: per-proxy pruning of the other kinds by workload
selector; they are sent whole to everyone.

Workload registry (istiod's WorkloadGroup auto-registration, without the
WorkloadGroup): a subscriber whose node metadata says ``AUTO_REGISTER: "true"`` gets
a WorkloadEntry ``auto-<workload>-<ip>`` in its namespace, built from its node
(address, labels, service account, named ports). Registered entries are merged with
the store's config and validated together by the loader; a registration that does
not validate is refused (logged) and the stream goes on. Each change of the
registry's entries makes a new version ``<store version>+r<hash of the entries>``; only the
WorkloadEntry type is pushed again (an incremental push: the other types are
unchanged, and the client combines responses whose config part agrees, see
:func:`~meshsdk.controlplane.wire.base_version`). When the registering stream ends,
the entry stays for ``grace`` seconds (istiod's ``PILOT_WORKLOAD_ENTRY_GRACE_PERIOD``,
10 s) and is then removed by
a sweeper thread (or :meth:`ConfigServer.sweep`); a reconnect in time keeps it. Not
done: WorkloadGroup templates and readiness probes (health status of entries).

Threading: the gRPC server is ``grpc.aio`` on an event loop of its own thread
(:class:`~meshsdk.controlplane.loop.LoopThread`), so a stream costs a task and a queue,
not a thread: a thousand subscribers fit on two cores. Pushes are decided under one
lock from whichever thread saw the change (the store's watcher, the sweeper, a
stream's reader) and handed to the loop in order (``call_soon_threadsafe``), so no
subscriber ever receives an older version after a newer one. Each (type, namespace)
is encoded once per version; subscribers get a copy with their own nonce.

:class:`DebugServer` exposes ``/debug/syncz``, ``/debug/config_dump``,
``/debug/registryz``, ``/healthz`` and ``/readyz`` over plain HTTP on 127.0.0.1.
``/metrics`` serves the server's Prometheus metrics (:attr:`ConfigServer.registry`, a
private registry): ``meshsdk_xds_pushes_total`` and ``meshsdk_xds_push_errors_total``
by ``type`` (the kind), ``meshsdk_xds_nacks_total`` by ``type``,
``meshsdk_xds_connected_subscribers`` and ``meshsdk_xds_push_latency_seconds``, the
time from a version being published to its ACK by a subscriber for every type it
subscribed to, observed once per subscriber and version (istiod's
``pilot_proxy_convergence_time``).
``python -m meshsdk.controlplane.server --config DIR`` runs both until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]
from envoy.service.discovery.v3 import discovery_pb2  # type: ignore[import-untyped]
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from meshsdk.config.loader import LoadResult, config_from_result, load_string
from meshsdk.config.resource import Config, Resource
from meshsdk.config.scope import egress_scope, sidecar_for
from meshsdk.config.snapshot import visible
from meshsdk.controlplane.ca_service import Authenticator, Caller, bearer_token
from meshsdk.controlplane.filestore import ConfigStore, Debouncer
from meshsdk.controlplane.loop import LoopThread
from meshsdk.controlplane.wire import (
    EXTENSION_TYPE_URLS,
    MESH_CONFIG_TYPE_URL,
    SNAPSHOT_TYPE_URL,
    ClientMessage,
    Health,
    Nack,
    NodeIdentity,
    ProtoMessage,
    Subscribe,
    WireError,
    discovery_response,
    kind_of,
    mesh_config_response,
    parse_request,
    resource_document,
    snapshot_response,
)
from meshsdk.errors import ConfigError, MeshError

if TYPE_CHECKING:
    from meshsdk.controlplane.etcd import EtcdConfigStore, EtcdRegistry, RegistryRecord

__all__ = ["ConfigServer", "DebugServer", "is_visible", "main", "registration_document",
           "registration_name"]

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
DEFAULT_PORT = 15010
DEFAULT_DEBUG_PORT = 15014
MAX_STREAMS = 10_000
RECENT_DISCONNECTS = 32
REGISTRY_GRACE = 10.0
"""Seconds a registered WorkloadEntry outlives its stream (PILOT_WORKLOAD_ENTRY_GRACE_PERIOD)."""
SWEEP_INTERVAL = 0.25
"""Seconds between two sweeps of expired registrations."""
REGISTRY_QUIET = 0.05
REGISTRY_MAX_DELAY = 0.25
"""Registry changes are pushed once quiet for 50 ms, at most 250 ms after the first
(istiod debounces endpoint pushes too; shorter here, as endpoints must reach every
subscriber within a second even under constant churn)."""
PUSH_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0)
"""Buckets of ``meshsdk_xds_push_latency_seconds`` (istiod's convergence buckets, finer
below 0.1 s)."""
PENDING_CLAIM_TIMEOUT = 5.0
"""Seconds a registration written to etcd is served before etcd confirms it."""
PUBLISHED_KEPT = 16
"""How many recent versions keep their publication time (for late ACKs)."""


def _kind_label(type_url: str) -> str:
    """The ``type`` label of the metrics: the kind, or meshsdk's own type's name."""
    if type_url in EXTENSION_TYPE_URLS:
        return type_url.rpartition("/")[2]
    return kind_of(type_url)


def _digest(response: ProtoMessage) -> str:
    """What a response's resources are (names and content versions), independent of
    its version and nonce."""
    digest = hashlib.sha256()
    for packed in getattr(response, "resources", ()):
        digest.update(packed.value)
    return digest.hexdigest()


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()


def is_visible(resource: Resource, namespace: str, config: Config) -> bool:
    """Whether a subscriber in ``namespace`` may see ``resource`` (Istio's exportTo).

    Kinds without ``exportTo`` are visible to all; an empty ``exportTo`` falls back to
    the mesh default for the kind (``*`` by default), as in istiod.
    """
    export_to: list[str] | None = getattr(resource.spec, "export_to", None)
    if export_to is None:
        return True
    if not export_to:
        mesh = config.mesh
        defaults = {"VirtualService": mesh.default_virtual_service_export_to,
                    "DestinationRule": mesh.default_destination_rule_export_to,
                    "ServiceEntry": mesh.default_service_export_to}
        export_to = defaults.get(resource.kind) or ["*"]
    return visible(export_to, resource.namespace, namespace)


# --- per-subscriber bookkeeping -----------------------------------------------------------


@dataclass(slots=True)
class _TypeState:
    """What was last sent and ACKed for one type URL on one stream."""

    sent_version: str = ""
    sent_nonce: str = ""
    sent_digest: str = ""   # what the last response held (to skip unchanged types)
    acked_version: str = ""
    acked_nonce: str = ""


@dataclass(frozen=True, slots=True)
class _NackRecord:
    type_url: str
    version: str
    nonce: str
    message: str
    at: float


@dataclass(frozen=True, slots=True)
class _Abort:
    """Queue item: end the stream with a gRPC error."""

    code: Any
    message: str


@dataclass(frozen=True, slots=True)
class _Response:
    """Queue item: a response serialized once per version and audience, without its
    nonce, and the nonce it goes out with (appended when it is sent, see _wire_bytes)."""

    type_url: str
    payload: bytes
    nonce: str

    def wire_bytes(self) -> bytes:
        """The serialized DiscoveryResponse with this subscriber's nonce.

        Protocol buffers allow a field to follow the others: appending ``nonce`` (field 5,
        length-delimited) to the template's bytes gives the same message as setting it,
        without copying and re-serializing a large response per subscriber.
        """
        data = self.nonce.encode()
        return self.payload + _NONCE_TAG + _varint(len(data)) + data


_NONCE_TAG = bytes([5 << 3 | 2])   # DiscoveryResponse.nonce: field 5, wire type 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_QueueItem = _Response | _Abort | None


class _Outbox:
    """A subscriber's pending sends, on the loop thread only, with conflation.

    A response for a type that still waits to be sent is replaced in place by the newer
    one, and a waiting snapshot marker is dropped when a newer marker is queued (the new
    one goes last, after every response it names). So a slow subscriber receives the
    latest state once instead of every intermediate version, and the queue stays bounded
    by the number of types, whatever the churn.
    """

    def __init__(self) -> None:
        self._items: collections.deque[list[Any]] = collections.deque()
        self._pending: dict[str, list[Any]] = {}   # type URL -> its waiting entry
        self._ready = asyncio.Event()

    def put(self, item: _QueueItem) -> None:
        if isinstance(item, _Response):
            waiting = self._pending.get(item.type_url)
            if waiting is not None and item.type_url != SNAPSHOT_TYPE_URL:
                waiting[0] = item
                return
            if waiting is not None:      # an older marker: it must not come first
                waiting[0] = _SKIP
            entry = [item]
            self._pending[item.type_url] = entry
            self._items.append(entry)
        else:
            self._items.append([item])
        self._ready.set()

    async def get(self) -> _QueueItem:
        while True:
            while not self._items:
                self._ready.clear()
                await self._ready.wait()
            entry = self._items.popleft()
            item = entry[0]
            if item is _SKIP:
                continue
            if isinstance(item, _Response) and self._pending.get(item.type_url) is entry:
                del self._pending[item.type_url]
            return item  # type: ignore[no-any-return]


_SKIP = object()


@dataclass(slots=True)
class _Subscriber:
    """One connected ADS stream. Mutated under the server's lock only."""

    connection_id: str
    peer: str
    connected_since: float
    outbox: _Outbox = field(default_factory=_Outbox)
    node: NodeIdentity | None = None
    types: dict[str, _TypeState] = field(default_factory=dict)
    sent_version: str = ""       # the version of the latest response queued
    marked: bool = False         # subscribed to the snapshot marker: changed types only
    ready: bool = True           # the workload's last readiness report
    health: str = ""
    caller: Caller | None = None  # who its bearer token proves it is (authenticated servers)
    acked_version: str = ""
    last_nack: _NackRecord | None = None
    disconnected_at: float | None = None
    observed_version: str = ""   # the last version whose push latency was observed

    def describe(self) -> dict[str, Any]:
        """The syncz entry (JSON-compatible)."""
        node = self.node
        nack = self.last_nack
        entry: dict[str, Any] = {
            "connection_id": self.connection_id,
            "node_id": node.node_id if node else None,
            "namespace": node.namespace if node else None,
            "workload": node.name if node else None,
            "peer": self.peer,
            "authenticated_as": None if self.caller is None
            else f"{self.caller.namespace}/{self.caller.service_account}",
            "connected_since": _iso(self.connected_since),
            "acked_version": self.acked_version or None,
            "last_nack": None if nack is None else {
                "type_url": nack.type_url, "version": nack.version, "nonce": nack.nonce,
                "message": nack.message, "at": _iso(nack.at)},
            "types": {url: {"sent_version": s.sent_version, "sent_nonce": s.sent_nonce,
                            "acked_version": s.acked_version or None}
                      for url, s in sorted(self.types.items())},
        }
        if self.disconnected_at is not None:
            entry["disconnected_at"] = _iso(self.disconnected_at)
        return entry


# --- the workload registry ----------------------------------------------------------------


@dataclass(slots=True)
class _Registration:
    """One auto-registered WorkloadEntry. Mutated under the server's lock only."""

    resource: Resource
    node_id: str
    connection_id: str | None
    registered_at: float
    disconnected_since: float | None = None
    owner: str = ""                       # the replica holding the stream (shared registry)
    record: RegistryRecord | None = None  # as stored in etcd (shared registry)
    ready: bool = True                    # reported by the workload; unready: not served
    health: str = ""                      # why not ready

    def describe(self) -> dict[str, Any]:
        """The registryz entry (JSON-compatible)."""
        spec = self.resource.spec
        return {
            "name": self.resource.name,
            "namespace": self.resource.namespace,
            "node_id": self.node_id,
            "address": spec.address,
            "labels": dict(spec.labels),
            "ports": dict(spec.ports),
            "service_account": spec.service_account,
            "registered_at": _iso(self.registered_at),
            "replica": self.owner or None,
            "state": "connected" if self.disconnected_since is None else "disconnected",
            "ready": self.ready,
            "health": self.health or None,
            "connection_id": self.connection_id,
            "disconnected_since": None if self.disconnected_since is None
            else _iso(self.disconnected_since),
        }


def registration_name(node: NodeIdentity) -> str:
    """``<group>-<ip>`` for a WorkloadGroup's node (Istio's name), else
    ``auto-<workload>-<ip>``; the ip's dots and colons as dashes."""
    ip = node.ip.replace(".", "-").replace(":", "-")
    return f"{node.group}-{ip}" if node.group else f"auto-{node.name}-{ip}"


def registration_document(node: NodeIdentity, group: Resource | None = None) -> dict[str, Any]:
    """The WorkloadEntry document registered for an AUTO_REGISTER node.

    From a WorkloadGroup, as istiod makes it: the template's ports, service account,
    network, locality and weight; labels of the template overlaid with the node's;
    the group's metadata labels and annotations on the entry. Without one, from the
    node alone.
    """
    annotations = {"meshsdk.io/auto-registered": "true"}
    labels: dict[str, str] = {}
    spec: dict[str, Any] = {}
    if group is not None:
        gspec = group.spec
        if gspec.metadata is not None:
            labels.update(gspec.metadata.labels)
            annotations.update(gspec.metadata.annotations)
        if gspec.template is not None:
            spec = gspec.template.model_dump(by_alias=True, exclude_unset=True, mode="json")
        annotations["istio.io/autoRegistrationGroup"] = group.name
    spec["address"] = node.ip
    spec["labels"] = {**spec.get("labels", {}), **node.labels}
    spec.setdefault("serviceAccount", node.service_account)
    if node.ports and "ports" not in spec:
        spec["ports"] = dict(node.ports)
    if node.locality and "locality" not in spec:
        spec["locality"] = node.locality
    metadata: dict[str, Any] = {"name": registration_name(node), "namespace": node.namespace,
                                "annotations": annotations}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": metadata, "spec": spec}


# --- the gRPC server ----------------------------------------------------------------------


class ConfigServer:
    """Serve a started ConfigStore over ADS; see the module docstring for the protocol.

    Usage::

        with ConfigStore("config/") as store, ConfigServer(store, port=0) as server:
            print(server.port)

    The store's lifecycle stays with the caller; the server only subscribes to it.
    """

    def __init__(self, store: ConfigStore | EtcdConfigStore, *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, max_streams: int = MAX_STREAMS,
                 services: Sequence[Callable[[Any], None]] = (),
                 grace: float = REGISTRY_GRACE, sweep_interval: float = SWEEP_INTERVAL,
                 clock: Callable[[], float] = time.time,
                 shared_registry: EtcdRegistry | None = None,
                 credentials: Any = None, authenticator: Authenticator | None = None) -> None:
        """``services`` add more gRPC services to the same server before it starts
        (``lambda server: add_ca_service(server, ca, tokens)`` for the CA).

        ``grace`` is how long a registered WorkloadEntry outlives its stream; a sweeper
        thread checks every ``sweep_interval`` s (0 or less: no thread, call
        :meth:`sweep`). ``clock`` (wall seconds) stamps registrations and times the
        push latency metric, for tests.

        ``shared_registry`` keeps the registry in etcd, shared with other replicas
        (:class:`~meshsdk.controlplane.etcd.EtcdRegistry`); without it the registry
        lives in this process. ``credentials`` (gRPC server credentials, e.g.
        :meth:`~meshsdk.controlplane.tls.ServingCertificate.server_credentials`) serve
        the port over TLS; None serves plaintext. ``authenticator`` (e.g. the CA's
        :class:`~meshsdk.controlplane.ca_service.TokenDirectory`) makes every stream
        prove who it is with a bearer token, and its node must then claim that namespace
        and service account (as istiod checks a proxy's identity): no stream may read
        another namespace's config or register a workload in its name."""
        self.store = store
        self._services = tuple(services)
        self.host = host
        self._requested_port = port
        self.max_streams = max_streams
        self._port: int | None = None
        self._lock = threading.Lock()   # guards everything below and orders all sends
        self._subscribers: dict[str, _Subscriber] = {}
        self._recent: collections.deque[_Subscriber] = collections.deque(
            maxlen=RECENT_DISCONNECTS)
        self._config: Config | None = None        # what is served: store + registry
        self._version = ""
        self._store_config: Config | None = None
        self._store_version = ""
        self._registry: dict[tuple[str, str], _Registration] = {}
        # (type, namespace) -> the response of the current version (nonce empty) and a
        # digest of its resources
        self._encoded: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._audiences: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._markers: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._batch: list[tuple[_Subscriber, _QueueItem]] | None = None
        self._nonces = 0
        self._nonce_prefix = uuid.uuid4().hex[:8] + "-"
        self._push_counters: dict[str, Any] = {}
        self.grace = grace
        self._shared = shared_registry
        self._credentials = credentials
        self._authenticator = authenticator
        self.replica = shared_registry.replica if shared_registry is not None else ""
        self._validated: dict[str, Resource] = {}   # registry documents already checked
        # claims written to etcd whose echo has not come back yet: kept in the view so
        # an unrelated etcd event in between does not make the entry flap
        self._pending: dict[tuple[str, str], tuple[float, _Registration]] = {}
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._sweeper: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._registry_burst = Debouncer(REGISTRY_QUIET, REGISTRY_MAX_DELAY)
        self._counter = 0
        self._grpc: Any = None
        self._loop: LoopThread | None = None
        self._serving = threading.Event()
        self._unsubscribe: Any = None
        self._published_at: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.registry = CollectorRegistry(auto_describe=True)
        """This server's Prometheus metrics (served by DebugServer at ``/metrics``)."""
        self._pushes = Counter("meshsdk_xds_pushes", "Responses queued to subscribers, "
                               "by kind.", ["type"], registry=self.registry)
        self._push_errors = Counter("meshsdk_xds_push_errors", "Responses that could not "
                                    "be encoded, by kind.", ["type"], registry=self.registry)
        self._nacks = Counter("meshsdk_xds_nacks", "NACKs of the latest push, by kind.",
                              ["type"], registry=self.registry)
        self._connected = Gauge("meshsdk_xds_connected_subscribers",
                                "Open ADS streams.", registry=self.registry)
        self._push_latency = Histogram(
            "meshsdk_xds_push_latency_seconds",
            "Time from a version being published to its ACK by a subscriber for every "
            "subscribed type (istiod: pilot_proxy_convergence_time).",
            buckets=PUSH_LATENCY_BUCKETS, registry=self.registry)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> ConfigServer:
        """Subscribe to the store and start serving; ``port=0`` picks a free port."""
        if self._grpc is not None:
            raise RuntimeError("ConfigServer.start() called twice")
        self._loop = LoopThread("ads")
        self._unsubscribe = self.store.subscribe(self._on_version, replay=True)
        try:
            self._grpc = self._loop.run(self._start_grpc(), timeout=10.0)
        except BaseException:
            self._unsubscribe()
            self._loop.stop()
            self._loop = None
            raise
        self._serving.set()
        if self._shared is not None:
            self._shared.start(self._on_shared)
        if self._sweep_interval > 0:
            self._stopping.clear()
            self._sweeper = threading.Thread(target=self._sweep_loop, name="registry-sweep",
                                             daemon=True)
            self._sweeper.start()
        return self

    async def _start_grpc(self) -> Any:
        """Build and start the grpc.aio server on the loop thread.

        Sync handlers (the CA service's) run on a small thread pool so they never
        block the loop that serves the streams."""
        server = grpc.aio.server(
            migration_thread_pool=futures.ThreadPoolExecutor(max_workers=4,
                                                             thread_name_prefix="ads-sync"),
            maximum_concurrent_rpcs=self.max_streams)
        # responses leave as bytes made by _Response.wire_bytes (identity serializer)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            ADS_SERVICE, {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.StreamAggregatedResources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=bytes)}),))
        for add in self._services:
            add(server)
        try:
            address = f"{self.host}:{self._requested_port}"
            self._port = int(server.add_insecure_port(address) if self._credentials is None
                             else server.add_secure_port(address, self._credentials))
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.host}:{self._requested_port}: {exc}") from exc
        await server.start()
        return server

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting streams, end the open ones (after ``grace`` s) and unsubscribe."""
        self._serving.clear()
        self._stopping.set()
        self._wake.set()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.join(5.0)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        server, self._grpc = self._grpc, None
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if server is not None:
            with self._lock:
                for sub in self._subscribers.values():
                    loop.call(sub.outbox.put, None)
            try:
                loop.run(server.stop(grace), timeout=5.0 if grace is None else grace + 5.0)
            except TimeoutError:
                log.warning("ADS server did not stop in time")
        loop.stop()

    def __enter__(self) -> ConfigServer:
        return self.start() if self._grpc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(None)

    @property
    def port(self) -> int:
        """The port actually listened on (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("ConfigServer not started")
        return self._port

    @property
    def serving(self) -> bool:
        """Whether the gRPC server is started and not stopped."""
        return self._serving.is_set()

    # --- pushes ----------------------------------------------------------------------

    def _on_version(self, config: Config, version: str) -> None:
        """Store callback: remember the snapshot and push every subscribed type again."""
        with self._lock:
            if version == self._store_version and self._store_config is not None:
                return
            self._store_config, self._store_version = config, version
            self._publish()

    def _publish(self) -> None:
        """Serve the store's config plus the registry and push it to all (lock held).

        Registry entries whose name a store resource already uses are left out (the
        store wins). Before any registration the version is the store's own.
        """
        store = self._store_config
        if store is None:
            return
        config = store
        if self._registry:
            taken = {r.key for r in store.resources}
            extra = [g.resource for g in self._registry.values()
                     if g.ready and g.resource.key not in taken]
            try:
                config = self._merge(store, extra)
            except ConfigError as exc:  # registrations are checked when made
                log.error("registry entries do not fit store version %s, serving it "
                          "without them: %s", self._store_version, exc)
        version = self._store_version + self._registry_version()
        if version == self._version:
            return
        self._config, self._version = config, version
        self._encoded.clear()
        self._audiences.clear()
        self._markers.clear()
        self._published_at[version] = self._clock()
        while len(self._published_at) > PUBLISHED_KEPT:
            self._published_at.popitem(last=False)
        self._batch = []
        try:
            for sub in self._subscribers.values():
                self._push(sub)
        finally:
            batch, self._batch = self._batch, None
            if batch and self._loop is not None:
                self._loop.call(self._deliver, batch)

    def _push(self, sub: _Subscriber) -> None:
        """Send ``sub`` the current version (lock held): with the snapshot marker, the
        types whose resources changed for it and then the marker (an endpoint change
        sends WorkloadEntries alone, as istiod's incremental EDS push); without it,
        every type."""
        for type_url in sorted(sub.types):
            if type_url != SNAPSHOT_TYPE_URL:
                self._send(sub, type_url, only_if_changed=sub.marked)
        if sub.marked:
            self._send_marker(sub)

    def _registry_version(self) -> str:
        """``+r<hash>`` of the registered entries ("" with none; lock held).

        A hash of the content, not a counter, so replicas sharing one registry through
        etcd name the same registry state alike and a subscriber that fails over to
        another replica finds its version unchanged."""
        served = sorted(k for k, g in self._registry.items() if g.ready)
        if not served:
            return ""
        digest = hashlib.sha256()
        for key in served:
            digest.update(json.dumps(resource_document(self._registry[key].resource),
                                     sort_keys=True).encode())
        return "+r" + digest.hexdigest()[:12]

    @staticmethod
    def _merge(store: Config, extra: Sequence[Resource]) -> Config:
        """The store's resources and ``extra`` as one Config, analysed by the loader."""
        result = LoadResult()
        result.extend(LoadResult(resources=list(store.resources)))
        result.extend(LoadResult(resources=list(extra)))
        return config_from_result(result, mesh=store.mesh)

    # --- the workload registry -------------------------------------------------------

    def _register(self, sub: _Subscriber, node: NodeIdentity) -> None:
        """Register (or re-attach) the WorkloadEntry of an AUTO_REGISTER node (lock held).

        An invalid entry, or one that makes the served config invalid, is refused and
        logged; the stream is not affected.
        """
        group = None
        if node.group:
            store = self._store_config
            group = next((g for g in (store.of_kind("WorkloadGroup") if store else ())
                          if g.namespace == node.namespace and g.name == node.group), None)
            if group is None:
                log.warning("registration of %s refused: no WorkloadGroup %s/%s",
                            node.node_id, node.namespace, node.group)
                return
        document = registration_document(node, group)
        ref = f"{node.namespace}/{document['metadata']['name']}"
        result = load_string(json.dumps(document), source=f"registry:{ref}",
                             namespace=node.namespace)
        if result.errors or len(result.resources) != 1:
            why = "; ".join(d.message for d in result.diagnostics) or "not accepted"
            log.warning("registration of %s by %s refused: %s", ref, node.node_id, why)
            return
        resource = result.resources[0]
        key = (resource.namespace, resource.name)
        store = self._store_config
        if store is not None and resource.key in {r.key for r in store.resources}:
            log.warning("registration of %s by %s refused: the config already defines it",
                        ref, node.node_id)
            return
        current = self._registry.get(key)
        if current is not None and resource_document(current.resource) == \
                resource_document(resource):
            current.connection_id, current.node_id = sub.connection_id, node.node_id
            current.disconnected_since = None
            current.ready, current.health = sub.ready, sub.health
            self._claim(key, current)
            log.info("%s re-attached to %s", ref, sub.connection_id)
            return
        # validated alone above; a WorkloadEntry has no cross-resource errors (only
        # name clashes, checked above), so the whole config is not analysed again here:
        # at 100 registrations a second that cost more than everything else
        registration = _Registration(resource, node.node_id, sub.connection_id,
                                     self._clock(), ready=sub.ready, health=sub.health)
        self._registry[key] = registration
        self._claim(key, registration)
        log.info("registered %s for %s", ref, node.node_id)
        self._registry_changed()

    def _claim(self, key: tuple[str, str], reg: _Registration) -> None:
        """Write a registration made here to the shared registry, if any (lock held).

        The local view already has it, so this replica pushes at once; the other
        replicas learn it from etcd."""
        if self._shared is None or reg.connection_id is None:
            return
        from meshsdk.controlplane.etcd import RegistryRecord, registry_key
        reg.owner = self.replica
        reg.record = RegistryRecord(resource_document(reg.resource), reg.node_id,
                                    self.replica, reg.connection_id, reg.registered_at,
                                    reg.disconnected_since, reg.ready, reg.health)
        self._shared.claim(registry_key(*key), reg.record)
        self._pending[key] = (self._clock(), reg)

    def _release(self, sub: _Subscriber) -> None:
        """The stream of ``sub`` ended: its registrations start their grace (lock held)."""
        now = self._clock()
        for key, reg in self._registry.items():
            if reg.connection_id == sub.connection_id and reg.disconnected_since is None:
                reg.disconnected_since = now
                if self._shared is not None and reg.record is not None:
                    from meshsdk.controlplane.etcd import registry_key
                    old = reg.record
                    reg.record = dataclasses.replace(old, disconnected_since=now)
                    # only if no other replica claimed it meanwhile
                    self._shared.replace(registry_key(*key), old, reg.record)

    def _report_health(self, sub: _Subscriber, report: Health) -> None:
        """The workload says it is (not) ready: its entries are served only when ready
        (Istio's workload health, lock held)."""
        sub.ready, sub.health = report.ready, report.message
        changed = False
        for key, reg in self._registry.items():
            if reg.connection_id != sub.connection_id or \
                    (reg.ready, reg.health) == (report.ready, report.message):
                continue
            reg.ready, reg.health = report.ready, report.message
            changed = True
            log.info("%s/%s is %s%s", *key, "ready" if reg.ready else "not ready",
                     f": {reg.health}" if reg.health else "")
            if self._shared is not None and reg.record is not None:
                from meshsdk.controlplane.etcd import registry_key
                old = reg.record
                reg.record = dataclasses.replace(old, ready=reg.ready, health=reg.health)
                self._shared.replace(registry_key(*key), old, reg.record)
                self._pending[key] = (self._clock(), reg)
        if changed:
            self._registry_changed()

    def _on_shared(self, records: dict[str, RegistryRecord]) -> None:
        """The shared registry changed (any replica): serve what etcd holds."""
        view: dict[tuple[str, str], _Registration] = {}
        for rec in records.values():
            resource = self._check_shared(rec)
            if resource is None:
                continue
            mine = rec.owner == self.replica
            view[(resource.namespace, resource.name)] = _Registration(
                resource, rec.node_id, rec.connection_id if mine else None,
                rec.registered_at, rec.disconnected_since, rec.owner, rec, rec.ready,
                rec.health)
        with self._lock:
            now = self._clock()
            for key, (at, reg) in list(self._pending.items()):
                echoed = view.get(key)
                if echoed is not None and echoed.record == reg.record:
                    del self._pending[key]
                elif now - at > PENDING_CLAIM_TIMEOUT:
                    log.warning("claim of %s/%s never appeared in etcd", *key)
                    del self._pending[key]
                else:
                    view[key] = reg
            store = self._store_config
            if store is not None:
                taken = {r.key for r in store.resources}
                view = {k: g for k, g in view.items() if g.resource.key not in taken}
            self._registry = view
            self._registry_changed()

    def _check_shared(self, rec: RegistryRecord) -> Resource | None:
        """Validate a record's document (once per distinct document)."""
        text = json.dumps(rec.document, sort_keys=True)
        resource = self._validated.get(text)
        if resource is None:
            result = load_string(text, source=f"registry:{rec.node_id}")
            if result.errors or len(result.resources) != 1:
                log.warning("shared registry entry of %s ignored: %s", rec.node_id,
                            "; ".join(d.message for d in result.diagnostics))
                return None
            resource = result.resources[0]
            if len(self._validated) > 10_000:
                self._validated.clear()
            self._validated[text] = resource
        return resource

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove registrations disconnected for ``grace`` s or more (at ``now``, by
        default the clock); push a new version if any went. Returns their names."""
        with self._lock:
            at = self._clock() if now is None else now
            gone = [k for k, g in self._registry.items()
                    if g.disconnected_since is not None
                    and at - g.disconnected_since >= self.grace
                    and (self._shared is None or g.owner == self.replica)]
            for key in gone:
                reg = self._registry.pop(key)
                if self._shared is not None and reg.record is not None:
                    from meshsdk.controlplane.etcd import registry_key
                    self._shared.replace(registry_key(*key), reg.record, None)
                log.info("unregistered %s/%s after the grace period", *key)
            if gone:
                self._registry_changed()
        return [f"{ns}/{name}" for ns, name in gone]

    def _registry_changed(self) -> None:
        """Push the registry's new state: debounced by the sweeper thread when there is
        one, at once otherwise (lock held)."""
        if self._sweeper is None:
            self._publish()
            return
        self._registry_burst.event()
        self._wake.set()

    def _sweep_loop(self) -> None:
        """Push debounced registry changes when due; sweep every ``sweep_interval``."""
        next_sweep = time.monotonic() + self._sweep_interval
        while not self._stopping.is_set():
            with self._lock:
                due = self._registry_burst.next_deadline()
            wake_at = next_sweep if due is None else min(due, next_sweep)
            self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                with self._lock:
                    if self._registry_burst.take():
                        self._publish()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self._sweep_interval
                    self.sweep()
            except Exception:  # never let the sweeper die silently
                log.exception("registry push or sweep failed")

    def _send(self, sub: _Subscriber, type_url: str, *, only_if_changed: bool = False) -> None:
        """Queue the current snapshot of one type for one subscriber (lock held);
        ``only_if_changed``: not if it holds the same resources already."""
        config = self._config
        if config is None or sub.node is None:
            return
        mesh_wide = type_url == MESH_CONFIG_TYPE_URL
        kind = "MeshConfig" if mesh_wide else kind_of(type_url)
        namespace = sub.node.namespace
        audience = "" if mesh_wide else self._audience(config, sub.node)
        encoded = self._encoded.get((type_url, audience))
        if encoded is None:
            scope = egress_scope(config, namespace, sub.node.labels)
            resources = [] if mesh_wide else [r for r in config.of_kind(kind)
                                              if is_visible(r, namespace, config) and scope(r)]
            try:
                template = mesh_config_response(self._version, "", config.mesh) \
                    if mesh_wide else discovery_response(type_url, self._version, "", resources)
            except WireError as exc:  # a validated config should always encode
                log.exception("cannot encode %s for %s", type_url, sub.connection_id)
                self._push_errors.labels(type=kind).inc()
                self._put(sub, _Abort(grpc.StatusCode.INTERNAL, str(exc)))
                return
            encoded = (template.SerializeToString(), _digest(template))
            self._encoded[(type_url, audience)] = encoded
        payload, digest = encoded
        state = sub.types.setdefault(type_url, _TypeState())
        if only_if_changed and state.sent_digest == digest:
            return
        nonce = self._nonce()
        state.sent_version, state.sent_nonce, state.sent_digest = self._version, nonce, digest
        sub.sent_version = self._version
        self._put(sub, _Response(type_url, payload, nonce))
        counter = self._push_counters.get(kind)
        if counter is None:
            counter = self._push_counters[kind] = self._pushes.labels(type=kind)
        counter.inc()

    def _audience(self, config: Config, node: NodeIdentity) -> str:
        """Who sees the same resources (lock held): the namespace (exportTo) and the
        Sidecar that scopes the node's imports."""
        key = (node.namespace, tuple(sorted(node.labels.items())))
        audience = self._audiences.get(key)
        if audience is None:
            sidecar = sidecar_for(config, node.namespace, node.labels)
            audience = node.namespace + ("" if sidecar is None else
                                         f"|{sidecar.namespace}/{sidecar.name}")
            self._audiences[key] = audience
        return audience

    def _send_marker(self, sub: _Subscriber) -> None:
        """Queue the snapshot marker: the version of every type ``sub`` holds (lock held)."""
        if self._config is None or sub.node is None:
            return
        types = tuple(sorted((url, st.sent_version) for url, st in sub.types.items()
                             if url != SNAPSHOT_TYPE_URL and st.sent_version))
        # most subscribers hold the same versions: one marker per distinct map
        payload = self._markers.get(types)
        if payload is None:
            payload = snapshot_response(self._version, "", dict(types)).SerializeToString()
            self._markers[types] = payload
        nonce = self._nonce()
        state = sub.types.setdefault(SNAPSHOT_TYPE_URL, _TypeState())
        state.sent_version, state.sent_nonce = self._version, nonce
        sub.sent_version = self._version
        self._put(sub, _Response(SNAPSHOT_TYPE_URL, payload, nonce))

    def _nonce(self) -> str:
        """A nonce unique within this server (lock held): cheaper than a UUID each."""
        self._nonces += 1
        return f"{self._nonce_prefix}{self._nonces:x}"

    def _put(self, sub: _Subscriber, item: _QueueItem) -> None:
        """Queue ``item`` for ``sub``'s stream from any thread; order is kept.

        During a push, items are collected and handed to the loop in one callback
        (one wake-up of the loop instead of thousands)."""
        if self._batch is not None:
            self._batch.append((sub, item))
            return
        loop = self._loop
        if loop is not None:
            loop.call(sub.outbox.put, item)

    @staticmethod
    def _deliver(batch: list[tuple[_Subscriber, _QueueItem]]) -> None:
        """On the loop: queue a push's items, in order."""
        for sub, item in batch:
            sub.outbox.put(item)

    # --- the stream ------------------------------------------------------------------

    async def StreamAggregatedResources(
            self, request_iterator: AsyncIterator[ProtoMessage], context: Any,
    ) -> AsyncIterator[bytes]:
        """One subscriber: a reader task handles requests, this generator writes
        serialized DiscoveryResponses."""
        caller = None
        if self._authenticator is not None:
            token = bearer_token(context)
            caller = None if token is None else self._authenticator.authenticate(token)
            if caller is None:
                log.warning("ADS stream from %s refused: %s", context.peer(),
                            "no bearer token" if token is None else "unknown token")
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "a bootstrap token is required (authorization: Bearer)"
                                    if token is None else "the bearer token is not valid")
                return
        with self._lock:
            self._counter += 1
            sub = _Subscriber(f"conn-{self._counter}", str(context.peer()), time.time(),
                              caller=caller)
            self._subscribers[sub.connection_id] = sub
            self._connected.inc()
        reader = asyncio.create_task(self._read(sub, request_iterator))
        try:
            while (item := await sub.outbox.get()) is not None:
                if isinstance(item, _Abort):
                    await context.abort(item.code, item.message)
                    return
                yield item.wire_bytes()
        finally:
            reader.cancel()
            with self._lock:
                if self._subscribers.pop(sub.connection_id, None) is not None:
                    self._connected.dec()
                sub.disconnected_at = time.time()
                self._recent.append(sub)
                self._release(sub)
            log.info("subscriber %s (%s) disconnected", sub.connection_id,
                     sub.node.node_id if sub.node else "no node")

    async def _read(self, sub: _Subscriber, requests: AsyncIterator[ProtoMessage]) -> None:
        """Handle a stream's requests until the client half-closes or the RPC ends."""
        try:
            async for request in requests:
                try:
                    message = parse_request(request)
                except WireError as exc:
                    self._put(sub, _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
                    return
                with self._lock:
                    problem = self._handle(sub, message)
                if problem is not None:
                    self._put(sub, problem)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the RPC was cancelled or failed: the stream is over
            log.debug("stream %s ended: %r", sub.connection_id, exc)
        self._put(sub, None)

    def _handle(self, sub: _Subscriber, message: ClientMessage) -> _Abort | None:
        """Apply one request (lock held); return an error to end the stream with."""
        if sub.node is None:
            if message.node is None:
                return _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "the first request of a stream must carry the node")
            caller = sub.caller
            if caller is not None and (message.node.namespace, message.node.service_account) \
                    != (caller.namespace, caller.service_account):
                log.warning("%s: node %s claims %s/%s but its token is %s/%s",
                            sub.connection_id, message.node.node_id, message.node.namespace,
                            message.node.service_account, *caller)
                return _Abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"the node says namespace {message.node.namespace!r}, service "
                              f"account {message.node.service_account!r}; the token is for "
                              f"{caller.namespace}/{caller.service_account}")
            sub.node = message.node
            log.info("subscriber %s is %s", sub.connection_id, sub.node.node_id)
            if sub.node.auto_register:
                self._register(sub, sub.node)
        if isinstance(message, Health):
            self._report_health(sub, message)
            return None
        if isinstance(message, Subscribe):
            if message.type_url == SNAPSHOT_TYPE_URL:
                sub.marked = True
            else:
                self._send(sub, message.type_url)
            if sub.marked:
                self._send_marker(sub)
            return None
        state = sub.types.get(message.type_url)
        if state is None or message.nonce != state.sent_nonce:
            log.debug("stale %s from %s ignored", type(message).__name__, sub.connection_id)
            return None
        if isinstance(message, Nack):
            sub.last_nack = _NackRecord(message.type_url, state.sent_version, message.nonce,
                                        message.message, time.time())
            self._nacks.labels(type=_kind_label(message.type_url)).inc()
            log.warning("%s rejected %s %s: %s", sub.connection_id, message.type_url,
                        state.sent_version, message.message)
            return None
        state.acked_version, state.acked_nonce = message.version_info, message.nonce
        if message.type_url == SNAPSHOT_TYPE_URL:
            # the marker comes after every response it names: its ACK stands for the
            # whole snapshot (a marker client ACKs nothing else)
            for other in sub.types.values():
                other.acked_version, other.acked_nonce = other.sent_version, other.sent_nonce
        if all(s.acked_nonce == s.sent_nonce for s in sub.types.values()):
            sub.acked_version = sub.sent_version
            self._observe_latency(sub)
        return None

    def _observe_latency(self, sub: _Subscriber) -> None:
        """Observe the push latency of ``sub``'s ACKed version, once (lock held)."""
        version = sub.acked_version
        published = self._published_at.get(version)
        if version == sub.observed_version or published is None:
            return
        sub.observed_version = version
        self._push_latency.observe(max(0.0, self._clock() - published))

    # --- introspection ---------------------------------------------------------------

    def syncz(self) -> list[dict[str, Any]]:
        """Each connected subscriber: node, namespace, workload, ACKed version, last NACK.

        ``acked_version`` is the newest version ACKed for *every* subscribed type.
        """
        with self._lock:
            return [s.describe() for s in self._subscribers.values()]

    def recently_disconnected(self) -> list[dict[str, Any]]:
        """The last few subscribers that went away (newest last), as syncz entries."""
        with self._lock:
            return [s.describe() for s in self._recent]

    def registryz(self) -> list[dict[str, Any]]:
        """The registered WorkloadEntries: node, address, labels, ports and state
        (``connected``, or ``disconnected`` with ``disconnected_since``)."""
        with self._lock:
            return [g.describe() for g in self._registry.values()]

    def config_dump(self) -> dict[str, Any]:
        """The version served, its resources by kind (as documents), and the store error."""
        error = self.store.last_error
        with self._lock:
            config, version = self._config, self._version
        resources: dict[str, list[dict[str, Any]]] = {}
        for r in config.resources if config is not None else ():
            resources.setdefault(r.kind, []).append(resource_document(r))
        return {
            "version": version or None,
            "resources": resources,
            "last_error": None if error is None else {
                "message": error.message, "files": list(error.files),
                "changed": list(error.changed), "attempted_at": _iso(error.attempted_at),
                "serving": error.serving},
        }

    @property
    def ready(self) -> bool:
        """Serving gRPC and holding a valid config."""
        with self._lock:
            has_config = self._config is not None
        return has_config and self.serving


# --- debug HTTP ---------------------------------------------------------------------------


class DebugServer:
    """``/debug/syncz``, ``/debug/disconnected``, ``/debug/config_dump``,
    ``/debug/registryz``, ``/metrics``, ``/healthz``
    and ``/readyz`` for one ConfigServer, on a stdlib HTTP server thread.

    Unauthenticated, so it binds 127.0.0.1 only by default; ``port=0`` picks a free port.
    """

    def __init__(self, config_server: ConfigServer, *, host: str = "127.0.0.1",
                 port: int = DEFAULT_DEBUG_PORT) -> None:
        self.config_server = config_server
        self.host = host
        self._requested_port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> DebugServer:
        """Bind and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("DebugServer.start() called twice")
        handler = _handler_for(self.config_server)
        self._httpd = ThreadingHTTPServer((self.host, self._requested_port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1}, name="debug-http",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._httpd is None:
            raise RuntimeError("DebugServer not started")
        return int(self._httpd.server_address[1])

    def __enter__(self) -> DebugServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _handler_for(server: ConfigServer) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``server``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/debug/syncz":
                self._json(200, server.syncz())
            elif path == "/debug/disconnected":
                self._json(200, server.recently_disconnected())
            elif path == "/debug/registryz":
                self._json(200, server.registryz())
            elif path == "/debug/config_dump":
                self._json(200, server.config_dump())
            elif path == "/metrics":
                self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._text(200, "ok\n")
            elif path == "/readyz":
                if server.ready:
                    self._text(200, "ready\n")
                else:
                    self._text(503, "not ready\n")
            else:
                self._text(404, "not found\n")

        def _json(self, status: int, body: Any) -> None:
            self._send(status, json.dumps(body, indent=1).encode(), "application/json")

        def _text(self, status: int, body: str) -> None:
            self._send(status, body.encode(), "text/plain; charset=utf-8")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("debug http: " + format, *args)

    return Handler


# --- command line -------------------------------------------------------------------------


def build_parser(prog: str = "python -m meshsdk.controlplane.server") -> argparse.ArgumentParser:
    """The command line of :func:`main` (shared with ``meshctl serve``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve Istio config over ADS (gRPC) and debug HTTP until "
        "SIGINT/SIGTERM: from a watched directory (--config), or from etcd (--etcd) shared "
        "with other replicas, where --config then also writes each valid version of the "
        "directory into etcd.")
    parser.add_argument("-c", "--config", metavar="DIR", help="directory of Istio YAML")
    parser.add_argument("--etcd", metavar="HOST:PORT",
                        help="keep config and registry in etcd (replicas share them)")
    parser.add_argument("--etcd-prefix", default="/meshsdk", help="etcd key prefix")
    parser.add_argument("--host", default="127.0.0.1", help="ADS address")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="ADS gRPC port")
    parser.add_argument("--debug-port", type=int, default=DEFAULT_DEBUG_PORT,
                        help="debug HTTP port on 127.0.0.1")
    parser.add_argument("--grace", type=float, default=REGISTRY_GRACE,
                        help="seconds a registered WorkloadEntry outlives its stream (and, "
                        "with --etcd, its replica)")
    parser.add_argument("--ca-dir", metavar="DIR",
                        help="serve CSR signing with the CA in DIR (meshctl ca init)")
    parser.add_argument("--tokens", metavar="DIR",
                        help="bootstrap tokens for the CA: files <namespace>.<sa>.token")
    parser.add_argument("--authenticate", action="store_true",
                        help="every subscriber must send a bootstrap token from --tokens "
                        "(authorization: Bearer), and its node must claim that token's "
                        "namespace and service account")
    parser.add_argument("--tls", action="store_true",
                        help="serve gRPC over TLS with a certificate from --ca-dir's CA "
                        "(istiod.istio-system.svc, localhost, --host); clients trust the "
                        "CA's root-cert.pem")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when the process that started this one exits (for "
                        "supervisors and demos that may be killed outright)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the config service (see :func:`build_parser`); 0 on a clean stop."""
    args = (build_parser(prog) if prog else build_parser()).parse_args(argv)
    if not args.config and not args.etcd:
        print("error: give --config DIR, --etcd HOST:PORT, or both", file=sys.stderr)
        return 2
    if bool(args.ca_dir) != bool(args.tokens):
        print("error: --ca-dir and --tokens go together", file=sys.stderr)
        return 2
    if args.authenticate and not args.tokens:
        print("error: --authenticate needs --tokens", file=sys.stderr)
        return 2
    if args.tls and not args.ca_dir:
        print("error: --tls needs --ca-dir (the CA that issues the service's certificate)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            services: list[Callable[[Any], None]] = []
            credentials = None
            authenticator = None
            if args.ca_dir:
                from meshsdk.controlplane.ca_service import TokenDirectory, add_ca_service
                from meshsdk.security.ca import MeshCA
                ca, tokens = MeshCA.load(args.ca_dir), TokenDirectory(args.tokens)
                services.append(lambda server: add_ca_service(server, ca, tokens))
                authenticator = tokens if args.authenticate else None
                if args.tls:
                    from meshsdk.controlplane.tls import ServingCertificate
                    credentials = ServingCertificate(
                        ca, ("localhost", "127.0.0.1", args.host)).server_credentials()
            store: ConfigStore | EtcdConfigStore
            shared: EtcdRegistry | None = None
            if args.etcd:
                from meshsdk.controlplane import etcd
                conn = stack.enter_context(etcd.Etcd(args.etcd, prefix=args.etcd_prefix))
                if args.config:
                    files = stack.enter_context(ConfigStore(args.config))
                    stack.callback(files.subscribe(
                        lambda config, version: _write_through(conn, config), replay=True))
                store = stack.enter_context(etcd.EtcdConfigStore(conn))
                replica = f"{args.host}:{args.port}/{uuid.uuid4().hex[:8]}"
                shared = etcd.EtcdRegistry(conn, replica, ttl=max(2, round(args.grace)))
                source = f"etcd {args.etcd}{args.etcd_prefix}"
            else:
                store = stack.enter_context(ConfigStore(args.config))
                source = args.config
            server = stack.enter_context(ConfigServer(
                store, host=args.host, port=args.port, grace=args.grace, services=services,
                shared_registry=shared, credentials=credentials,
                authenticator=authenticator))
            debug = stack.enter_context(DebugServer(server, port=args.debug_port))
            print(f"serving {source} version {store.version}: ADS on "
                  f"{args.host}:{server.port}, debug on 127.0.0.1:{debug.port}"
                  + (", CA on the ADS port" if args.ca_dir else "")
                  + (", TLS" if credentials is not None else ""),
                  file=sys.stderr, flush=True)
            parent = os.getppid()
            while not stop.wait(0.5):
                if args.exit_with_parent and os.getppid() != parent:
                    print("parent exited", file=sys.stderr, flush=True)
                    break
            print("stopping", file=sys.stderr, flush=True)
    except (MeshError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _write_through(conn: Any, config: Config) -> None:
    """Write a valid version of the watched directory into etcd (``--config`` with
    ``--etcd``); replicas writing the same content leave the served version unchanged."""
    from meshsdk.controlplane.etcd import apply_documents
    try:
        apply_documents(conn, (resource_document(r) for r in config.resources))
    except MeshError as exc:
        log.error("could not write the config into etcd: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
