"""``Mesh``: the embedded mesh of one workload, and the clients that use it.

    >>> import meshsdk
    >>> mesh = meshsdk.Mesh.from_config("examples/bookinfo", workload=meshsdk.Workload(
    ...     name="productpage-v1", namespace="default",
    ...     labels={"app": "productpage", "version": "v1"}))
    >>> client = mesh.client()          # an httpx.Client whose calls go through the mesh
    >>> client.close(); mesh.close()
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from meshsdk.config.loader import load_config
from meshsdk.config.resource import Config
from meshsdk.config.snapshot import ClientView, Snapshot
from meshsdk.dataplane.clusters import ClusterRegistry
from meshsdk.dataplane.flow import AttemptResult, CallContext, CallResult, Effect, call_flow
from meshsdk.deadline import current_deadline
from meshsdk.errors import UsageError
from meshsdk.randomness import fresh_random
from meshsdk.routing.request import RequestView
from meshsdk.transport.async_ import AsyncMeshTransport
from meshsdk.transport.common import (
    CallInfo,
    header_items,
    header_value,
    replayable,
    replayable_length,
)
from meshsdk.transport.dns import DnsCache
from meshsdk.transport.mirrors import MirrorSender
from meshsdk.transport.sync import MeshTransport
from meshsdk.workload import Workload

if TYPE_CHECKING:
    from meshsdk.controlplane.client import ClientStatus, ConfigClient
    from meshsdk.telemetry.prometheus import MetricsServer
    from meshsdk.telemetry.recorder import OutboundCall, Telemetry
    from meshsdk.transport.tls import ClientCredentials

ConfigSource = Config | str | os.PathLike[str]
CallObserver = Callable[[httpx.Request, CallResult, CallInfo], None]


@dataclass(frozen=True, slots=True)
class _State:
    """What a call starts from; replaced as a whole by :meth:`Mesh.update`."""

    snapshot: Snapshot
    view: ClientView


class Mesh:
    """The mesh as one workload sees it: config snapshot, per-destination state, clients.

    ``clock``, ``sleep`` and ``rng`` are injectable so tests can drive timeouts,
    backoff and outlier detection with a fake clock and fixed random numbers.
    ``identity`` (a :class:`~meshsdk.security.identity.WorkloadIdentity`) gives the
    certificate for mesh mTLS. ``telemetry`` is on by default, as in Istio (metrics
    through OpenTelemetry's global meter provider, 1% of traces, no access log): pass
    a configured
    :class:`~meshsdk.telemetry.Telemetry`, or ``False`` for none at all.
    """

    def __init__(self, config: Config, workload: Workload | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 async_sleep: Callable[[float], Any] = asyncio.sleep,
                 rng: random.Random | None = None,
                 telemetry: Telemetry | bool = True,
                 identity: ClientCredentials | None = None) -> None:
        self.workload = workload if workload is not None else Workload.from_env()
        self.identity = identity
        """The workload's mesh certificate source (``WorkloadIdentity``), for outbound
        mTLS; None: no mTLS (auto mTLS stays off, ISTIO_MUTUAL fails with 503 UF)."""
        if telemetry is True:
            from meshsdk.telemetry.recorder import Telemetry
            # its own random source: sampling draws must not shift the routing
            # sequence a test seeded ``rng`` for
            telemetry = Telemetry(self.workload, clock=clock)
        self.telemetry: Telemetry | None = telemetry or None
        """Metrics, traces and access logs of this workload (None: ``telemetry=False``)."""
        self._clock = clock
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._rng = rng if rng is not None else fresh_random()
        self._clusters = ClusterRegistry(clock, self._rng)
        self._mirrors = MirrorSender()
        self._observers: list[CallObserver] = []
        self._state = self._build_state(config)
        self._dns = DnsCache(self._state.snapshot.mesh.dns_refresh_rate, clock)

    @classmethod
    def from_config(cls, source: ConfigSource, workload: Workload | None = None,
                    **options: Any) -> Mesh:
        """A mesh from a file, a directory or a loaded :class:`Config` (raises ConfigError)."""
        return cls(_as_config(source), workload, **options)

    # -- configuration -------------------------------------------------------------------

    def _build_state(self, config: Config) -> _State:
        snapshot = Snapshot(config)
        state = _State(snapshot, snapshot.view(self.workload.namespace, self.workload.labels))
        if self.telemetry is not None:  # raises on a bad expression: nothing swapped yet
            self.telemetry.configure(config, snapshot.mesh, snapshot.domain)
        return state

    def update(self, config: ConfigSource) -> None:
        """Swap in a new configuration atomically.

        The new config is loaded and validated first: a bad one raises ConfigError
        and the current one stays. Calls in flight finish on the snapshot they
        started with; per-destination state (ejections, budgets) carries over.
        """
        self._state = self._build_state(_as_config(config))
        self._dns.ttl = self._state.snapshot.mesh.dns_refresh_rate

    @property
    def snapshot(self) -> Snapshot:
        """The configuration snapshot new calls use."""
        return self._state.snapshot

    # -- clients ---------------------------------------------------------------------------

    def transport(self, inner: httpx.BaseTransport | None = None) -> MeshTransport:
        """A sync transport to plug into your own ``httpx.Client``."""
        return MeshTransport(self, inner)

    def async_transport(self, inner: httpx.AsyncBaseTransport | None = None
                        ) -> AsyncMeshTransport:
        """An async transport to plug into your own ``httpx.AsyncClient``."""
        return AsyncMeshTransport(self, inner)

    def client(self, **kwargs: Any) -> httpx.Client:
        """``httpx.Client(transport=mesh.transport(), **kwargs)``; timeouts are the mesh's
        (VirtualService ``timeout``/``perTryTimeout``), so httpx's own default is off."""
        kwargs.setdefault("timeout", None)
        return httpx.Client(transport=self.transport(), **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """The async twin of :meth:`client`."""
        kwargs.setdefault("timeout", None)
        return httpx.AsyncClient(transport=self.async_transport(), **kwargs)

    def serve_metrics(self, port: int = 15090, host: str = "127.0.0.1") -> MetricsServer:
        """Serve this workload's Istio metrics for Prometheus at ``http://host:port/metrics``
        (15090 is the port Istio's sidecars use); ``close()`` the returned server."""
        if self.telemetry is None:
            raise UsageError("serve_metrics needs telemetry; this mesh was built with "
                             "telemetry=False")
        from meshsdk.telemetry.prometheus import serve_metrics
        return serve_metrics(self.telemetry.prometheus().registry, port=port, host=host)

    def add_observer(self, observer: CallObserver) -> None:
        """Call ``observer(request, result, info)`` after every call (telemetry hooks)."""
        self._observers.append(observer)

    def close(self) -> None:
        """Stop background mirroring and close access log files; clients are closed
        by their owners."""
        if self._config_client is not None:
            self._config_client.close()
        self._mirrors.close()
        if self.telemetry is not None:
            self.telemetry.close()

    # -- used by the transports ------------------------------------------------------------

    def _flow(self, request: httpx.Request
              ) -> tuple[Generator[Effect, AttemptResult | None, CallResult],
                         OutboundCall | None]:
        state = self._state
        url = request.url
        raw = url.raw_path.decode("ascii", "replace")
        path, _, query = raw.partition("?")
        items = header_items(request.headers)  # decoded once, names lower-case
        lookup = dict(items)
        if len(lookup) == len(items):  # no repeated names: the dict answers for the list
            authority = lookup.get("host") or url.netloc.decode("ascii", "replace")
            replay = replayable_length(request, lookup.get("content-length"))
            return self._start(state, request.method, url.scheme, authority, raw, path,
                               query, items, replay, _deadline_now(self._clock),
                               lowered=True, lookup=lookup)
        authority = header_value(items, "host") or url.netloc.decode("ascii", "replace")
        return self._start(state, request.method, url.scheme, authority, raw, path, query,
                           items, replayable(request, items), _deadline_now(self._clock),
                           lowered=True)

    def start_call(self, method: str, scheme: str, authority: str, target: str,
                   headers: list[tuple[str, str]], *, replayable: bool = True,
                   timeout: float | None = None
                   ) -> tuple[Generator[Effect, AttemptResult | None, CallResult],
                              OutboundCall | None]:
        """The call flow and telemetry of one outbound call, for drivers that are not
        httpx (the gRPC channel): ``target`` is the path with its query, ``headers``
        lower-case pairs (telemetry adds the trace headers and ``x-request-id`` to the
        list in place), ``timeout`` the caller's own limit in seconds; the smaller of
        it and the inbound deadline caps the call. The driver runs the generator as
        :class:`~meshsdk.transport.sync.MeshTransport` does."""
        state = self._state
        path, _, query = target.partition("?")
        deadline = _deadline_now(self._clock)
        if timeout is not None:
            own = self._clock() + max(timeout, 0.0)
            deadline = own if deadline is None else min(deadline, own)
        return self._start(state, method, scheme, authority, target, path, query, headers,
                           replayable, deadline)

    def _start(self, state: _State, method: str, scheme: str, authority: str, raw: str,
               path: str, query: str, items: list[tuple[str, str]], replay: bool,
               deadline: float | None, *, lowered: bool = False,
               lookup: dict[str, str] | None = None
               ) -> tuple[Generator[Effect, AttemptResult | None, CallResult],
                          OutboundCall | None]:
        """``lookup``: ``dict(items)`` when the caller has it and no name repeats."""
        call = None
        if self.telemetry is not None:  # trace headers and x-request-id join the request
            call = self.telemetry.outbound(method, scheme, authority, raw, items, lookup)
            lookup = None  # items grew
        if lookup is not None:  # from httpx: method, scheme and names normalised already
            view = RequestView.of(method, scheme, authority, path, query, lookup,
                                  self.workload)
        else:
            view = RequestView.build(method, scheme, authority, path, query, items,
                                     source=self.workload, lowered=lowered)
        # positional, in field order (request, snapshot, view, clusters, clock, rng,
        # replayable, deadline, source_ip, identity): binding keywords costs per call
        ctx = CallContext(view, state.snapshot, state.view, self._clusters, self._clock,
                          self._rng, replay, deadline, None, self.identity is not None)
        return call_flow(ctx), call

    # -- config service ----------------------------------------------------------------------

    _config_client: ConfigClient | None = None
    """The config service client of a mesh made by :meth:`connect` (None otherwise)."""

    @classmethod
    def connect(cls, address: str, workload: Workload | None = None, *,
                cache_dir: str | os.PathLike[str] | None = None, wait: float = 5.0,
                register: bool = False, ip: str | None = None,
                ports: Mapping[str, int] | None = None, group: str = "",
                ca_roots: bytes | str | os.PathLike[str] | None = None,
                server_name: str = "istiod.istio-system.svc", token: str | None = None,
                **mesh_options: Any) -> Mesh:
        """A mesh fed by the config service at ``address`` (``host:port``, ADS over gRPC;
        several replicas as ``host:port,host:port``, tried in turn when one goes away).

        Starts on an empty config and waits up to ``wait`` seconds for a first version
        from the server (or, if it is unreachable, the on-disk cache in ``cache_dir``);
        returns anyway after that, and :meth:`status` tells. ``close()`` stops the client.
        ``register=True`` asks the server to register this workload (at ``ip``, with its
        named ``ports``) as a WorkloadEntry while connected, so ServiceEntries selecting
        its labels route to it; ``group="name"`` registers it from that WorkloadGroup's
        template instead (Istio's auto-registration). ``ca_roots`` (PEM bytes or a
        file, the mesh CA's ``root-cert.pem``) connects over TLS and checks that the
        server is ``server_name``. ``token`` is the workload's bootstrap token, for a
        server that authenticates subscribers.
        """
        from meshsdk.controlplane.client import ConfigClient, empty_config
        from meshsdk.controlplane.tls import read_roots
        mesh = cls(empty_config(), workload, **mesh_options)
        mesh._config_client = ConfigClient(mesh, address, workload=mesh.workload,
                                           cache_dir=cache_dir, ip=ip, ports=ports,
                                           register=register, group=group,
                                           tls_roots=None if ca_roots is None
                                           else read_roots(ca_roots),
                                           server_name=server_name, token=token)
        mesh._config_client.start()
        mesh._config_client.wait_ready(wait)
        return mesh

    def report_ready(self, ready: bool = True, message: str = "") -> None:
        """Tell the config service whether this workload is ready (a mesh made by
        :meth:`connect` with ``register=True``): while not ready, other meshes do not
        route to its registered endpoint (Istio's workload health checks)."""
        if self._config_client is None:
            raise UsageError("report_ready() is for a mesh made by Mesh.connect")
        self._config_client.report_ready(ready, message)

    def status(self) -> ClientStatus:
        """The config service link of a mesh made by :meth:`connect` (UsageError otherwise)."""
        if self._config_client is None:
            raise UsageError("status() is for a mesh made by Mesh.connect")
        return self._config_client.status()


def _deadline_now(clock: Callable[[], float]) -> float | None:
    """The inbound deadline translated to this mesh's clock."""
    deadline = current_deadline()
    if deadline is None:
        return None
    return clock() + (deadline - time.monotonic())


def _as_config(source: ConfigSource) -> Config:
    return source if isinstance(source, Config) else load_config(source)
