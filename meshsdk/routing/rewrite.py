"""What a chosen route changes in the request and response: path and authority
rewrites, redirect locations and header operations, as Envoy applies the
configuration Istio generates.

Path rewrite (``HTTPRewrite``), as Envoy's route rewrites work:

* ``uri`` becomes Envoy's ``prefix_rewrite``, which replaces *the part of the path the
  route matched*: the prefix for a ``prefix`` match; the whole path for an ``exact``
  or ``regex`` match; and, when the match block has no ``uri`` condition (or the route
  has no match at all), Istio's implicit ``prefix: "/"`` -- so only the leading ``/``
  is replaced (``uri: /v2/`` turns ``/ratings`` into ``/v2/ratings``). The query
  string is kept.
* ``uriRegexRewrite`` replaces every match of ``match`` in the path (without query)
  with ``rewrite``, RE2's ``GlobalReplace``: ``\\1``..``\\9`` insert groups, ``\\0``
  the whole match, ``\\\\`` a backslash. The query string is kept.
* the authority comes from ``rewrite.authority``, else a route-level request header
  ``set``/``add`` of ``:authority``/``host``, else the same on the chosen destination
  (Istio gives the route level precedence in both its single- and weighted-destination
  translations).

Header operations: see :func:`request_header_operations`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import re2

from meshsdk.config.kinds.virtual_service import (
    HeaderOperations,
    Headers,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRoute,
)
from meshsdk.memo import remember
from meshsdk.routing.match import compile_regex, request_path, request_query
from meshsdk.routing.request import RequestView

if TYPE_CHECKING:
    from meshsdk.routing.router import RouteDecision, Target

_CACHE_LIMIT = 4096


# --- path and authority ------------------------------------------------------------------


def matched_length(matched: HTTPMatchRequest | None, path: str) -> int:
    """How many leading characters of ``path`` Envoy's ``prefix_rewrite`` replaces."""
    uri = matched.uri if matched is not None else None
    if uri is not None:
        if uri.prefix is not None:
            return min(len(uri.prefix), len(path))
        if uri.exact is not None or uri.regex is not None:
            return len(path)
    return 1 if path.startswith("/") else 0


def rewrite_request(decision: RouteDecision, req: RequestView,
                    target: Target | None = None) -> tuple[str, str | None]:
    """The path to send upstream (with ``?query`` when the request has one) and the new
    authority, or None to keep the caller's.

    ``target`` (the destination picked by :func:`~meshsdk.routing.router.pick_target`)
    adds destination-level authority rewrites (``headers.request.set[":authority"]``).
    """
    return rewrite_path(decision, req), rewrite_authority(decision, target)


def rewrite_path(decision: RouteDecision, req: RequestView) -> str:
    """The path to send upstream, with ``?query`` when the request has one (the path
    part of :func:`rewrite_request`)."""
    path, query = req.path, req.query
    if "?" in path or "#" in path or query.startswith("?"):  # rare: normalise them
        path, query = request_path(req), request_query(req)
    route = decision.route
    rw = route.rewrite if route is not None else None
    if rw is not None:
        regex = rw.uri_regex_rewrite
        if regex is not None and regex.match:
            path = regex_replace_all(regex.match, regex.rewrite, path)
        elif rw.uri:
            path = rw.uri + path[matched_length(decision.matched, path):]
    return f"{path}?{query}" if query else path


def rewrite_authority(decision: RouteDecision, target: Target | None = None) -> str | None:
    """The new authority, or None to keep the caller's (the authority part of
    :func:`rewrite_request`); depends on the route and target only."""
    route = decision.route
    authority: str | None = None
    if route is not None:
        authority = route_authority(route) or None
    if authority is None and target is not None:
        authority = headers_authority(target.headers) or None
    return authority


def headers_authority(headers: Headers | None) -> str:
    """The authority a ``headers.request`` set/add of ``:authority``/``host`` asks for
    (``set`` wins over ``add``, as in Istio's ``TranslateHeadersOperations``)."""
    request = headers.request if headers is not None else None
    if request is None:
        return ""
    found = ""
    for name, value in request.add.items():
        if _is_authority(name):
            found = value
    for name, value in request.set_.items():
        if _is_authority(name):
            found = value
    return found


