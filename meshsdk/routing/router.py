"""Route selection: which VirtualService route a request takes, and where it may go.

:func:`decide` is the data path's first decision, made for every outbound request;
:func:`pick_target` then chooses one weighted destination. Both are pure: the
drivers (httpx transports, the sidecar) perform whatever the decision says.

How a request is routed, as Istio's sidecar does it:

1. The authority (``reviews:9080``) names a service through the client's
   :class:`~meshsdk.config.snapshot.ClientView` (short names, ``name.ns``, FQDN). The
   port is the authority's port; without one, the service's only port, else the
   scheme's default (an SDK convenience: Envoy would use the port the connection was
   made to, and ``http://reviews`` would be port 80).
2. The VirtualService for that host (exact host first, then the most specific
   wildcard; the oldest wins). A VirtualService on a host that is not a service
   applies on port 80 only (Istio builds its virtual host on port 80 alone).
3. Routes are tried in order; a route's match blocks are OR'ed, conditions inside a
   block AND'ed (:mod:`meshsdk.routing.match`); a route without ``match`` matches
   everything. The first match wins:

   * ``route`` -> weighted :class:`Target` s (weights are relative; ``shares``);
   * ``redirect`` -> a local redirect (default ``301``; ``Location`` per
     :func:`~meshsdk.routing.rewrite.redirect_location`);
   * ``directResponse`` -> a local answer with the status and body (``string``, or
     base64 ``bytes``); ``content-type: text/plain`` when there is a body, as Envoy's
     local replies; ``Location`` (the request URL) for 201 and 3xx, as Envoy adds;
   * ``delegate`` -> not implemented: the route is skipped, which is what Istio does
     when the delegate VirtualService cannot be found.

   Route-level ``headers.response`` operations apply to redirects and direct
   responses too (Envoy finalizes their headers through the route).
4. No route matches: ``404`` with flag ``NR`` and an empty body (Envoy). But when
   *no* route of the VirtualService can apply to this client on this port (every
   match block names another port, other gateways, or another source workload),
   Istio generates no virtual host from it at all, and the service gets its default
   route: so do we.
5. No VirtualService: a known service gets one target (the service itself, route
   name ``default``). An unknown host is forwarded unchanged with
   ``outboundTrafficPolicy: ALLOW_ANY`` (``passthrough``, route ``allow_any``) and
   refused with ``REGISTRY_ONLY``: Istio's ``block_all`` virtual host is a
   ``direct_response`` of ``502`` with an empty body, so no response flag is set
   (access logs show ``-`` and details ``direct_response``).

CORS (:mod:`meshsdk.routing.cors`): on a route that forwards traffic, a preflight
from an allowed origin (or any origin with ``unmatchedPreflights: IGNORE``) is
answered locally; the decision's ``cors`` is set so the driver can add
:func:`~meshsdk.routing.cors.cors_response_headers` to real responses. Envoy's CORS
filter runs before the fault filter, so a locally answered preflight is never
faulted.

Route names follow Istio: the HTTPRoute's ``name``, plus ``.<match name>`` when the
matching block has a name (``""`` for unnamed routes), ``default`` for the route of a
service without VirtualService, ``allow_any`` / ``block_all`` for unknown hosts.

Performance: everything that depends only on the configuration, the client and the
authority is computed once and cached per :class:`ClientView` (compiled match
blocks, the route table, and the :class:`RouteDecision` of each route/match pair,
which is immutable and shared). A call is then an authority lookup, the match loop
and a cached decision; only redirects and CORS preflights build a new decision.
"""

from __future__ import annotations

import base64
import binascii
import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from meshsdk.config.hosts import expand_host
from meshsdk.config.kinds.virtual_service import (
    CorsPolicy,
    HeaderOperations,
    Headers,
    HTTPMatchRequest,
    HTTPRoute,
    HTTPRouteDestination,
)
from meshsdk.config.mesh import MeshConfig
from meshsdk.config.resource import Resource
from meshsdk.config.snapshot import ClientView, Service
from meshsdk.outcome import Flag, LocalReply
from meshsdk.routing.cors import is_preflight, preflight_reply
from meshsdk.routing.match import CompiledMatch, compile_match
from meshsdk.routing.request import RequestView
from meshsdk.routing.rewrite import apply_header_operations, redirect_location, request_url
from meshsdk.routing.split import weight_shares

