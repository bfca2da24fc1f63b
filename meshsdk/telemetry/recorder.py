"""``Telemetry``: one workload's metrics, traces and access logs, for both directions.

Drivers call it at the edges of a request and never decide anything themselves:

* outbound (the httpx transports now, the sidecar later): :meth:`Telemetry.outbound`
  before routing (it rewrites the trace headers and adds ``x-request-id``), then
  :meth:`OutboundCall.responded` when the head is known and :meth:`OutboundCall.finish`
  when the caller has read (or dropped) the body;
* inbound (middlewares, sidecar): :meth:`Telemetry.inbound`, ``with call:`` around
  the handler so outbound calls inside join its trace and request id, then
  :meth:`InboundCall.finish`.

What is recorded is decided once per config by :mod:`meshsdk.telemetry.policy`
(Istio's Telemetry resources and mesh options) and applied here per side
(``client`` = reporter ``source``, ``server`` = reporter ``destination``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, overload

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TraceState

from meshsdk.config.hosts import join_host_port, kube_service_parts, split_host_port
from meshsdk.config.mesh import MeshConfig
from meshsdk.config.resource import Config
from meshsdk.memo import remember
from meshsdk.outcome import format_flags, response_code_details
from meshsdk.randomness import fresh_random
from meshsdk.routing.router import BLACKHOLE_ROUTE
from meshsdk.security.spiffe import SpiffeId
from meshsdk.telemetry import otel_runtime
from meshsdk.telemetry.accesslog import (
    DEFAULT_JSON_LABELS,
    DEFAULT_TEXT_FORMAT,
    AccessLogger,
    Formatter,
    compile_format,
    compile_json,
    file_handler,
)
from meshsdk.telemetry.expr import compile_filter, compile_value
from meshsdk.telemetry.metrics import (
    DEFAULT_VIEW,
    MetricsSink,
    MetricsView,
    OtelMetrics,
    PrometheusMetrics,
)
from meshsdk.telemetry.policy import (
    DEFAULT_POLICY,
    AccessLogProvider,
    SidePolicy,
    TelemetryPolicy,
    resolve_telemetry,
)
from meshsdk.telemetry.propagation import (
    REQUEST_ID,
    TRACE_HEADERS,
    Parent,
    extract,
    inject,
    inject_hex,
)
from meshsdk.telemetry.record import (
    DEFAULT_CLUSTER_ID,
    NO_PEER,
    UNKNOWN,
    CallRecord,
    Peer,
    Service,
)
from meshsdk.telemetry.tracing import SpanStarter, UnsampledSpan, decide_sampling
from meshsdk.workload import Workload

if TYPE_CHECKING:
    from meshsdk.config.snapshot import Endpoint
    from meshsdk.config.snapshot import Service as MeshService
    from meshsdk.dataplane.flow import Attempt, AttemptResult, CallResult

ACCESS_LOGGER = "meshsdk.access"
"""Parent logger of the access logs; each provider writes to ``meshsdk.access.<name>``."""

class Handling(Protocol):
    """What is current while an inbound request is handled: an :class:`InboundCall`,
    or the inbound handler's request, which carries the call's request id itself."""

    @property
    def request_id(self) -> str | None: ...


_handling: contextvars.ContextVar[Handling | None] = contextvars.ContextVar(
    "meshsdk_inbound_request", default=None)
"""The inbound request being handled in this context: one variable for the request id
outbound calls reuse and for the inbound handler's ``current_request()`` (each variable
set costs a little on every request, before the app runs)."""

_MEMO_LIMIT = 4096
"""Entries in each of a Telemetry's per-value tables (targets, endpoints' peers)."""

_TRACE_OR_ID = TRACE_HEADERS | {REQUEST_ID}
"""The inbound request headers read before the app runs."""


Address = str | tuple[str, int | None]
"""A connection's end as the drivers know it: ``ip:port`` text or an ``(ip, port)`` pair."""


def current_request_id() -> str | None:
    """The ``x-request-id`` of the inbound request being handled, if any."""
    now = _handling.get()
    return now.request_id if now is not None else None


def current_handling() -> Handling | None:
    """What :func:`attach` made current: the inbound request being handled, if any."""
    return _handling.get()


class HeaderSource(Protocol):
    """Headers that can list themselves (``httpx.Headers``), read only when needed."""

    @property
    def raw(self) -> list[tuple[bytes, bytes]]: ...

    def multi_items(self) -> list[tuple[str, str]]: ...


class _LazyHeaders(Sequence[tuple[str, str]]):
    """A response's header list, decoded on first use (an access log reading ``RESP``);
    metrics need only the raw size, so most calls never decode the head."""

    __slots__ = ("_items", "_source")

    def __init__(self, source: HeaderSource) -> None:
        self._source = source
        self._items: list[tuple[str, str]] | None = None

    def _list(self) -> list[tuple[str, str]]:
        if self._items is None:
            self._items = self._source.multi_items()
        return self._items

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, str]]: ...

    def __getitem__(self, index: int | slice) -> tuple[str, str] | Sequence[tuple[str, str]]:
        return self._list()[index]

    def __len__(self) -> int:
        return len(self._list())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._list())


