"""Server interceptors: the inbound mesh for gRPC servers, sync and asyncio.

Each call becomes one :class:`~meshsdk.inbound.handler.InboundRequest` of the core's
protocol-neutral inbound handler, which decides everything (peer identity from the
TLS handshake, PeerAuthentication, JWT, AuthorizationPolicy, server span,
``reporter=destination`` metrics, access log, deadline). The interceptor only feeds it
the call's facts and applies its verdict in gRPC's terms:

* denied by AuthorizationPolicy -> ``PERMISSION_DENIED`` (``RBAC: access denied``),
  a bad JWT -> ``UNAUTHENTICATED`` (``Jwt verification fails``), a STRICT port reached
  without a client certificate -> ``UNAVAILABLE``;
* allowed: the handler runs inside ``with request:``, so the call's trace context,
  ``x-request-id`` and deadline (``grpc-timeout``) are current and outbound mesh calls
  (``mesh.client()``, :func:`meshsdk_grpc.channel`) continue the trace within the time
  left; its ``invocation_metadata()`` shows JWT output headers the policy adds.

The peer identity is the SPIFFE URI SAN of the client certificate gRPC verified
(``context.auth_context()["x509_pem_cert"]``), parsed by the core, never a header.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]

from meshsdk.deadline import format_grpc_timeout
from meshsdk.inbound.handler import InboundHandler, InboundRequest
from meshsdk_grpc._status import grpc_status_for_http, number_of, status_code

if TYPE_CHECKING:
    from meshsdk.mesh import Mesh

_OK = grpc.StatusCode.OK
_UNKNOWN = grpc.StatusCode.UNKNOWN


class _Facts:
    """What the interceptor reads of one call, for the inbound handler."""

    def __init__(self, interceptor: _Base, context: Any, method: str) -> None:
        headers = [(k.lower(), v if isinstance(v, str) else _b64(v))
                   for k, v in context.invocation_metadata() or ()]
        headers.append(("content-type", "application/grpc"))
        remaining = context.time_remaining()
        if remaining is not None and remaining < 1e9:  # gRPC's "no deadline" is huge
            headers.append(("grpc-timeout", format_grpc_timeout(remaining)))
        self.headers = headers
        self.method = method
        self.authority = interceptor.authority or _host_of(context)
        pem = (context.auth_context() or {}).get("x509_pem_cert")
        self.certificate = pem[0].decode("ascii") if pem else None
        self.client = _address(context.peer())
        self.scheme = "https" if pem else "http"


class _Base:
    """What the sync and async interceptors share."""

    def __init__(self, mesh: Mesh, *, port: int | None = None, authority: str | None = None,
                 handler: InboundHandler | None = None, **options: Any) -> None:
        self.handler = handler if handler is not None else InboundHandler(mesh, port=port,
                                                                          **options)
        port = self.handler.port
        self.authority = authority or (
            f"{mesh.workload.app}:{port}" if port is not None else mesh.workload.app)

    def _start_args(self, facts: _Facts) -> dict[str, Any]:
        return {"client": facts.client, "peer_certificate": facts.certificate,
                "route": facts.method}


def _denial(request: InboundRequest) -> tuple[Any, str]:
    """The gRPC status and message of a denied request."""
    number = grpc_status_for_http(request.status or 403)
    return status_code(number), request.body.decode("utf-8", "replace")


def _finish(request: InboundRequest, code: Any, http_status: int = 200) -> None:
    request.finish(http_status, [("grpc-status", str(number_of(code)))], protocol="HTTP/2")


def _final_code(context: Any, failed: bool) -> Any:
    code = context.code()
    if code is not None:
        return code
    return _UNKNOWN if failed else _OK


class _Context:
    """The servicer context the application sees: gRPC's own, with the metadata the
    inbound verdict forwards (JWT outputs added, untrusted XFCC removed)."""

    def __init__(self, inner: Any, request: InboundRequest) -> None:
        self._inner = inner
        self._request = request

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        if not self._request.headers_changed:
            return tuple(self._inner.invocation_metadata() or ())
        return tuple((k, v) for k, v in self._request.headers
                     if k not in ("content-type", "grpc-timeout", "x-request-id"))

    @property
    def mesh_request(self) -> InboundRequest:
        """The mesh's verdict and recording of this call."""
        return self._request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# --- sync -----------------------------------------------------------------------------


