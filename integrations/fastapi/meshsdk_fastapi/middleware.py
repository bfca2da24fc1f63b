"""``MeshMiddleware``: the mesh's inbound side for any ASGI app, with route naming.

    app = MeshMiddleware(app, mesh=mesh)                 # any ASGI app
    app.add_middleware(MeshMiddleware, mesh=mesh)        # Starlette / FastAPI

It is the core's :class:`~meshsdk.inbound.asgi.MeshASGIMiddleware` (identity from mesh
mTLS, PeerAuthentication, JWT, AuthorizationPolicy, server span, Istio metrics, access
log, trace context and deadline for the app) plus the one thing a Starlette router
knows: which route matched. The route's template (``/reviews/{product_id}``, with the
prefix of the mounts it sits under) names the server span; it never becomes a metric
label. ``mesh`` may be a :class:`~meshsdk.Mesh` or a :class:`~meshsdk_fastapi.MeshLifespan`
whose mesh exists only once the app has started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from meshsdk.inbound.asgi import MeshASGIMiddleware
from meshsdk.inbound.handler import InboundHandler
from meshsdk.mesh import Mesh

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MeshSource(Protocol):
    """Something that has the mesh once the app runs (e.g. a MeshLifespan)."""

    @property
    def mesh(self) -> Mesh: ...


def route_template(scope: Scope, before: Scope | None = None) -> str | None:
    """The template of the route a Starlette/FastAPI router matched for ``scope`` (None
    when none did), with the path of the mounts above it. ``before`` is a copy of the
    scope taken before routing (the router updates the scope in place)."""
    before = before if before is not None else scope
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return _match_route(scope.get("router"), before)
    root = str(before.get("root_path", ""))
    mounted = str(scope.get("root_path", ""))
    prefix = mounted[len(root):] if mounted.startswith(root) else ""
    return f"{prefix}{path}" or "/"


def _match_route(router: Any, scope: Scope, prefix: str = "", depth: int = 0
                 ) -> str | None:
    """Old Starlette releases do not record the matched route: ask the router again,
    on the scope as it was before routing, through the mounts."""
    if router is None or depth > 16:
        return None
    for route in getattr(router, "routes", ()):
        try:
            match, child = route.matches(scope)
        except Exception:  # a route we cannot ask is not a name
            continue
        if getattr(match, "name", "") != "FULL":
            continue
        path = getattr(route, "path", "")
        path = path if isinstance(path, str) else ""
        if hasattr(route, "routes") and hasattr(route, "app"):  # a Mount: descend
            return _match_route(route, {**scope, **child}, prefix + path, depth + 1)
        return (prefix + path) or None
    return None


class MeshMiddleware:
    """Mesh inbound policy and telemetry around an ASGI app, routes named.

    ``options`` go to the core's :class:`~meshsdk.inbound.handler.InboundHandler`
    (``port``, ``trusted_proxies``, ``jwks``, ``audit``, ``custom``...).
    """

    def __init__(self, app: ASGIApp, mesh: Mesh | MeshSource, **options: Any) -> None:
        self.app = app
        self._source = mesh
        self._options = options
        self._inner: MeshASGIMiddleware | None = None
        if isinstance(mesh, Mesh):
            self._inner = self._build(mesh)

    def _build(self, mesh: Mesh) -> MeshASGIMiddleware:
        handler = InboundHandler(mesh, **self._options)
        return MeshASGIMiddleware(self.app, handler=handler, route=route_template)

    @property
    def handler(self) -> InboundHandler:
        """The core handler (once the mesh exists)."""
        return self._adapter().handler

    def _adapter(self) -> MeshASGIMiddleware:
        inner = self._inner
        source = self._source
        if isinstance(source, Mesh):
            assert inner is not None
            return inner
        mesh = source.mesh
        if inner is None or inner.handler.mesh is not mesh:
            # a lifespan's mesh: made at startup, and made anew if the app restarts
            inner = self._inner = self._build(mesh)
        return inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") in ("http", "websocket"):
            await self._adapter()(scope, receive, send)
        else:  # lifespan and anything else: straight to the app (it makes the mesh)
            await self.app(scope, receive, send)


__all__ = ["MeshMiddleware", "MeshSource", "route_template"]
