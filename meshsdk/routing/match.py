"""Request matching: Istio's ``HTTPMatchRequest`` evaluated the way Envoy evaluates the
route match Istio generates from it.

Istio translates one match block into one Envoy route match (pilot's
``TranslateRouteMatch`` and ``sourceMatchHTTP``); this module reproduces the result:

* **uri** is matched against the path without the query string: ``exact`` and
  ``prefix`` honour ``ignoreUriCase``, ``regex`` is an RE2 *full* match and ignores it
  (Envoy's ``safe_regex`` has no case option). No ``uri`` (or ``uri: {}``) is Envoy's
  ``prefix: "/"``: every path.
* **headers** (names lower-case): a ``null`` or ``{}`` StringMatch, or ``regex: "*"``,
  means *present*; otherwise a missing header never matches. Repeated headers are
  matched on their values joined with ``","`` (Envoy's rule, and RequestView's).
  ``:method``, ``:scheme``, ``:authority`` (also ``host``) and ``:path`` read the
  request line. JWT claims (``@request.auth.claims...``) are a gateway feature: on the
  outbound path there is no verified token, so they never match.
* **withoutHeaders** is the negation with Envoy's ``treat_missing_header_as_empty``:
  a missing header is matched as ``""`` and the result inverted, so
  ``withoutHeaders: {end-user: {exact: jason}}`` matches requests without the header.
  A presence match there means "the header is absent".
* **queryParams**: Envoy matches the *raw* (not percent-decoded) first value of the
  parameter; ``?flag`` has the value ``""``; ``{}`` or ``regex: "*"`` means present.
* **method / scheme / authority** are header matches on ``:method``, ``:scheme`` and
  ``:authority`` (the Host as the caller wrote it, ``reviews:9080``): case-sensitive.
* **port** must equal the port the request is sent to (Istio builds routes per port).
* **gateways / sourceLabels / sourceNamespace** (``sourceMatchHTTP``): a match naming
  gateways applies to sidecars (and so to the SDK) only when ``mesh`` is among them,
  and then ``sourceLabels``/``sourceNamespace`` are *not* consulted (Istio's code
  checks one or the other). Without gateways, ``sourceLabels`` must be a subset of the
  calling workload's labels and ``sourceNamespace`` its namespace.

Everything is compiled once per match block and cached, so matching a request is a
handful of attribute reads and string comparisons. Regexes are RE2 (the ``re2``
module), as in Envoy; the compiled objects are cached by pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import re2

from meshsdk.config.kinds.virtual_service import HTTPMatchRequest
from meshsdk.config.types import StringMatch
from meshsdk.memo import remember
from meshsdk.routing.request import RequestView

StrPredicate = Callable[[str], bool]
"""A compiled string condition: value -> matches."""

Check = Callable[[RequestView], bool]
"""A compiled request condition."""

MESH_GATEWAY = "mesh"
_JWT_CLAIM_PREFIX = "@request.auth.claims"
_COMPILED_LIMIT = 10_000


# --- RE2 -------------------------------------------------------------------------------

def _options(*, capture: bool) -> Any:
    opts = re2.Options()
    opts.log_errors = False
    if not capture:
        opts.never_capture = True
    return opts


@lru_cache(maxsize=4096)
def regex_fullmatcher(pattern: str) -> StrPredicate:
    """A predicate that is true when ``pattern`` (RE2) matches the *whole* value.

    Envoy's ``safe_regex`` uses ``RE2::FullMatch``. The ``re2`` module's ``fullmatch``
    builds a Match object in Python (~6 us); the binding's ``Match`` call with both
    ends anchored answers the same question in well under 1 us, so it is used when
    present. Raises ``re2.error`` for an invalid pattern (validation rejects those).
    """
    compiled = re2.compile(pattern, _options(capture=False))
    low = getattr(compiled, "_regexp", None)
    anchor = getattr(getattr(getattr(re2, "_re2", None), "RE2", None), "Anchor", None)
    if low is not None and anchor is not None and hasattr(low, "Match"):
        match = low.Match
        both = anchor.ANCHOR_BOTH

        def full(value: str) -> bool:
            data = value.encode()
            return bool(match(both, data, 0, len(data))[0][0] != -1)

        return full
    fullmatch = compiled.fullmatch  # pragma: no cover - older bindings
    return lambda value: fullmatch(value) is not None  # pragma: no cover


@lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> Any:
    """The ``re2`` regex object for ``pattern``, with capturing groups (for rewrites)."""
    return re2.compile(pattern, _options(capture=True))


# --- StringMatch -----------------------------------------------------------------------


def is_presence(m: StringMatch | None) -> bool:
    """Istio's ``canBeConvertedToPresentMatch``: ``null``, ``{}`` or ``regex: "*"``."""
    if m is None:
        return True
    if m.exact is None and m.prefix is None and m.regex is None:
        return True
    return m.exact is None and m.prefix is None and m.regex == "*"


