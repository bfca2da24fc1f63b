"""meshsdk for FastAPI, Starlette and any ASGI app.

* :class:`MeshMiddleware` — the mesh's inbound side (mTLS identity, PeerAuthentication,
  JWT, AuthorizationPolicy, server span, Istio metrics, access log) around any ASGI
  app, with the matched route's template naming the server span;
* :class:`MeshLifespan` — lifespan hooks that make the mesh at startup
  (``Mesh.connect`` to the config service, or any factory) and close it at shutdown;
* :func:`instrument` — both for a FastAPI/Starlette app in one call.

Nothing here decides anything: the core's :mod:`meshsdk.inbound` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshsdk.inbound.asgi import REQUEST_KEY
from meshsdk.inbound.handler import InboundRequest
from meshsdk.mesh import Mesh
from meshsdk_fastapi.lifespan import MeshLifespan
from meshsdk_fastapi.middleware import MeshMiddleware, route_template


def instrument(app: Any, mesh: Mesh | Callable[[], Mesh], **options: Any) -> MeshLifespan | None:
    """Put the mesh on a FastAPI or Starlette ``app``.

    ``mesh`` is a ready :class:`~meshsdk.Mesh`, or a factory called at startup (e.g.
    ``lambda: Mesh.connect(address, workload)``): the app's lifespan is then wrapped by
    a :class:`MeshLifespan` (returned) that makes the mesh before the app's own startup
    code and closes it after its shutdown code. ``options`` go to the core's
    ``InboundHandler``. Call it before the app serves its first request.
    """
    if isinstance(mesh, Mesh):
        app.add_middleware(MeshMiddleware, mesh=mesh, **options)
        app.state.mesh = mesh
        return None
    lifespan = MeshLifespan(mesh, wrap=app.router.lifespan_context)
    app.router.lifespan_context = lifespan
    app.add_middleware(MeshMiddleware, mesh=lifespan, **options)
    return lifespan


def inbound_request(scope_or_request: Any) -> InboundRequest:
    """The mesh verdict of a request (a Starlette ``Request`` or an ASGI scope): the
    caller's ``principal``, the JWT's ``request_principal``, ``request_id``..."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    found: InboundRequest | None = scope.get(REQUEST_KEY)
    if found is None:
        from meshsdk.errors import UsageError
        raise UsageError("this request did not come through MeshMiddleware")
    return found


__all__ = ["MeshLifespan", "MeshMiddleware", "inbound_request", "instrument",
           "route_template"]