DEFAULT_ROUTE = "default"
PASSTHROUGH_ROUTE = "allow_any"
BLACKHOLE_ROUTE = "block_all"
DEFAULT_REDIRECT_CODE = 301
_HOST_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Target:
    """One weighted destination of the chosen route."""

    fqdn: str                      # destination host expanded in the VirtualService's namespace
    subset: str | None
    port: int | None               # destination.port.number, else the service's only port,
    #                                else the request's port (Istio's GetDestinationCluster)
    service: Service | None        # view.service(fqdn); None for hosts that are not services
    headers: Headers | None        # destination-level header operations
    weight: int | None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a request goes, or what the mesh answers itself."""

    fqdn: str                      # the requested host as an FQDN (from view.resolve)
    port: int | None               # the port the request is routed on
    service: Service | None
    virtual_service: Resource | None
    route: HTTPRoute | None        # None without VirtualService and for 404/502 replies
    route_index: int | None        # index in spec.http
    route_name: str
    matched: HTTPMatchRequest | None   # the match block that matched (None: route has none)
    targets: tuple[Target, ...]
    shares: tuple[float, ...]      # weight_shares of targets
    local_reply: LocalReply | None  # the mesh answers itself (redirect, directResponse,
    #                                 404 NR, 502 block_all, CORS preflight)
    passthrough: bool = False      # ALLOW_ANY, unknown host: forward to the original authority
    cors: CorsPolicy | None = None  # the route's CORS policy, when the route forwards traffic
    bounds: tuple[float, ...] = field(init=False, repr=False, compare=False)
    """Running sums of ``shares`` (derived): :func:`pick_target` bisects them."""
    plans: dict[int, Any] = field(init=False, repr=False, compare=False)
    """What the call flow derives from this decision per target, keyed by the target's
    id (:mod:`meshsdk.dataplane.flow`): it depends on nothing else, since a decision
    belongs to one client view, and it goes with the decision."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", tuple(accumulate(self.shares)))
        object.__setattr__(self, "plans", {})


# --- compiled tables -----------------------------------------------------------------

_ROUTE, _REDIRECT, _DIRECT = 0, 1, 2


class _Route:
    """One HTTPRoute of a VirtualService, prepared for the data path."""

    __slots__ = ("cors", "direct", "http", "index", "kind", "response_ops")

    def __init__(self, index: int, http: HTTPRoute) -> None:
        self.index = index
        self.http = http
        self.response_ops: HeaderOperations | None = (
            http.headers.response if http.headers is not None else None)
        self.cors: CorsPolicy | None = None
        self.direct: LocalReply | None = None
        if http.redirect is not None:
            self.kind = _REDIRECT
        elif http.direct_response is not None:
            self.kind = _DIRECT
            self.direct = _direct_reply(http, self.response_ops)
        else:
            self.kind = _ROUTE
            self.cors = http.cors_policy


class _Entry:
    """A (route, match block) pair: Istio emits one Envoy route per match block."""

    __slots__ = ("match", "name", "route", "slot")

    def __init__(self, route: _Route, match: CompiledMatch | None, slot: int) -> None:
        self.route = route
        self.match = match
        self.slot = slot
        name = route.http.name or ""
        if match is not None and match.match.name:
            name = f"{name}.{match.match.name}"
        self.name = name


class _Table:
    """A VirtualService's HTTP routes, flattened to entries in match order."""

    __slots__ = ("entries", "vs")

    def __init__(self, vs: Resource) -> None:
        self.vs = vs
        entries: list[_Entry] = []
        for index, http in enumerate(vs.spec.http or ()):
            if http.delegate is not None and http.redirect is None \
                    and http.direct_response is None and not http.route:
                continue  # delegation is not implemented: skipped, as a missing delegate
            route = _Route(index, http)
            if not http.match:
                entries.append(_Entry(route, None, len(entries)))
            else:
                for m in http.match:
                    entries.append(_Entry(route, compile_match(m), len(entries)))
        self.entries: tuple[_Entry, ...] = tuple(entries)

    def applicable(self, req: RequestView, port: int | None) -> bool:
        """Whether Istio would generate any route of this table for this client/port."""
        for entry in self.entries:
            if entry.match is None or entry.match.applicable(req, port):
                return True
        return False