@lru_cache(maxsize=8192)
def _compile_string(exact: str | None, prefix: str | None, regex: str | None,
                    ignore_case: bool) -> StrPredicate | None:
    if exact is not None:
        if ignore_case:
            folded = exact.lower()
            return lambda v: v.lower() == folded
        return exact.__eq__
    if prefix is not None:
        if not prefix:
            return None
        if ignore_case:
            folded = prefix.lower()
            return lambda v: v.lower().startswith(folded)
        return lambda v: v.startswith(prefix)
    if regex is not None:
        return regex_fullmatcher(regex)
    return None


def string_matcher(m: StringMatch | None, *, ignore_case: bool = False) -> StrPredicate | None:
    """Compile a StringMatch to a predicate; None means "any value" (``{}`` / no match)."""
    if m is None:
        return None
    return _compile_string(m.exact, m.prefix, m.regex, ignore_case)


def string_match(m: StringMatch, value: str | None, *, ignore_case: bool = False) -> bool:
    """Envoy's StringMatcher: ``exact``, ``prefix`` or ``regex`` (RE2, whole value).

    ``None`` (no such header, parameter...) never matches; an empty StringMatch
    (``{}``) matches any present value. ``ignore_case`` applies to exact and prefix
    only, as in Envoy.
    """
    if value is None:
        return False
    predicate = _compile_string(m.exact, m.prefix, m.regex, ignore_case)
    return True if predicate is None else predicate(value)


# --- request parts ---------------------------------------------------------------------


def request_path(req: RequestView) -> str:
    """The path without query string or fragment (what Envoy's path matchers see)."""
    path = req.path
    cut = path.find("?")
    if cut >= 0:
        path = path[:cut]
    cut = path.find("#")
    return path if cut < 0 else path[:cut]


def request_query(req: RequestView) -> str:
    """The raw query string, without ``?`` (from ``req.query`` or a ``?`` in ``req.path``)."""
    query = req.query
    if query:
        return query[1:] if query.startswith("?") else query
    path = req.path
    cut = path.find("?")
    if cut < 0:
        return ""
    query = path[cut + 1:]
    cut = query.find("#")
    return query if cut < 0 else query[:cut]


def parse_query(query: str) -> dict[str, str]:
    """First raw value of each parameter, as Envoy's route matcher reads them.

    ``a=1&a=2&flag`` -> ``{"a": "1", "flag": ""}``. Values are not percent-decoded:
    Envoy's ``QueryParameterMatcher`` compares the raw text.
    """
    params: dict[str, str] = {}
    if not query:
        return params
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if name not in params:
            params[name] = value if eq else ""
    return params


def _full_path(req: RequestView) -> str:
    query = request_query(req)
    path = request_path(req)
    return f"{path}?{query}" if query else path


_PSEUDO_HEADERS: dict[str, Callable[[RequestView], str | None]] = {
    ":method": lambda req: req.method,
    ":scheme": lambda req: req.scheme,
    ":authority": lambda req: req.authority,
    "host": lambda req: req.authority,
    ":path": _full_path,
}


def _always(_req: RequestView) -> bool:
    return True


def _never(_req: RequestView) -> bool:
    return False


# --- compiled match blocks -------------------------------------------------------------


class CompiledMatch:
    """One HTTPMatchRequest, compiled.

    :meth:`applicable` holds the conditions Istio applies when it *builds* routes for
    a proxy (port, gateways, source workload); :meth:`test` the ones Envoy evaluates
    per request. :meth:`matches` is both.
    """

    __slots__ = ("checks", "gateway_ok", "match", "port", "source_labels",
                 "source_namespace")

    def __init__(self, m: HTTPMatchRequest) -> None:
        self.match = m
        self.port: int | None = m.port or None
        if m.gateways:
            # sourceMatchHTTP: with gateways listed, only they decide.
            self.gateway_ok = MESH_GATEWAY in m.gateways
            self.source_labels: tuple[tuple[str, str], ...] = ()
            self.source_namespace: str | None = None
        else:
            self.gateway_ok = True
            self.source_labels = tuple(m.source_labels.items())
            self.source_namespace = m.source_namespace or None
        self.checks: tuple[Check, ...] = tuple(_compile_checks(m))

    def applicable(self, req: RequestView, port: int | None) -> bool:
        """Port, gateway and calling-workload conditions."""
        if not self.gateway_ok:
            return False
        if self.port is not None and self.port != port:
            return False
        if self.source_labels:
            labels = req.source.labels
            for key, value in self.source_labels:
                if labels.get(key) != value:
                    return False
        return self.source_namespace is None or self.source_namespace == req.source.namespace

    def test(self, req: RequestView) -> bool:
        """The per-request conditions: uri, scheme, method, authority, headers, query."""
        for check in self.checks:  # noqa: SIM110 - a plain loop is faster than all(genexpr)
            if not check(req):
                return False
        return True

    def matches(self, req: RequestView, port: int | None) -> bool:
        """All conditions; ``port`` is the port the request is sent to."""
        if not self.gateway_ok or (self.port is not None and self.port != port):
            return False
        if self.source_labels:
            labels = req.source.labels
            for key, value in self.source_labels:
                if labels.get(key) != value:
                    return False
        if self.source_namespace is not None and self.source_namespace != req.source.namespace:
            return False
        for check in self.checks:  # noqa: SIM110 - hot path
            if not check(req):
                return False
        return True