@dataclass(frozen=True, slots=True)
class _Side:
    """One direction's policy, compiled: what to record and how."""

    metrics: bool
    view: MetricsView
    sampling: float
    report_spans: bool
    propagate: bool
    tracing: bool
    custom_tags: tuple[tuple[str, Callable[[Mapping[str, str]], str | None]], ...]
    loggers: tuple[AccessLogger, ...]


@dataclass(frozen=True, slots=True)
class _InboundTarget:
    """What one inbound authority means for telemetry (see ``Telemetry._inbound_target``)."""

    host: str
    span_name: str
    service: Service
    cluster: str


InboundStart = tuple[str, "Span | None", _InboundTarget, float, float]
"""An inbound call begun before its app ran (``Telemetry._inbound_start``): request id,
server span, what its authority means, and its start (monotonic clock, wall clock)."""

_NO_ATTRIBUTES: Mapping[str, str] = {}
_UUID4_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_BITS = (0x4 << 76) | (0x2 << 62)   # version 4, RFC 4122 variant


class Telemetry:
    """Metrics, tracing and access logging of one workload.

    ``meter_provider``/``tracer_provider`` default to OpenTelemetry's global ones (no-ops
    until the user installs an SDK). ``metrics`` adds sinks beside the OTel one (e.g.
    :class:`~meshsdk.telemetry.metrics.PrometheusMetrics` for a ``/metrics`` endpoint).
    ``clock`` measures durations (injectable for tests), ``wall_clock`` stamps logs.
    """

    def __init__(self, workload: Workload, *,
                 meter_provider: Any = None, tracer_provider: Any = None,
                 metrics: Iterable[MetricsSink] = (), otel_metrics: bool = True,
                 access_logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 cluster_id: str = DEFAULT_CLUSTER_ID) -> None:
        self.workload = workload
        self.peer = Peer.of_workload(workload, cluster_id)
        self.cluster_id = cluster_id
        self._sinks: list[MetricsSink] = list(metrics)
        if otel_metrics:
            self._sinks.insert(0, OtelMetrics(meter_provider))
        self._spans = SpanStarter(tracer_provider, rng)
        self._rng = rng if rng is not None else fresh_random()
        self._clock = clock
        self._wall = wall_clock
        self._access_logger = access_logger
        self._handlers: dict[str, logging.Handler] = {}
        self._loggers: dict[tuple[str, str], logging.Logger] = {}
        self._domain = "cluster.local"
        self.policy: TelemetryPolicy = DEFAULT_POLICY
        self._client, self._server = self._compile(DEFAULT_POLICY)
        self._endpoints: dict[tuple[str, int, str, bool], Peer] = {}
        self._services: dict[tuple[str, str], Service] = {}
        self._targets: dict[tuple[str, str], tuple[str, str]] = {}
        self._inbound_targets: dict[tuple[str, str], _InboundTarget] = {}
        self._trust_domain = "cluster.local"
        self.peer_mtls = replace(self.peer, principal=self._spiffe(
            workload.namespace, workload.service_account))
        """This workload as peers see it over mesh mTLS (with its SPIFFE principal)."""

    # -- configuration ---------------------------------------------------------------

    def configure(self, config: Config, mesh: MeshConfig, domain: str = "cluster.local"
                  ) -> None:
        """Apply the Telemetry resources and mesh options that select this workload.

        Everything is compiled first (formats, filters, tag expressions): a bad one
        raises :class:`~meshsdk.errors.ConfigError` and the current policy stays.
        """
        policy = resolve_telemetry(config, mesh, self.workload.namespace,
                                   self.workload.labels)
        client, server = self._compile(policy)
        self.policy, self._client, self._server = policy, client, server
        self._retire_loggers((*client.loggers, *server.loggers))
        self._domain = domain
        self._trust_domain = mesh.trust_domain
        self.peer_mtls = replace(self.peer, principal=self._spiffe(
            self.workload.namespace, self.workload.service_account))
        self._endpoints.clear()
        self._services.clear()
        self._inbound_targets.clear()  # the services depend on the domain

    def add_sink(self, sink: MetricsSink) -> None:
        """Record metrics into ``sink`` too (e.g. a PrometheusMetrics for ``/metrics``)."""
        self._sinks.append(sink)

    def prometheus(self) -> PrometheusMetrics:
        """The Prometheus sink of this workload, created (and recorded into) on first use:
        its ``registry`` is what :func:`~meshsdk.telemetry.prometheus.serve_metrics` and
        the WSGI/ASGI apps expose."""
        for sink in self._sinks:
            if isinstance(sink, PrometheusMetrics):
                return sink
        sink = PrometheusMetrics()
        self._sinks.append(sink)
        return sink

    def _compile(self, policy: TelemetryPolicy) -> tuple[_Side, _Side]:
        return (self._compile_side(policy.client, "client"),
                self._compile_side(policy.server, "server"))

    def _compile_side(self, side: SidePolicy, mode: str) -> _Side:
        where = f"Telemetry ({mode})"
        overrides: dict[str, dict[str, Callable[[CallRecord], str] | None]] = {}
        for metric, tags in side.metrics.tag_overrides.items():
            compiled: dict[str, Callable[[CallRecord], str] | None] = {}
            for tag, override in tags.items():
                if override.operation == "REMOVE":
                    compiled[tag] = None
                else:
                    compiled[tag] = compile_value(override.value or "''",
                                                  where=f"{where} tagOverrides.{tag}")
            overrides[metric] = compiled
        view = (MetricsView(disabled=side.metrics.disabled_metrics, overrides=overrides)
                if overrides or side.metrics.disabled_metrics else DEFAULT_VIEW)
        tracing = side.tracing
        loggers: list[AccessLogger] = []
        if side.access_log.enabled:
            for provider in side.access_log.providers:
                expression = provider.filter_expression
                flt = (compile_filter(expression, where=f"{where} accessLogging.filter "
                                                        f"({provider.name})")
                       if expression else None)
                loggers.append(AccessLogger(_formatter(provider),
                                            logger=self._logger_for(provider), filter=flt))
        custom = tuple((name, _custom_tag(tag)) for name, tag in tracing.custom_tags.items())
        return _Side(metrics=side.metrics.enabled, view=view,
                     sampling=tracing.sampling_percentage if tracing.enabled else 0.0,
                     report_spans=tracing.enabled and not tracing.disable_span_reporting,
                     propagate=not tracing.disable_context_propagation,
                     tracing=tracing.enabled, custom_tags=custom, loggers=tuple(loggers))

    def _logger_for(self, provider: AccessLogProvider) -> logging.Logger:
        """The logger a provider writes through: the user's (``access_logger=``), or one
        of this object's own, with a handler for the provider's path.

        Our loggers are named ``meshsdk.access.<provider>`` but deliberately not
        registered with :mod:`logging`'s manager: two meshes in one process, or one
        provider moved to another path by an update, must not share (or keep) each
        other's handlers and write lines twice."""
        if self._access_logger is not None:
            return self._access_logger
        key = (provider.name, provider.path)
        logger = self._loggers.get(key)
        if logger is None:
            handler = self._handlers.get(provider.path)
            if handler is None:
                handler = self._handlers[provider.path] = file_handler(provider.path)
            logger = logging.Logger(f"{ACCESS_LOGGER}.{provider.name}", logging.INFO)
            logger.addHandler(handler)
            self._loggers[key] = logger
        return logger

    def _retire_loggers(self, side_loggers: Iterable[AccessLogger]) -> None:
        """Close the handlers of paths no provider writes to any more."""
        used = {logger.logger for logger in side_loggers}
        for key, logger in list(self._loggers.items()):
            if logger not in used:
                del self._loggers[key]
        paths = {path for _, path in self._loggers}
        for path in list(self._handlers):
            if path not in paths:
                _close_handler(self._handlers.pop(path))

    def flush(self) -> None:
        """Record now what the metrics sinks hold queued (a sink with a ``flush`` method,
        such as :class:`OtelMetrics`, which records off the request path). Collection
        by the OTel reader does this by itself; call it before reading the SDK's
        instruments some other way."""
        for sink in self._sinks:
            flush = getattr(sink, "flush", None)
            if callable(flush):
                flush()

    def close(self) -> None:
        """Record what the metrics sinks still hold queued (a sink with a ``close``
        method, such as :class:`OtelMetrics`) and close the access log files this object
        opened."""
        for sink in self._sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()
        for handler in self._handlers.values():
            _close_handler(handler)
        self._handlers.clear()
        self._loggers.clear()

    # -- outbound ------------------------------------------------------------------

    def outbound(self, method: str, scheme: str, authority: str, path: str,
                 headers: list[tuple[str, str]], lookup: Mapping[str, str] | None = None
                 ) -> OutboundCall:
        """Start an outbound call; ``headers`` (lower-case names) gets the mesh's trace
        headers in place of any the app set, and an ``x-request-id`` if it had none.
        ``lookup`` is ``dict(headers)`` when the caller has it and no name repeats:
        then the few headers read here are looked up rather than scanned for."""
        side = self._client
        if lookup is not None:
            request_id = lookup.get(REQUEST_ID)
            found_trace = not TRACE_HEADERS.isdisjoint(lookup)
            text = lookup.get("content-length")
            length = int(text) if text is not None and text.isdigit() else 0
            grpc = lookup.get("content-type", "").startswith("application/grpc")
            # the header block as metrics count it (host is the :authority)
            size = sum(map(len, chain.from_iterable(headers)))
            host = lookup.get("host")
            if host is not None:
                size -= 4 + len(host)
        else:
            request_id = None
            found_trace = False
            length = 0
            grpc = False
            size = 0
            for name, value in headers:  # one pass for everything the call needs to know
                size += len(name) + len(value)
                if name == REQUEST_ID:
                    request_id = value
                elif name in TRACE_HEADERS:
                    found_trace = True
                elif name == "content-length":
                    length = int(value) if value.isdigit() else 0
                elif name == "content-type":
                    grpc = value.startswith("application/grpc")
                elif name == "host":
                    size -= len(name) + len(value)
        if request_id is None:
            request_id = current_request_id() or self._new_request_id()
            headers.append((REQUEST_ID, request_id))
            size += len(REQUEST_ID) + len(request_id)
        target = self._targets.get((authority, scheme))
        if target is None:
            target = remember(self._targets, (authority, scheme),
                              (_span_name(authority, scheme), _with_port(authority, scheme)),
                              _MEMO_LIMIT)
        span: Span | None = None
        ids: tuple[str, str] | None = None
        if side.tracing and (side.propagate or side.report_spans):
            parent: Parent | None = None
            current = otel_runtime.current_span().get_span_context()
            if current.is_valid:
                parent = Parent(current, decided=True)
            elif found_trace:
                parent = extract(headers)  # the app forwarded its inbound headers by hand
            sampled = decide_sampling(parent, side.sampling, self._rng)
            above = parent.context if parent is not None else None
            state: TraceState | None
            if sampled and side.report_spans:
                span = self._spans.start(
                    target[0], SpanKind.CLIENT, above, True, True,
                    {"http.request.method": method, "url.full": f"{scheme}://{authority}{path}",
                     "mesh.request_id": request_id})
                ctx = span.get_span_context()
                trace_id, span_id, state = ctx.trace_id, ctx.span_id, ctx.trace_state
            else:  # most calls: nothing to record, so ids only and no span object
                trace_id, span_id = self._spans.ids(above)
                state = above.trace_state if above is not None else None
            ids = (f"{trace_id:032x}", f"{span_id:016x}")  # once: headers and record
            if side.propagate:
                if found_trace:
                    size -= sum(len(k) + len(v) for k, v in headers if k in TRACE_HEADERS)
                    headers[:] = [(k, v) for k, v in headers if k not in TRACE_HEADERS]
                added = inject_hex(*ids, sampled, state,
                                   f"{above.span_id:016x}" if above is not None else None)
                headers.extend(added)
                size += sum(map(len, chain.from_iterable(added)))
        return OutboundCall(self, side, method, scheme, authority, path, headers, request_id,
                            span, self._clock(), self._wall(), length, grpc, target[1], size,
                            ids=ids)

    def _new_request_id(self) -> str:
        """A random (version 4) UUID, as Envoy generates for ``x-request-id``; from this
        object's random source rather than ``uuid.uuid4()``: an id needs uniqueness,
        not secrecy, and this is several times cheaper (``bytes.hex`` here is half the
        cost of formatting the 128-bit int as hex). Its five groups are 4-2-2-2-6 bytes:
        the middle three come out of one ``hex`` with a separator, a sixth cheaper than
        slicing the 32 hex digits five times."""
        b = (self._rng.getrandbits(128) & _UUID4_MASK | _UUID4_BITS).to_bytes(16)
        return f"{b[:4].hex()}-{b[4:10].hex('-', 2)}-{b[10:].hex()}"

    # -- inbound -------------------------------------------------------------------

    def inbound(self, method: str, scheme: str, authority: str, path: str,
                headers: Sequence[tuple[str, str]], *, source: Peer | None = None,
                service: Service | None = None, remote_address: Address | None = None,
                local_address: Address | None = None, server_name: str | None = None,
                security_policy: str = "none", span_name: str | None = None
                ) -> InboundCall:
        """Start an inbound request: extract the caller's trace context (W3C or B3),
        decide sampling, open the server span. ``with call:`` makes it current for
        the handler; :meth:`InboundCall.finish` records it (reporter ``destination``).
        ``headers`` are the request's, names lower-case. The connection's addresses
        are ``ip:port`` text or ``(ip, port)`` pairs (written out only when recorded,
        after the response)."""
        items = list(headers)  # the call keeps it (and a request id made up for it)
        return self._inbound_call(
            self._inbound_start(method, scheme, authority, path, items, remote_address,
                                span_name),
            method, scheme, authority, path, items, source, service, remote_address,
            local_address, server_name, security_policy)

    def _inbound_start(self, method: str, scheme: str, authority: str, path: str,
                       items: list[tuple[str, str]], remote_address: Address | None,
                       span_name: str | None) -> InboundStart:
        """The part of an inbound call that must happen before the app runs: the request
        id (appended to ``items`` when the request has none) and the server span. The
        inbound handler keeps what this returns and records the request from it after
        the response (:meth:`_record_inbound`); :meth:`inbound` wraps it in an
        :class:`InboundCall`."""
        side = self._server
        request_id = None
        traced = False
        # Only what the app's context needs is read now, before the app runs; the
        # sizes, length and protocol the record needs are read from ``items`` when it
        # finishes, after the response is on its way (InboundCall.finish).
        for name, value in items:
            if name in _TRACE_OR_ID:
                if name != REQUEST_ID:
                    traced = True
                elif request_id is None:
                    request_id = value
        if request_id is None:
            request_id = self._new_request_id()
            items.append((REQUEST_ID, request_id))
        target = self._inbound_target(authority, scheme)
        span: Span | None = None
        if side.tracing:
            parent = extract(items) if traced else None
            sampled = decide_sampling(parent, side.sampling, self._rng)
            report = sampled and side.report_spans
            # attributes only for a span that records: most requests are not sampled
            attributes: Mapping[str, str | int | float | bool] = _NO_ATTRIBUTES
            if report:
                attributes = {
                    "http.request.method": method, "url.path": path.partition("?")[0],
                    "url.scheme": scheme, "server.address": target.host,
                    "mesh.request_id": request_id}
                if isinstance(remote_address, tuple):
                    attributes["client.address"] = remote_address[0]
                    if remote_address[1] is not None:
                        attributes["client.port"] = remote_address[1]
                elif remote_address:
                    attributes["client.address"] = remote_address
            span = self._spans.start(span_name or target.span_name, SpanKind.SERVER,
                                     parent.context if parent is not None else None,
                                     sampled, side.report_spans, attributes)
        return request_id, span, target, self._clock(), self._wall()

    def _inbound_call(self, start: InboundStart, method: str, scheme: str, authority: str,
                      path: str, items: list[tuple[str, str]], source: Peer | None,
                      service: Service | None, remote_address: Address | None,
                      local_address: Address | None, server_name: str | None,
                      security_policy: str) -> InboundCall:
        """The :class:`InboundCall` of a request :meth:`_inbound_start` began."""
        request_id, span, target, started, started_wall = start
        return InboundCall(self, self._server, method, scheme, authority, path, items,
                           request_id, span, source or NO_PEER, service or target.service,
                           remote_address, local_address, server_name, security_policy,
                           started, started_wall, upstream_cluster=target.cluster)

    def _record_inbound(self, start: InboundStart, method: str, scheme: str, authority: str,
                        path: str, items: list[tuple[str, str]], source: Peer,
                        remote_address: Address | None, local_address: Address | None,
                        server_name: str | None, security_policy: str, status: int,
                        response_headers: Sequence[tuple[str, str]], bytes_sent: int,
                        bytes_received: int | None, flags: str, protocol: str) -> None:
        """Record a request :meth:`_inbound_start` began, as :meth:`InboundCall.finish`
        would, without building the :class:`InboundCall` (the inbound handler's path
        after every response: that object was a measurable part of the recording)."""
        request_id, span, target, started, started_wall = start
        record = _inbound_record(self, started, started_wall, method, scheme, authority,
                                 path, items, request_id, source, target.service,
                                 remote_address, local_address, server_name,
                                 security_policy, target.cluster, status, response_headers,
                                 bytes_sent, bytes_received, flags, None, protocol, None)
        _end_inbound(self, self._server, span, record)

    def _inbound_target(self, authority: str, scheme: str) -> _InboundTarget:
        """What an inbound request's authority decides (host, span name, service,
        inbound cluster), worked out once per authority (a server sees few)."""
        key = (authority, scheme)
        target = self._inbound_targets.get(key)
        if target is None:
            host, port = split_host_port(authority)
            target = remember(self._inbound_targets, key, _InboundTarget(
                host, _span_name(authority, scheme), self._service_of_host(host),
                f"inbound|{port or ''}||"), _MEMO_LIMIT)
        return target

    # -- shared ---------------------------------------------------------------------

    def _emit(self, side: _Side, record: CallRecord) -> None:
        if side.metrics:
            view = side.view
            for sink in self._sinks:
                sink.record(record, view)
        for logger in side.loggers:
            logger.log(record)

    def _spiffe(self, namespace: str, service_account: str) -> str:
        return SpiffeId(self._trust_domain, namespace, service_account).uri

    def _destination(self, endpoint: Endpoint | None, mtls: bool = False) -> Peer:
        """The peer behind ``endpoint``; over mesh mTLS, with the principal it proved
        (the service account the connection's identity check required)."""
        if endpoint is None:
            return Peer()
        key = (endpoint.address, endpoint.port, endpoint.source, mtls)
        peer = self._endpoints.get(key)
        if peer is None:
            peer = Peer.of_endpoint(endpoint, self.cluster_id)
            if mtls and endpoint.service_account:  # in the namespace that declared it
                namespace = endpoint.source.partition(" ")[2].partition("/")[0]
                if namespace:
                    peer = replace(peer, principal=self._spiffe(namespace,
                                                                endpoint.service_account))
            remember(self._endpoints, key, peer, _MEMO_LIMIT)
        return peer

    def _service(self, result: CallResult, authority: str) -> Service:
        svc = result.service
        if svc is not None:
            return self._mesh_service(svc)
        decision = result.decision
        host = split_host_port(authority)[0]
        if decision is not None and decision.passthrough:
            return Service(host=host, name="PassthroughCluster")
        if decision is not None and decision.route_name == BLACKHOLE_ROUTE:
            return Service(host=host, name="BlackHoleCluster")
        if decision is not None and decision.service is not None:
            return self._mesh_service(decision.service)
        return Service(host=decision.fqdn if decision is not None else host)

    def _mesh_service(self, svc: MeshService) -> Service:
        key = (svc.hostname, svc.namespace)
        out = self._services.get(key)
        if out is None:
            parts = kube_service_parts(svc.hostname, self._domain)
            name = parts[0] if parts else svc.hostname
            out = self._services[key] = Service(svc.hostname, name, svc.namespace)
        return out

    def _service_of_host(self, host: str) -> Service:
        parts = kube_service_parts(host, self._domain)
        if parts is not None:
            return Service(host, parts[0], parts[1])
        return Service(host, host.partition(".")[0] or UNKNOWN, self.workload.namespace)


