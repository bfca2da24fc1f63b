"""What the pytest plugin's fixtures are made of, usable without pytest too.

* :class:`MeshTestConfig` collects a test's mesh: services backed by real
  :class:`~meshsdk.testing.upstream.Upstream` servers, Istio YAML the test adds, and
  injected faults. It renders them into one validated configuration and keeps every
  mesh it built following that configuration live (through ``Mesh.update``).
* :class:`MeshFaults` injects faults into calls to a service in one line.
  ``abort`` and ``delay`` write a VirtualService ``fault`` for the host (the user's
  own VirtualService for it is patched, else one is generated), so the calls go
  through the mesh's real fault injection, exactly as in production. ``reset``,
  ``refuse`` and ``unavailable`` act on each *attempt* sent to the service's
  endpoints: the attempt is diverted, on a real socket, to a server that resets the
  connection (TCP RST after reading the request), to a port nothing listens on, or
  to a server answering 503. Retries, outlier detection and response flags then see
  what they would see from a real failing endpoint.
* :class:`FixtureMesh` is the :class:`~meshsdk.mesh.Mesh` those fixtures hand out:
  a plain mesh whose network transport first passes through the attempt faults.

Example without pytest::

    with MeshTestConfig() as env:
        env.upstream("reviews", labels={"version": "v1"})
        MeshFaults(env).abort("reviews", status=503, percent=100)
        mesh = env.build()
        with mesh.client() as client:
            assert client.get("http://reviews/").status_code == 503
"""

from __future__ import annotations

import copy
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import httpx
import yaml

from meshsdk.config.hosts import DEFAULT_DOMAIN, expand_host
from meshsdk.config.resource import Config
from meshsdk.config.snapshot import Snapshot
from meshsdk.mesh import Mesh
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.clock import FakeClock
from meshsdk.testing.upstream import Behaviour, Received, Reply, Upstream, free_port, respond
from meshsdk.transport.async_ import AsyncMeshTransport
from meshsdk.transport.sync import MeshTransport
from meshsdk.workload import Workload

DEFAULT_WORKLOAD = Workload("test-client", "default", {"app": "test-client"}, "test-client")
"""The workload a test's mesh calls from unless told otherwise."""

DEFAULT_SEED = 0
"""Seed of the mesh's random numbers (splits, balancers, fault percentages)."""

TransportFaultKind = Literal["reset", "refuse", "unavailable"]


# --- attempt-level faults ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AttemptFault:
    kind: TransportFaultKind
    percent: float


class _Diverter:
    """Decides, per attempt, whether an attempt to a faulted endpoint is diverted, and
    where to. Shared by every :class:`FixtureMesh` of one :class:`MeshTestConfig`."""

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        # its own stream of draws, so adding a fault never shifts the mesh's choices
        self._rng = random.Random(f"meshsdk.testing.faults:{seed}")
        self._targets: dict[tuple[str, int], tuple[str, _AttemptFault]] = {}
        self._sinks: dict[TransportFaultKind, tuple[str, int]] = {}
        self.counts: Counter[str] = Counter()

    def configure(self, targets: dict[tuple[str, int], tuple[str, _AttemptFault]],
                  sinks: dict[TransportFaultKind, tuple[str, int]]) -> None:
        with self._lock:
            self._targets = targets
            self._sinks = dict(sinks)

    def divert(self, request: httpx.Request) -> httpx.Request:
        if not self._targets:
            return request
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        with self._lock:
            hit = self._targets.get((url.host, port))
            if hit is None:
                return request
            fqdn, fault = hit
            if fault.percent < 100 and self._rng.random() * 100.0 >= fault.percent:
                return request
            host, sink_port = self._sinks[fault.kind]
            self.counts[fqdn] += 1
        return httpx.Request(request.method, url.copy_with(scheme="http", host=host,
                                                           port=sink_port),
                             headers=request.headers, stream=request.stream,
                             extensions=request.extensions)


class FaultingTransport(httpx.BaseTransport):
    """Sends through ``inner``, diverting attempts that an attempt fault selects."""

    def __init__(self, inner: httpx.BaseTransport, diverter: _Diverter) -> None:
        self._inner = inner
        self._diverter = diverter

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(self._diverter.divert(request))

    def close(self) -> None:
        self._inner.close()


class AsyncFaultingTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`FaultingTransport`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, diverter: _Diverter) -> None:
        self._inner = inner
        self._diverter = diverter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(self._diverter.divert(request))

    async def aclose(self) -> None:
        await self._inner.aclose()