class MeshServerInterceptor(_Base, grpc.ServerInterceptor):  # type: ignore[misc]
    """``grpc.server(..., interceptors=[MeshServerInterceptor(mesh, port=9080)])``.

    ``port`` is the workload port whose PeerAuthentication mode applies (and the port
    of the default ``authority``, ``<app>:<port>``, which names the destination service
    in metrics). Other keyword options go to :class:`InboundHandler`
    (``trusted_proxies``, ``jwks``, ``audit``, ``custom``).
    """

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        return _wrap(handler, lambda behaviour, streaming: self._guard(
            behaviour, details.method, streaming))

    def _start(self, context: Any, method: str) -> InboundRequest:
        facts = _Facts(self, context, method)
        return self.handler.start("POST", facts.scheme, facts.authority, method,
                                  facts.headers, **self._start_args(facts))

    def _guard(self, behaviour: Callable[..., Any], method: str, streaming: bool
               ) -> Callable[..., Any]:
        if streaming:
            def stream(request: Any, context: Any) -> Iterator[Any]:
                inbound = self._start(context, method)
                if not inbound.allowed:
                    _deny(inbound, context)
                app_context = _Context(context, inbound)
                failed = True
                try:
                    with inbound:
                        items = iter(behaviour(request, app_context))
                    while True:
                        with inbound:
                            try:
                                item = next(items)
                            except StopIteration:
                                break
                        yield item
                    failed = False
                finally:
                    _finish(inbound, _final_code(context, failed))
            return stream

        def unary(request: Any, context: Any) -> Any:
            inbound = self._start(context, method)
            if not inbound.allowed:
                _deny(inbound, context)
            failed = True
            try:
                with inbound:
                    response = behaviour(request, _Context(context, inbound))
                failed = False
                return response
            finally:
                _finish(inbound, _final_code(context, failed))
        return unary


def _deny(request: InboundRequest, context: Any) -> None:
    code, message = _denial(request)
    _finish(request, code, request.status or 403)
    context.abort(code, message)


# --- asyncio --------------------------------------------------------------------------


class AsyncMeshServerInterceptor(_Base, grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """:class:`MeshServerInterceptor` for ``grpc.aio.server(interceptors=[...])``; the
    security check runs in a worker thread when the policies may do I/O."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return _wrap(handler, lambda behaviour, streaming: self._guard(
            behaviour, details.method, streaming))

    async def _start(self, context: Any, method: str) -> InboundRequest:
        facts = _Facts(self, context, method)
        return await self.handler.start_async("POST", facts.scheme, facts.authority,
                                              method, facts.headers,
                                              **self._start_args(facts))

    def _guard(self, behaviour: Callable[..., Any], method: str, streaming: bool
               ) -> Callable[..., Any]:
        if streaming and inspect.isasyncgenfunction(behaviour):
            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                inbound = await self._start(context, method)
                if not inbound.allowed:
                    await _adeny(inbound, context)
                failed = True
                try:
                    with inbound:
                        items = behaviour(request, _Context(context, inbound)).__aiter__()
                    while True:
                        with inbound:
                            try:
                                item = await items.__anext__()
                            except StopAsyncIteration:
                                break
                        yield item
                    failed = False
                finally:
                    _finish(inbound, _final_code(context, failed))
            return stream

        async def call(request: Any, context: Any) -> Any:  # unary, or writes by context
            inbound = await self._start(context, method)
            if not inbound.allowed:
                await _adeny(inbound, context)
            failed = True
            try:
                with inbound:
                    response = await behaviour(request, _Context(context, inbound))
                failed = False
                return response
            finally:
                _finish(inbound, _final_code(context, failed))
        return call


async def _adeny(request: InboundRequest, context: Any) -> None:
    code, message = _denial(request)
    _finish(request, code, request.status or 403)
    await context.abort(code, message)


# --- shared helpers ---------------------------------------------------------------------


def _wrap(handler: Any, guard: Callable[[Callable[..., Any], bool], Callable[..., Any]]
          ) -> Any:
    """The same RPC method handler with its behaviour guarded."""
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            guard(handler.unary_unary, False), request_deserializer=des,
            response_serializer=ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            guard(handler.unary_stream, True), request_deserializer=des,
            response_serializer=ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            guard(handler.stream_unary, False), request_deserializer=des,
            response_serializer=ser)
    return grpc.stream_stream_rpc_method_handler(
        guard(handler.stream_stream, True), request_deserializer=des,
        response_serializer=ser)


def _b64(value: bytes) -> str:
    import base64
    return base64.b64encode(value).decode("ascii")


def _host_of(context: Any) -> str:
    """The call's ``:authority`` (read from gRPC's sync call details when present)."""
    event = getattr(context, "_rpc_event", None)
    host = getattr(getattr(event, "call_details", None), "host", None)
    if isinstance(host, bytes):
        return host.decode("ascii", "replace")
    return str(host) if host else "unknown"


def _address(peer: str | None) -> tuple[str, int] | str | None:
    """``ipv4:1.2.3.4:5`` / ``ipv6:[::1]:5`` -> (ip, port); other forms as they are."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    return (host, int(port)) if port.isdigit() else host


__all__ = ["AsyncMeshServerInterceptor", "MeshServerInterceptor"]