def _close_handler(handler: logging.Handler) -> None:
    """Close a file handler; the stdout/stderr ones hold nothing to close."""
    if isinstance(handler, logging.FileHandler):
        handler.close()


def _span_name(authority: str, scheme: str) -> str:
    """Envoy's span name for a request: ``host:port/*``."""
    host, port = split_host_port(authority)
    return f"{host}:{port or (443 if scheme == 'https' else 80)}/*"


def _details(result: CallResult | None) -> str | None:
    """Envoy's ``%RESPONSE_CODE_DETAILS%`` for a call's result."""
    if result is None:
        return None
    return response_code_details(result.flags, local=result.local_reply is not None)


def _with_port(authority: str, scheme: str) -> str:
    """``host:port`` of the address the app called (the port made explicit)."""
    host, port = split_host_port(authority)
    return join_host_port(host, port or (443 if scheme == "https" else 80))


def _formatter(provider: AccessLogProvider) -> Formatter:
    if provider.encoding == "JSON":
        return compile_json(provider.json_labels or DEFAULT_JSON_LABELS)
    return compile_format(provider.text_format or DEFAULT_TEXT_FORMAT)


def _custom_tag(tag: Any) -> Callable[[Mapping[str, str]], str | None]:
    """A Telemetry ``customTags`` entry as a function of the request headers."""
    if tag.literal is not None:
        value = tag.literal.value
        return lambda headers: value
    if tag.environment is not None:
        env = os.environ.get(tag.environment.name, tag.environment.default_value)
        return lambda headers: env
    if tag.header is not None:
        name, default = tag.header.name.lower(), tag.header.default_value
        return lambda headers: headers.get(name, default)
    return lambda headers: None


