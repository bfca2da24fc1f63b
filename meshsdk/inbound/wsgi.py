"""The mesh's inbound side for any WSGI app: :class:`MeshWSGIMiddleware`.

    app = MeshWSGIMiddleware(app, mesh)

For each request it asks :class:`~meshsdk.inbound.handler.InboundHandler` (identity,
PeerAuthentication, JWT, AuthorizationPolicy, telemetry) and either answers the denial
itself or calls the app inside the request's trace context and deadline. The response
iterable is wrapped: every chunk is counted (and produced with the context current, so
streaming generators calling ``mesh.client()`` stay in the trace), and the request is
recorded when the server closes it, as PEP 3333 requires servers to do.

The peer certificate is found, in order, in ``environ["meshsdk.peer_certificate"]``
(DER, PEM or parsed; for servers or hooks that put it there), or on the TLS socket
gunicorn exposes as ``environ["gunicorn.socket"]``. Framework plugins name the route
with :func:`~meshsdk.inbound.handler.set_route`, ``environ["meshsdk.route"]``, or a
``route`` callback the middleware calls only for a request whose span records, when the
app starts its response (so unsampled requests, most of them, pay nothing for it).
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
import ssl
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

from meshsdk.inbound.handler import InboundHandler, InboundRequest, PeerCertificate
from meshsdk.memo import remember
from meshsdk.mesh import Mesh

Environ = MutableMapping[str, Any]
RouteOf = Callable[[Environ], "str | None"]
"""A plugin's route lookup: the matched route template of the request in ``environ``."""
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class StartResponse(Protocol):
    """PEP 3333's ``start_response``."""

    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: ExcInfo | None = None, /) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

ROUTE_KEY = "meshsdk.route"
"""Environ key a framework plugin may fill with the route template (``/users/{id}``)."""
REQUEST_KEY = "meshsdk.request"
"""Environ key under which the app finds its :class:`InboundRequest`."""
PEER_CERT_KEY = "meshsdk.peer_certificate"
"""Environ key for the verified client certificate, for servers other than gunicorn."""

def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def peer_certificate(environ: Environ) -> PeerCertificate | None:
    """The client certificate the server verified, where a WSGI server can put it."""
    given = environ.get(PEER_CERT_KEY)
    if given is not None:
        return given  # type: ignore[no-any-return]
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, ssl.SSLSocket):
        der = _peer_ders.get(sock)
        if der is None:
            der = sock.getpeercert(True)
            if der:
                _peer_ders[sock] = der
        return der or None
    return None


_peer_ders: weakref.WeakKeyDictionary[ssl.SSLSocket, bytes] = weakref.WeakKeyDictionary()
"""gunicorn's TLS connection socket -> the client certificate its handshake verified:
fixed for the connection (no post-handshake authentication), and copied out of OpenSSL
on each ask, so asked once per connection."""


def _header_name(key: str) -> str:
    """The header name of an environ key, "" for a key that is no header."""
    if key.startswith("HTTP_"):
        return key[5:].replace("_", "-").lower()
    if key == "CONTENT_TYPE":
        return "content-type"
    if key == "CONTENT_LENGTH":
        return "content-length"
    return ""


_Values = Callable[[Environ], "tuple[str, ...]"]
_Plan = tuple[_Values, tuple[str, ...], bool]
_plans: dict[tuple[str, ...], _Plan] = {}
"""An environ's keys, in order -> how to read its header values (in one C call), the
header names, and whether CGI's CONTENT_TYPE or CONTENT_LENGTH is among them. A client
sends the same headers request after request, so its environs share their keys: one
lookup finds the headers, and their values are read without a Python loop."""
_PLANS_LIMIT = 256
_CGI_NAMES = ("content-type", "content-length")


