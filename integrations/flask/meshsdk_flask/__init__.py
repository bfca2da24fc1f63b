"""meshsdk for Flask: the mesh's inbound side as a Flask extension.

    from flask import Flask
    from meshsdk_flask import MeshFlask

    app = Flask(__name__)
    mesh_ext = MeshFlask(app, mesh=mesh)     # or: mesh_ext = MeshFlask(mesh=mesh)
                                             #     mesh_ext.init_app(app)

Every request then goes through the core's WSGI adapter
(:class:`meshsdk.inbound.wsgi.MeshWSGIMiddleware`): the caller's identity from mesh
mTLS, PeerAuthentication, RequestAuthentication (401) and AuthorizationPolicy (403),
the server span, Istio's ``reporter=destination`` metrics and the access log, with
the trace context and the caller's deadline current in the view, so ``mesh.client()``
calls made there continue the trace. This package adds only what Flask knows: the
route's name (the URL rule, e.g. ``/reviews/<int:product_id>``) for the server span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, request

from meshsdk.errors import UsageError
from meshsdk.inbound.handler import InboundHandler, InboundRequest
from meshsdk.inbound.wsgi import REQUEST_KEY, Environ, MeshWSGIMiddleware
from meshsdk.mesh import Mesh

EXTENSION = "meshsdk"
"""The key of this extension's state in ``app.extensions``."""


@dataclass(frozen=True, slots=True)
class MeshState:
    """What :meth:`MeshFlask.init_app` installed on one app."""

    mesh: Mesh
    handler: InboundHandler


class MeshFlask:
    """The Flask extension (the usual ``init_app`` pattern; one instance may serve
    several apps).

    ``mesh`` is the workload's :class:`~meshsdk.Mesh`; ``options`` go to the core's
    :class:`~meshsdk.inbound.handler.InboundHandler` (``port``, ``trusted_proxies``,
    ``jwks``, ``audit``, ``custom``...). Both may also be given to :meth:`init_app`,
    which wins.
    """

    def __init__(self, app: Flask | None = None, *, mesh: Mesh | None = None,
                 **options: Any) -> None:
        self.mesh = mesh
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, mesh: Mesh | None = None, **options: Any) -> None:
        """Put the mesh's inbound adapter around ``app``'s WSGI callable and name routes."""
        mesh = mesh if mesh is not None else self.mesh
        if mesh is None:
            raise UsageError("MeshFlask needs a mesh: MeshFlask(app, mesh=...) or "
                             "init_app(app, mesh=...)")
        if EXTENSION in app.extensions:
            raise UsageError(f"MeshFlask is already installed on app {app.name!r}")
        handler = InboundHandler(mesh, **{**self.options, **options})
        # Flask's and the core's WSGI signatures differ only in typing detail
        inner: Any = app.wsgi_app
        wrapped: Any = MeshWSGIMiddleware(inner, handler=handler, route=_url_rule)
        app.wsgi_app = wrapped  # type: ignore[method-assign]
        app.extensions[EXTENSION] = MeshState(mesh, handler)


def _url_rule(environ: Environ) -> str | None:
    """The URL rule Flask matched for the request in ``environ``, to name its server span.

    The core calls this only for a span that records, when the response starts: Flask
    has matched the URL when it pushed the request context (before any hook ran, so a
    hook answering early still gets a name) and keeps its request in the environ until
    the context is popped, after ``start_response``. A before-request hook would cost
    every request a few microseconds before the response; this costs the unsampled
    ones nothing."""
    found = environ.get("werkzeug.request")
    rule = getattr(found, "url_rule", None)
    return rule.rule if rule is not None else None


def mesh() -> Mesh:
    """The current app's mesh (inside a request or app context)."""
    state: MeshState | None = current_app.extensions.get(EXTENSION)
    if state is None:
        raise UsageError(f"MeshFlask is not installed on app {current_app.name!r}")
    return state.mesh


def inbound_request() -> InboundRequest:
    """The current request's mesh verdict: the caller's ``principal``, the JWT's
    ``request_principal``, ``request_id``..."""
    found: InboundRequest | None = request.environ.get(REQUEST_KEY)
    if found is None:
        raise UsageError("this request did not come through MeshFlask")
    return found


__all__ = ["EXTENSION", "MeshFlask", "MeshState", "inbound_request", "mesh"]