_ADDRESS_TEXTS: dict[tuple[str, int | None], str] = {}
"""``ip:port`` by (ip, port): a server's local address never changes and a keep-alive
connection's remote one repeats on every request it carries."""


def _address_text(address: Address | None) -> str | None:
    if address is None or isinstance(address, str):
        return address
    text = _ADDRESS_TEXTS.get(address)
    if text is None:
        text = remember(_ADDRESS_TEXTS, address, join_host_port(*address), _MEMO_LIMIT)
    return text


def _response_head(headers: Iterable[tuple[str, str]]) -> tuple[int | None, int]:
    """A response's ``grpc-status`` (the first numeric one; None without) and the bytes
    of its header block as ``istio_response_bytes`` counts them (pseudo-headers not
    counted), in one pass over its headers."""
    grpc_status = None
    size = 0
    for name, value in headers:
        if name[:1] == ":":
            continue
        size += len(name) + len(value)
        if name == "grpc-status" and grpc_status is None and value.isdigit():
            grpc_status = int(value)
    return grpc_status, size


def _request_head(headers: Iterable[tuple[str, str]]) -> tuple[str, int, int]:
    """An inbound request's protocol, ``content-length`` and header bytes as the metrics
    count them (``host`` is the ``:authority``, pseudo-headers are not counted), in one
    pass over its headers."""
    protocol = "http"
    length = None
    size = 0
    for name, value in headers:
        if name == "host" or name[:1] == ":":
            continue
        size += len(name) + len(value)
        if name == "content-length":
            if length is None and value.isdigit():
                length = int(value)
        elif name == "content-type" and value.startswith("application/grpc"):
            protocol = "grpc"
    return protocol, length or 0, size


