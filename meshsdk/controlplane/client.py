"""The config service client: one ADS stream that keeps a :class:`~meshsdk.Mesh` current.

The client subscribes to every kind in :data:`~meshsdk.controlplane.wire.TYPE_URLS`
on one ``StreamAggregatedResources`` stream, and last to the snapshot marker
(:data:`~meshsdk.controlplane.wire.SNAPSHOT_TYPE_URL`). It keeps the latest response
of each type; the server sends only the types that changed, then a marker naming the
version of every type's current response, and the client applies when it holds
exactly those, so the mesh never runs half a snapshot. (From a server without the
marker, it applies once every type is held at one version.) All responses are
re-validated, built into one Config and swapped in with ``mesh.update`` (then the new
responses are ACKed); any failure NACKs them and the last good config stays.

The stream runs in a background thread and reconnects with exponential backoff
and jitter (:func:`next_backoff`). Each applied version is also written to an
on-disk cache, so a restarted app whose config service is down still routes.
"""

from __future__ import annotations

import json
import os
import queue
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import grpc  # type: ignore[import-untyped]
from envoy.service.discovery.v3 import ads_pb2_grpc  # type: ignore[import-untyped]

from meshsdk.config.loader import config_from_result, load_mesh_config_string, load_string
from meshsdk.config.resource import Config
from meshsdk.controlplane.tls import SERVER_NAME
from meshsdk.controlplane.tls import channel as open_channel
from meshsdk.controlplane.wire import (
    MESH_CONFIG_TYPE_URL,
    SNAPSHOT_TYPE_URL,
    TYPE_URLS,
    NodeIdentity,
    ProtoMessage,
    Push,
    WireError,
    ack_request,
    config_for,
    decode_response,
    health_request,
    mesh_config_document,
    nack_request,
    read_mesh_config,
    read_snapshot,
    resource_document,
    subscribe_request,
)
from meshsdk.errors import ConfigError, MeshError
from meshsdk.randomness import fresh_random
from meshsdk.workload import Workload

if TYPE_CHECKING:
    from meshsdk.mesh import Mesh

Source = Literal["server", "cache"]

CACHE_FILE: Final = "config.json"
"""The cache file's name inside ``cache_dir``."""

_CACHE_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """Where the mesh's config comes from and how the link to the config service is."""

    connected: bool
    """A stream to the server is up (it has answered at least once)."""
    version: str | None
    """The ``version_info`` of the config in use (None: none applied yet)."""
    source: Source | None
    """``"server"``, ``"cache"`` (loaded from disk), or None before any config."""
    last_error: str | None
    """The most recent failure: connection error or why a version was NACKed."""
    last_change: float | None
    """When (on the client's clock) the config in use was applied."""
    address: str | None = None
    """The replica the stream is (or was last) up with."""


def next_backoff(attempt: int, rng: random.Random, *, initial: float = 0.5,
                 maximum: float = 30.0, jitter: float = 0.2) -> float:
    """Delay before reconnect ``attempt`` (0-based): ``initial * 2**attempt`` capped at
    ``maximum``, then scaled by a uniform factor in ``[1 - jitter, 1 + jitter]`` so many
    clients restarted together do not reconnect in lockstep."""
    base = min(maximum, initial * 2.0 ** min(attempt, 64))
    return base * rng.uniform(1.0 - jitter, 1.0 + jitter)


def default_cache_dir(workload: Workload) -> Path:
    """``~/.cache/meshsdk/<namespace>-<workload name>``."""
    return Path.home() / ".cache" / "meshsdk" / f"{workload.namespace}-{workload.name}"


