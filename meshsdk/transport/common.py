"""What the sync and async httpx drivers share: building upstream requests from an
:class:`~meshsdk.dataplane.flow.Attempt`, classifying httpx's exceptions into
outcomes, and turning a :class:`~meshsdk.dataplane.flow.CallResult` into the
``httpx.Response`` the caller sees. Only the effect loop differs between them.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import httpcore
import httpx

# httpx's own mapping of httpcore's errors, used on the body of a response read
# straight from the connection pool so the caller sees the exceptions httpx raises.
# Private to httpx: without it, only the generic path is used.
try:
    from httpx._transports.default import map_httpcore_exceptions
    _DIRECT = True
except ImportError:  # pragma: no cover
    _DIRECT = False

from meshsdk.dataplane.flow import Attempt, AttemptResult, CallResult
from meshsdk.memo import remember
from meshsdk.outcome import Failure, Flag, LocalReply, Outcome, format_flags

if TYPE_CHECKING:
    from meshsdk.telemetry.recorder import OutboundCall

EXTENSION = "meshsdk"
"""``response.extensions["meshsdk"]`` holds the :class:`CallInfo` of every mesh call."""

MAX_REPLAY_BYTES = 1 << 20
"""Request bodies up to this size are kept for retries and mirrors (Envoy buffers
about as much); larger or streamed bodies are sent once and never retried."""


@dataclass(slots=True)
class CallInfo:
    """What the mesh did with a call, for the caller, telemetry and access logs.

    Treat as read-only. Not ``frozen``, for the cost of building one per call (see
    :class:`~meshsdk.dataplane.flow.Attempt`)."""

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


def header_items(headers: httpx.Headers) -> list[tuple[str, str]]:
    """``headers.multi_items()``: lower-case names and values, decoded with the block's
    encoding. Reads httpx's private ``_list`` of (raw name, lower name, value) to look
    the encoding up once rather than twice per header (its property call was a tenth
    of the request intake); falls back to the public method if that changes.

    A block whose encoding is not known yet (a request's, built for this call) is
    decoded as ASCII straight away, and when every byte is ASCII that is what httpx's
    own check would find: the result is kept on the block, as that check keeps it, so
    httpx's later reads (its cookie handling reads every request header) do not walk
    the block to find it again."""
    pairs = getattr(headers, "_list", None)
    if not _HEADERS_LIST or not isinstance(pairs, list):  # pragma: no cover - another httpx
        return headers.multi_items()
    if headers._encoding is None:
        try:
            items = [(lower.decode("ascii"), value.decode("ascii"))
                     for _, lower, value in pairs]
        except UnicodeDecodeError:
            pass  # httpx's own check picks utf-8 or latin-1
        else:
            headers._encoding = "ascii"
            return items
    encoding = headers.encoding
    return [(lower.decode(encoding), value.decode(encoding)) for _, lower, value in pairs]


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
    return replayable_length(request, request.headers.get("content-length") if items is None
                             else header_value(items, "content-length"))


def replayable_length(request: httpx.Request, length: str | None) -> bool:
    """:func:`replayable`, given the request's ``content-length`` header value."""
    if not isinstance(request.stream, httpx.ByteStream):
        return False
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
        remember(_urls, text, url, _URL_CACHE_LIMIT)
    return url


_NO_LIMITS = {"connect": None, "read": None, "write": None, "pool": None}
"""httpx's ``timeout`` extension of a client made with ``timeout=None`` (as
``mesh.client()`` makes them): nothing of the caller's to cap the attempt's limits."""


def _target(attempt: Attempt, request: httpx.Request, address: str | None
            ) -> tuple[Attempt, dict[str, Any]]:
    """The attempt aimed at the address it is sent to, and its request extensions
    (timeouts, TLS server name)."""
    t = attempt.timeout
    given = request.extensions.get("timeout")
    if given and given != _NO_LIMITS:  # each part the caller gave caps ours
        connect, read, write, pool = (attempt.connect_timeout, given.get("read"),
                                      given.get("write"), given.get("pool"))
        g = given.get("connect")
        if g is not None and (connect is None or g < connect):
            connect = g
        if read is None or (t is not None and t < read):
            read = t
        if write is None or (t is not None and t < write):
            write = t
        if pool is None or (t is not None and t < pool):
            pool = t
        timeout = {"connect": connect, "read": read, "write": write, "pool": pool}
    else:
        timeout = {"connect": attempt.connect_timeout, "read": t, "write": t, "pool": t}
    extensions: dict[str, Any] = {"timeout": timeout}
    aimed = attempt
    if address is not None and address != attempt.address:
        aimed = attempt.with_address(address)
        extensions["sni_hostname"] = attempt.address
    tls = attempt.tls
    if tls is not None and tls.sni:  # mesh TLS: the SNI (and the name checked) is the plan's
        extensions["sni_hostname"] = tls.sni
    return aimed, extensions


def upstream_request(attempt: Attempt, request: httpx.Request,
                     address: str | None = None) -> httpx.Request:
    """The request for one attempt: endpoint URL, mesh-decided head, original body.

    ``address`` is the endpoint's resolved IP when it was given by name; the name
    stays the TLS server name. A timeout the caller gave httpx (``timeout=``) still
    applies: each of its parts caps the attempt's own.
    """
    aimed, extensions = _target(attempt, request, address)
    headers = head_bytes(attempt.authority, attempt.headers, request.headers.encoding)
    return httpx.Request(request.method, _url(aimed.url), headers=headers,
                         stream=request.stream, extensions=extensions)


def head_bytes(authority: str, pairs: Iterable[tuple[str, str]], encoding: str
               ) -> list[tuple[bytes, bytes]]:
    """An attempt's head as the bytes to send: Host first, then ``pairs``.

    ``encoding`` is the one httpx decoded the caller's headers with
    (``request.headers.encoding``: ASCII, else UTF-8, else Latin-1), so a caller's
    non-ASCII value goes out byte for byte as it came, as bare httpx sends it. A
    value that encoding cannot carry was added by the mesh (a string from the
    config's header operations): it goes as UTF-8, the bytes Envoy sends for it.
    """
    try:
        head = [(b"host", authority.encode(encoding))]
        head += [(k.encode(encoding), v.encode(encoding)) for k, v in pairs]
        return head
    except UnicodeEncodeError:  # rare: only then the per-value fallback
        return [(b"host", _encoded(authority, encoding)),
                *[(_encoded(k, encoding), _encoded(v, encoding)) for k, v in pairs]]


def _encoded(text: str, encoding: str) -> bytes:
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode("utf-8")


# --- the direct path: httpx's own default transport, its httpcore pool called directly ---


_core_urls: dict[tuple[str, str, int, str], httpcore.URL] = {}


def _core_url(attempt: Attempt) -> httpcore.URL:
    """The ``httpcore.URL`` ``httpx.HTTPTransport`` would build from the attempt's URL,
    once per distinct (scheme, address, port, path) (httpcore only reads it); bounded
    like :func:`_url`. Keyed by the parts, not the URL's text: writing that text out
    on every call was a tenth of what the mesh adds to the sending of an attempt."""
    key = (attempt.scheme, attempt.address, attempt.port, attempt.path)
    url = _core_urls.get(key)
    if url is None:
        u = httpx.URL(attempt.url)
        url = httpcore.URL(scheme=u.raw_scheme, host=u.raw_host, port=u.port,
                           target=u.raw_path)
        remember(_core_urls, key, url, _URL_CACHE_LIMIT)
    return url


def core_pool(transport: httpx.BaseTransport | httpx.AsyncBaseTransport
              ) -> httpcore.ConnectionPool | httpcore.AsyncConnectionPool | None:
    """The httpcore connection pool of an ``httpx.HTTPTransport``/``AsyncHTTPTransport``
    the mesh created itself (no proxy: a plain pool), or None."""
    if not _DIRECT:  # pragma: no cover
        return None
    pool = getattr(transport, "_pool", None)
    if type(transport) is httpx.HTTPTransport and isinstance(pool, httpcore.ConnectionPool):
        return pool
    if (type(transport) is httpx.AsyncHTTPTransport
            and isinstance(pool, httpcore.AsyncConnectionPool)):
        return pool
    return None


class _CoreRequest(httpcore.Request):
    """An ``httpcore.Request`` built from values already in its types: its own
    ``__init__`` re-checks every header pair through ``isinstance`` against the
    ``typing`` ABCs, which costs more than all of the rest of the request."""

    def __init__(self, method: bytes, url: httpcore.URL, headers: list[tuple[bytes, bytes]],
                 stream: httpx.SyncByteStream | httpx.AsyncByteStream,
                 extensions: dict[str, Any]) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.stream = stream
        self.extensions = extensions


def core_request(attempt: Attempt, request: httpx.Request,
                 address: str | None = None) -> httpcore.Request:
    """:func:`upstream_request` as the ``httpcore.Request`` ``httpx.HTTPTransport`` would
    make of it: same URL, head bytes (:func:`head_bytes`), body stream and extensions,
    without the intermediate ``httpx.Request``."""
    aimed, extensions = _target(attempt, request, address)
    headers = head_bytes(attempt.authority, attempt.headers, request.headers.encoding)
    return _CoreRequest(request.method.encode("ascii"), _core_url(aimed), headers,
                        request.stream, extensions)


CORE_SEND_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProxyError,
                    httpcore.UnsupportedProtocol, httpcore.ProtocolError)
