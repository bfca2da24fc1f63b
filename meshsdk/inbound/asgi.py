"""The mesh's inbound side for any ASGI app: :class:`MeshASGIMiddleware`.

    app = MeshASGIMiddleware(app, mesh)

For each ``http`` request it asks :class:`~meshsdk.inbound.handler.InboundHandler`
(identity, PeerAuthentication, JWT, AuthorizationPolicy, telemetry) and either answers
the denial itself or runs the app inside the request's trace context and deadline,
counting the bytes of the (possibly streamed) response. ``websocket`` connections get
the same security check (a denial closes before accepting, which servers answer with
403) but no metrics; ``lifespan`` and other scopes pass through untouched.

The peer certificate comes from the ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``, leaf first, PEM), which
:func:`meshsdk.inbound.servers.uvicorn_config` adds for uvicorn. Framework plugins name
the route after routing with :func:`~meshsdk.inbound.handler.set_route` or by setting
``scope["meshsdk.route"]`` before the response starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable, MutableMapping
from typing import Any

from meshsdk.inbound.handler import InboundHandler, InboundRequest
from meshsdk.memo import remember
from meshsdk.mesh import Mesh

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RouteOf = Callable[[Scope, Scope], "str | None"]
"""A plugin's route lookup: the matched route template, given the scope as the app left
it and a copy of it taken before the app ran (routers update the scope in place)."""

ROUTE_KEY = "meshsdk.route"
"""Scope key a framework plugin may fill with the route template (``/users/{id}``)."""
REQUEST_KEY = "meshsdk.request"
"""Scope key under which the app finds its :class:`InboundRequest`."""


def _latin1(value: bytes) -> str:
    return value.decode("latin-1")


_names: dict[bytes, str] = {}
"""Raw header name -> its text, lower-case: the same few names arrive on every request."""
_NAMES_LIMIT = 4096
_NAME_LENGTH = 64


def _learn(raw: bytes) -> str:
    """The text of a header name missing from ``_names`` (learnt when it is bytes)."""
    name = raw.decode("latin-1").lower()
    # a bytearray cannot be a key; a long name is no common one (and would cost memory)
    if type(raw) is bytes and len(raw) <= _NAME_LENGTH:
        remember(_names, raw, name, _NAMES_LIMIT)  # clients inventing header names
    return name


def _decoded(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """ASGI header pairs as text, names in lower case."""
    out: list[tuple[str, str]] = []
    names = _names
    for k, v in raw:
        try:
            name = names[k]
        except (KeyError, TypeError):
            name = _learn(k)
        out.append((name, v.decode("latin-1")))
    return out


def _facts(scope: Scope) -> tuple[str, str, str, str, list[tuple[str, str]], str | None,
                                  int | None, str | None, int | None, str | None, str | None]:
    """method, scheme, authority, path, headers, remote IP and port, local IP and port,
    peer certificate, server name: the arguments of ``InboundHandler._start``."""
    get = scope.get
    headers = _decoded(get("headers", ()))
    authority = None
    for name, value in headers:
        if name == "host":
            authority = value
            break
    server = get("server")
    scheme = get("scheme") or "http"
    if scheme in ("ws", "wss"):
        scheme = "https" if scheme == "wss" else "http"
    if authority is None:
        authority = f"{server[0]}:{server[1]}" if server else "unknown"
    raw = get("raw_path")
    path = _latin1(raw) if raw else get("path", "/")
    query = get("query_string", b"")
    if query:
        path = f"{path}?{_latin1(query)}"
    extensions = get("extensions")
    tls = (extensions.get("tls") or {}) if extensions else {}
    chain: Iterable[str] = tls.get("client_cert_chain") or ()
    leaf = next(iter(chain), None)
    client = get("client")
    remote_ip, remote_port = _split(client)
    local_ip, local_port = _split(server)
    return (get("method", "GET"), scheme, authority, path, headers, remote_ip, remote_port,
            local_ip, local_port, leaf, tls.get("server_name"))


def _split(address: Iterable[Any] | None) -> tuple[str | None, int | None]:
    """An ASGI ``client``/``server`` (``[host, port]``, port None for a UNIX socket)."""
    if not address:
        return None, None
    pair = tuple(address)
    return str(pair[0]), int(pair[1]) if pair[1] is not None else None


def scope_facts(scope: Scope) -> dict[str, Any]:
    """What the handler needs from an ASGI scope (keyword arguments of ``start``)."""
    client = scope.get("client")
    server = scope.get("server")
    (method, scheme, authority, path, headers, _, _, _, _, leaf,
     server_name) = _facts(scope)
    return {"method": method, "scheme": scheme, "authority": authority,
            "path": path, "headers": headers,
            "client": tuple(client) if client else None,
            "server": tuple(server) if server else None,
            "peer_certificate": leaf, "server_name": server_name}


def _start_soon(handler: InboundHandler, scope: Scope
                ) -> InboundRequest | Coroutine[Any, Any, InboundRequest]:
    """The handler's request for ``scope``, or a coroutine to await for it when its
    check may block (:meth:`InboundHandler._start_soon`)."""
    (method, scheme, authority, path, headers, remote_ip, remote_port, local_ip, local_port,
     leaf, server_name) = _facts(scope)
    return handler._start_soon(method, scheme, authority, path, headers, remote_ip,
                               remote_port, local_ip, local_port, leaf, None, server_name,
                               None)


async def start_request(handler: InboundHandler, scope: Scope) -> InboundRequest:
    """``await handler.start_async(**scope_facts(scope))``, without the keyword round
    trip (for this module's middleware and the framework plugins)."""
    request = _start_soon(handler, scope)
    return request if isinstance(request, InboundRequest) else await request


def _app_scope(scope: Scope, request: InboundRequest) -> Scope:
    """The scope the app sees: the policy's header changes and new query applied."""
    if not request.headers_changed and request.query is None:
        return scope
    new = dict(scope)
    if request.headers_changed:
        if request.removed:
            removed = {n.encode("latin-1") for n in request.removed}
            headers = [(k, v) for k, v in scope.get("headers", ())
                       if k.lower() not in removed]
        else:  # usually: only the x-request-id the mesh made up is added
            headers = list(scope.get("headers", ()))
        headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in request.added)
        new["headers"] = headers
    if request.query is not None:
        new["query_string"] = request.query.encode("latin-1")
    return new


