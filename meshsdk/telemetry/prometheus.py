"""Serving a ``prometheus_client`` registry for scraping: WSGI and ASGI apps to mount in
the application, and a standalone HTTP endpoint.

The text is written by ``prometheus_client``: the Prometheus text format by default,
OpenMetrics when the scraper's ``Accept`` asks for it, gzip when ``Accept-Encoding``
allows it. Every path serves the metrics (``/favicon.ico`` aside), so both ``/metrics``
and Istio's ``/stats/prometheus`` (the path of its ``envoy-stats`` scrape jobs and pod
annotations) work unchanged.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any, Final
from wsgiref.simple_server import WSGIServer
from wsgiref.types import WSGIApplication

from prometheus_client import make_asgi_app, make_wsgi_app, start_http_server
from prometheus_client.registry import CollectorRegistry

ISTIO_PROMETHEUS_PORT: Final = 15090
"""The port of the Istio proxy's Prometheus endpoint (``/stats/prometheus``), which
Istio's scrape configuration and ``prometheus.io/port`` annotations point at; the
default of :func:`serve_metrics`, so a workload moved from a sidecar to the SDK is
scraped where it was."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def metrics_wsgi_app(registry: CollectorRegistry) -> WSGIApplication:
    """A WSGI app serving ``registry`` (mount it at ``/metrics``)."""
    app: WSGIApplication = make_wsgi_app(registry)
    return app


def metrics_asgi_app(registry: CollectorRegistry) -> ASGIApp:
    """An ASGI app serving ``registry`` (mount it at ``/metrics``).

    Beside ``prometheus_client``'s app, which handles only ``http`` scopes, it answers
    the ``lifespan`` protocol (so it can run as the server's top-level app) and closes a
    ``websocket`` scope."""
    serve: ASGIApp = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await serve(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            raise ValueError(f"metrics app: unsupported ASGI scope type {kind!r}")

    return app


_LOOPBACK: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class MetricsServer:
    """A running metrics endpoint (see :func:`serve_metrics`): a threaded HTTP server on
    a daemon thread. Close it, or use it as a context manager."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port actually bound (the chosen one when 0 was asked)."""
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        """``http://host:port/metrics``; a wildcard host is given as loopback, which a
        local client can connect to."""
        host = self._local_host()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def _local_host(self) -> str:
        return _LOOPBACK.get(self.host, self.host)

    def close(self) -> None:
        """Stop serving, release the socket and join the thread; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        # serve_forever looks at the shutdown flag between polls of 0.5 s; connecting
        # wakes it, so close() returns in milliseconds rather than up to half a second
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        while stopper.is_alive():
            try:
                with socket.create_connection((self._local_host(), self.port), timeout=1):
                    pass
            except OSError:
                pass
            stopper.join(0.02)
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<MetricsServer {self.url} {state}>"


def serve_metrics(registry: CollectorRegistry, port: int = ISTIO_PROMETHEUS_PORT,
                  host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` over HTTP on ``host:port`` (port 0: any free port) from a
    background thread, with ``prometheus_client``'s own server.

    The default port is Istio's Prometheus port, 15090. The default host is loopback:
    pass ``"0.0.0.0"`` (or ``"::"``) for a Prometheus outside the pod or host to scrape
    it.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread, host)


__all__ = [
    "ISTIO_PROMETHEUS_PORT", "ASGIApp", "MetricsServer", "metrics_asgi_app",
    "metrics_wsgi_app", "serve_metrics",
]
