"""``MeshMiddleware``: Django's side of the core's inbound handler, sync and async.

Put it first in ``MIDDLEWARE``. For each request it hands the core what the server
gave Django (the WSGI environ, including gunicorn's TLS socket, or the ASGI scope with
its TLS extension) and applies the verdict: a denial is answered at once (Envoy's
``401``/``403`` local replies), an allowed request goes on with the policy's header
changes, inside the request's trace context and deadline. The server span is named
after the URL pattern that matched (``/reviews/<int:product_id>``); the request is
recorded when the server closes the response, so streamed bodies are counted whole.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import lru_cache
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import (  # type: ignore[import-untyped]  # Django ships no type hints
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    QueryDict,
)

from meshsdk.inbound import asgi, wsgi
from meshsdk.inbound.asgi import scope_facts
from meshsdk.inbound.handler import InboundHandler, InboundRequest
from meshsdk.inbound.wsgi import environ_facts
from meshsdk_django import REQUEST_ATTRIBUTE, get_runtime

GetResponse = Callable[[HttpRequest], Any]


def request_facts(request: HttpRequest) -> dict[str, Any]:
    """The core handler's arguments for a Django request (ASGI scope or WSGI environ)."""
    scope = getattr(request, "scope", None)
    if scope is not None:
        return scope_facts(scope)
    return environ_facts(request.META)


def _start(handler: InboundHandler, request: HttpRequest) -> InboundRequest:
    """``handler.start(**request_facts(request))``, by the core's shortest way."""
    scope = getattr(request, "scope", None)
    if scope is not None:  # sync middleware under an ASGI server
        return handler.start(**scope_facts(scope))
    return wsgi.start_request(handler, request.META)


async def _start_async(handler: InboundHandler, request: HttpRequest) -> InboundRequest:
    """``await handler.start_async(**request_facts(request))``, by the shortest way."""
    scope = getattr(request, "scope", None)
    if scope is not None:
        return await asgi.start_request(handler, scope)
    return await handler.start_async(**environ_facts(request.META))


@lru_cache(maxsize=256)  # the few names a policy sets (x-request-id, JWT outputs)
def _meta_key(name: str) -> str:
    upper = name.upper().replace("-", "_")
    return upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{upper}"


def apply_changes(request: HttpRequest, inbound: InboundRequest) -> None:
    """Give the view the headers and query the policy decided (JWT outputs, removed
    tokens, an untrusted X-Forwarded-Client-Cert dropped)."""
    if inbound.headers_changed:
        for name in inbound.removed:
            request.META.pop(_meta_key(name), None)
        for name, value in inbound.added:
            request.META[_meta_key(name)] = value
        request.__dict__.pop("headers", None)  # HttpRequest.headers is a cached view
    if inbound.query is not None:
        request.META["QUERY_STRING"] = inbound.query
        request.GET = QueryDict(inbound.query, encoding=request.encoding)


def route_of(request: HttpRequest) -> str | None:
    """The matched URL pattern, as a path (``/reviews/<int:product_id>``)."""
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    return f"/{route.removeprefix('/')}" if isinstance(route, str) and route else None


def response_headers(response: HttpResponseBase) -> list[tuple[str, str]]:
    """The response's headers for its record, names in lower case (cookies are not among
    them, as ``response.items()`` leaves them out too).

    Read from the header mapping's own store (lower-cased name -> (name, value)), which
    Django 4.2 to 5.2 keep: ``items()`` goes through three generic ``Mapping`` helpers
    per header, a measurable part of what the mesh adds to each request. Any other
    mapping is read through ``items()``."""
    store = getattr(response.headers, "_store", None)
    if type(store) is dict:
        return [(name, pair[1]) for name, pair in store.items()]
    return [(name.lower(), value) for name, value in response.items()]


def denial(inbound: InboundRequest) -> HttpResponse:
    """The local reply for a denied request, recorded at once."""
    assert inbound.status is not None
    response = HttpResponse(inbound.body, status=inbound.status)
    for name, value in inbound.response_headers:
        response[name] = value
    inbound.finish(inbound.status, inbound.response_headers, len(inbound.body))
    return response


class _Recorder:
    """Counts a response's bytes and records the request when the server closes it."""

    def __init__(self, inbound: InboundRequest, response: HttpResponseBase,
                 context: contextvars.Context | None = None) -> None:
        self.inbound = inbound
        self.response = response
        self.sent = 0
        # a sync stream's chunks run in this copy of the context the view ran in (taken
        # inside ``with inbound:``): the request current and its deadline as anchored
        # then, one Context.run per chunk
        self.context = context

    def install(self) -> HttpResponseBase:
        response = self.response
        for name, value in self.inbound.response_headers:
            response[name] = value
        if response.streaming:  # counted as it streams; a whole body when recorded
            content = response.streaming_content
            if hasattr(content, "__aiter__"):
                response.streaming_content = self._count_async(content)
            else:
                response.streaming_content = self._count(content)
        close = response.close

        def close_and_record() -> None:
            try:
                close()
            finally:
                # unhook first: response -> this closure -> recorder -> response is a
                # reference cycle that would keep the request alive until a GC pass
                vars(response).pop("close", None)
                self.finish()

        response.close = close_and_record
        return response

    def _count(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        iterator = iter(chunks)
        context = self.context
        assert context is not None  # MeshMiddleware copies one for every streamed response
        while True:
            # a generator calling the mesh stays in the trace
            chunk = context.run(next, iterator, None)
            if chunk is None:
                return
            self.sent += len(chunk)
            yield chunk

    async def _count_async(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.sent += len(chunk)
            yield chunk

    def finish(self) -> None:
        response = self.response
        # a whole body is measured now, after the response, rather than before it
        sent = self.sent if response.streaming else len(response.content)
        self.inbound.finish_lowered(response.status_code, response_headers(response), sent,
                             None, None, "HTTP/1.1")


class MeshMiddleware:
    """The mesh's inbound side for Django (first in ``MIDDLEWARE``)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        runtime = get_runtime()
        self.handler = InboundHandler(runtime.mesh, **runtime.inbound_options)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        inbound = _start(self.handler, request)
        if not inbound.allowed:
            return denial(inbound)
        apply_changes(request, inbound)
        setattr(request, REQUEST_ATTRIBUTE, inbound)
        context = None
        try:
            with inbound:
                response = self.get_response(request)
                if response.streaming:
                    context = contextvars.copy_context()
        except BaseException:
            inbound.finish(500)
            raise
        if inbound.wants_route:  # only a span that records shows the name
            inbound.route = route_of(request) or inbound.route
        return _Recorder(inbound, response, context).install()

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        inbound = await _start_async(self.handler, request)
        if not inbound.allowed:
            return denial(inbound)
        apply_changes(request, inbound)
        setattr(request, REQUEST_ATTRIBUTE, inbound)
        context = None
        try:
            with inbound:
                pending: Awaitable[HttpResponseBase] = self.get_response(request)
                response = await pending
                if response.streaming:
                    context = contextvars.copy_context()
        except BaseException:
            inbound.finish(500)
            raise
        if inbound.wants_route:  # only a span that records shows the name
            inbound.route = route_of(request) or inbound.route
        return _Recorder(inbound, response, context).install()


__all__ = ["MeshMiddleware", "apply_changes", "denial", "request_facts", "response_headers",
           "route_of"]