class MeshASGIMiddleware:
    """Mesh inbound policy and telemetry around an ASGI app.

    Give a ``mesh`` (options go to :class:`InboundHandler`: ``port``,
    ``trusted_proxies``, ``jwks``, ``audit``, ``custom``...) or a ready ``handler``.
    ``route`` names the span of a request that records (see :data:`RouteOf`): called
    when the app starts its response, unless a route is set already. Only such a
    request (1% at Istio's default sampling) pays for the copy of the scope it needs.
    """

    def __init__(self, app: ASGIApp, mesh: Mesh | None = None, *,
                 handler: InboundHandler | None = None, route: RouteOf | None = None,
                 **options: Any) -> None:
        if handler is None:
            if mesh is None:
                raise TypeError("MeshASGIMiddleware needs a mesh or a handler")
            handler = InboundHandler(mesh, **options)
        self.app = app
        self.handler = handler
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # a coroutine function, as servers (uvicorn's interface="auto") tell ASGI 3 apps
        # from ASGI 2 ones by that
        kind = scope.get("type")
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # start_request without its coroutine: one layer fewer on every request
        request = _start_soon(self.handler, scope)
        if not isinstance(request, InboundRequest):
            request = await request
        if not request.allowed:
            assert request.status is not None
            await send({"type": "http.response.start", "status": request.status,
                        "headers": [(k.encode("latin-1"), v.encode("latin-1"))
                                    for k, v in request.response_headers]})
            await send({"type": "http.response.body", "body": request.body})
            request.finish(request.status, request.response_headers, len(request.body))
            return
        app_scope = _app_scope(scope, request)
        app_scope[REQUEST_KEY] = request
        route_of = self.route
        before = dict(app_scope) if route_of is not None and request.wants_route else None
        status = 0
        raw_head: Iterable[tuple[bytes, bytes]] = ()  # decoded when recorded, not before
        sent = 0
        received = 0
        extra = [(k.encode("latin-1"), v.encode("latin-1"))
                 for k, v in request.response_headers]

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, raw_head, sent
            kind = message.get("type")
            if kind == "http.response.start":
                status = int(message["status"])
                raw = message.get("headers", ())
                if extra:
                    raw = [*raw, *extra]
                    message = {**message, "headers": raw}
                raw_head = raw
                if not request.route:
                    route = app_scope.get(ROUTE_KEY)
                    if route:
                        request.route = str(route)
                    elif before is not None and route_of is not None:
                        request.route = route_of(app_scope, before) or request.route
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                request.finish_lowered(status, _decoded(raw_head), sent, received, "-", "HTTP/1.1")

        try:
            with request:
                await self.app(app_scope, counting_receive, counting_send)
        except BaseException:
            # the server answers 500 when nothing was sent yet; a started response
            # is cut short (the client sees a reset)
            request.finish_lowered(500 if status == 0 else status, _decoded(raw_head), sent,
                            received, "-" if status == 0 else "DC", "HTTP/1.1")
            raise
        if not request.finished:  # the app returned without finishing its response
            request.finish_lowered(status, _decoded(raw_head), sent, received,
                            "-" if status else "DC", "HTTP/1.1")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await start_request(self.handler, scope)
        if not request.allowed:
            message = await receive()  # websocket.connect
            if message.get("type") == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
            request.finish(request.status or 403)
            return
        app_scope = _app_scope(scope, request)
        app_scope[REQUEST_KEY] = request
        try:
            with request:
                await self.app(app_scope, receive, send)
        finally:
            request.finish(101)


__all__ = ["REQUEST_KEY", "ROUTE_KEY", "MeshASGIMiddleware", "scope_facts", "start_request"]
