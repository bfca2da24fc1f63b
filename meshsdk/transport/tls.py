"""Outbound TLS for the drivers: SSL contexts and connection pools per
:class:`~meshsdk.security.origination.TlsOrigination`, and the check of the server's
identity *during* connection setup.

Python's ``ssl`` verifies a chain and a DNS host name, but cannot check a SPIFFE URI
SAN (or an arbitrary ``subjectAltNames`` list) inside the handshake. Checking after a
response arrived would already have sent the request to an impostor, so the check
sits in httpcore's network layer: a backend whose streams verify the peer right after
``start_tls`` and fail the connection (a connect failure: 503 ``UF``) before any
request byte is written. Each pool has its own backend, told which names its SNIs
must present.

Pools are keyed by what distinguishes their SSL context; the workload's mesh context
changes object when its certificate rotates, so connections opened after a rotation
use a new pool with the new certificate while open ones finish on the old pool.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import httpcore
from cryptography import x509

from meshsdk.security.origination import TlsOrigination
from meshsdk.security.spiffe import spiffe_ids_of

_KEEP_GENERATIONS = 3
"""Pools of older mesh certificates kept open (their connections may be in use)."""


class ClientCredentials(Protocol):
    """What outbound mTLS needs of a workload identity."""

    def client_context(self) -> ssl.SSLContext: ...


class TlsError(Exception):
    """A TLS connection cannot be opened as configured (becomes a connect failure)."""


# --- verifying the peer -----------------------------------------------------------------


def _peer_certificate(ssl_object: Any) -> x509.Certificate | None:
    """The peer's certificate (the one the handshake verified), or None."""
    der = ssl_object.getpeercert(True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def _peer_names(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    """(DNS names, URIs, IP addresses) of the certificate's SAN extension."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], []
    return (san.get_values_for_type(x509.DNSName),
            san.get_values_for_type(x509.UniformResourceIdentifier),
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


def _dns_match(pattern: str, name: str) -> bool:
    """RFC 6125 matching: exact, or one left-most ``*`` label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def check_peer(ssl_object: Any, plan: TlsOrigination) -> str | None:
    """Why the peer of ``ssl_object`` is not the server ``plan`` expects, or None."""
    if plan.insecure_skip_verify:
        return None
    cert = _peer_certificate(ssl_object)
    if plan.mode == "ISTIO_MUTUAL":
        spiffe = spiffe_ids_of(cert) if cert is not None else []
        if not spiffe:
            return "peer certificate has no SPIFFE identity"
        if plan.subject_alt_names and not set(spiffe) & plan.subject_alt_names:
            return (f"peer identity {', '.join(spiffe)} is not one the service runs as "
                    f"({', '.join(sorted(plan.subject_alt_names))})")
        return None
    dns, uris, ips = _peer_names(cert) if cert is not None else ([], [], [])
    wanted = plan.subject_alt_names or frozenset({plan.sni} if plan.sni else ())
    for name in wanted:
        if name in uris or any(_dns_match(d, name) for d in dns) or _ip_equal(name, ips):
            return None
    if not wanted:
        return None
    return (f"server certificate names {', '.join(dns + uris + ips) or 'nothing'}, "
            f"expected {', '.join(sorted(wanted))}")


def _ip_equal(name: str, ips: Iterable[str]) -> bool:
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    return any(ipaddress.ip_address(ip) == addr for ip in ips)


class _VerifyingStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream,
                 expected: Callable[[str | None], TlsOrigination | None]) -> None:
        self._inner = inner
        self._expected = expected

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(ssl_context, server_hostname, timeout)
        plan = self._expected(server_hostname)
        problem = check_peer(stream.get_extra_info("ssl_object"), plan) if plan else None
        if problem is not None:
            stream.close()
            raise httpcore.ConnectError(f"TLS peer verification failed: {problem}")
        return stream


class _VerifyingBackend(httpcore.NetworkBackend):
    def __init__(self, expected: Callable[[str | None], TlsOrigination | None]) -> None:
        self._inner = httpcore.SyncBackend()
        self._expected = expected

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _VerifyingStream(self._inner.connect_tcp(host, port, timeout, local_address,
                                                        socket_options), self._expected)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncVerifyingStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream,
                 expected: Callable[[str | None], TlsOrigination | None]) -> None:
        self._inner = inner
        self._expected = expected

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        plan = self._expected(server_hostname)
        problem = check_peer(stream.get_extra_info("ssl_object"), plan) if plan else None
        if problem is not None:
            await stream.aclose()
            raise httpcore.ConnectError(f"TLS peer verification failed: {problem}")
        return stream