"""The httpcore errors httpx maps to its ``TransportError``s (``map_httpcore_exceptions``)."""


def classify_core_exception(exc: Exception) -> Outcome:
    """:func:`classify_exception` for the httpcore error httpx would have mapped."""
    if isinstance(exc, (httpcore.ConnectError, httpcore.ConnectTimeout)):
        return Outcome(failure=Failure.CONNECT_FAILURE)
    if isinstance(exc, httpcore.TimeoutException):
        return Outcome(failure=Failure.TIMEOUT)
    return Outcome(failure=Failure.RESET)


def classify_core_response(response: httpcore.Response) -> AttemptResult:
    """:func:`classify_response` on the raw head of an httpcore response."""
    grpc = b""
    for k, v in response.headers:
        if len(k) == 11 and k.lower() == b"grpc-status":  # len first: most names differ
            grpc = v if not grpc else grpc + b", " + v
    return AttemptResult(status_outcome(response.status, grpc), response)


_STATUS_OUTCOMES: dict[int, Outcome] = {}


def status_outcome(status: int, grpc_status: str | bytes = "") -> Outcome:
    """The outcome of a response with ``status`` and the text of its ``grpc-status``
    header(s) (empty: none). Without a gRPC status, one shared object per status code
    (outcomes are frozen): the common case is a dict lookup."""
    if grpc_status:
        return Outcome(status=status,
                       grpc_status=int(grpc_status) if grpc_status.isdigit() else None)
    outcome = _STATUS_OUTCOMES.get(status)
    if outcome is None:
        outcome = Outcome(status=status)
        if 100 <= status <= 999:  # bounded: HTTP's three-digit codes only
            _STATUS_OUTCOMES[status] = outcome
    return outcome


