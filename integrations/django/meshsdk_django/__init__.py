"""meshsdk for Django: an AppConfig and a middleware, configured from ``settings.MESHSDK``.

    INSTALLED_APPS = [..., "meshsdk_django"]
    MIDDLEWARE = ["meshsdk_django.middleware.MeshMiddleware", ...]   # first
    MESHSDK = {"CONFIG": BASE_DIR / "mesh", "CERT_DIR": "/var/run/mesh"}

The app builds the workload's mesh once at startup (:mod:`meshsdk_django.conf` lists
the settings); the middleware puts every request through the core's inbound handler
(mTLS identity, PeerAuthentication, JWT, AuthorizationPolicy, server span, Istio's
metrics, access log), under WSGI and ASGI alike, and names the server span after the
URL pattern that matched. Views reach the mesh with :func:`get_mesh` and the request's
verdict with :func:`inbound_request`.
"""

from __future__ import annotations

from typing import Any

from meshsdk.errors import UsageError
from meshsdk.inbound.handler import InboundRequest
from meshsdk.mesh import Mesh
from meshsdk_django.conf import MeshRuntime

REQUEST_ATTRIBUTE = "mesh"
"""The attribute of Django's ``HttpRequest`` holding the :class:`InboundRequest`."""

_runtime: MeshRuntime | None = None


def get_runtime() -> MeshRuntime:
    """The mesh and what was started with it (UsageError before the app is ready)."""
    if _runtime is None:
        raise UsageError("meshsdk_django is not ready: add 'meshsdk_django' to "
                         "INSTALLED_APPS and set MESHSDK in your settings")
    return _runtime


def get_mesh() -> Mesh:
    """This process's mesh (for ``get_mesh().client()`` in views)."""
    return get_runtime().mesh


def inbound_request(request: Any) -> InboundRequest:
    """A Django request's mesh verdict: the caller's ``principal``, the JWT's
    ``request_principal``, ``request_id``..."""
    found: InboundRequest | None = getattr(request, REQUEST_ATTRIBUTE, None)
    if found is None:
        raise UsageError("this request did not come through "
                         "meshsdk_django.middleware.MeshMiddleware")
    return found


__all__ = ["REQUEST_ATTRIBUTE", "get_mesh", "get_runtime", "inbound_request"]