def route_authority(route: HTTPRoute) -> str:
    """Route-level authority: ``rewrite.authority``, else the route's header operations."""
    if route.rewrite is not None and route.rewrite.authority:
        return route.rewrite.authority
    return headers_authority(route.headers)


def _is_authority(name: str) -> bool:
    lowered = name.lower()
    return lowered == ":authority" or lowered == "host"


# --- RE2 GlobalReplace -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Substitution:
    parts: tuple[bytes | int, ...]   # literal bytes or a group number
    max_group: int


def _parse_substitution(text: str) -> _Substitution:
    """RE2's ``Rewrite``: ``\\N`` is group N, ``\\\\`` a backslash; anything else after a
    backslash is an error, and RE2 stops writing that replacement there."""
    parts: list[bytes | int] = []
    literal = bytearray()
    max_group = 0
    data = text.encode()
    i = 0
    while i < len(data):
        c = data[i]
        if c != 0x5C:  # backslash
            literal.append(c)
            i += 1
            continue
        nxt = data[i + 1] if i + 1 < len(data) else -1
        if 0x30 <= nxt <= 0x39:
            if literal:
                parts.append(bytes(literal))
                literal.clear()
            group = nxt - 0x30
            parts.append(group)
            max_group = max(max_group, group)
            i += 2
        elif nxt == 0x5C:
            literal.append(0x5C)
            i += 2
        else:
            break
    if literal:
        parts.append(bytes(literal))
    return _Substitution(tuple(parts), max_group)


_substitutions: dict[str, _Substitution] = {}


def _utf8_len(lead: int) -> int:
    if lead < 0x80:
        return 1
    if lead >= 0xF0:
        return 4
    if lead >= 0xE0:
        return 3
    return 2 if lead >= 0xC0 else 1


def regex_replace_all(pattern: str, substitution: str, text: str) -> str:
    """RE2 ``GlobalReplace(text, pattern, substitution)``, as Envoy's ``regex_rewrite``.

    Non-overlapping matches left to right; an empty match right after the previous
    match is skipped (RE2's rule, unlike Python's ``re.sub``). A substitution naming a
    group the pattern does not have changes nothing.
    """
    sub = _substitutions.get(substitution)
    if sub is None:
        sub = _parse_substitution(substitution)
        remember(_substitutions, substitution, sub, _CACHE_LIMIT)
    rx = compile_regex(pattern)
    if sub.max_group > rx.groups:
        return text
    low = getattr(rx, "_regexp", None)
    if low is not None and hasattr(low, "Match"):
        unanchored = re2._re2.RE2.Anchor.UNANCHORED
        match = low.Match

        def search(data: bytes, pos: int) -> Sequence[tuple[int, int]] | None:
            spans: Sequence[tuple[int, int]] = match(unanchored, data, pos, len(data))
            return None if spans[0][0] == -1 else spans
    else:  # pragma: no cover - bindings without the low-level call
        def search(data: bytes, pos: int) -> Sequence[tuple[int, int]] | None:
            found = rx.search(data, pos)
            if found is None:
                return None
            return [found.span(g) for g in range(rx.groups + 1)]
    data = text.encode()
    end = len(data)
    out = bytearray()
    pos = 0
    last_end = -1
    count = 0
    while pos <= end:
        spans = search(data, pos)
        if spans is None:
            break
        start, stop = spans[0]
        if pos < start:
            out += data[pos:start]
        if start == last_end and start == stop:
            step = _utf8_len(data[pos]) if pos < end else 1
            out += data[pos:pos + step]
            pos += step
            continue
        for part in sub.parts:
            if isinstance(part, bytes):
                out += part
            else:
                g_start, g_stop = spans[part] if part < len(spans) else (-1, -1)
                if g_start >= 0:
                    out += data[g_start:g_stop]
        pos = stop
        last_end = stop
        count += 1
    if count == 0:
        return text
    if pos < end:
        out += data[pos:]
    return out.decode("utf-8", "replace")


# --- redirects ---------------------------------------------------------------------------