class _Host:
    """Everything about one (authority, request port) for one client view."""

    __slots__ = ("blackhole", "decisions", "default", "fqdn", "no_route", "passthrough",
                 "port", "service", "table")

    def __init__(self, service: Service | None, fqdn: str, port: int | None,
                 table: _Table | None) -> None:
        self.service = service
        self.fqdn = fqdn
        self.port = port
        self.table = table
        self.decisions: list[RouteDecision | None] = (
            [None] * len(table.entries) if table is not None else [])
        vs = table.vs if table is not None else None
        self.no_route = RouteDecision(fqdn, port, service, vs, None, None, "", None, (), (),
                                      _NO_ROUTE_REPLY)
        self.default: RouteDecision | None = None
        if service is not None:
            target = Target(fqdn, None, port, service, None, None)
            self.default = RouteDecision(fqdn, port, service, None, None, None, DEFAULT_ROUTE,
                                         None, (target,), (1.0,), None)
        self.passthrough = RouteDecision(fqdn, port, None, None, None, None, PASSTHROUGH_ROUTE,
                                         None, (), (), None, passthrough=True)
        self.blackhole = RouteDecision(fqdn, port, None, None, None, None, BLACKHOLE_ROUTE,
                                       None, (), (), _BLACKHOLE_REPLY)


class _ViewCache:
    """Per-ClientView caches; dropped with the view (and so with its snapshot)."""

    __slots__ = ("hosts", "tables")

    def __init__(self) -> None:
        self.hosts: dict[tuple[str, int | None], _Host] = {}
        self.tables: dict[int, _Table] = {}

    def table(self, vs: Resource) -> _Table:
        table = self.tables.get(id(vs))
        if table is None or table.vs is not vs:
            table = _Table(vs)
            self.tables[id(vs)] = table
        return table

    def host(self, view: ClientView, req: RequestView, key: tuple[str, int | None]) -> _Host:
        service, fqdn, port = view.resolve(req.authority)
        if port is None:
            if service is not None and len(service.ports) == 1:
                port = service.ports[0].number
            else:
                port = req.port
        vs = view.virtual_service(fqdn)
        table: _Table | None = None
        if vs is not None and (service is not None or port == 80):
            candidate = self.table(vs)
            if candidate.entries:
                table = candidate
        host = _Host(service, fqdn, port, table)
        if len(self.hosts) < _HOST_CACHE_LIMIT:
            self.hosts[key] = host
        return host


_NO_ROUTE_REPLY = LocalReply(404, b"", (), (Flag.NO_ROUTE,))
_BLACKHOLE_REPLY = LocalReply(502)


def _cache_for(view: ClientView) -> _ViewCache:
    """The route tables of ``view``, kept in ``view.derived`` (made on first use)."""
    cache: _ViewCache | None = view.derived.get(_ViewCache)
    if cache is None:
        cache = view.derived.setdefault(_ViewCache, _ViewCache())
    return cache


# --- local replies ---------------------------------------------------------------------


def _with_ops(headers: Sequence[tuple[str, str]], ops: HeaderOperations | None
              ) -> tuple[tuple[str, str], ...]:
    if ops is None:
        return tuple(headers)
    return tuple(apply_header_operations(headers, ops))


def direct_response_body(route: HTTPRoute) -> bytes:
    """The body of a ``directResponse``: ``string`` as UTF-8, or base64 ``bytes``."""
    dr = route.direct_response
    if dr is None or dr.body is None:
        return b""
    if dr.body.string is not None:
        return dr.body.string.encode()
    if dr.body.bytes_ is not None:
        try:
            return base64.b64decode(dr.body.bytes_, validate=True)
        except (binascii.Error, ValueError):  # validation rejects these
            return b""
    return b""


def _direct_reply(http: HTTPRoute, ops: HeaderOperations | None) -> LocalReply:
    dr = http.direct_response
    assert dr is not None
    body = direct_response_body(http)
    headers: tuple[tuple[str, str], ...] = (("content-type", "text/plain"),) if body else ()
    return LocalReply(dr.status or 200, body, _with_ops(headers, ops))


def _needs_location(status: int) -> bool:
    return status == 201 or 300 <= status <= 399


# --- the decision ----------------------------------------------------------------------


def _target(view: ClientView, vs: Resource, rd: HTTPRouteDestination, port: int | None
            ) -> Target:
    dest = rd.destination
    host = dest.host if dest is not None else ""
    fqdn = expand_host(host, vs.namespace, view.snapshot.domain)
    service = view.service(fqdn)
    if dest is not None and dest.port is not None and dest.port.number:
        tport: int | None = dest.port.number
    elif service is not None and len(service.ports) == 1:
        tport = service.ports[0].number
    else:
        tport = port
    subset = dest.subset if dest is not None and dest.subset else None
    return Target(fqdn, subset, tport, service, rd.headers, rd.weight)


