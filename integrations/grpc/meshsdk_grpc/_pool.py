"""Real gRPC channels to the endpoints the mesh picks: one pooled channel per
(endpoint, authority, TLS plan), and the TLS bridge that checks a server's SPIFFE ID
before gRPC writes a byte to it.

Why a bridge: gRPC's own TLS (``grpc.ssl_channel_credentials``) verifies the chain and
then a *host name* against DNS SANs (``ssl_target_name_override`` splits the name at
``:`` and compares DNS names); it cannot match the ``spiffe://`` URI SAN that is a mesh
workload's only name, and gRPC Python exposes no verification callback. Checking the
peer after a call would already have sent the request to an impostor. So, for TLS
attempts, the gRPC channel talks HTTP/2 over a Unix socket in a private (0700)
directory to a small in-process forwarder that opens the TLS connection with Python's
``ssl`` (the workload certificate, ALPN ``h2``), runs the core's
:func:`~meshsdk.transport.tls.check_peer` on it and only then forwards bytes. A peer
that fails the check never sees the request: gRPC sees a failed connection (503 UF
for the flow, retriable). A Unix socket and not a loopback port: other local users
must not be able to borrow this workload's identity through the forwarder.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]

from meshsdk.config.hosts import join_host_port
from meshsdk.dataplane.flow import Attempt
from meshsdk.security.origination import TlsOrigination
from meshsdk.transport.tls import TlsError, check_peer, file_context

_READY = grpc.ChannelConnectivity.READY
_FAILED = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
_CHUNK = 65536


def channel_options(authority: str) -> list[tuple[str, Any]]:
    """Options of every pooled channel: the mesh decides retries and picks endpoints,
    so gRPC's own retries are off and each channel has its own subchannels (a fresh
    channel really reconnects instead of sharing a failed global subchannel)."""
    return [("grpc.default_authority", authority), ("grpc.enable_retries", 0),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100)]


class _Conn:
    """One pooled channel and its connectivity state, followed by a subscription."""

    def __init__(self, channel: Any, bridge: Bridge | None) -> None:
        self.channel = channel
        self.bridge = bridge
        self.state: Any = None
        self.cond = threading.Condition()
        channel.subscribe(self._changed, try_to_connect=True)

    def _changed(self, state: Any) -> None:
        with self.cond:
            self.state = state
            self.cond.notify_all()

    def ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until connected; False when the connection
        failed or took too long (the attempt's connect failure)."""
        with self.cond:
            if self.state is _READY:
                return True
        self.channel.subscribe(_ignore, try_to_connect=True)  # IDLE -> CONNECTING
        self.channel.unsubscribe(_ignore)
        with self.cond:
            return bool(self.cond.wait_for(
                lambda: self.state is _READY or self.state in _FAILED, timeout)
                and self.state is _READY)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.unsubscribe(self._changed)
        # gRPC's connectivity poller wakes up every 0.2 s and fails ("Channel closed!")
        # in its own thread if the channel was closed under it: close once it stopped.
        state = getattr(self.channel, "_connectivity_state", None)
        if state is not None and getattr(state, "polling", False):
            threading.Thread(target=self._close_when_idle, args=(state,), daemon=True,
                             name="meshsdk-grpc-close").start()
        else:
            self._close_now()

    def _close_when_idle(self, state: Any) -> None:
        deadline = time.monotonic() + 2.0
        while getattr(state, "polling", False) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._close_now()

    def _close_now(self) -> None:
        self.channel.close()
        if self.bridge is not None:
            self.bridge.close()


def _ignore(state: Any) -> None:
    """A subscription that only asks the channel to connect."""