def write_cache(cache_dir: Path, version: str, config: Config) -> None:
    """Store a config's documents and version as one JSON file, replaced atomically."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": _CACHE_FORMAT, "version": version,
               "documents": [resource_document(r) for r in config.resources],
               "mesh": mesh_config_document(config.mesh)}
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cache_dir / CACHE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_cache(cache_dir: Path) -> tuple[str, Config] | None:
    """The cached version and its Config, re-validated by the loader; None if no cache.

    A corrupt or invalid cache raises MeshError (ConfigError for invalid documents).
    """
    path = cache_dir / CACHE_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MeshError(f"config cache {path} is unreadable: {exc}") from None
    if (not isinstance(payload, dict) or payload.get("format") != _CACHE_FORMAT
            or not isinstance(payload.get("version"), str)
            or not isinstance(payload.get("documents"), list)):
        raise MeshError(f"config cache {path} is not a meshsdk cache")
    text = "\n---\n".join(json.dumps(d, ensure_ascii=False) for d in payload["documents"])
    mesh = None
    if payload.get("mesh"):
        mesh, diagnostics = load_mesh_config_string(json.dumps(payload["mesh"]),
                                                    source=f"{path}:mesh")
        if mesh is None:
            raise ConfigError("; ".join(d.message for d in diagnostics if d.is_error))
    config = config_from_result(load_string(text, source=str(path)), mesh=mesh)
    return payload["version"], config


class ConfigClient:
    """Keeps ``mesh`` on the config service's latest valid version, in a background thread.

    ``clock`` stamps ``last_change``; ``rng`` draws the backoff jitter. ``initial_backoff``
    / ``max_backoff`` / ``jitter`` shape reconnect delays (see :func:`next_backoff`).
    ``address`` may list several replicas (``host:port,host:port``): after a stream
    ends or fails, the client reconnects to the next one, so a replica going away
    moves its subscribers to the others (the mesh keeps its config meanwhile).
    ``group`` names a WorkloadGroup of the workload's namespace to register from
    (its template gives the entry's ports, labels and service account; implies
    ``register``).
    ``token`` is sent as ``authorization: Bearer`` on the stream, for a server that
    authenticates its subscribers (``meshctl serve --authenticate``).
    ``tls_roots`` (PEM) connects over TLS, trusting only those roots and checking that
    the server's certificate names ``server_name``; None connects in plaintext.
    ``ip`` is the node's address as told to the server (``$INSTANCE_IP`` by default) and
    ``ports`` its named ports (POD_PORTS). ``register`` sets AUTO_REGISTER: the server
    then registers a WorkloadEntry for this node (at ``ip``) while the stream is up.
    """

    def __init__(self, mesh: Mesh, address: str, *, workload: Workload,
                 cache_dir: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 initial_backoff: float = 0.5, max_backoff: float = 30.0,
                 jitter: float = 0.2, ip: str | None = None,
                 ports: Mapping[str, int] | None = None, register: bool = False,
                 group: str = "", tls_roots: bytes | None = None,
                 server_name: str = SERVER_NAME, token: str | None = None) -> None:
        self._mesh = mesh
        self._addresses = [a.strip() for a in address.split(",") if a.strip()]
        if not self._addresses:
            raise MeshError(f"no config service address in {address!r}")
        self._index = 0
        self._address = self._addresses[0]
        self._node = NodeIdentity.from_workload(
            workload, ip or os.environ.get("INSTANCE_IP") or "127.0.0.1", ports=ports,
            auto_register=register, group=group)
        self._cache_dir = Path(cache_dir) if cache_dir is not None \
            else default_cache_dir(workload)
        self._clock = clock
        self._tls = (tls_roots, server_name)
        self._metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        self._rng = rng if rng is not None else fresh_random()
        self._backoff = (initial_backoff, max_backoff, jitter)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self._connected = False
        self._version: str | None = None
        self._source: Source | None = None
        self._last_error: str | None = None
        self._last_change: float | None = None
        self._health: tuple[bool, str] | None = None    # the last readiness reported
        self._outbox: queue.Queue[ProtoMessage] | None = None

    # -- public ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background stream (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="meshsdk-config-client",
                                            daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a first config (server or cache)."""
        return self._ready.wait(timeout)

    def status(self) -> ClientStatus:
        """A consistent copy of the client's state."""
        with self._lock:
            return ClientStatus(self._connected, self._version, self._source,
                                self._last_error, self._last_change, self._address)

    def report_ready(self, ready: bool, message: str = "") -> None:
        """Tell the config service this workload is (not) ready to serve; while not
        ready, its registered endpoint is not routed to. Sent now if connected, and
        again on every reconnect."""
        with self._lock:
            self._health = (ready, message)
            outbox = self._outbox
        if outbox is not None:
            outbox.put(health_request(ready, message))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the stream and the thread; the mesh keeps its current config."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            self._connected = False

    # -- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            answered = self._stream_once()
            with self._lock:
                self._connected = False
            if self._stop.is_set():
                break
            if self._source is None:
                self._load_cache()
            attempt = 0 if answered else attempt + 1
            if len(self._addresses) > 1:  # fail over: the next replica, in turn
                self._index = (self._index + 1) % len(self._addresses)
                with self._lock:
                    self._address = self._addresses[self._index]
            initial, maximum, jitter = self._backoff
            delay = next_backoff(attempt, self._rng, initial=initial, maximum=maximum,
                                 jitter=jitter)
            self._stop.wait(delay)

    def _stream_once(self) -> bool:
        """Run one stream to its end; True if the server answered at least once."""
        outbox: queue.Queue[ProtoMessage] = queue.Queue()
        done = threading.Event()

        def requests() -> Iterator[ProtoMessage]:
            while not (done.is_set() or self._stop.is_set()):
                try:
                    yield outbox.get(timeout=0.1)
                except queue.Empty:
                    continue

        # MeshConfig first (held before the kinds complete), the marker last
        for url in (MESH_CONFIG_TYPE_URL, *TYPE_URLS.values(), SNAPSHOT_TYPE_URL):
            outbox.put(subscribe_request(url, node=self._node, version_info=self._version or ""))
        with self._lock:
            self._outbox = outbox
            if self._health is not None:
                outbox.put(health_request(*self._health))
        held: dict[str, Any] = {}    # the latest response of each type
        fresh: dict[str, Any] = {}   # responses not yet ACKed or NACKed
        marked = False               # the server sends snapshot markers
        answered = False
        channel = open_channel(self._address, *self._tls)
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            self._call = stub.StreamAggregatedResources(requests(), metadata=self._metadata)
            if self._stop.is_set():
                self._call.cancel()
            for response in self._call:
                if not answered:
                    answered = True
                    with self._lock:
                        self._connected = True
                fresh[response.type_url] = response
                if response.type_url == SNAPSHOT_TYPE_URL:
                    marked = True
                    if not self._complete(held, response):
                        continue
                    if len(fresh) == 1 and self._source == "server":
                        # nothing this mesh holds changed: the version moves on alone
                        with self._lock:
                            self._version = response.version_info
                        outbox.put(ack_request(response.type_url, response.version_info,
                                               response.nonce))
                    else:
                        for request in self._apply(list(held.values()), fresh,
                                                   response.version_info):
                            outbox.put(request)
                    fresh.clear()
                    continue
                held[response.type_url] = response
                kinds = [held.get(url) for url in TYPE_URLS.values()]
                versions = {r.version_info for r in held.values()}
                if not marked and None not in kinds and len(versions) == 1:
                    for request in self._apply(list(held.values()), fresh,
                                               response.version_info):
                        outbox.put(request)
                    fresh.clear()
        except grpc.RpcError as exc:
            if not self._stop.is_set():
                self._set_error(f"config service {self._address}: {_rpc_text(exc)}")
        finally:
            done.set()
            with self._lock:
                self._outbox = None
            self._call = None
            channel.close()
        return answered

    def _complete(self, held: Mapping[str, Any], marker: Any) -> bool:
        """Whether ``held`` is exactly the snapshot a marker names, for every type."""
        try:
            types = read_snapshot(marker)
        except WireError as exc:
            self._set_error(f"config service {self._address}: {exc}")
            return False
        if not set(TYPE_URLS.values()) <= set(types):
            return False
        return all(url in held and held[url].version_info == version
                   for url, version in types.items())

    def _apply(self, responses: list[Any], fresh: Mapping[str, Any],
               version: str) -> list[ProtoMessage]:
        """Validate and apply one response per type; ACK or NACK the ``fresh`` ones.

        ``version`` is the snapshot's (its marker's, or the common version). With a
        marker, only the marker is ACKed or NACKed: it stands for the whole snapshot."""
        marked = SNAPSHOT_TYPE_URL in fresh
        try:
            mesh = next((read_mesh_config(r) for r in responses
                         if r.type_url == MESH_CONFIG_TYPE_URL), None)
            pushes: list[Push] = [decode_response(r) for r in responses
                                  if r.type_url != MESH_CONFIG_TYPE_URL]
            config = config_for((r for p in pushes for r in p.resources), mesh)
            self._mesh.update(config)
        except MeshError as exc:
            message = f"version {version} rejected: {exc}"
            self._set_error(message)
            previous = self._version or ""
            return [nack_request(r.type_url, previous, r.nonce, str(exc))
                    for r in fresh.values() if not marked or r.type_url == SNAPSHOT_TYPE_URL]
        with self._lock:
            self._version, self._source = version, "server"
            self._last_change = self._clock()
        self._ready.set()
        try:
            write_cache(self._cache_dir, version, config)
        except OSError as exc:
            self._set_error(f"config cache {self._cache_dir}: {exc}")
        return [ack_request(r.type_url, r.version_info, r.nonce) for r in fresh.values()
                if not marked or r.type_url == SNAPSHOT_TYPE_URL]

    def _load_cache(self) -> None:
        """Apply the on-disk last-good config, if any (only before any server version)."""
        try:
            cached = read_cache(self._cache_dir)
            if cached is None:
                return
            version, config = cached
            self._mesh.update(config)
        except MeshError as exc:
            self._set_error(str(exc))
            return
        with self._lock:
            self._version, self._source = version, "cache"
            self._last_change = self._clock()
        self._ready.set()

    def _set_error(self, message: str) -> None:
        with self._lock:
            self._last_error = message


def _rpc_text(exc: grpc.RpcError) -> str:
    """``CODE: details`` of a gRPC failure."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = getattr(code, "name", "UNKNOWN")
    return f"{name}: {details}"


def empty_config() -> Config:
    """A valid Config with no resources: what a connected mesh starts on."""
    return config_from_result(load_string(""))


__all__ = [
    "CACHE_FILE",
    "ClientStatus",
    "ConfigClient",
    "default_cache_dir",
    "empty_config",
    "next_backoff",
    "read_cache",
    "write_cache",
]