def _plan(keys: tuple[str, ...]) -> _Plan:
    header_keys: list[str] = []
    header_names: list[str] = []
    for key in keys:
        name = _header_name(key)
        if name:
            header_keys.append(key)
            header_names.append(name)
    values: _Values
    if len(header_keys) > 1:
        values = operator.itemgetter(*header_keys)  # returns a tuple of the values
    elif header_keys:
        key = header_keys[0]

        def values(environ: Environ) -> tuple[str, ...]:
            return (environ[key],)
    else:
        def values(environ: Environ) -> tuple[str, ...]:
            return ()
    plan = (values, tuple(header_names), any(name in _CGI_NAMES for name in header_names))
    remember(_plans, keys, plan, _PLANS_LIMIT)  # clients inventing header names
    return plan


def _headers(environ: Environ) -> list[tuple[str, str]]:
    """The request's headers, names in lower case, from the environ's keys.

    CGI's CONTENT_TYPE and CONTENT_LENGTH are set empty when the request has no such
    header: they count only when not empty (HTTP_* keys always do)."""
    keys = tuple(environ)
    plan = _plans.get(keys)
    if plan is None:
        plan = _plan(keys)
    values, names, cgi = plan
    # as many values as names, by the plan; and any keyword to zip() (strict=) sends
    # it down a slower constructor, a measurable part of this function
    pairs = list(zip(names, values(environ)))  # noqa: B905
    if cgi:
        return [(name, value) for name, value in pairs if value or name not in _CGI_NAMES]
    return pairs


_HEADER_NAMES_LIMIT = 4096
_environ_keys: dict[str, str] = {}
"""Header name -> its environ key (names the policies set: JWT outputs, x-request-id)."""


def _environ_key(name: str) -> str:
    key = _environ_keys.get(name)
    if key is None:
        upper = name.upper().replace("-", "_")
        key = upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{upper}"
        if len(_environ_keys) < _HEADER_NAMES_LIMIT:
            _environ_keys[name] = key
    return key


_local_ips: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
"""gunicorn's connection socket -> its local IP: fixed for the connection, and a system
call to ask, so asked once per connection rather than once per request."""


def _local_ip(sock: Any) -> str | None:
    try:
        return _local_ips[sock]
    except (KeyError, TypeError):  # TypeError: an object that cannot be weakly keyed
        pass
    try:
        ip: str = sock.getsockname()[0]
    except (OSError, IndexError):
        return None
    with contextlib.suppress(TypeError):
        _local_ips[sock] = ip
    return ip


_PORT_NUMBERS_LIMIT = 4096
_port_numbers: dict[object, int] = {}
"""A port as the server gave it (text, or an int) -> its number. A keep-alive client
sends many requests from one port, and parsing text into an int is a measurable part of
a request's cost before its response; bounded, as clients' ports come and go."""


def _port_number(value: object) -> int | None:
    """The number of a port missing from ``_port_numbers`` (learnt when valid)."""
    text = str(value) if value is not None else ""
    if not text.isdigit():
        return None
    number = int(text)
    if type(value) in (str, int):  # what servers give; anything else is not kept
        remember(_port_numbers, value, number, _PORT_NUMBERS_LIMIT)
    return number


Facts = tuple[str, str, str, str, list[tuple[str, str]], str | None, int | None, str | None,
              int | None, PeerCertificate | None]
"""method, scheme, authority, path, headers, remote IP and port, local IP and port, peer
certificate: the first arguments of ``InboundHandler._start``."""