@dataclass(slots=True, eq=False)
class OutboundCall:
    """One outbound call in progress (see :meth:`Telemetry.outbound`)."""

    telemetry: Telemetry
    side: _Side
    method: str
    scheme: str
    authority: str
    path: str
    headers: list[tuple[str, str]]
    request_id: str
    span: Span | None
    started: float
    started_wall: float
    request_bytes: int = 0
    grpc: bool = False
    local_address: str | None = None   # the address the app called, port explicit
    header_bytes: int | None = None    # the request's header block, host excluded
    result: CallResult | None = None
    response_at: float | None = None
    response_headers: Sequence[tuple[str, str]] | HeaderSource = ()
    protocol: str = "HTTP/1.1"
    done: bool = field(default=False)
    ids: tuple[str, str] | None = None  # trace and span id in hex, as propagated

    @property
    def recording(self) -> bool:
        return self.span is not None and self.span.is_recording()

    def attempt(self, attempt: Attempt, result: AttemptResult) -> None:
        """Note one attempt (an event on the span when it records)."""
        span = self.span
        if span is not None and span.is_recording():
            outcome = result.outcome
            span.add_event("mesh.attempt", {
                "mesh.upstream.host": attempt.endpoint.authority if attempt.endpoint else "",
                "http.response.status_code": outcome.status or 0,
                "mesh.failure": outcome.failure.value if outcome.failure else ""})

    def responded(self, result: CallResult,
                  headers: Sequence[tuple[str, str]] | HeaderSource,
                  protocol: str | None = None) -> None:
        """The caller's response head is ready (time to first byte). ``headers`` may be
        an ``httpx.Headers``: it is only read if something needs it."""
        self.result = result
        self.response_at = self.telemetry._clock()
        self.response_headers = headers
        if protocol:
            self.protocol = protocol

    def finish(self, bytes_sent: int) -> None:
        """The caller is done with the body: record metrics, log, end the span. Once."""
        if self.done:
            return
        self.done = True
        tel = self.telemetry
        result = self.result
        now = tel._clock()
        status = (result.status or 0) if result is not None else 0
        flags = format_flags(result.flags) if result is not None else "DC"
        given = self.response_headers
        header_bytes = None
        response_headers: Sequence[tuple[str, str]]
        if isinstance(given, Sequence):
            response_headers = given
        else:  # httpx.Headers: sized from its raw bytes, decoded only if something reads it
            header_bytes = sum(map(len, chain.from_iterable(given.raw)))
            response_headers = _LazyHeaders(given)
        service = (tel._service(result, self.authority) if result is not None
                   else Service(host=split_host_port(self.authority)[0]))
        record = CallRecord.start("source", self.started_wall, now - self.started,
                                  self.method, self.path, self.authority)
        record.scheme = self.scheme
        record.protocol = self.protocol
        record.request_protocol = "grpc" if self.grpc else "http"
        record.status = status
        record.grpc_status = (_response_head(response_headers)[0] if result and self.grpc
                              else None)
        record.response_flags = flags
        record.bytes_received = self.request_bytes
        record.bytes_sent = bytes_sent
        record.response_duration = (self.response_at - self.started
                                    if self.response_at is not None else None)
        record.request_headers = self.headers
        record.response_headers = response_headers
        record.request_id = self.request_id
        record.route_name = result.route_name if result is not None else ""
        record.upstream_cluster = result.cluster if result is not None else None
        record.upstream_host = (result.endpoint.authority
                                if result is not None and result.endpoint is not None
                                and result.local_reply is None else None)
        record.attempts = result.attempts if result is not None else 0
        record.source = tel.peer_mtls if result is not None and result.mtls else tel.peer
        record.destination = tel._destination(result.endpoint if result is not None else None,
                                              result is not None and result.mtls)
        record.service = service
        record.downstream_local_address = self.local_address
        record.response_code_details = _details(result)
        record.response_header_bytes = header_bytes
        record.request_header_bytes = self.header_bytes
        if self.ids is not None:
            record.trace_id, record.span_id = self.ids
        if self.span is not None and self.span.is_recording():
            _end_span(self.span, record, self.side, client=True)
        tel._emit(self.side, record)