def shadow_authority(authority: str) -> str:
    """Envoy marks mirrored traffic by its Host: ``reviews:9080`` -> ``reviews-shadow:9080``."""
    if authority.startswith("["):  # an IPv6 literal has no name to mark
        return authority
    host, colon, port = authority.rpartition(":")
    if not colon or not port.isdigit():
        return f"{authority}-shadow"
    return f"{host}-shadow:{port}"


def mirror_request(attempt: Attempt, request: httpx.Request) -> httpx.Request:
    """A mirror copy: same head and body bytes, never the caller's stream object; the
    Host gets Envoy's ``-shadow`` suffix so the mirror's server can tell copies apart."""
    headers = head_bytes(shadow_authority(attempt.authority), attempt.headers,
                         request.headers.encoding)
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
    return AttemptResult(status_outcome(response.status_code, grpc), response)


def call_info(result: CallResult) -> CallInfo:
    """The caller's summary of a verdict."""
    endpoint = result.endpoint
    return CallInfo(result.flags, result.attempts, result.route_name, result.cluster,
                    endpoint.authority if endpoint is not None else None,
                    result.local_reply is not None)


def local_response(reply: LocalReply, request: httpx.Request, info: CallInfo) -> httpx.Response:
    return httpx.Response(reply.status, headers=list(reply.headers), content=reply.body,
                          request=request, extensions={EXTENSION: info})