def _facts(environ: Environ) -> Facts:
    get = environ.get
    headers = _headers(environ)
    raw = get("RAW_URI") or get("REQUEST_URI")
    if raw:
        path = str(raw)
    else:
        path = quote(get("SCRIPT_NAME", "") + get("PATH_INFO", "/"), safe="/;=,@:!$&'()*+~")
        query = get("QUERY_STRING")
        if query:
            path = f"{path}?{query}"
    authority = get("HTTP_HOST") or f"{get('SERVER_NAME', 'unknown')}:{get('SERVER_PORT', '80')}"
    remote = get("REMOTE_ADDR")
    remote_ip: str | None = remote
    client_port = None
    if remote:
        # PEP 3333 does not define REMOTE_PORT; servers set it as text or (werkzeug) an int
        text = get("REMOTE_PORT")
        client_port = _port_numbers.get(text)
        if client_port is None:
            client_port = _port_number(text)
        if client_port is not None:
            remote_ip = str(remote)
    local_ip: str | None = None
    server_port = get("SERVER_PORT")
    local_port = _port_numbers.get(server_port)
    if local_port is None:
        local_port = _port_number(server_port)
    if local_port is not None:
        local_ip = get("meshsdk.local_address")
        sock = get("gunicorn.socket")
        if local_ip is None and sock is not None:
            local_ip = _local_ip(sock)
        local_ip = str(local_ip or get("SERVER_NAME", ""))
    return (get("REQUEST_METHOD", "GET"), get("wsgi.url_scheme", "http"), authority, path,
            headers, remote_ip, client_port, local_ip, local_port, peer_certificate(environ))


def environ_facts(environ: Environ) -> dict[str, Any]:
    """What the handler needs from a WSGI environ (keyword arguments of ``start``)."""
    (method, scheme, authority, path, headers, remote_ip, remote_port, local_ip, local_port,
     cert) = _facts(environ)
    return {"method": method, "scheme": scheme, "authority": authority, "path": path,
            "headers": headers,
            "client": (remote_ip, remote_port) if remote_port is not None else remote_ip,
            "server": (local_ip, local_port) if local_port is not None else None,
            "peer_certificate": cert}


def start_request(handler: InboundHandler, environ: Environ) -> InboundRequest:
    """``handler.start(**environ_facts(environ))``, without the keyword round trip (for
    this module's middleware and the framework plugins)."""
    return handler._start(*_facts(environ), None, None, None)


def _apply(environ: Environ, request: InboundRequest) -> None:
    """Put the policy's header changes and new query into ``environ``."""
    for name in request.removed:
        environ.pop(_environ_key(name), None)
    for name, value in request.added:
        environ[_environ_key(name)] = value
    if request.query is not None:
        environ["QUERY_STRING"] = request.query
        raw = environ.get("RAW_URI")
        if raw:
            base = str(raw).partition("?")[0]
            environ["RAW_URI"] = f"{base}?{request.query}" if request.query else base


class MeshWSGIMiddleware:
    """Mesh inbound policy and telemetry around a WSGI app.

    Give a ``mesh`` (options go to :class:`InboundHandler`: ``port``,
    ``trusted_proxies``, ``jwks``, ``audit``, ``custom``...) or a ready ``handler``.
    ``route`` names the span of a request that records: called with the environ when
    the app calls ``start_response`` (after its routing), unless a route is set already.
    """

    def __init__(self, app: WSGIApp, mesh: Mesh | None = None, *,
                 handler: InboundHandler | None = None, route: RouteOf | None = None,
                 **options: Any) -> None:
        if handler is None:
            if mesh is None:
                raise TypeError("MeshWSGIMiddleware needs a mesh or a handler")
            handler = InboundHandler(mesh, **options)
        self.app = app
        self.handler = handler
        self.route = route

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        request = start_request(self.handler, environ)
        if not request.allowed:
            assert request.status is not None
            reason = _reason(request.status)
            start_response(f"{request.status} {reason}".rstrip(),
                           list(request.response_headers))
            request.finish(request.status, request.response_headers, len(request.body))
            return [request.body]
        if request.headers_changed or request.query is not None:
            _apply(environ, request)
        environ[REQUEST_KEY] = request
        return _Response(self.app, environ, start_response, request, self.route)


_PLAIN_ITERATORS: tuple[type, ...] = (type(iter([])), type(iter(())))

_STATUS_CODES_LIMIT = 256
_status_codes: dict[str, int] = {}
"""An app's status line (``"200 OK"``) -> its code: apps answer with the same few, and
parsing the number costs more than this lookup."""