def _request_host(authority: str, new_scheme: str, new_port: bool, request_scheme: str) -> str:
    """Envoy's ``processRequestHost``: drop the request's port when a redirect port is
    given, or when the scheme changes and the port was the old scheme's default."""
    if not authority:
        return authority
    if authority.startswith("["):
        end = authority.rfind("]:")
        host_end = end + 1 if end >= 0 else -1
    else:
        host_end = authority.rfind(":")
    if host_end >= 0:
        request_port = authority[host_end:]
        remove = new_port
        if new_scheme != request_scheme:
            remove = remove or (request_scheme == "https" and request_port == ":443")
            remove = remove or (request_scheme == "http" and request_port == ":80")
        if remove:
            return authority[:host_end]
    return authority


def redirect_location(redirect: HTTPRedirect, req: RequestView, port: int | None) -> str:
    """The ``Location`` of a redirect (Istio's ``ApplyRedirect`` + Envoy's ``newUri``).

    * scheme: ``redirect.scheme``, else the request's.
    * port: ``redirect.port``, or with ``derivePort: FROM_REQUEST_PORT`` the port the
      request was sent to (``port``); either is left out when it is the scheme's
      default (80 for http, 443 for https). ``FROM_PROTOCOL_DEFAULT`` sets no port:
      as in Envoy, the request's own ``host:port`` is then kept, except that a
      default port (``:80`` / ``:443``) is dropped when the scheme changes.
    * host: ``redirect.authority`` as written, else the request's authority (its port
      dropped when a redirect port is set).
    * path: ``redirect.uri`` replaces the whole path (the request's query string is
      kept unless ``uri`` has its own ``?``), else the request's path and query.
    """
    scheme = redirect.scheme or req.scheme
    port_redirect: int | None = None
    if redirect.port:
        port_redirect = redirect.port
    elif redirect.derive_port == "FROM_REQUEST_PORT":
        port_redirect = port
    if (port_redirect == 80 and scheme == "http") or (port_redirect == 443 and scheme == "https"):
        port_redirect = None
    port_text = f":{port_redirect}" if port_redirect else ""
    host = redirect.authority or _request_host(req.authority, scheme, bool(port_text),
                                               req.scheme)
    query = request_query(req)
    if redirect.uri:
        if "?" in redirect.uri:
            path = redirect.uri
        else:
            path = f"{redirect.uri}?{query}" if query else redirect.uri
    else:
        base = request_path(req)
        path = f"{base}?{query}" if query else base
    if not path.startswith("/"):
        path = "/" + path
    return f"{scheme}://{host}{port_text}{path}"


def request_url(req: RequestView) -> str:
    """``scheme://authority/path?query`` of the request (a direct response's ``Location``
    for 201 and 3xx statuses, as Envoy sets it)."""
    query = request_query(req)
    path = request_path(req) or "/"
    return f"{req.scheme}://{req.authority}{path}{'?' + query if query else ''}"


# --- header operations -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CompiledOps:
    remove: frozenset[str]
    set_names: frozenset[str]
    set_: tuple[tuple[str, str], ...]
    add: tuple[tuple[str, str], ...]


def _is_internal(name: str) -> bool:
    """``:``-headers and Host are never touched by header operations (Istio drops them;
    the authority is rewritten by :func:`rewrite_request`)."""
    return name.startswith(":") or name.lower() == "host"


def _value(raw: str) -> str:
    # Envoy header values are format strings: "%%" is a literal "%". Command
    # operators (%DOWNSTREAM_REMOTE_ADDRESS%...) are passed through unevaluated.
    return raw.replace("%%", "%") if "%%" in raw else raw


def _compile_ops(ops: HeaderOperations) -> _CompiledOps:
    sets: dict[str, str] = {}
    for name, raw in sorted(ops.set_.items()):  # Istio sorts by name; the last set wins
        value = _value(raw)
        if not _is_internal(name) and value:  # Envoy skips empty values
            sets[name.lower()] = value
    adds = tuple((name.lower(), _value(raw)) for name, raw in sorted(ops.add.items())
                 if not _is_internal(name) and _value(raw))
    remove = frozenset(n.lower() for n in ops.remove if not _is_internal(n))
    return _CompiledOps(remove, frozenset(sets), tuple(sets.items()), adds)


_compiled_ops: dict[int, tuple[HeaderOperations, _CompiledOps]] = {}


def _ops(ops: HeaderOperations) -> _CompiledOps:
    entry = _compiled_ops.get(id(ops))
    if entry is not None and entry[0] is ops:
        return entry[1]
    compiled = _compile_ops(ops)
    remember(_compiled_ops, id(ops), (ops, compiled), _CACHE_LIMIT)
    return compiled