ContextTokens = tuple["contextvars.Token[otel_context.Context] | None",
                      "contextvars.Token[Handling | None]"]
"""What :func:`attach` made current: the OTel context's token (None without a span)
and the request's."""


class SpanContexts(Protocol):
    """Where :func:`attach` keeps the OTel context it made and the one it was made from
    (a streamed response enters several times, usually from the same context: the
    span is set in it once)."""

    _context: otel_context.Context | None
    _base: otel_context.Context | None


def attach(span: Span | None, handling: Handling, contexts: SpanContexts) -> ContextTokens:
    """Make ``span`` (with the trace context it carries) and ``handling`` (the request
    id outbound calls reuse) current; :func:`detach` undoes it. For
    :class:`InboundCall` and the inbound handler, which keeps the tokens itself."""
    ctx_token = None
    if span is not None:
        base = otel_runtime.get_current()
        ctx = contexts._context
        if ctx is None or base is not contexts._base:
            ctx = contexts._context = otel_runtime.with_span(span, base)
            contexts._base = base
        ctx_token = otel_runtime.attach(ctx)
    return ctx_token, _handling.set(handling)


def detach(tokens: ContextTokens) -> None:
    """Undo :func:`attach`."""
    ctx_token, token = tokens
    _handling.reset(token)
    if ctx_token is not None:
        otel_runtime.detach(ctx_token)


