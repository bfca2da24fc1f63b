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


def replayable(request: httpx.Request) -> bool:
    """A body we may send more than once: in memory and at most MAX_REPLAY_BYTES."""
    if not isinstance(request.stream, httpx.ByteStream):
        return False
    length = request.headers.get("content-length")
    return length is None or (length.isdigit() and int(length) <= MAX_REPLAY_BYTES)


def upstream_request(attempt: Attempt, request: httpx.Request,
                     address: str | None = None) -> httpx.Request:
    """The request for one attempt: endpoint URL, mesh-decided head, original body.

    ``address`` is the endpoint's resolved IP when it was given by name; the name
    stays the TLS server name.
    """
    t = attempt.timeout
    extensions: dict[str, Any] = {
        "timeout": {"connect": attempt.connect_timeout, "read": t, "write": t, "pool": t}}
    url = attempt.url
    if address is not None and address != attempt.address:
        url = attempt.with_address(address).url
        extensions["sni_hostname"] = attempt.address
    headers = [("host", attempt.authority), *attempt.headers]
    return httpx.Request(request.method, url, headers=headers, stream=request.stream,
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
    grpc = response.headers.get("grpc-status")
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


def response_head(result: CallResult, upstream: httpx.Response
                  ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    headers = upstream.headers.multi_items()
    if result.response_headers is not None:
        headers = result.response_headers(headers)
    extensions = dict(upstream.extensions)
    extensions[EXTENSION] = call_info(result)
    return headers, extensions


class ReleasingStream(httpx.SyncByteStream):
    """The upstream body, passed through unbuffered; closing it frees the call's slot."""

    def __init__(self, inner: httpx.Response, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner.iter_raw()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._release()


class AsyncReleasingStream(httpx.AsyncByteStream):
    """Async twin of :class:`ReleasingStream`."""

    def __init__(self, inner: httpx.Response, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()
