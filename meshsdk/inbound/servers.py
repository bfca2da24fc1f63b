"""Mesh mTLS for standard app servers that terminate TLS themselves (no sidecar).

Two servers, one per family, each checked against its source for how it exposes the
peer certificate and when it builds its SSL context:

* **uvicorn** (ASGI): :func:`uvicorn_config` builds a ``uvicorn.Config`` whose SSL
  context requests client certificates per PeerAuthentication (STRICT: required,
  PERMISSIVE: optional) and follows the rotating :class:`WorkloadIdentity`: the
  context's SNI callback, which OpenSSL runs for every ClientHello, switches the
  connection to the identity's *current* context, so each new handshake presents the
  current certificate and trusts the current bundle. uvicorn does not fill the ASGI
  TLS extension, so the config uses a small subclass of uvicorn's h11 protocol that
  reads the verified peer certificate once per connection and puts it in
  ``scope["extensions"]["tls"]["client_cert_chain"]``, where
  :class:`~meshsdk.inbound.asgi.MeshASGIMiddleware` reads it.
  :class:`UvicornThread` runs such a server in a background thread (tests, tools).
* **gunicorn** (WSGI): :func:`gunicorn_settings` returns settings for a gunicorn
  config file. gunicorn calls its ``ssl_context`` hook for every connection it wraps
  (sync and gthread workers), so the hook returns the identity's current server
  context, after giving a due rotation its chance (worker processes are forked
  without the identity's rotation thread). gunicorn puts the TLS socket in
  ``environ["gunicorn.socket"]``; :class:`~meshsdk.inbound.wsgi.MeshWSGIMiddleware`
  reads the peer certificate from it.

PERMISSIVE here means TLS with an optional client certificate: these servers cannot
tell TLS from plaintext on one port the way a sidecar does. DISABLE serves plaintext.
Neither server is a dependency of meshsdk: both are imported only inside these helpers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from meshsdk.security.identity import ALPN_PROTOCOLS, WorkloadIdentity
from meshsdk.security.peer_authn import Mode

if TYPE_CHECKING:
    import uvicorn

    from meshsdk.mesh import Mesh

log = logging.getLogger("meshsdk.inbound")

_Scope = MutableMapping[str, Any]
_App = Callable[[_Scope, Any, Any], Awaitable[None]]


def _identity_of(mesh: Mesh | None, identity: WorkloadIdentity | None) -> WorkloadIdentity:
    found = identity if identity is not None else (mesh.identity if mesh else None)
    if not isinstance(found, WorkloadIdentity):
        raise TypeError("mesh mTLS needs a WorkloadIdentity: pass identity=, or build the "
                        "mesh with identity=WorkloadIdentity...")
    return found


def _mode_of(mesh: Mesh | None, mode: Mode | None, port: int) -> Mode:
    if mode is not None:
        return mode
    if mesh is None:
        return "STRICT"
    from meshsdk.inbound.handler import InboundHandler
    return InboundHandler(mesh).mode_for(port or None)


def rotating_server_context(identity: WorkloadIdentity, *, require_client_cert: bool
                            ) -> ssl.SSLContext:
    """A server SSL context that always hands out ``identity``'s current certificate.

    Its SNI callback (run for every ClientHello, with or without SNI) switches the
    connection to ``identity.server_context(...)``, which the identity rebuilds after a
    rotation; open connections keep the certificate they were made with. The
    verification mode is this context's: client certificates are required or optional
    and always verified against the trust bundle.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # the peer identity is kept per connection
    ctx.load_verify_locations(cadata=identity.roots_pem.decode("ascii"))
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))

    def switch(sslobj: ssl.SSLObject, server_name: str | None,
               base: ssl.SSLContext) -> int | None:
        try:
            sslobj.context = identity.server_context(require_client_cert=require_client_cert)
        except Exception:  # a closed identity: fail this handshake, not the server
            log.exception("no server certificate for the handshake")
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    ctx.sni_callback = switch
    return ctx


# -- uvicorn ---------------------------------------------------------------------------