class FixtureMesh(Mesh):
    """A :class:`~meshsdk.mesh.Mesh` whose network transport applies attempt faults.

    Everything else is the production mesh: routing, fault injection, retries,
    balancing, outlier detection. Sync clients made with :meth:`client` are closed
    when the test ends.
    """

    def __init__(self, config: Config, workload: Workload | None = None, *,
                 diverter: _Diverter, **options: Any) -> None:
        super().__init__(config, workload, **options)
        self._diverter = diverter
        self._clients: list[httpx.Client] = []

    def transport(self, inner: httpx.BaseTransport | None = None) -> MeshTransport:
        inner = inner if inner is not None else httpx.HTTPTransport()
        return super().transport(FaultingTransport(inner, self._diverter))

    def async_transport(self, inner: httpx.AsyncBaseTransport | None = None
                        ) -> AsyncMeshTransport:
        inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        return super().async_transport(AsyncFaultingTransport(inner, self._diverter))

    def client(self, **kwargs: Any) -> httpx.Client:
        client = super().client(**kwargs)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close the sync clients made by :meth:`client` (async ones: ``async with``)."""
        clients, self._clients = self._clients, []
        for client in clients:
            client.close()


# --- the test's mesh configuration ----------------------------------------------------------


@dataclass(slots=True)
class _Service:
    name: str
    namespace: str
    port: int
    protocol: str
    endpoints: list[tuple[Upstream | int, dict[str, str]]] = field(default_factory=list)


@dataclass(slots=True)
class _HostFaults:
    abort: dict[str, Any] | None = None
    delay: dict[str, Any] | None = None
    attempt: _AttemptFault | None = None

    def empty(self) -> bool:
        return self.abort is None and self.delay is None and self.attempt is None

    def fault_block(self) -> dict[str, Any]:
        block: dict[str, Any] = {}
        if self.delay is not None:
            block["delay"] = dict(self.delay)
        if self.abort is not None:
            block["abort"] = dict(self.abort)
        return block


def _dns_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63].rstrip("-") or "host"


class MeshTestConfig:
    """A test's mesh: services on real upstreams, the test's Istio YAML, its faults.

    Every change (a new upstream, more YAML, a fault) is validated at once, a bad
    one raises :class:`~meshsdk.errors.ConfigError` and is not kept, and every mesh
    :meth:`build` made follows the new configuration immediately.
    """

    def __init__(self, *, namespace: str = "default",
                 workload: Workload = DEFAULT_WORKLOAD, seed: int = DEFAULT_SEED,
                 domain: str = DEFAULT_DOMAIN) -> None:
        self.namespace = namespace
        self.workload = workload
        self.seed = seed
        self.domain = domain
        self._services: dict[tuple[str, str], _Service] = {}
        self._documents: list[str] = []
        self._faults: dict[str, _HostFaults] = {}
        self._upstreams: list[Upstream] = []
        self._sinks: dict[TransportFaultKind, Upstream] = {}
        self._refuse_port: int | None = None
        self._meshes: list[FixtureMesh] = []
        self._diverter = _Diverter(seed)
        self._config = config_from_yaml()
        self._closed = False

    # -- what the test registers ----------------------------------------------------------

    def upstream(self, service: str, behaviour: Behaviour | None = None, *,
                 labels: Mapping[str, str] | None = None, port: int | None = None,
                 namespace: str | None = None, name: str | None = None,
                 protocol: str | None = None) -> Upstream:
        """Start a real :class:`Upstream` on 127.0.0.1 and make it an endpoint of
        ``service`` (``<service>.<namespace>.svc.cluster.local``, service port
        ``port``, 80 by default). ``labels`` (``app: <service>`` is added) select it
        for subsets. Stopped when the test ends."""
        up = Upstream(name or self._default_name(service, labels), behaviour).start()
        self._upstreams.append(up)
        try:
            self._register(service, up, labels, port, namespace, protocol)
        except BaseException:
            self._upstreams.remove(up)
            up.stop()
            raise
        return up

    def endpoint(self, service: str, target_port: int, *,
                 labels: Mapping[str, str] | None = None, port: int | None = None,
                 namespace: str | None = None, protocol: str | None = None) -> None:
        """Add ``127.0.0.1:<target_port>`` as an endpoint of ``service`` without
        starting a server there (e.g. ``free_port()`` for an endpoint that refuses
        connections, or a server the test runs itself)."""
        self._register(service, target_port, labels, port, namespace, protocol)

    def add(self, *documents: str) -> None:
        """Add Istio YAML (one or more documents per string): VirtualServices,
        DestinationRules, more ServiceEntries... Short host names are relative to the
        namespace (``default``). Raises ConfigError, keeping nothing, if invalid."""
        before = list(self._documents)
        self._documents.extend(documents)
        self._commit(lambda: self._documents.__setitem__(slice(None), before))

    # -- faults (see MeshFaults) ---------------------------------------------------------------

    def set_fault(self, host: str, *, abort: dict[str, Any] | None = None,
                  delay: dict[str, Any] | None = None,
                  attempt: _AttemptFault | None = None) -> None:
        fqdn = self.resolve_host(host)
        before = copy.deepcopy(self._faults)
        faults = self._faults.setdefault(fqdn, _HostFaults())
        if abort is not None:
            faults.abort = abort
        if delay is not None:
            faults.delay = delay
        if attempt is not None:
            faults.attempt = attempt
            self._ensure_sink(attempt.kind)
        self._commit(lambda: self._restore_faults(before))

    def clear_faults(self, host: str | None = None) -> None:
        before = copy.deepcopy(self._faults)
        if host is None:
            self._faults.clear()
        else:
            self._faults.pop(self.resolve_host(host), None)
        self._commit(lambda: self._restore_faults(before))

    def injected(self, host: str) -> int:
        """Attempts to ``host`` diverted by a reset/refuse/unavailable fault so far."""
        return self._diverter.counts[self.resolve_host(host)]

    def resolve_host(self, host: str) -> str:
        """The service FQDN a client in the test's namespace reaches under ``host``."""
        view = Snapshot(self._config, domain=self.domain).view(self.namespace)
        service = view.service(host)
        if service is not None and not service.hostname.startswith("*"):
            return service.hostname
        return expand_host(host, self.namespace, self.domain)

    # -- results -------------------------------------------------------------------------------

    def config(self) -> Config:
        """The current validated configuration."""
        return self._config

    def documents(self) -> list[str]:
        """The YAML documents the configuration is loaded from (faults included)."""
        return self._render()

    def yaml(self) -> str:
        """The whole configuration as one YAML text (handy when a test fails)."""
        return "\n---\n".join(d.strip("\n") for d in self._render()) + "\n"

    def build(self, workload: Workload | None = None, *,
              clock: FakeClock | Callable[[], float] | None = None,
              seed: int | None = None, rng: random.Random | None = None,
              **options: Any) -> FixtureMesh:
        """A mesh on the current configuration, kept up to date with later changes and
        closed with this object. ``clock`` may be a :class:`FakeClock` (its ``now``,
        ``sleep`` and ``async_sleep`` are all used) or a plain clock function; the
        random numbers come from ``rng``, else ``random.Random(seed)`` (default: this
        object's seed) so a test's splits and fault percentages repeat exactly.
        Other options go to :class:`~meshsdk.mesh.Mesh`."""
        if self._closed:
            raise RuntimeError("this MeshTestConfig is closed")
        if isinstance(clock, FakeClock):
            options.setdefault("sleep", clock.sleep)
            options.setdefault("async_sleep", clock.async_sleep)
            options["clock"] = clock.now
        elif clock is not None:
            options["clock"] = clock
        if rng is None:
            rng = random.Random(self.seed if seed is None else seed)
        mesh = FixtureMesh(self._config, workload or self.workload, diverter=self._diverter,
                           rng=rng, **options)
        self._meshes.append(mesh)
        return mesh

    @property
    def meshes(self) -> tuple[FixtureMesh, ...]:
        return tuple(self._meshes)

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        """Upstreams started through :meth:`upstream`, in order."""
        return tuple(self._upstreams)

    def close(self) -> None:
        """Close every mesh (and its sync clients) and stop every upstream."""
        self._closed = True
        meshes, self._meshes = self._meshes, []
        for mesh in meshes:
            mesh.close_clients()
            mesh.close()
        servers = [*self._upstreams, *self._sinks.values()]
        self._upstreams, self._sinks = [], {}
        for up in servers:
            up.stop()

    def __enter__(self) -> MeshTestConfig:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _default_name(self, service: str, labels: Mapping[str, str] | None) -> str:
        version = (labels or {}).get("version")
        base = f"{service}-{version}" if version else service
        taken = {up.name for up in self._upstreams}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        return name

    def _register(self, service: str, target: Upstream | int,
                  labels: Mapping[str, str] | None, port: int | None,
                  namespace: str | None, protocol: str | None) -> None:
        if "." in service:
            raise ValueError(f"give the short service name (e.g. 'reviews'), got {service!r}; "
                             "use namespace= for another namespace")
        ns = namespace or self.namespace
        key = (service, ns)
        existing = self._services.get(key)
        if existing is None:
            spec = _Service(service, ns, port or 80, (protocol or "HTTP").upper())
        else:
            if port is not None and port != existing.port:
                raise ValueError(f"service {service}.{ns} already has port {existing.port}, "
                                 f"got port={port}")
            if protocol is not None and protocol.upper() != existing.protocol:
                raise ValueError(f"service {service}.{ns} already speaks {existing.protocol}")
            spec = existing
        spec.endpoints.append((target, dict(labels or {})))

        def undo() -> None:
            spec.endpoints.pop()
            if existing is None:
                self._services.pop(key, None)
        self._services[key] = spec
        self._commit(undo)

    def _restore_faults(self, before: dict[str, _HostFaults]) -> None:
        self._faults = before

    def _ensure_sink(self, kind: TransportFaultKind) -> None:
        if kind == "refuse":
            if self._refuse_port is None:
                self._refuse_port = free_port()
            return
        if kind in self._sinks:
            return
        behaviour: Behaviour
        if kind == "reset":
            def behaviour(req: Received, n: int) -> Reply:
                return Reply(reset=True)
        else:
            behaviour = respond(503, "service unavailable (meshsdk.testing fault)")
        self._sinks[kind] = Upstream(f"meshsdk-fault-{kind}", behaviour).start()

    def _commit(self, undo: Callable[[], None]) -> None:
        """Render, validate and push the configuration; on any error, undo and re-raise."""
        previous = self._config
        updated: list[FixtureMesh] = []
        try:
            config = config_from_yaml(self._render(), namespace=self.namespace)
            for mesh in self._meshes:  # a mesh may refuse what loads (a bad CEL expression)
                mesh.update(config)
                updated.append(mesh)
        except BaseException:
            undo()
            for mesh in updated:  # those that took it go back to what the others run
                mesh.update(previous)
            raise
        self._config = config
        self._configure_diverter(config)

    def _configure_diverter(self, config: Config) -> None:
        targets: dict[tuple[str, int], tuple[str, _AttemptFault]] = {}
        snapshot = Snapshot(config, domain=self.domain)
        for fqdn, faults in self._faults.items():
            if faults.attempt is None:
                continue
            for service in snapshot.all_services():
                if service.hostname != fqdn:
                    continue
                for sp in service.ports:
                    for ep in snapshot.endpoints(service, sp.number):
                        targets[(ep.address, ep.port)] = (fqdn, faults.attempt)
        sinks: dict[TransportFaultKind, tuple[str, int]] = {
            kind: ("127.0.0.1", up.port) for kind, up in self._sinks.items()}
        if self._refuse_port is not None:
            sinks["refuse"] = ("127.0.0.1", self._refuse_port)
        self._diverter.configure(targets, sinks)

    def _render(self) -> list[str]:
        docs = [service_entry(s.name, s.endpoints, namespace=s.namespace, port=s.port,
                              protocol=s.protocol) for s in self._services.values()]
        wanted = {fqdn: f.fault_block() for fqdn, f in self._faults.items()
                  if f.abort is not None or f.delay is not None}
        covered: set[str] = set()
        for text in self._documents:
            docs.append(self._patch(text, wanted, covered) if wanted else text)
        for fqdn in sorted(set(wanted) - covered):
            docs.append(self._fault_virtual_service(fqdn, wanted[fqdn]))
        return docs

    def _patch(self, text: str, wanted: Mapping[str, dict[str, Any]], covered: set[str]) -> str:
        """``text`` with the wanted faults written into its VirtualServices' routes."""
        try:
            parsed = list(yaml.safe_load_all(text))
        except yaml.YAMLError:
            return text  # the loader reports it, with lines
        changed = False
        for doc in parsed:
            if not isinstance(doc, dict) or doc.get("kind") != "VirtualService":
                continue
            spec = doc.get("spec") or {}
            meta = doc.get("metadata") or {}
            ns = meta.get("namespace") or self.namespace
            hosts = {expand_host(str(h), ns, self.domain) for h in spec.get("hosts") or ()}
            hit = [fqdn for fqdn in wanted if fqdn in hosts]
            if not hit:
                continue
            block: dict[str, Any] = {}
            for fqdn in hit:
                block.update(wanted[fqdn])
            routes = [r for r in spec.get("http") or () if isinstance(r, dict) and r.get("route")]
            if not routes:
                raise ValueError(
                    f"VirtualService {meta.get('name')!r} has no route to a destination for "
                    f"{', '.join(hit)}: there is nowhere to inject the fault")
            for route in routes:
                route["fault"] = {**(route.get("fault") or {}), **copy.deepcopy(block)}
            covered.update(hit)
            changed = True
        return yaml.safe_dump_all(parsed, sort_keys=False) if changed else text

    def _fault_virtual_service(self, fqdn: str, block: dict[str, Any]) -> str:
        namespace = self.namespace
        for service in Snapshot(self._config, domain=self.domain).all_services():
            if service.hostname == fqdn:
                namespace = service.namespace
                break
        doc = {
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": f"meshsdk-fault-{_dns_name(fqdn)}", "namespace": namespace},
            "spec": {"hosts": [fqdn],
                     "http": [{"fault": block, "route": [{"destination": {"host": fqdn}}]}]},
        }
        return yaml.safe_dump(doc, sort_keys=False)


