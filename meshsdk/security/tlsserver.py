"""An inbound HTTP/1.1 server with Istio's PeerAuthentication modes, for tests and the
sidecar.

Modes (``PeerAuthentication.mtls.mode``):

* ``STRICT``: mTLS only. The first bytes are peeked; a connection that does not start
  with a TLS record is closed without a response. The client must present a
  certificate the trust bundle verifies.
* ``PERMISSIVE``: mTLS *or* plaintext, told apart by peeking the first bytes
  (:func:`detect_tls`, like Envoy's TLS inspector). Decision: a TLS connection must
  still present a client certificate. Istio's sidecar routes TLS that is not mesh mTLS
  to the application untouched (it never terminates one-way TLS with the workload's
  certificate), so a TLS client without a mesh certificate cannot be accepted as a
  mesh peer; here, with no application TLS behind the server, it is rejected in the
  handshake.
* ``DISABLE``: plaintext only; bytes are handed to the HTTP parser as they come.

The server context is fetched from the identity for every connection, so a rotation
applies to the next connection while open ones keep their certificate. The user
callback gets the peer's SPIFFE ID (None for plaintext).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from meshsdk.security.errors import SecurityError
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.security.spiffe import peer_spiffe_id

log = logging.getLogger("meshsdk.security.tlsserver")

Mode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
MODES: tuple[Mode, ...] = ("STRICT", "PERMISSIVE", "DISABLE")
Handler = Callable[[str, str, Mapping[str, str], str | None], tuple[int, bytes | str]]
"""``handler(method, path, headers, peer_spiffe) -> (status, body)``; header names are
lowercase; ``peer_spiffe`` is None for plaintext connections."""

_TLS_HANDSHAKE = 0x16
_TLS_MAJOR = 0x03
_PEEK_BYTES = 2
_MAX_BODY = 16 * 1024 * 1024


def detect_tls(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes are a TLS record carrying a handshake (a
    ClientHello): content type 0x16, protocol major version 3. Needs two bytes."""
    return (len(first_bytes) >= _PEEK_BYTES and first_bytes[0] == _TLS_HANDSHAKE
            and first_bytes[1] == _TLS_MAJOR)


def default_handler(method: str, path: str, headers: Mapping[str, str],
                    peer_spiffe: str | None) -> tuple[int, bytes | str]:
    """Echo what the server saw as JSON (method, path, peer identity)."""
    return 200, json.dumps({"method": method, "path": path, "peer": peer_spiffe})


def _peek(sock: socket.socket, count: int, timeout: float) -> bytes:
    """Up to ``count`` bytes the peer sent, left in the socket buffer; fewer on EOF or
    when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    while True:
        data = sock.recv(count, socket.MSG_PEEK)
        if len(data) >= count or not data or time.monotonic() >= deadline:
            return data
        time.sleep(0.001)


class _RequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every method goes to the user callback."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def __init__(self, request: Any, client_address: Any, server: _Server,
                 peer_spiffe: str | None) -> None:
        self.peer_spiffe = peer_spiffe
        super().__init__(request, client_address, server)

    def _dispatch(self) -> None:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._respond(411, b"chunked request bodies are not supported; send "
                          b"Content-Length\n", close=True)
            return
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > _MAX_BODY:
            self._respond(400, b"bad Content-Length\n", close=True)
            return
        if length:
            self.rfile.read(length)
        try:
            status, body = self.server.user_handler(self.command, self.path, headers,
                                                    self.peer_spiffe)
        except Exception as exc:
            log.exception("handler failed for %s %s", self.command, self.path)
            status, body = 500, f"handler error: {type(exc).__name__}\n"
        self._respond(status, body.encode() if isinstance(body, str) else body)

    def _respond(self, status: int, body: bytes, *, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: MeshTLSServer) -> None:
        self.owner = owner
        self.user_handler = owner.handler
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, BaseHTTPRequestHandler)  # unused: see finish_request

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Per connection, in its own thread: pick TLS or plaintext, then serve HTTP."""
        owner = self.owner
        sock: socket.socket = request
        conn: socket.socket = sock
        with self.connections_lock:
            self.connections.add(sock)
        try:
            # headers and body go out as separate writes: without NODELAY, Nagle and
            # delayed ACKs add ~40 ms to every keep-alive response
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer: str | None = None
            if owner.mode != "DISABLE":
                is_tls = detect_tls(_peek(sock, _PEEK_BYTES, owner.handshake_timeout))
                if not is_tls and owner.mode == "STRICT":
                    log.debug("STRICT: closing plaintext connection from %s", client_address)
                    return
                if is_tls:
                    assert owner.identity is not None
                    ctx = owner.identity.server_context(require_client_cert=True)
                    sock.settimeout(owner.handshake_timeout)
                    conn = ctx.wrap_socket(sock, server_side=True)
                    with self.connections_lock:
                        self.connections.discard(sock)
                        self.connections.add(conn)
                    peer = peer_spiffe_id(conn)
            conn.settimeout(owner.idle_timeout)
            _RequestHandler(conn, client_address, self, peer)
        except (OSError, ssl.SSLError, SecurityError) as exc:
            log.debug("connection from %s dropped: %s", client_address, exc)
        finally:
            with self.connections_lock:
                self.connections.discard(conn)
                self.connections.discard(sock)
            if conn is not sock:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error serving %s", client_address, exc_info=True)

    def close_connections(self) -> None:
        with self.connections_lock:
            conns, self.connections = list(self.connections), set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


class MeshTLSServer:
    """A threaded HTTP/1.1 server on ``host`` (127.0.0.1) in one PeerAuthentication mode.

    ``port=0`` picks a free port (see :attr:`port`). Use as a context manager, or call
    :meth:`start` and :meth:`stop`. ``identity`` is required unless ``mode`` is
    ``DISABLE``.
    """

    def __init__(self, identity: WorkloadIdentity | None, handler: Handler | None = None, *,
                 mode: Mode = "STRICT", host: str = "127.0.0.1", port: int = 0,
                 handshake_timeout: float = 5.0, idle_timeout: float = 30.0) -> None:
        if mode not in MODES:
            raise SecurityError(f"MeshTLSServer: mode must be one of {', '.join(MODES)}, "
                                f"got {mode!r}")
        if identity is None and mode != "DISABLE":
            raise SecurityError(f"MeshTLSServer: mode {mode} needs a workload identity")
        self.identity = identity
        self.handler: Handler = handler or default_handler
        self.mode: Mode = mode
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise SecurityError("MeshTLSServer: not started")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """The bound address."""
        return self._address[0]

    def url(self, path: str = "/") -> str:
        """``https://host:port/path`` (``http://`` in DISABLE mode)."""
        scheme = "http" if self.mode == "DISABLE" else "https"
        return f"{scheme}://{self.host}:{self.port}{path}"

    def start(self) -> MeshTLSServer:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"MeshTLSServer:{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections and the listening socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> MeshTLSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["MODES", "Handler", "MeshTLSServer", "Mode", "default_handler", "detect_tls"]