@dataclass(slots=True, eq=False)
class InboundCall:
    """One inbound request in progress (see :meth:`Telemetry.inbound`)."""

    telemetry: Telemetry
    side: _Side
    method: str
    scheme: str
    authority: str
    path: str
    headers: list[tuple[str, str]]
    request_id: str
    span: Span | None
    source: Peer
    service: Service
    remote_address: Address | None
    local_address: Address | None
    server_name: str | None
    security_policy: str
    started: float
    started_wall: float
    done: bool = False
    upstream_cluster: str | None = None
    """``inbound|<port>||`` (computed from ``authority`` when not given)."""
    _tokens: list[ContextTokens] | None = None
    # the OTel context made current, and the one it was made from (a streamed response
    # enters several times, usually from the same context: the span is set in it once)
    _context: otel_context.Context | None = None
    _base: otel_context.Context | None = None

    def __enter__(self) -> InboundCall:
        """Make this request's trace context and request id current (for outbound calls)."""
        if self._tokens is None:
            self._tokens = []
        self._tokens.append(self.attach())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._tokens
        detach(self._tokens.pop())

    def attach(self) -> ContextTokens:
        """What ``with call:`` does on entry, for a driver that keeps the tokens itself:
        give them to :func:`detach` to undo it."""
        return attach(self.span, self, self)

    @property
    def trace_headers(self) -> list[tuple[str, str]]:
        """Headers that carry this request's span onward (for hand-made outbound calls)."""
        if self.span is None:
            return []
        return inject(self.span.get_span_context())

    def finish(self, status: int, *, bytes_sent: int = 0, bytes_received: int | None = None,
               response_headers: Sequence[tuple[str, str]] = (), flags: str = "-",
               grpc_status: int | None = None, protocol: str = "HTTP/1.1",
               response_duration: float | None = None) -> CallRecord:
        """Record the request (reporter ``destination``) and end its span; returns the
        record. ``status`` 0 means no response was sent (downstream went away)."""
        record = _inbound_record(
            self.telemetry, self.started, self.started_wall, self.method, self.scheme,
            self.authority, self.path, self.headers, self.request_id, self.source,
            self.service, self.remote_address, self.local_address, self.server_name,
            self.security_policy,
            self.upstream_cluster if self.upstream_cluster is not None
            else f"inbound|{split_host_port(self.authority)[1] or ''}||",
            status, response_headers, bytes_sent, bytes_received, flags, grpc_status,
            protocol, response_duration)
        if self.done:
            return record
        self.done = True
        _end_inbound(self.telemetry, self.side, self.span, record)
        return record