def _status_code(status: str) -> int:
    """The code of a status line missing from ``_status_codes`` (0 when it has none)."""
    code = status.partition(" ")[0]
    number = int(code) if code.isdigit() else 0
    if type(status) is str:  # kept, bounded: apps may invent reason phrases
        remember(_status_codes, status, number, _STATUS_CODES_LIMIT)
    return number


class _Response:
    """The app's response iterable, counted and recorded on ``close()``."""

    # Defaults as class attributes: each instance sets only what its request changes
    # (one is made per request, before the app runs).
    status = 0
    head: Sequence[tuple[str, str]] = ()
    sent = 0
    _inner: Iterable[bytes] | None = None
    _iter: Iterator[bytes] | None = None
    _first: bytes | None = None
    _ended = False
    _context: contextvars.Context | None = None

    def __init__(self, app: WSGIApp, environ: Environ, start_response: StartResponse,
                 request: InboundRequest, route_of: RouteOf | None = None) -> None:
        self.request = request
        self.environ = environ
        self._route_of = route_of
        self._start_response = start_response
        try:
            with request:
                self._inner = app(environ, self._start)
                self._iter = iter(self._inner)
                # A list or tuple body yields without running app code: no context to
                # enter. Any other body may run app code for its first chunk: that
                # chunk is taken now, while the context is current, rather than in a
                # second entry before the response can start (most bodies are one chunk).
                plain = type(self._iter) in _PLAIN_ITERATORS
                if not plain:
                    try:
                        self._first = next(self._iter)
                    except StopIteration:
                        self._ended = True
                if not plain or hasattr(self._inner, "close"):
                    # Later chunks and close() run in a copy of this context: the
                    # request current, its deadline as anchored now, and what the app
                    # set. One Context.run per entry instead of setting and resetting
                    # the request's variables each time.
                    self._context = contextvars.copy_context()
        except BaseException:
            self._fail()
            raise

    def _start(self, status: str, headers: list[tuple[str, str]],
               exc_info: ExcInfo | None = None) -> Callable[[bytes], object]:
        code = _status_codes.get(status)
        if code is None:
            code = _status_code(status)
        self.status = code
        if self.request.response_headers:
            headers = [*headers, *self.request.response_headers]
        self.head = list(headers)  # InboundRequest.finish lower-cases the names
        request = self.request
        if not request.route:
            route = self.environ.get(ROUTE_KEY)
            if route:
                request.route = str(route)
            elif self._route_of is not None and request.wants_route:
                request.route = self._route_of(self.environ) or request.route
        write = self._start_response(status, headers, exc_info)

        def counting_write(data: bytes) -> object:
            self.sent += len(data)
            return write(data)

        return counting_write

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        first = self._first
        if first is not None:
            self._first = None
            self.sent += len(first)
            return first
        if self._ended:
            raise StopIteration
        assert self._iter is not None
        try:
            context = self._context
            chunk = next(self._iter) if context is None else context.run(next, self._iter)
        except StopIteration:
            raise
        except BaseException:
            self._fail()
            raise
        self.sent += len(chunk)
        return chunk

    def _fail(self) -> None:
        started = self.status != 0
        self.request.finish(self.status if started else 500, self.head, self.sent,
                            bytes_received=self._received(), flags="DC" if started else "-")

    def _received(self) -> int | None:
        length = self.environ.get("CONTENT_LENGTH")
        return int(length) if length and str(length).isdigit() else None

    def close(self) -> None:
        """Called by the server when the response is done (or abandoned)."""
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                context = self._context
                if context is None:
                    close()
                else:
                    context.run(close)
        finally:
            if not self.request.finished:
                complete = sys.exc_info()[0] is None and self.status != 0
                self.request.finish(self.status, self.head, self.sent,
                                    bytes_received=self._received(),
                                    flags="-" if complete else "DC")


__all__ = ["PEER_CERT_KEY", "REQUEST_KEY", "ROUTE_KEY", "Environ", "MeshWSGIMiddleware", "RouteOf",
           "environ_facts", "peer_certificate", "start_request"]