def _head(result: CallResult, raw: list[tuple[bytes, bytes]], source: httpx.Headers | None
          ) -> httpx.Headers:
    """The caller's response headers from the upstream's raw head (``source`` is it as
    ``httpx.Headers`` when already built)."""
    if result.response_headers is not None:
        if source is None:
            source = httpx.Headers(raw)
        items = source.multi_items()
        before = list(items)
        after = result.response_headers(items)
        if after != before:  # re-encoded as the upstream's header bytes were decoded
            return httpx.Headers(after, encoding=source.encoding)
    # unchanged: copy the bytes, no decode and re-encode
    return lowered_headers(raw, source.encoding if source is not None else None)


_PROBE = httpx.Headers()
_HEADERS_LIST = (isinstance(getattr(_PROBE, "_list", None), list)
                 and hasattr(_PROBE, "_encoding"))
del _PROBE


def lowered_headers(raw: list[tuple[bytes, bytes]], encoding: str | None = None
                    ) -> httpx.Headers:
    """``httpx.Headers`` of an upstream's raw head with lower-case names (as Envoy
    forwards them). Fills httpx's private ``_list`` of (name, lower name, value) and
    ``_encoding`` directly when it has them: its constructor re-checks the type of every
    name and value, and checks its argument against ``typing.Mapping`` even when empty,
    which alone cost more than the rest of this function."""
    if not _HEADERS_LIST:  # pragma: no cover - another httpx
        return httpx.Headers([(k.lower(), v) for k, v in raw], encoding=encoding)
    headers = httpx.Headers.__new__(httpx.Headers)
    headers._encoding = encoding
    items: list[tuple[bytes, bytes, bytes]] = []
    for name, value in raw:
        name = name.lower()
        items.append((name, name, value))
    headers._list = items
    return headers


def response_head(result: CallResult, upstream: httpx.Response, info: CallInfo | None = None
                  ) -> tuple[httpx.Headers, dict[str, Any]]:
    """The caller's response head: the upstream's headers (names lower-case, as Envoy
    forwards them) after the route's response operations and CORS, and the upstream's
    extensions plus :data:`EXTENSION`."""
    source = upstream.headers
    headers = _head(result, source.raw, source)
    extensions = dict(upstream.extensions)
    extensions[EXTENSION] = info if info is not None else call_info(result)
    return headers, extensions


def caller_response(result: CallResult, request: httpx.Request,
                    observers: Sequence[Callable[[httpx.Request, CallResult, CallInfo], None]],
                    stream_class: type[ReleasingStream] | type[AsyncReleasingStream],
                    call: OutboundCall | None = None) -> httpx.Response:
    """The response the caller sees for the flow's verdict: the local reply, or the
    upstream's status and head (:func:`response_head`) with its body passed through
    ``stream_class`` (:class:`ReleasingStream` or :class:`AsyncReleasingStream`), which
    gives back the call's slot when closed. An upstream answer read straight from
    httpcore (the direct path) goes through the same class. Observers
    see the call first; telemetry (``call``) is finished when the body is closed."""
    info = call_info(result)
    for observe in observers:
        observe(request, result, info)
    if result.local_reply is not None:
        result.release()
        response = local_response(result.local_reply, request, info)
        if call is not None:
            call.responded(result, result.local_reply.headers)
            call.finish(len(result.local_reply.body))
        return response
    upstream = result.response
    if isinstance(upstream, httpcore.Response):
        extensions = dict(upstream.extensions)
        extensions[EXTENSION] = info
        headers = _head(result, upstream.headers, None)
        if call is not None:
            call.responded(result, headers, _http_version(extensions))
        return httpx.Response(upstream.status, headers=headers,
                              stream=stream_class(upstream, result.release, call),
                              request=request, extensions=extensions)
    headers, extensions = response_head(result, upstream, info)
    if call is not None:
        call.responded(result, headers, _http_version(extensions))
    return httpx.Response(upstream.status_code, headers=headers,
                          stream=stream_class(upstream, result.release, call),
                          request=request, extensions=extensions)