class ChannelPool:
    """gRPC channels per endpoint; TLS ones through a :class:`Bridge`."""

    def __init__(self, identity: Any) -> None:
        self._identity = identity
        self._lock = threading.Lock()
        self._conns: dict[tuple[Any, ...], _Conn] = {}
        self._contexts: dict[Any, ssl.SSLContext] = {}
        self._closed = False

    def connect(self, attempt: Attempt) -> _Conn | None:
        """A connected channel for the attempt's endpoint, or None (connect failure)."""
        key = (attempt.address, attempt.port, attempt.authority, attempt.tls)
        with self._lock:
            conn = self._conns.get(key)
            if conn is None:
                try:
                    conn = self._conns[key] = self._open(attempt)
                except TlsError:
                    return None
        if conn.ready(attempt.connect_timeout):
            return conn
        with self._lock:  # a failed channel backs off; the next attempt gets a fresh one
            if self._conns.get(key) is conn:
                del self._conns[key]
        conn.close()
        return None

    def _open(self, attempt: Attempt) -> _Conn:
        target, bridge = self.target(attempt)
        return _Conn(grpc.insecure_channel(target, channel_options(attempt.authority)), bridge)

    def target(self, attempt: Attempt) -> tuple[str, Bridge | None]:
        """The gRPC target for an attempt: the endpoint itself, or for TLS a new
        bridge's socket (raises TlsError when TLS cannot be set up)."""
        plan = attempt.tls
        if plan is None:
            return join_host_port(attempt.address, attempt.port), None
        self._context(plan)  # fail now (no identity, unreadable files): connect failure
        bridge = Bridge(attempt.address, attempt.port, lambda: self._context(plan), plan,
                         attempt.connect_timeout)
        return f"unix:{bridge.path}", bridge

    def _context(self, plan: TlsOrigination) -> ssl.SSLContext:
        """The client context for a plan, ALPN ``h2``; the mesh one follows rotation."""
        if plan.mode != "ISTIO_MUTUAL":
            ctx = self._contexts.get(plan.context_key)
            if ctx is None:
                ctx = file_context(plan)
                ctx.set_alpn_protocols(["h2"])
                self._contexts[plan.context_key] = ctx
            return ctx
        pem = getattr(self._identity, "pem_credentials", None)
        if pem is None:
            raise TlsError("ISTIO_MUTUAL over gRPC needs a WorkloadIdentity "
                           "(Mesh(identity=...))")
        key_pem, chain_pem, roots_pem = pem()
        ctx = self._contexts.get(chain_pem)
        if ctx is None:
            ctx = mesh_client_context(key_pem, chain_pem, roots_pem)
            if len(self._contexts) > 16:
                self._contexts.clear()
            self._contexts[chain_pem] = ctx
        return ctx

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
            self._closed = True
        for conn in conns:
            conn.close()


def mesh_client_context(key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> ssl.SSLContext:
    """A client context with the workload certificate, verifying the server's chain
    against the trust bundle (its SPIFFE ID is checked by ``check_peer``), ALPN h2."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=roots_pem.decode("ascii"))
    directory = tempfile.mkdtemp(prefix="meshsdk-grpc-key-")  # 0700
    try:
        path = os.path.join(directory, "credentials.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem + chain_pem)
        ctx.load_cert_chain(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    ctx.set_alpn_protocols(["h2"])
    return ctx


class Bridge:
    """A Unix-socket listener forwarding each connection over verified TLS."""

    def __init__(self, address: str, port: int, context: Callable[[], ssl.SSLContext],
                 plan: TlsOrigination, connect_timeout: float) -> None:
        self._address, self._port = address, port
        self._context, self._plan = context, plan
        self._connect_timeout = connect_timeout
        self._dir = tempfile.mkdtemp(prefix="meshsdk-grpc-")  # 0700: ours only
        self.path = os.path.join(self._dir, "bridge.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="meshsdk-grpc-bridge",
                                        daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name="meshsdk-grpc-bridge-conn").start()

    def _serve(self, client: socket.socket) -> None:
        upstream: ssl.SSLSocket | None = None
        try:
            raw = socket.create_connection((self._address, self._port),
                                           timeout=self._connect_timeout)
            sni = self._plan.sni or None
            upstream = self._context().wrap_socket(raw, server_hostname=sni)
            if check_peer(upstream, self._plan) is not None:
                return  # the wrong server: close before a byte of the request is sent
            upstream.settimeout(None)
            with self._lock:
                if self._stop.is_set():
                    return
                self._open.update((client, upstream))
            _pump(client, upstream)
        except (OSError, TlsError):
            return
        finally:
            with self._lock:
                self._open.discard(client)
                if upstream is not None:
                    self._open.discard(upstream)
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2.0)
        shutil.rmtree(self._dir, ignore_errors=True)


def _pump(client: socket.socket, upstream: ssl.SSLSocket) -> None:
    """Copy bytes both ways in one thread until either side closes (an ``SSLSocket``
    must not be read and written from two threads at once)."""
    with selectors.DefaultSelector() as sel:
        sel.register(client, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fileobj is client:
                    data = client.recv(_CHUNK)
                    if not data:
                        return
                    upstream.sendall(data)
                else:
                    data = upstream.recv(_CHUNK)
                    if not data:
                        return
                    while upstream.pending():
                        data += upstream.recv(upstream.pending())
                    client.sendall(data)
