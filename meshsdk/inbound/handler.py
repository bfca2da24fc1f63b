"""One inbound request, protocol-neutral: the only place inbound decisions are combined.

Every inbound driver (the generic WSGI and ASGI middlewares, the framework plugins built
on them, later the sidecar's inbound listener) turns its request into the same few
facts — method, scheme, authority, path, headers, addresses, the peer's verified
certificate — and asks :class:`InboundHandler` for an :class:`InboundRequest`:

1. **identity**: the peer's SPIFFE ID from the mTLS handshake the server did, or from
   ``X-Forwarded-Client-Cert`` when the connection comes from a trusted sidecar
   address (the header is removed from every other request);
2. **PeerAuthentication**: a STRICT port refuses a request without a verified peer;
3. **telemetry**: the server span (W3C/B3 parent), ``x-request-id``, later the
   ``reporter=destination`` metrics and access log (:meth:`Telemetry.inbound`);
4. **RequestAuthentication** then **AuthorizationPolicy** (:class:`InboundSecurity`):
   401/403 with Envoy's local-reply bodies, or the header changes to forward;
5. ``with request:`` around the app makes the trace context, the request id and the
   caller's deadline (``x-envoy-expected-rq-timeout-ms`` / ``grpc-timeout``) current,
   so ``mesh.client()`` calls inside continue the trace and are capped in time;
6. :meth:`InboundRequest.finish` records the outcome once.

Sync and async share every step; only the security check (which may fetch a JWKS or
ask an external authorizer) runs in a worker thread on the async path, and only when
the workload's policies can do I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Coroutine, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cryptography import x509

from meshsdk.config.snapshot import Snapshot
from meshsdk.deadline import ENVOY_TIMEOUT_HEADER, GRPC_TIMEOUT_HEADER, deadline_scope
from meshsdk.deadline import timeout_from_headers as _timeout_from
from meshsdk.inbound.xfcc import HEADER as XFCC_HEADER
from meshsdk.inbound.xfcc import xfcc_peer
from meshsdk.memo import remember
from meshsdk.security.errors import SecurityError
from meshsdk.security.inbound import InboundDecision, InboundSecurity
from meshsdk.security.peer_authn import Mode
from meshsdk.security.spiffe import parse_spiffe_id, spiffe_ids_of
from meshsdk.telemetry.propagation import REQUEST_ID
from meshsdk.telemetry.record import NO_PEER, Peer
from meshsdk.telemetry.recorder import (
    ContextTokens,
    InboundStart,
    attach,
    current_handling,
    detach,
)

if TYPE_CHECKING:
    from opentelemetry import context as otel_context

    from meshsdk.mesh import Mesh
    from meshsdk.security.audit import AuditLog
    from meshsdk.security.authz import CustomCheck
    from meshsdk.security.jwks import JwksCache

log = logging.getLogger("meshsdk.inbound")

PeerCertificate = bytes | str | x509.Certificate
"""The client certificate the server verified: DER bytes, PEM text or a parsed one."""

RESET_BODY = (b"upstream connect error or disconnect/reset before headers. "
              b"reset reason: connection termination")
"""What an Envoy caller gets when a STRICT server drops its plaintext connection; the
answer to a request that reached a STRICT port without a verified peer."""

def current_request() -> InboundRequest | None:
    """The inbound request being handled in this context (inside ``with request:``)."""
    now = current_handling()  # may also be an InboundCall entered on its own
    return now if isinstance(now, InboundRequest) else None


def set_route(route: str) -> bool:
    """Name the current request's route (a template such as ``/users/{id}``) for its
    server span; for framework plugins after routing. False when no request is current.
    The name never becomes a metric label (unbounded cardinality)."""
    request = current_request()
    if request is None:
        return False
    request.route = route
    return True


def route_wanted() -> bool:
    """Whether the current request's server span records, so that naming its route is
    worth the lookup. Most requests are not sampled (Istio's default is 1%), and a
    framework's route lookup costs a few microseconds before the response is sent:
    plugins ask this first and skip both when it says no."""
    request = current_request()
    return request is not None and request.wants_route


@lru_cache(maxsize=1024)
def _spiffe_of(cert: bytes | str) -> str | None:
    """The one SPIFFE ID of a DER/PEM certificate (cached: a connection's requests all
    present the same one); None when it has none or several (not an X.509-SVID)."""
    try:
        parsed = (x509.load_der_x509_certificate(cert) if isinstance(cert, bytes)
                  else x509.load_pem_x509_certificate(cert.encode("ascii")))
    except ValueError:
        return None
    return _one_spiffe(parsed)


def _one_spiffe(cert: x509.Certificate) -> str | None:
    ids = spiffe_ids_of(cert)
    if len(ids) != 1:
        return None
    try:
        return parse_spiffe_id(ids[0]).uri
    except SecurityError:
        return None


def peer_from_certificate(cert: PeerCertificate | None) -> str | None:
    """The SPIFFE ID of a client certificate the server verified (None if it has none)."""
    if cert is None:
        return None
    if isinstance(cert, x509.Certificate):
        return _one_spiffe(cert)
    return _spiffe_of(cert)


_WATCHED = frozenset({XFCC_HEADER, REQUEST_ID, ENVOY_TIMEOUT_HEADER, GRPC_TIMEOUT_HEADER})
"""Request headers the handler looks at by name."""


@lru_cache(maxsize=1024)
def _mtls_source(peer: str) -> Peer:
    """The metrics' source of a verified SPIFFE ID (cached: few callers, many requests)."""
    spiffe = parse_spiffe_id(peer)
    return Peer(namespace=spiffe.namespace, principal=spiffe.uri)


def _source_of(peer: str | None) -> Peer:
    return NO_PEER if peer is None else _mtls_source(peer)


def _split_address(address: tuple[str, int] | str | None) -> tuple[str | None, int | None]:
    if address is None:
        return None, None
    if isinstance(address, tuple):
        return str(address[0]), int(address[1]) if address[1] is not None else None
    return address, None


_TRUSTED_CACHE_LIMIT = 1024


class _Trusted:
    """Sidecar addresses (IPs or CIDRs) whose XFCC header is believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries)
        self._known: dict[str, bool] = {}  # IP -> trusted: few callers, many requests

    def __contains__(self, ip: str | None) -> bool:
        if ip is None or not self.networks:
            return False
        known = self._known.get(ip)
        if known is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                known = False
            else:
                known = any(addr in net for net in self.networks)
            remember(self._known, ip, known, _TRUSTED_CACHE_LIMIT)
        return known


@dataclass(slots=True)
class _Security:
    """The InboundSecurity compiled for one snapshot."""

    snapshot: Snapshot
    security: InboundSecurity
    may_block: bool


class InboundHandler:
    """Turns inbound requests into :class:`InboundRequest` objects for one mesh workload.

    ``port`` is the workload port whose PeerAuthentication mode applies (default: the
    local port of each connection). ``trusted_proxies`` are the addresses (IPs or
    CIDRs) of sidecars whose ``X-Forwarded-Client-Cert`` is believed; none by default.
    ``jwks``, ``audit``, ``custom`` go to :class:`InboundSecurity` (a JWKS cache, the
    audit log, the CUSTOM authorizer). Policies follow ``mesh.update()``: they are
    recompiled when the mesh's snapshot changes. Thread-safe; one per app.
    """

    def __init__(self, mesh: Mesh, *, port: int | None = None,
                 trusted_proxies: Iterable[str] = (), jwks: JwksCache | None = None,
                 audit: AuditLog | None = None, custom: CustomCheck | None = None,
                 workload_kind: str = "", workload_name: str = "") -> None:
        self.mesh = mesh
        self.port = port
        self.trusted = _Trusted(trusted_proxies)
        self._jwks = jwks
        self._audit = audit
        self._custom = custom
        self._kind = workload_kind
        self._name = workload_name
        self._compiled: _Security | None = None

    # -- policy ----------------------------------------------------------------------

    def _security(self) -> _Security:
        snapshot = self.mesh.snapshot
        compiled = self._compiled
        if compiled is None or compiled.snapshot is not snapshot:
            security = InboundSecurity(snapshot.config, snapshot.mesh, self.mesh.workload,
                                       jwks=self._jwks, audit=self._audit,
                                       custom=self._custom, workload_kind=self._kind,
                                       workload_name=self._name)
            may_block = (any(rule.inline_keys is None for rule in security.jwt.rules)
                         or any(p.action == "CUSTOM" for p in security.authorizer.policies))
            compiled = self._compiled = _Security(snapshot, security, may_block)
        return compiled

    @property
    def security(self) -> InboundSecurity:
        """The policies in force (recompiled after ``mesh.update``)."""
        return self._security().security

    def mode_for(self, port: int | None = None) -> Mode:
        """The PeerAuthentication mode of ``port`` (default: this handler's port; with
        neither, the workload-wide mode)."""
        port = port if port is not None else self.port
        policy = self.security.mtls
        return policy.mode_for(port) if port is not None else policy.mode

    # -- requests --------------------------------------------------------------------

    def start(self, method: str, scheme: str, authority: str, path: str,
              headers: Sequence[tuple[str, str]], *,
              client: tuple[str, int] | str | None = None,
              server: tuple[str, int] | str | None = None,
              peer_certificate: PeerCertificate | None = None, peer: str | None = None,
              server_name: str | None = None, route: str | None = None) -> InboundRequest:
        """Authenticate, authorize and start recording one request.

        ``headers`` have lower-case names; ``path`` carries the query string.
        ``client``/``server`` are the connection's remote and local ``(ip, port)``.
        ``peer_certificate`` is the client certificate the server's TLS handshake
        verified (None over plaintext); ``peer`` a SPIFFE ID already extracted
        (wins over the certificate). ``route`` names the server span.
        """
        remote_ip, remote_port = _split_address(client)
        local_ip, local_port = _split_address(server)
        return self._start(method, scheme, authority, path, list(headers), remote_ip,
                           remote_port, local_ip, local_port, peer_certificate, peer,
                           server_name, route)

    async def start_async(self, method: str, scheme: str, authority: str, path: str,
                          headers: Sequence[tuple[str, str]], *,
                          client: tuple[str, int] | str | None = None,
                          server: tuple[str, int] | str | None = None,
                          peer_certificate: PeerCertificate | None = None,
                          peer: str | None = None, server_name: str | None = None,
                          route: str | None = None) -> InboundRequest:
        """:meth:`start` for event loops: the security check runs in a worker thread
        when the policies can do I/O (JWKS download, CUSTOM authorizer)."""
        remote_ip, remote_port = _split_address(client)
        local_ip, local_port = _split_address(server)
        return await self._start_async(method, scheme, authority, path, list(headers),
                                       remote_ip, remote_port, local_ip, local_port,
                                       peer_certificate, peer, server_name, route)

    # The drivers of this package call these two directly: positional arguments, the
    # addresses already split, and ``headers`` a list of the caller's that the handler
    # may extend (what start() would copy).

    def _start(self, method: str, scheme: str, authority: str, path: str,
               headers: list[tuple[str, str]], remote_ip: str | None,
               remote_port: int | None, local_ip: str | None, local_port: int | None,
               cert: PeerCertificate | None, peer: str | None, server_name: str | None,
               route: str | None) -> InboundRequest:
        request = self._begin(method, scheme, authority, path, headers, remote_ip,
                              remote_port, local_ip, local_port, cert, peer, server_name,
                              route)
        if request.refused:
            return self._complete(request, None)
        try:
            decision = self._check(request)
        except BaseException:
            request._abort()
            raise
        return self._complete(request, decision)

    async def _start_async(self, method: str, scheme: str, authority: str, path: str,
                           headers: list[tuple[str, str]], remote_ip: str | None,
                           remote_port: int | None, local_ip: str | None,
                           local_port: int | None, cert: PeerCertificate | None,
                           peer: str | None, server_name: str | None,
                           route: str | None) -> InboundRequest:
        request = self._begin(method, scheme, authority, path, headers, remote_ip,
                              remote_port, local_ip, local_port, cert, peer, server_name,
                              route)
        if request.refused:
            return self._complete(request, None)
        try:
            if request._security.may_block:
                decision = await asyncio.to_thread(self._check, request)
            else:
                decision = self._check(request)
        except BaseException:
            request._abort()
            raise
        return self._complete(request, decision)

    def _start_soon(self, method: str, scheme: str, authority: str, path: str,
                    headers: list[tuple[str, str]], remote_ip: str | None,
                    remote_port: int | None, local_ip: str | None, local_port: int | None,
                    cert: PeerCertificate | None, peer: str | None,
                    server_name: str | None, route: str | None
                    ) -> InboundRequest | Coroutine[Any, Any, InboundRequest]:
        """For event loops: the request itself when its check cannot block, else the
        coroutine of :meth:`_start_async` to await. Most workloads' policies do no I/O,
        and then no coroutine is made and awaited on every request."""
        if self._security().may_block:
            return self._start_async(method, scheme, authority, path, headers, remote_ip,
                                     remote_port, local_ip, local_port, cert, peer,
                                     server_name, route)
        return self._start(method, scheme, authority, path, headers, remote_ip, remote_port,
                           local_ip, local_port, cert, peer, server_name, route)

    def _begin(self, method: str, scheme: str, authority: str, path: str,
               items: list[tuple[str, str]], remote_ip: str | None, remote_port: int | None,
               local_ip: str | None, local_port: int | None, cert: PeerCertificate | None,
               peer: str | None, server_name: str | None, route: str | None
               ) -> InboundRequest:
        """Identity, telemetry start and deadline: the request before its verdict."""
        compiled = self._security()
        removed: tuple[str, ...] = ()
        if peer is None and cert is not None:
            peer = peer_from_certificate(cert)
        # one pass over the headers for everything looked up by name below
        xfcc: list[str] = []
        timeouts: dict[str, str] = {}
        has_request_id = False
        for name, value in items:
            if name in _WATCHED:
                if name == XFCC_HEADER:
                    xfcc.append(value)
                elif name == REQUEST_ID:
                    has_request_id = True
                else:
                    timeouts.setdefault(name, value)
        if xfcc:
            if remote_ip in self.trusted:
                if peer is None:
                    try:
                        peer = xfcc_peer(xfcc)
                    except SecurityError as exc:
                        log.warning("ignoring X-Forwarded-Client-Cert from %s: %s",
                                    remote_ip, exc)
            else:  # anyone can write the header: only a trusted sidecar's counts
                items = [(k, v) for k, v in items if k != XFCC_HEADER]
                removed = (XFCC_HEADER,)
        port = self.port if self.port is not None else local_port
        policy = compiled.security.mtls
        mode = policy.mode_for(port) if port is not None else policy.mode
        refused = mode == "STRICT" and peer is None
        begun = None
        telemetry = self.mesh.telemetry
        added: tuple[tuple[str, str], ...] = ()
        if telemetry is not None:
            # Only what the app's context needs; the InboundCall that records the
            # request is built when it finishes, after the response. ``items`` is
            # shared: a request id made up here is appended for the record too.
            begun = telemetry._inbound_start(
                method, scheme, authority, path, items,
                None if remote_ip is None else (remote_ip, remote_port), route)
            if not has_request_id:
                added = ((REQUEST_ID, begun[0]),)  # Envoy adds it for the app too
        timeout = _timeout_from(timeouts) if timeouts else None
        return InboundRequest(self, compiled, method, scheme, authority, path, items, removed,
                              added, remote_ip, remote_port, local_ip, local_port, port, peer,
                              server_name, route, begun, refused, timeout)

    def _check(self, r: InboundRequest) -> InboundDecision:
        return r._security.security.check(
            method=r.method, host=r.authority, path=r.path, headers=r.headers, peer=r.peer,
            source_ip=r.remote_ip, remote_ip=r.remote_ip, destination_ip=r.local_ip,
            destination_port=r.port, sni=r.server_name)

    def _complete(self, r: InboundRequest, decision: InboundDecision | None
                  ) -> InboundRequest:
        """Fill in the verdict: a STRICT refusal (no decision), a denial or an allow."""
        r.decision = decision
        if decision is None:  # STRICT without a verified peer
            r.status, r.body, r.peer = 503, RESET_BODY, None
            r.response_headers = _local_reply_headers((), RESET_BODY)
        elif not decision.allowed:
            r.status, r.body = decision.status or 403, decision.body
            r.response_headers = _local_reply_headers(decision.response_headers, decision.body)
        else:
            r.allowed = True
            r.response_headers = tuple(decision.response_headers)
            r.query = decision.query
            if decision.headers_to_remove or decision.headers_to_set:
                drop = {n.lower() for n in decision.headers_to_remove}
                drop.update(n.lower() for n, _ in decision.headers_to_set)
                headers = [(k, v) for k, v in r.headers if k not in drop]
                headers.extend((k.lower(), v) for k, v in decision.headers_to_set)
                r.headers = headers
                r.removed = (*r.removed, *sorted(drop))
                r.added = (*((k, v) for k, v in r.added if k not in drop),
                           *((k.lower(), v) for k, v in decision.headers_to_set))
        return r


def _local_reply_headers(extra: Iterable[tuple[str, str]], body: bytes
                         ) -> tuple[tuple[str, str], ...]:
    """An Envoy local reply's head: the policy's headers, ``text/plain``, the length."""
    out = [(k.lower(), v) for k, v in extra if k.lower() != "content-length"]
    if not any(k == "content-type" for k, _ in out):
        out.append(("content-type", "text/plain"))
    out.append(("content-length", str(len(body))))
    return tuple(out)


class InboundRequest:
    """The verdict on one inbound request, and its recording until :meth:`finish`.

    Denied (``allowed`` False): answer ``status`` with ``body`` and
    ``response_headers`` (Envoy's local reply: ``401 Jwt verification fails``,
    ``403 RBAC: access denied``...), then call :meth:`finish`. ``refused`` means the
    port is STRICT and the request came without a verified peer (a sidecar would have
    closed the connection; a driver that can should do the same).

    Allowed: hand the app ``headers`` (the request's, with ``removed`` names taken out
    and ``added`` pairs put in: JWT outputs, XFCC from untrusted addresses removed) and,
    when not None, ``query`` as the new query string; add ``response_headers`` to the
    app's answer; run the app inside ``with request:``; then :meth:`finish`.

    The request as the handler saw it stays readable: ``method``, ``authority``,
    ``path``, ``remote_ip``, ``local_ip``, ``port``, ``server_name``.
    """

    __slots__ = ("_base", "_begun", "_context", "_deadline", "_entered", "_local_port",
                 "_remote_port", "_scheme", "_security", "added", "allowed",
                 "authority", "body", "decision", "finished", "handler", "headers",
                 "local_ip", "method", "path", "peer", "port", "query", "refused",
                 "remote_ip", "removed", "request_id", "response_headers", "route",
                 "server_name", "status", "timeout")

    def __init__(self, handler: InboundHandler, security: _Security, method: str,
                 scheme: str, authority: str, path: str, headers: list[tuple[str, str]],
                 removed: tuple[str, ...], added: tuple[tuple[str, str], ...],
                 remote_ip: str | None, remote_port: int | None, local_ip: str | None,
                 local_port: int | None, port: int | None, peer: str | None,
                 server_name: str | None, route: str | None, begun: InboundStart | None,
                 refused: bool, timeout: float | None) -> None:
        # Built by the handler before the verdict (positional: this runs on every
        # request, before the app), which InboundHandler._complete then fills in.
        self.handler = handler
        self._security = security
        self.method = method
        self._scheme = scheme
        self.authority = authority
        self.path = path
        """The request line's target, query string included."""
        self.headers = headers
        self.removed = removed
        self.added = added
        self.remote_ip = remote_ip
        self._remote_port = remote_port
        self.local_ip = local_ip
        self._local_port = local_port
        self.port = port
        """The workload port whose PeerAuthentication mode applied."""
        self.peer = peer
        """The caller's verified SPIFFE ID (None: plaintext, or not known)."""
        self.server_name = server_name
        self.route = route
        """The route template naming the server span; plugins set it after routing."""
        self._begun = begun  # None when the mesh has no telemetry
        self.request_id = begun[0] if begun is not None else None
        """The request's ``x-request-id`` (None when telemetry is off)."""
        self._context: otel_context.Context | None = None  # see recorder.attach
        self._base: otel_context.Context | None = None
        self.refused = refused
        self.timeout = timeout
        """The caller's remaining time in seconds, from its timeout header."""
        self.allowed = False
        self.status: int | None = None
        self.body = b""
        self.response_headers: tuple[tuple[str, str], ...] = ()
        self.query: str | None = None
        self.decision: InboundDecision | None = None
        self.finished = False
        self._entered: list[tuple[ContextTokens, AbstractContextManager[object] | None]] = []
        self._deadline: float | None = None  # monotonic; set on the first entry

    def _abort(self) -> None:
        """The check itself failed: record a 500 so the request is not lost."""
        self._record(500, (), 0, None, "-", "HTTP/1.1")

    def _record(self, status: int, response_headers: Sequence[tuple[str, str]],
                bytes_sent: int, bytes_received: int | None, flags: str, protocol: str
                ) -> None:
        """Record the request (after the response: nothing before it needs its record)."""
        begun, telemetry = self._begun, self.handler.mesh.telemetry
        if begun is None or telemetry is None:
            return
        peer = self.peer
        telemetry._record_inbound(
            begun, self.method, self._scheme, self.authority, self.path, self.headers,
            _source_of(peer),
            None if self.remote_ip is None else (self.remote_ip, self._remote_port),
            None if self.local_ip is None else (self.local_ip, self._local_port),
            self.server_name, "mutual_tls" if peer is not None else "none", status,
            response_headers, bytes_sent, bytes_received, flags, protocol)

    @property
    def principal(self) -> str | None:
        """The caller's Istio principal (``cluster.local/ns/NS/sa/SA``), if any."""
        return self.peer.removeprefix("spiffe://") if self.peer else None

    @property
    def request_principal(self) -> str | None:
        """``iss/sub`` of the JWT that authenticated the request, if any."""
        return self.decision.request_principal if self.decision is not None else None

    @property
    def wants_route(self) -> bool:
        """Whether this request's server span records (see :func:`route_wanted`)."""
        begun = self._begun
        span = begun[1] if begun is not None else None
        return span is not None and span.is_recording()

    @property
    def headers_changed(self) -> bool:
        """Whether the app must see other headers than the server parsed."""
        return bool(self.removed or self.added)

    def __enter__(self) -> InboundRequest:
        """Make the trace context, request id and deadline current (re-entrant: a
        streaming body is produced in several steps; the deadline is fixed on the first
        entry, so the caller's time is not counted again from each one)."""
        begun = self._begun
        tokens = attach(begun[1] if begun is not None else None, self, self)
        scope = None
        if self.timeout is not None:
            if self._deadline is None:  # counted from the first entry, not each one
                self._deadline = time.monotonic() + max(self.timeout, 0.0)
            scope = deadline_scope(None, at=self._deadline)
            scope.__enter__()
        self._entered.append((tokens, scope))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        tokens, scope = self._entered.pop()  # undone in the reverse order
        if scope is not None:
            scope.__exit__(exc_type, exc, tb)
        detach(tokens)

    def finish(self, status: int, response_headers: Sequence[tuple[str, str]] = (),
               bytes_sent: int = 0, *, bytes_received: int | None = None,
               flags: str | None = None, protocol: str = "HTTP/1.1") -> None:
        """Record the request once: metrics, access log, span end. ``status`` 0 means
        no response was sent (the client went away)."""
        if self.finished:
            return
        self.finish_lowered(status, [(k.lower(), v) for k, v in response_headers], bytes_sent,
                            bytes_received, flags, protocol)

    def finish_lowered(self, status: int, response_headers: list[tuple[str, str]],
                       bytes_sent: int, bytes_received: int | None, flags: str | None,
                       protocol: str) -> None:
        """:meth:`finish` for drivers whose response header names are in lower case
        already, every argument positional: the ASGI driver and the Django plugin call
        it after every response, where the keyword binding and the second lower-casing
        were a measurable share of the recording."""
        if self.finished:
            return
        self.finished = True
        begun = self._begun
        if begun is None:
            return
        if flags is None:
            flags = "-"
            authz = self.decision.authz if self.decision is not None else None
            if not self.allowed and authz is not None and authz.custom is not None:
                flags = "UAEX"  # Envoy: denied by the external authorization service
        span = begun[1]
        if self.route and span is not None and span.is_recording():
            span.update_name(self.route)
            span.set_attribute("http.route", self.route)
        self._record(status, response_headers, bytes_sent, bytes_received, flags, protocol)


__all__ = ["RESET_BODY", "InboundHandler", "InboundRequest", "PeerCertificate",
           "current_request", "peer_from_certificate", "route_wanted", "set_route"]
