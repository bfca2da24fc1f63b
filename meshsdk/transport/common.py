"""What the sync and async httpx drivers share: building upstream requests from an
:class:`~meshsdk.dataplane.flow.Attempt`, classifying httpx's exceptions into
outcomes, and turning a :class:`~meshsdk.dataplane.flow.CallResult` into the
``httpx.Response`` the caller sees. Only the effect loop differs between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from meshsdk.dataplane.flow import Attempt, AttemptResult, CallResult
from meshsdk.outcome import Failure, Flag, LocalReply, Outcome, format_flags

EXTENSION = "meshsdk"
"""``response.extensions["meshsdk"]`` holds the :class:`CallInfo` of every mesh call."""

MAX_REPLAY_BYTES = 1 << 20
"""Request bodies up to this size are kept for retries and mirrors (Envoy buffers
about as much); larger or streamed bodies are sent once and never retried."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What the mesh did with a call, for the caller, telemetry and access logs."""

    flags: tuple[Flag, ...]
    attempts: int
    route: str
    cluster: str | None
    upstream: str | None       # "address:port" of the endpoint that answered
    local_reply: bool          # the mesh answered itself (fault, no route, overflow...)

    @property
    def response_flags(self) -> str:
        """Envoy's format: ``UH``, ``URX,UF`` or ``-``."""
        return format_flags(self.flags)