def apply_header_operations(headers: Iterable[tuple[str, str]],
                            ops: HeaderOperations | None) -> list[tuple[str, str]]:
    """A new header list with ``ops`` applied as one Envoy header parser applies them:
    ``remove`` (every value) first, then ``set`` (replaces every value), then ``add``
    (appends). Names compare case-insensitively; names written by ``set``/``add`` are
    lower-case. Empty values are skipped (Envoy's default); ``%%`` is a literal ``%``.
    """
    out = list(headers)
    if ops is None:
        return out
    c = _ops(ops)
    if c.remove:
        out = [(n, v) for n, v in out if n.lower() not in c.remove]
    if c.set_:
        out = [(n, v) for n, v in out if n.lower() not in c.set_names]
        out.extend(c.set_)
    if c.add:
        out.extend(c.add)
    return out


def _merged_single(route_ops: HeaderOperations | None,
                   dest_ops: HeaderOperations | None) -> tuple[HeaderOperations, ...]:
    """Istio's single-destination translation appends the destination's operations to
    the route's in one Envoy header parser: all removes, then all sets (route first, so
    the destination's value wins), then all adds (route first)."""
    if dest_ops is None:
        return (route_ops,) if route_ops is not None else ()
    if route_ops is None:
        return (dest_ops,)
    sets: dict[str, str] = {}
    for ops in (route_ops, dest_ops):
        for name, value in sorted(ops.set_.items()):
            if value:
                sets[name.lower()] = value
    merged = HeaderOperations.model_validate(
        {"remove": [*route_ops.remove, *dest_ops.remove], "set": sets})
    out = [merged]
    for ops in (route_ops, dest_ops):
        if ops.add:
            out.append(HeaderOperations.model_validate({"add": dict(ops.add)}))
    return tuple(out)


_op_lists: dict[tuple[int, int, int, bool], tuple[Any, Any, tuple[HeaderOperations, ...]]] = {}


def _operations(decision: RouteDecision, target: Target, response: bool
                ) -> list[HeaderOperations]:
    route = decision.route
    if route is None:
        return []
    key = (id(route), id(target.headers), len(route.route), response)
    entry = _op_lists.get(key)
    if entry is not None and entry[0] is route and entry[1] is target.headers:
        return list(entry[2])
    route_headers = route.headers
    dest_headers = target.headers
    if response:
        r = route_headers.response if route_headers is not None else None
        d = dest_headers.response if dest_headers is not None else None
    else:
        r = route_headers.request if route_headers is not None else None
        d = dest_headers.request if dest_headers is not None else None
    if len(route.route) > 1:
        # Weighted clusters: Envoy evaluates the cluster's parser, then the route's.
        result = tuple(ops for ops in (d, r) if ops is not None)
    else:
        result = _merged_single(r, d)
    remember(_op_lists, key, (route, target.headers, result), _CACHE_LIMIT)
    return list(result)


def request_header_operations(decision: RouteDecision, target: Target) -> list[HeaderOperations]:
    """The request header operations for ``target``, in the order to apply them with
    :func:`apply_header_operations`.

    Istio translates route-level ``headers`` to the Envoy route and destination-level
    ``headers`` either into the same route (a single destination: Istio appends them,
    so one parser runs route-then-destination: all removes, then sets with the
    destination winning, then adds) or onto the weighted cluster (several
    destinations). Envoy evaluates a weighted cluster's operations *before* the
    route's, so there the route-level ``set`` wins and route-level ``remove`` also
    removes headers the destination added. Virtual host and route configuration
    levels are empty in Istio's sidecar configuration.
    """
    return _operations(decision, target, False)


def response_header_operations(decision: RouteDecision, target: Target
                               ) -> list[HeaderOperations]:
    """Response header operations for ``target``, in the same order as the request's
    (:func:`request_header_operations`)."""
    return _operations(decision, target, True)


__all__ = [
    "apply_header_operations",
    "headers_authority",
    "matched_length",
    "redirect_location",
    "regex_replace_all",
    "request_header_operations",
    "request_url",
    "response_header_operations",
    "rewrite_authority",
    "rewrite_path",
    "rewrite_request",
    "route_authority",
]