def _compile_checks(m: HTTPMatchRequest) -> list[Check]:
    checks: list[Check] = []
    if m.uri is not None:
        check = _uri_check(m.uri, bool(m.ignore_uri_case))
        if check is not None:
            checks.append(check)
    for name, pseudo in ((":method", m.method), (":scheme", m.scheme),
                         (":authority", m.authority)):
        if pseudo is not None and not is_presence(pseudo):
            checks.append(_header_check(name, pseudo))
    for name, sm in sorted(m.headers.items()):
        checks.append(_header_check(name.lower(), sm))
    for name, sm in sorted(m.without_headers.items()):
        checks.append(_without_header_check(name.lower(), sm))
    if m.query_params:
        checks.append(_query_check(m.query_params))
    return checks


def _uri_check(u: StringMatch, ignore_case: bool) -> Check | None:
    if u.exact is not None:
        if ignore_case:
            folded = u.exact.lower()
            return lambda req: request_path(req).lower() == folded
        exact = u.exact
        return lambda req: request_path(req) == exact
    if u.prefix is not None:
        if not u.prefix or u.prefix == "/":
            return None  # every path starts with "/" (Envoy's default route match)
        if ignore_case:
            folded = u.prefix.lower()
            return lambda req: request_path(req).lower().startswith(folded)
        prefix = u.prefix
        return lambda req: request_path(req).startswith(prefix)
    if u.regex is not None:
        full = regex_fullmatcher(u.regex)
        return lambda req: full(request_path(req))
    return None


def _header_check(name: str, sm: StringMatch | None) -> Check:
    if name.startswith(_JWT_CLAIM_PREFIX):
        return _never
    getter = _PSEUDO_HEADERS.get(name)
    if is_presence(sm):
        if getter is not None:
            return _always
        return lambda req: name in req.headers
    assert sm is not None
    predicate = string_matcher(sm)
    if predicate is None:  # `prefix: ""` matches any present value
        return _always if getter is not None else (lambda req: name in req.headers)
    if getter is not None:
        get = getter

        def pseudo_check(req: RequestView) -> bool:
            value = get(req)
            return value is not None and predicate(value)

        return pseudo_check
    if sm.exact is not None:
        exact = sm.exact
        return lambda req: req.headers.get(name) == exact

    def header_check(req: RequestView) -> bool:
        value = req.headers.get(name)
        return value is not None and predicate(value)

    return header_check


def _without_header_check(name: str, sm: StringMatch | None) -> Check:
    if name.startswith(_JWT_CLAIM_PREFIX):
        return _always  # an inverted match on a claim that is never there
    getter = _PSEUDO_HEADERS.get(name)
    if is_presence(sm):
        if getter is not None:
            return _never
        return lambda req: name not in req.headers
    predicate = string_matcher(sm)
    if predicate is None:
        return _never if getter is not None else (lambda req: name not in req.headers)
    if getter is not None:
        get = getter

        def pseudo_check(req: RequestView) -> bool:
            value = get(req)
            return not predicate(value if value is not None else "")

        return pseudo_check

    def header_check(req: RequestView) -> bool:
        return not predicate(req.headers.get(name, ""))

    return header_check


def _query_check(params: Mapping[str, StringMatch | None]) -> Check:
    compiled: list[tuple[str, StrPredicate | None]] = []
    for name, sm in sorted(params.items()):
        compiled.append((name, None if is_presence(sm) else string_matcher(sm)))
    items = tuple(compiled)

    def query_check(req: RequestView) -> bool:
        found = parse_query(request_query(req))
        for name, predicate in items:
            value = found.get(name)
            if value is None:
                return False
            if predicate is not None and not predicate(value):
                return False
        return True

    return query_check


_compiled: dict[int, tuple[HTTPMatchRequest, CompiledMatch]] = {}


def compile_match(m: HTTPMatchRequest) -> CompiledMatch:
    """The compiled form of a match block, cached per model object."""
    entry = _compiled.get(id(m))
    if entry is not None and entry[0] is m:
        return entry[1]
    cm = CompiledMatch(m)
    remember(_compiled, id(m), (m, cm), _COMPILED_LIMIT)
    return cm


def match_request(m: HTTPMatchRequest, req: RequestView) -> bool:
    """True when every condition set in ``m`` holds for ``req`` (see the module doc).

    The port compared with ``m.port`` is ``req.port``. :func:`meshsdk.routing.router.decide`
    uses the compiled form directly, with the port the request is routed on.
    """
    return compile_match(m).matches(req, req.port)


__all__ = [
    "CompiledMatch",
    "compile_match",
    "compile_regex",
    "is_presence",
    "match_request",
    "parse_query",
    "regex_fullmatcher",
    "request_path",
    "request_query",
    "string_match",
    "string_matcher",
]