def header_value(items: list[tuple[str, str]], name: str) -> str | None:
    """``httpx.Headers.get(name)`` over ``headers.multi_items()`` (lower-case ``name``):
    repeated values joined with ``", "``, None when absent. Lets a driver read several
    headers from one ``multi_items()`` pass instead of one list scan and decode each."""
    values = [v for k, v in items if k == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


def replayable(request: httpx.Request, items: list[tuple[str, str]] | None = None) -> bool:
    """A body we may send more than once: in memory and at most MAX_REPLAY_BYTES.

    ``items`` is ``request.headers.multi_items()`` when the caller already has it.
    """
    if not isinstance(request.stream, httpx.ByteStream):
        return False
    length = (request.headers.get("content-length") if items is None
              else header_value(items, "content-length"))
    return length is None or (length.isdigit() and int(length) <= MAX_REPLAY_BYTES)


_URL_CACHE_LIMIT = 1024
_urls: dict[str, httpx.URL] = {}


def _url(text: str) -> httpx.URL:
    """``httpx.URL(text)``, parsed once per distinct URL.

    Parsing and validating a URL is the largest single cost of building an upstream
    request; ``httpx.URL`` is immutable, so equal strings can share one. Bounded:
    cleared when full (paths with IDs in them are unbounded).
    """
    url = _urls.get(text)
    if url is None:
        url = httpx.URL(text)
        if len(_urls) >= _URL_CACHE_LIMIT:
            _urls.clear()
        _urls[text] = url
    return url


def upstream_request(attempt: Attempt, request: httpx.Request,
                     address: str | None = None) -> httpx.Request:
    """The request for one attempt: endpoint URL, mesh-decided head, original body.

    ``address`` is the endpoint's resolved IP when it was given by name; the name
    stays the TLS server name. A timeout the caller gave httpx (``timeout=``) still
    applies: each of its parts caps the attempt's own.
    """
    t = attempt.timeout
    timeout = {"connect": attempt.connect_timeout, "read": t, "write": t, "pool": t}
    given = request.extensions.get("timeout")
    if given:
        for key, value in given.items():
            if value is not None and key in timeout:
                mine = timeout[key]
                timeout[key] = value if mine is None else min(mine, value)
    extensions: dict[str, Any] = {"timeout": timeout}
    url = attempt.url
    if address is not None and address != attempt.address:
        url = attempt.with_address(address).url
        extensions["sni_hostname"] = attempt.address
    headers = [("host", attempt.authority), *attempt.headers]
    return httpx.Request(request.method, _url(url), headers=headers, stream=request.stream,
                         extensions=extensions)


def mirror_request(attempt: Attempt, request: httpx.Request) -> httpx.Request:
    """A mirror copy: same head and body bytes, never the caller's stream object."""
    headers = [("host", attempt.authority), *attempt.headers]
    body = request.content if isinstance(request.stream, httpx.ByteStream) else b""
    return httpx.Request(request.method, attempt.url, headers=headers, content=body,
                         extensions={"timeout": {"connect": attempt.connect_timeout,
                                                 "read": 10.0, "write": 10.0, "pool": 1.0}})


def classify_exception(exc: Exception) -> Outcome:
    """httpx's errors in Envoy's terms."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return Outcome(failure=Failure.CONNECT_FAILURE)
    if isinstance(exc, httpx.TimeoutException):
        return Outcome(failure=Failure.TIMEOUT)
    return Outcome(failure=Failure.RESET)


SEND_ERRORS = (httpx.TransportError,)


def classify_response(response: httpx.Response) -> AttemptResult:
    # get_list, not get: Headers.get raises and catches KeyError when the header is
    # absent, the common case
    grpc = ", ".join(response.headers.get_list("grpc-status"))
    return AttemptResult(Outcome(status=response.status_code,
                                 grpc_status=int(grpc) if grpc and grpc.isdigit() else None),
                         response)


def call_info(result: CallResult) -> CallInfo:
    return CallInfo(result.flags, result.attempts, result.route_name, result.cluster,
                    result.endpoint.authority if result.endpoint is not None else None,
                    result.local_reply is not None)


def local_response(reply: LocalReply, request: httpx.Request, info: CallInfo) -> httpx.Response:
    return httpx.Response(reply.status, headers=list(reply.headers), content=reply.body,
                          request=request, extensions={EXTENSION: info})


def response_head(result: CallResult, upstream: httpx.Response, info: CallInfo | None = None
                  ) -> tuple[httpx.Headers, dict[str, Any]]:
    """The caller's response head: the upstream's headers (names lower-case, as Envoy
    forwards them) after the route's response operations and CORS, and the upstream's
    extensions plus :data:`EXTENSION`."""
    source = upstream.headers
    headers: httpx.Headers | None = None
    if result.response_headers is not None:
        items = source.multi_items()
        before = list(items)
        after = result.response_headers(items)
        if after != before:  # re-encoded as the upstream's header bytes were decoded
            headers = httpx.Headers(after, encoding=source.encoding)
    if headers is None:  # unchanged: copy the bytes, no decode and re-encode
        headers = httpx.Headers([(k.lower(), v) for k, v in source.raw],
                                encoding=source.encoding)
    extensions = dict(upstream.extensions)
    extensions[EXTENSION] = info if info is not None else call_info(result)
    return headers, extensions


def caller_response(result: CallResult, request: httpx.Request,
                    observe: Callable[[httpx.Request, CallResult, CallInfo], None],
                    stream_class: type[ReleasingStream] | type[AsyncReleasingStream],
                    ) -> httpx.Response:
    """The response the caller sees for the flow's verdict: the local reply, or the
    upstream's status and head (:func:`response_head`) with its body passed through
    ``stream_class`` (:class:`ReleasingStream` or :class:`AsyncReleasingStream`), which
    gives back the call's slot when closed. Observers see the call first."""
    info = call_info(result)
    observe(request, result, info)
    if result.local_reply is not None:
        result.release()
        return local_response(result.local_reply, request, info)
    upstream: httpx.Response = result.response
    headers, extensions = response_head(result, upstream, info)
    return httpx.Response(upstream.status_code, headers=headers,
                          stream=stream_class(upstream, result.release),
                          request=request, extensions=extensions)


class ReleasingStream(httpx.SyncByteStream):
    """The upstream body, passed through unbuffered; closing it frees the call's slot.

    It reads the upstream response's byte stream itself rather than through
    ``inner.iter_raw()``: that response is the mesh's own, and the caller's response
    already does the bookkeeping (chunking, request context, closed flags) once.
    """

    def __init__(self, inner: httpx.Response, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        stream = self._inner.stream
        if not isinstance(stream, httpx.SyncByteStream):
            raise RuntimeError("Attempted to call a sync iterator on an async stream.")
        yield from stream

    def close(self) -> None:
        try:
            if not self._closed:
                self._closed = True
                stream = self._inner.stream
                if not isinstance(stream, httpx.SyncByteStream):
                    raise RuntimeError("Attempted to call an sync close on an async stream.")
                stream.close()
        finally:
            self._release()


class AsyncReleasingStream(httpx.AsyncByteStream):
    """Async twin of :class:`ReleasingStream`."""

    def __init__(self, inner: httpx.Response, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._inner.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise RuntimeError("Attempted to call an async iterator on an sync stream.")
        async for chunk in stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            if not self._closed:
                self._closed = True
                stream = self._inner.stream
                if not isinstance(stream, httpx.AsyncByteStream):
                    raise RuntimeError("Attempted to call an async close on an sync stream.")
                await stream.aclose()
        finally:
            self._release()