def _http_version(extensions: dict[str, Any]) -> str | None:
    version = extensions.get("http_version")
    return version.decode("ascii") if isinstance(version, bytes) else None


class _Releasing:
    """What the four body streams share: count the bytes the caller reads, and on
    close give back the call's slot and finish its telemetry, once.

    ``inner`` is the mesh's own upstream response: an ``httpx.Response`` from an inner
    transport, whose byte stream is read directly (the caller's response already does
    httpx's bookkeeping once), or an ``httpcore.Response`` from the direct path, whose
    errors while reading become httpx's, as ``httpx.HTTPTransport``'s stream does.
    """

    def __init__(self, inner: httpx.Response | httpcore.Response,
                 release: Callable[[], None], call: OutboundCall | None = None) -> None:
        self._inner: httpx.Response | httpcore.Response | None = inner
        self._release: Callable[[], None] | None = release
        self._call = call
        self.bytes_read = 0

    def _done(self) -> None:
        """Give back the call's slot and finish its telemetry (the first time only),
        then let go of the upstream response and the call's state: httpx keeps the
        caller's response in a reference cycle, and whatever this stream still held
        would wait with it for the garbage collector."""
        release, call = self._release, self._call
        self._release = self._call = self._inner = None
        try:
            if release is not None:
                release()
        finally:
            if call is not None:
                call.finish(self.bytes_read)


class ReleasingStream(_Releasing, httpx.SyncByteStream):
    """The upstream body, passed through unbuffered; closing it frees the call's slot."""

    def __iter__(self) -> Iterator[bytes]:
        inner = self._inner
        if inner is None:
            raise httpx.StreamClosed()
        stream = inner.stream
        if not hasattr(stream, "__iter__"):  # not the Iterable ABC: its check costs more
            raise RuntimeError("Attempted to call a sync iterator on an async stream.")
        try:
            for chunk in stream:
                self.bytes_read += len(chunk)
                yield chunk
        except Exception:
            _reraise_mapped(inner)

    def close(self) -> None:
        try:
            inner = self._inner
            if isinstance(inner, httpcore.Response):
                # what httpx's own transport does: close the body stream itself
                # (httpcore's Response.close first checks it against typing.Iterable)
                close = getattr(inner.stream, "close", None)
                if close is not None:
                    close()
            elif inner is None:
                pass  # closed already
            elif isinstance(inner.stream, httpx.SyncByteStream):
                inner.stream.close()
            else:
                raise RuntimeError("Attempted to call an sync close on an async stream.")
        finally:
            self._done()


class AsyncReleasingStream(_Releasing, httpx.AsyncByteStream):
    """Async twin of :class:`ReleasingStream`."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        inner = self._inner
        if inner is None:
            raise httpx.StreamClosed()
        stream = inner.stream
        if not hasattr(stream, "__aiter__"):  # not the AsyncIterable ABC: its check costs more
            raise RuntimeError("Attempted to call an async iterator on an sync stream.")
        try:
            async for chunk in stream:
                self.bytes_read += len(chunk)
                yield chunk
        except Exception:
            _reraise_mapped(inner)

    async def aclose(self) -> None:
        try:
            inner = self._inner
            if isinstance(inner, httpcore.Response):
                aclose = getattr(inner.stream, "aclose", None)  # as in close()
                if aclose is not None:
                    await aclose()
            elif inner is None:
                pass  # closed already
            elif isinstance(inner.stream, httpx.AsyncByteStream):
                await inner.stream.aclose()
            else:
                raise RuntimeError("Attempted to call an async close on an sync stream.")
        finally:
            self._done()


def _reraise_mapped(inner: httpx.Response | httpcore.Response) -> NoReturn:
    """Re-raise the exception being handled, as httpx's own transport would: an error
    of a body read straight from httpcore becomes httpx's (``map_httpcore_exceptions``);
    an httpx response's errors are httpx's already. Called only once an exception is
    raised, so a body read without error never builds the context manager (a tenth of
    the cost of passing a body through)."""
    if isinstance(inner, httpcore.Response):
        with map_httpcore_exceptions():
            raise
    raise