def _route_decision(view: ClientView, host: _Host, entry: _Entry) -> RouteDecision:
    table = host.table
    assert table is not None
    http = entry.route.http
    targets = tuple(_target(view, table.vs, rd, host.port) for rd in http.route)
    shares = weight_shares([rd.weight for rd in http.route]) if targets else ()
    matched = entry.match.match if entry.match is not None else None
    return RouteDecision(host.fqdn, host.port, host.service, table.vs, http, entry.route.index,
                         entry.name, matched, targets, shares, None, False, entry.route.cors)


def _local(host: _Host, entry: _Entry, reply: LocalReply,
           cors: CorsPolicy | None = None) -> RouteDecision:
    table = host.table
    assert table is not None
    matched = entry.match.match if entry.match is not None else None
    return RouteDecision(host.fqdn, host.port, host.service, table.vs, entry.route.http,
                         entry.route.index, entry.name, matched, (), (), reply, False, cors)


def _select(view: ClientView, host: _Host, entry: _Entry, req: RequestView) -> RouteDecision:
    route = entry.route
    kind = route.kind
    if kind == _ROUTE:
        if route.cors is not None and is_preflight(req):
            reply = preflight_reply(route.cors, req)
            if reply is not None:
                return _local(host, entry, reply, route.cors)
        decision = host.decisions[entry.slot]
        if decision is None:
            decision = _route_decision(view, host, entry)
            host.decisions[entry.slot] = decision
        return decision
    if kind == _REDIRECT:
        redirect = route.http.redirect
        assert redirect is not None
        location = redirect_location(redirect, req, host.port)
        status = redirect.redirect_code or DEFAULT_REDIRECT_CODE
        return _local(host, entry, LocalReply(
            status, b"", _with_ops((("location", location),), route.response_ops)))
    reply = route.direct
    assert reply is not None
    if _needs_location(reply.status):
        headers = (("location", request_url(req)), *reply.headers)
        return _local(host, entry, LocalReply(reply.status, reply.body,
                                              _with_ops(headers, route.response_ops)))
    decision = host.decisions[entry.slot]
    if decision is None:
        decision = _local(host, entry, reply)
        host.decisions[entry.slot] = decision
    return decision


def decide(view: ClientView, req: RequestView, mesh: MeshConfig) -> RouteDecision:
    """Route ``req`` as the client ``view`` sees the mesh (see the module doc)."""
    cache = view.derived.get(_ViewCache)
    if cache is None:
        cache = _cache_for(view)
    key = (req.authority, req.port)
    host = cache.hosts.get(key)
    if host is None:
        host = cache.host(view, req, key)
    table = host.table
    if table is not None:
        port = host.port
        for entry in table.entries:
            match = entry.match
            if match is None or match.matches(req, port):
                return _select(view, host, entry, req)
        if table.applicable(req, port):
            return host.no_route
    if host.default is not None:
        return host.default
    if mesh.outbound_traffic_policy.mode == "REGISTRY_ONLY":
        return host.blackhole
    return host.passthrough


def pick_target(decision: RouteDecision, rng: random.Random) -> Target | None:
    """A weighted random choice among ``decision.targets`` by ``decision.shares``.

    One ``rng.random()`` draw per call (none for a single target). None when there is
    no target or every share is 0.
    """
    targets = decision.targets
    count = len(targets)
    if count == 0:
        return None
    shares = decision.shares
    if count == 1:
        return targets[0] if shares[0] > 0 else None
    # the first target whose running sum exceeds the draw (a 0 share adds no width,
    # so it is never picked); the sums are the loop's own additions, in its order
    i = bisect_right(decision.bounds, rng.random())
    if i < count:
        return targets[i]
    for target, share in zip(reversed(targets), reversed(shares), strict=True):
        if share > 0:
            return target  # float rounding left the draw just above the sum
    return None


__all__ = [
    "BLACKHOLE_ROUTE",
    "DEFAULT_ROUTE",
    "PASSTHROUGH_ROUTE",
    "RouteDecision",
    "Target",
    "decide",
    "direct_response_body",
    "pick_target",
]