# --- the fault API -------------------------------------------------------------------------------


def _percent(value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"percent must be in [0, 100], got {value}")
    return value


class MeshFaults:
    """One-line fault injection into the calls a test's meshes make to a service.

    ``host`` is a name the test's workload would call (``"reviews"``,
    ``"reviews.default"``, the FQDN, or an external host). Faults last until
    :meth:`clear` or the end of the test; setting one again replaces it.
    """

    def __init__(self, env: MeshTestConfig) -> None:
        self._env = env

    def abort(self, host: str, status: int | None = 503, *, percent: float = 100.0,
              grpc_status: str | None = None) -> None:
        """Answer ``percent`` % of calls with ``status`` without reaching the service
        (VirtualService ``fault.abort``: local reply, flag FI, body
        ``fault filter abort``; gRPC calls get the matching ``grpc-status``).
        ``grpc_status`` (e.g. ``"UNAVAILABLE"``) aborts with a gRPC status instead."""
        spec: dict[str, Any] = {"percentage": {"value": _percent(percent)}}
        if grpc_status is not None:
            spec["grpcStatus"] = grpc_status
        elif status is not None:
            spec["httpStatus"] = int(status)
        else:
            raise ValueError("give status or grpc_status")
        self._env.set_fault(host, abort=spec)

    def delay(self, host: str, seconds: float, *, percent: float = 100.0) -> None:
        """Delay ``percent`` % of calls by ``seconds`` before they are routed
        (VirtualService ``fault.delay``, flag DI). Whole milliseconds, at least 1 ms.
        With a :class:`FakeClock` mesh the delay advances the fake clock instead."""
        ms = round(seconds * 1000)
        if ms < 1 or abs(seconds * 1000 - ms) > 1e-6:
            raise ValueError(f"delay must be a whole number of milliseconds >= 1, "
                             f"got {seconds}s")
        self._env.set_fault(host, delay={"fixedDelay": f"{ms}ms",
                                         "percentage": {"value": _percent(percent)}})

    def reset(self, host: str, *, percent: float = 100.0) -> None:
        """The connection of ``percent`` % of attempts to the service's endpoints is
        reset (TCP RST) after the request is sent and before any answer: the caller
        sees 503 flag UR unless its retry policy retries resets."""
        self._attempt(host, "reset", percent)

    def refuse(self, host: str, *, percent: float = 100.0) -> None:
        """``percent`` % of attempts to the service's endpoints find nothing listening
        (connection refused, flag UF); the default retry policy retries these."""
        self._attempt(host, "refuse", percent)

    def unavailable(self, host: str) -> None:
        """The service is down: every attempt to its endpoints is answered 503 by the
        upstream side (so ``retryOn: 5xx`` retries and outlier detection counts)."""
        self._attempt(host, "unavailable", 100.0)

    def clear(self, host: str | None = None) -> None:
        """Remove the faults of ``host`` (of every host without one)."""
        self._env.clear_faults(host)

    def injected(self, host: str) -> int:
        """How many attempts to ``host`` a reset/refuse/unavailable fault has hit so far
        (abort and delay show in each response's flags: FI, DI)."""
        return self._env.injected(host)

    def _attempt(self, host: str, kind: TransportFaultKind, percent: float) -> None:
        self._env.set_fault(host, attempt=_AttemptFault(kind, _percent(percent)))