def _inbound_record(tel: Telemetry, started: float, started_wall: float, method: str,
                    scheme: str, authority: str, path: str,
                    request_headers: list[tuple[str, str]], request_id: str, source: Peer,
                    service: Service, remote_address: Address | None,
                    local_address: Address | None, server_name: str | None,
                    security_policy: str, upstream_cluster: str, status: int,
                    response_headers: Sequence[tuple[str, str]], bytes_sent: int,
                    bytes_received: int | None, flags: str, grpc_status: int | None,
                    protocol: str, response_duration: float | None) -> CallRecord:
    """The record of one inbound request (reporter ``destination``), for
    :meth:`InboundCall.finish` and for the inbound handler, which records without
    building an :class:`InboundCall` (:meth:`Telemetry._record_inbound`)."""
    record = CallRecord.start("destination", started_wall, tel._clock() - started, method,
                              path, authority)
    record.scheme = scheme
    record.protocol = protocol
    # read now, after the response, rather than when the request started (inbound())
    record.request_protocol, length_of, record.request_header_bytes = _request_head(
        request_headers)
    record.status = status
    # the response's gRPC status and header bytes (response_size) in one walk
    found, record.response_header_bytes = _response_head(response_headers)
    record.grpc_status = grpc_status if grpc_status is not None else found
    record.response_flags = flags
    record.bytes_received = bytes_received if bytes_received is not None else length_of
    record.bytes_sent = bytes_sent
    record.response_duration = response_duration
    record.request_headers = request_headers
    record.response_headers = response_headers
    record.request_id = request_id
    record.source = source
    # over mesh mTLS the server's principal is its own SPIFFE ID, as Istio reports
    record.destination = tel.peer_mtls if security_policy == "mutual_tls" else tel.peer
    record.service = service
    record.connection_security_policy = security_policy
    record.downstream_remote_address = _address_text(remote_address)
    record.downstream_local_address = local = _address_text(local_address)
    record.requested_server_name = server_name
    record.upstream_cluster = upstream_cluster
    record.upstream_host = local
    return record


def _end_inbound(tel: Telemetry, side: _Side, span: Span | None, record: CallRecord) -> None:
    """Stamp the ids, end the server span, and emit the record (metrics, access log)."""
    if span is not None:
        _close_span(span, record, side, client=False)
    tel._emit(side, record)


def _close_span(span: Span, record: CallRecord, side: _Side, *, client: bool) -> None:
    """Stamp the record with the span's ids and, when it records, end it."""
    if type(span) is UnsampledSpan:  # most requests: ids as drawn, no SpanContext built
        trace_id, span_id = span.trace_and_span_id
        recording = False
    else:
        ctx = span.get_span_context()
        trace_id, span_id, recording = ctx.trace_id, ctx.span_id, span.is_recording()
    # the bytes' hex: the same text as a zero-padded format, for half its cost
    record.trace_id = trace_id.to_bytes(16, "big").hex()
    record.span_id = span_id.to_bytes(8, "big").hex()
    if recording:
        _end_span(span, record, side, client=client)


def _end_span(span: Span, record: CallRecord, side: _Side, *, client: bool) -> None:
    """Attributes known at the end (OTel HTTP conventions plus the mesh's), then end."""
    span.set_attribute("http.response.status_code", record.status)
    span.set_attribute("network.protocol.version", record.protocol.partition("/")[2] or "1.1")
    span.set_attribute("mesh.response_flags", record.response_flags)
    span.set_attribute("mesh.attempts", record.attempts)
    span.set_attribute("mesh.destination.service", record.service.host)
    span.set_attribute("istio.canonical_service", record.source.canonical_service
                       if client else record.destination.canonical_service)
    span.set_attribute("istio.namespace", record.source.namespace
                       if client else record.destination.namespace)
    if record.route_name:
        span.set_attribute("mesh.route", record.route_name)
    if record.upstream_cluster:
        span.set_attribute("mesh.upstream_cluster", record.upstream_cluster)
        parts = record.upstream_cluster.split("|")
        if len(parts) == 4 and parts[2]:
            span.set_attribute("mesh.destination.subset", parts[2])
    if record.upstream_host:
        host, port = split_host_port(record.upstream_host)
        span.set_attribute("network.peer.address", host)
        if port:
            span.set_attribute("network.peer.port", port)
    if record.grpc_status is not None:
        span.set_attribute("rpc.grpc.status_code", record.grpc_status)
    if side.custom_tags:
        headers = {k: v for k, v in record.request_headers}
        for name, tag in side.custom_tags:
            value = tag(headers)
            if value is not None:
                span.set_attribute(name, value)
    status = record.status
    if status == 0 or status >= 500 or (client and status >= 400):
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", str(status) if status else record.response_flags)
    span.end()


__all__ = ["ACCESS_LOGGER", "Handling", "InboundCall", "OutboundCall", "Telemetry", "attach",
           "current_handling", "current_request_id", "detach"]
