"""The mesh's inbound side: one protocol-neutral handler and thin WSGI/ASGI drivers.

* :class:`InboundHandler` / :class:`InboundRequest` (:mod:`.handler`): identity,
  PeerAuthentication, JWT, AuthorizationPolicy, telemetry and deadline for one request;
* :class:`MeshWSGIMiddleware` (:mod:`.wsgi`), :class:`MeshASGIMiddleware` (:mod:`.asgi`);
* :mod:`.xfcc`: Envoy's ``X-Forwarded-Client-Cert``, trusted only from sidecar addresses;
* :mod:`.servers`: mesh mTLS for uvicorn and gunicorn (imported lazily, not re-exported
  here, so importing meshsdk never imports a server).
"""

from meshsdk.inbound.asgi import MeshASGIMiddleware
from meshsdk.inbound.handler import (
    InboundHandler,
    InboundRequest,
    current_request,
    peer_from_certificate,
    route_wanted,
    set_route,
)
from meshsdk.inbound.wsgi import MeshWSGIMiddleware
from meshsdk.inbound.xfcc import XfccElement, XfccError, parse_xfcc, xfcc_peer

__all__ = ["InboundHandler", "InboundRequest", "MeshASGIMiddleware", "MeshWSGIMiddleware",
           "XfccElement", "XfccError", "current_request", "parse_xfcc", "peer_from_certificate",
           "route_wanted", "set_route", "xfcc_peer"]