class _AsyncVerifyingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, expected: Callable[[str | None], TlsOrigination | None]) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._expected = expected

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address,
                                               socket_options)
        return _AsyncVerifyingStream(stream, self._expected)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# --- contexts and pools --------------------------------------------------------------


def file_context(plan: TlsOrigination) -> ssl.SSLContext:
    """The client context of a SIMPLE or MUTUAL origination (files from the DR)."""
    try:
        ctx = ssl.create_default_context(cafile=plan.ca_certificates)
        if plan.mode == "MUTUAL":
            if not plan.client_certificate or not plan.private_key:
                raise TlsError("tls.mode MUTUAL needs clientCertificate and privateKey")
            ctx.load_cert_chain(plan.client_certificate, plan.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the DestinationRule's TLS files: {exc}") from exc
    ctx.check_hostname = False  # names are checked by check_peer (subjectAltNames or SNI)
    if plan.insecure_skip_verify:
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _Pools:
    """What the sync and async connectors share: contexts, and pools per context."""

    def __init__(self, identity: ClientCredentials | None) -> None:
        self._identity = identity
        self._lock = threading.Lock()
        self._file_contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self._expected: dict[str, TlsOrigination] = {}  # SNI -> what it must present
        self._pools: dict[tuple[Any, ...], Any] = {}
        self._mesh_generations: list[tuple[Any, ...]] = []

    def _expect(self, server_hostname: str | None) -> TlsOrigination | None:
        return self._expected.get(server_hostname or "")

    def _context(self, plan: TlsOrigination) -> ssl.SSLContext:
        if plan.mode == "ISTIO_MUTUAL":
            if self._identity is None:
                raise TlsError("ISTIO_MUTUAL needs a workload identity (Mesh(identity=...))")
            return self._identity.client_context()
        key = plan.context_key
        ctx = self._file_contexts.get(key)
        if ctx is None:
            ctx = self._file_contexts[key] = file_context(plan)
        return ctx

    def _pool_for(self, plan: TlsOrigination, make: Callable[[ssl.SSLContext], Any]
                  ) -> tuple[Any, list[Any]]:
        """The pool for ``plan`` and pools to close (older certificate generations)."""
        ctx = self._context(plan)
        key = (plan.context_key, id(ctx))
        if plan.sni:
            self._expected[plan.sni] = plan
        pool = self._pools.get(key)
        if pool is not None:
            return pool, []
        retired: list[Any] = []
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = make(ctx)
                if plan.mode == "ISTIO_MUTUAL":
                    self._mesh_generations.append(key)
                    while len(self._mesh_generations) > _KEEP_GENERATIONS:
                        retired.append(self._pools.pop(self._mesh_generations.pop(0)))
        return pool, retired


class TlsConnector(_Pools):
    """httpcore pools for the sync driver's TLS attempts."""

    def pool_for(self, plan: TlsOrigination) -> httpcore.ConnectionPool:
        pool, retired = self._pool_for(plan, lambda ctx: httpcore.ConnectionPool(
            ssl_context=ctx, max_connections=100, max_keepalive_connections=20,
            keepalive_expiry=5.0, network_backend=_VerifyingBackend(self._expect)))
        for old in retired:
            old.close()
        return pool  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


class AsyncTlsConnector(_Pools):
    """httpcore pools for the async driver's TLS attempts."""

    async def pool_for(self, plan: TlsOrigination) -> httpcore.AsyncConnectionPool:
        pool, retired = self._pool_for(plan, lambda ctx: httpcore.AsyncConnectionPool(
            ssl_context=ctx, max_connections=100, max_keepalive_connections=20,
            keepalive_expiry=5.0, network_backend=_AsyncVerifyingBackend(self._expect)))
        for old in retired:
            await old.aclose()
        return pool  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


__all__ = ["AsyncTlsConnector", "ClientCredentials", "TlsConnector", "TlsError",
           "check_peer", "file_context"]