class _TlsApp:
    """Adds one connection's ASGI TLS extension to each scope it serves."""

    __slots__ = ("app", "tls")

    def __init__(self, app: _App, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            extensions = scope.get("extensions")
            if extensions is None:
                extensions = scope["extensions"] = {}
            extensions["tls"] = self.tls
        await self.app(scope, receive, send)


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI TLS extension of a connection: the verified client certificate (PEM)."""
    der = ssl_object.getpeercert(True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    cipher = ssl_object.cipher()
    return {"server_cert": None, "client_cert_chain": chain, "client_cert_name": None,
            "client_cert_error": None, "tls_version": None,
            "cipher_suite": None, "meshsdk.cipher": cipher[0] if cipher else None}


_protocol_class: type[Any] | None = None


def uvicorn_protocol() -> type[Any]:
    """uvicorn's h11 protocol, with the ASGI TLS extension filled per connection."""
    global _protocol_class
    if _protocol_class is None:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        class MeshH11Protocol(H11Protocol):
            """H11Protocol + ``scope["extensions"]["tls"]`` (uvicorn leaves it out)."""

            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                ssl_object = transport.get_extra_info("ssl_object")
                if ssl_object is not None:
                    self.app = _TlsApp(self.app, tls_extension(ssl_object))

        _protocol_class = MeshH11Protocol
    return _protocol_class


def uvicorn_config(app: Any, mesh: Mesh | None = None, *,
                   identity: WorkloadIdentity | None = None, mode: Mode | None = None,
                   host: str = "127.0.0.1", port: int = 0, **options: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``app`` with mesh mTLS.

    ``identity`` defaults to ``mesh.identity``; ``mode`` to the mesh's
    PeerAuthentication mode for ``port``. ``options`` go to ``uvicorn.Config``
    (``log_level``, ``lifespan``...). Wrap ``app`` in ``MeshASGIMiddleware`` yourself.
    """
    import uvicorn

    mode = _mode_of(mesh, mode, port)
    options.setdefault("lifespan", "off")
    if mode == "DISABLE":
        return uvicorn.Config(app, host=host, port=port, http=uvicorn_protocol(), **options)
    ident = _identity_of(mesh, identity)
    require = mode == "STRICT"

    def factory(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
                ) -> ssl.SSLContext:
        return rotating_server_context(ident, require_client_cert=require)

    return uvicorn.Config(app, host=host, port=port, http=uvicorn_protocol(),
                          ssl_context_factory=factory, **options)


class UvicornThread:
    """A uvicorn server in a daemon thread with its own event loop, on a port bound
    before it starts (``port=0``: a free one). ``stop()`` (or ``with``) shuts it down
    and joins the thread."""

    def __init__(self, config: uvicorn.Config, *, start_timeout: float = 10.0) -> None:
        import uvicorn

        self.config = config
        self.server = uvicorn.Server(config)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((config.host, config.port))
        self.port: int = self.socket.getsockname()[1]
        self.host: str = config.host
        self.scheme = "http" if config.ssl_context_factory is None else "https"
        self._timeout = start_timeout
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"uvicorn:{self.port}")
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.socket]))
        except BaseException as exc:  # reported by start()
            self._error = exc

    def url(self, path: str = "/") -> str:
        """``https://127.0.0.1:port/path``."""
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def start(self) -> UvicornThread:
        """Start serving; returns once uvicorn is accepting (RuntimeError otherwise)."""
        self._thread.start()
        end = time.monotonic() + self._timeout
        while not self.server.started and self._thread.is_alive():
            if time.monotonic() > end:
                break
            time.sleep(0.01)
        if not self.server.started:
            self.stop()
            raise RuntimeError(f"uvicorn did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit, wait for the thread, close the socket."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(self._timeout)
        self.socket.close()

    def __enter__(self) -> UvicornThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- gunicorn --------------------------------------------------------------------------


def gunicorn_settings(mesh: Mesh | None = None, *, identity: WorkloadIdentity | None = None,
                      mode: Mode | None = None, port: int = 0,
                      directory: str | None = None) -> dict[str, Any]:
    """Settings for a gunicorn config file that serve mesh mTLS::

        # gunicorn.conf.py
        identity = WorkloadIdentity.from_files(...)
        globals().update(gunicorn_settings(identity=identity, mode="STRICT"))

    ``ssl_context`` is gunicorn's per-connection hook: it returns the identity's
    current server context (requiring client certificates under STRICT), rotating
    first when due. ``certfile`` only switches gunicorn's TLS on: it is the public
    chain, written to ``directory`` (a new private temporary one by default); the
    private key stays in memory. DISABLE returns no TLS settings.
    """
    mode = _mode_of(mesh, mode, port)
    if mode == "DISABLE":
        return {}
    ident = _identity_of(mesh, identity)
    require = mode == "STRICT"
    where = directory or tempfile.mkdtemp(prefix="meshsdk-gunicorn-")
    certfile = os.path.join(where, "cert-chain.pem")
    with open(certfile, "wb") as fh:
        fh.write(ident.chain_pem)

    def ssl_context(config: Any, default_factory: Callable[[], ssl.SSLContext]
                    ) -> ssl.SSLContext:
        try:
            ident.maybe_rotate()
        except Exception:  # keep serving on the current certificate; retried next time
            log.exception("workload identity rotation failed")
        return ident.server_context(require_client_cert=require)

    return {"certfile": certfile, "ssl_context": ssl_context,
            "cert_reqs": ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL,
            "do_handshake_on_connect": True}


__all__ = ["UvicornThread", "gunicorn_settings", "rotating_server_context", "tls_extension",
           "uvicorn_config", "uvicorn_protocol"]
