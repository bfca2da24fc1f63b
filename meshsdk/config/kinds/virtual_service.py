"""VirtualService: how requests for a set of hosts are matched and routed.

The models follow Istio's ``networking.v1alpha3.VirtualService`` field for field,
deprecated spellings included (``mirrorPercent``, ``fault.delay.percent``,
``corsPolicy.allowOrigin``, ``L4MatchAttributes.sourceSubnet``). The rules are
Istio's ``ValidateVirtualService`` (pkg/config/validation), with paths and messages
that point at the offending field. A few silent no-ops that Istio accepts are
reported too, as warnings (see the individual checks).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Sequence
from typing import Literal

from pydantic import Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.base import NETWORKING, NETWORKING_VERSIONS, KindInfo
from meshsdk.config.types import (
    Duration,
    FlowStr,
    IstioModel,
    Percent,
    PortSelector,
    StringMatch,
    check_cidr,
    check_duration,
    check_export_to,
    check_fqdn,
    check_header_name,
    check_labels,
    check_percent,
    check_port,
    check_string_match,
    check_wildcard_domain,
    is_dns1123_label,
    is_ip,
    regex_error,
)

# --- models ------------------------------------------------------------------------


class Destination(IstioModel):
    """``host`` (required), ``subset`` (a DestinationRule subset), ``port.number``."""

    host: str = ""
    subset: str | None = None
    port: PortSelector | None = None


class HeaderOperations(IstioModel):
    """``set`` overwrites, ``add`` appends, ``remove`` deletes headers."""

    set_: dict[str, str] = Field(default_factory=dict, alias="set")
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class Headers(IstioModel):
    """Header manipulation for the request (to the upstream) and the response."""

    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPMatchRequest(IstioModel):
    """One match block: all its conditions must hold (blocks of a route are OR'ed)."""

    name: str | None = None
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch | None] = Field(default_factory=dict)
    without_headers: dict[str, StringMatch | None] = Field(default_factory=dict)
    query_params: dict[str, StringMatch | None] = Field(default_factory=dict)
    port: int | None = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    source_namespace: str | None = None
    gateways: list[str] = Field(default_factory=list)
    ignore_uri_case: bool | None = None
    stat_prefix: str | None = None


class HTTPRouteDestination(IstioModel):
    """A weighted destination of an HTTP route, with its own header manipulation."""

    destination: Destination | None = None
    weight: int | None = None
    headers: Headers | None = None


class RouteDestination(IstioModel):
    """A weighted destination of a TLS or TCP route."""

    destination: Destination | None = None
    weight: int | None = None


class HTTPRedirect(IstioModel):
    """Answer with a redirect; ``redirectCode`` defaults to 301."""

    uri: str | None = None
    authority: str | None = None
    port: int | None = None
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str | None = None
    redirect_code: int | None = None


class HTTPBody(IstioModel):
    """A direct response body: ``string`` or base64 ``bytes``."""

    string: str | None = None
    bytes_: str | None = Field(default=None, alias="bytes")


class HTTPDirectResponse(IstioModel):
    """Answer directly with ``status`` and an optional ``body``."""

    status: int | None = None
    body: HTTPBody | None = None


class Delegate(IstioModel):
    """Hand the route to another VirtualService (one without hosts)."""

    name: str = ""
    namespace: str | None = None


class RegexRewrite(IstioModel):
    """Rewrite the path with an RE2 ``match`` and its ``rewrite`` substitution."""

    match: str = ""
    rewrite: str = ""


class HTTPRewrite(IstioModel):
    """Rewrite the path (``uri`` replaces the matched prefix) and/or the authority."""

    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: RegexRewrite | None = None


class HTTPRetry(IstioModel):
    """Retry policy: ``attempts`` retries on ``retryOn`` conditions."""

    attempts: int | None = None
    per_try_timeout: Duration | None = None
    retry_on: str | None = None
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: Duration | None = None


class CorsPolicy(IstioModel):
    """Cross-origin resource sharing. ``allowOrigin`` is the deprecated exact-only list."""

    allow_origin: list[str] = Field(default_factory=list)
    allow_origins: list[StringMatch] = Field(default_factory=list)
    allow_methods: list[str] = Field(default_factory=list)
    allow_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    max_age: Duration | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None


class FaultDelay(IstioModel):
    """Delay a share of requests. ``percent`` is the deprecated integer form."""

    fixed_delay: Duration | None = None
    exponential_delay: Duration | None = None
    percentage: Percent | None = None
    percent: int | None = None


class FaultAbort(IstioModel):
    """Abort a share of requests with an HTTP status, a gRPC status or an HTTP/2 error."""

    http_status: int | None = None
    grpc_status: str | None = None
    http2_error: str | None = None
    percentage: Percent | None = None


class HTTPFaultInjection(IstioModel):
    """Fault injection: ``delay`` and/or ``abort``."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


class HTTPMirrorPolicy(IstioModel):
    """One entry of ``mirrors``: where to copy requests, and which share."""

    destination: Destination | None = None
    percentage: Percent | None = None


class HTTPRoute(IstioModel):
    """One HTTP rule: matches, then route, redirect, direct response or delegate."""

    name: str | None = None
    match: list[HTTPMatchRequest] = Field(default_factory=list)
    route: list[HTTPRouteDestination] = Field(default_factory=list)
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: Duration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] = Field(default_factory=list)
    mirror_percentage: Percent | None = None
    mirror_percent: int | None = None
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None


class TLSMatchAttributes(IstioModel):
    """Match on SNI (required), destination subnets, port, source."""

    sni_hosts: list[str] = Field(default_factory=list)
    destination_subnets: list[FlowStr] = Field(default_factory=list)
    port: int | None = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: list[str] = Field(default_factory=list)
    source_namespace: str | None = None


class TLSRoute(IstioModel):
    """Routing for TLS traffic that is passed through (not terminated)."""

    match: list[TLSMatchAttributes] = Field(default_factory=list)
    route: list[RouteDestination] = Field(default_factory=list)


class L4MatchAttributes(IstioModel):
    """Match opaque TCP traffic. ``sourceSubnet`` is deprecated and ignored by Istio."""

    destination_subnets: list[FlowStr] = Field(default_factory=list)
    port: int | None = None
    source_subnet: str | None = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: list[str] = Field(default_factory=list)
    source_namespace: str | None = None


class TCPRoute(IstioModel):
    """Routing for opaque TCP traffic."""

    match: list[L4MatchAttributes] = Field(default_factory=list)
    route: list[RouteDestination] = Field(default_factory=list)


class VirtualServiceSpec(IstioModel):
    """``spec`` of a VirtualService."""

    hosts: list[str] = Field(default_factory=list)
    gateways: list[str] = Field(default_factory=list)
    http: list[HTTPRoute] = Field(default_factory=list)
    tls: list[TLSRoute] = Field(default_factory=list)
    tcp: list[TCPRoute] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)


# --- shared checks (also used by the Sidecar and DestinationRule rules) -------------

MESH_GATEWAY = "mesh"
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_REGEX_MAX_LEN = 1024
_CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                 "*")
_PSEUDO_HEADERS = (":method", ":scheme", ":authority", ":path", ":status")
_JWT_CLAIM_PREFIXES = ("@request.auth.claims.", "@request.auth.claims[")
_GRPC_STATUSES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)
# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on policies, as Istio accepts them.
RETRY_ON_POLICIES = (
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
    "retriable-headers", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
)
# Status codes Go's net/http knows (http.StatusText != ""): what Istio accepts in retryOn.
_KNOWN_STATUS_CODES = frozenset(
    [100, 101, 102, 103, *range(200, 209), 226, *range(300, 306), 307, 308,
     *range(400, 419), *range(421, 427), 428, 429, 431, 451, *range(500, 509), 510, 511]
)
_BODY_ERROR_SIZE = 1024 * 1024
_BODY_WARN_SIZE = 100 * 1024


def check_destination(d: Destination, path: Path) -> Iterator[Finding]:
    """A route destination: a service host (not ``*``), a subset name, a port."""
    if not d.host:
        yield Finding((*path, "host"), "host is required")
    elif d.host == "*":
        yield Finding((*path, "host"), "must name a service, got '*'")
    else:
        yield from check_wildcard_domain(d.host, (*path, "host"))
    if d.subset and not is_dns1123_label(d.subset):
        yield Finding((*path, "subset"),
                      f"must be a DNS-1123 label (letters, digits and '-'), got {d.subset!r}")
    if d.port is not None:
        yield from check_port(d.port.number, (*path, "port", "number"))


def check_gateway_names(names: list[str], path: Path) -> Iterator[Finding]:
    """Gateway references: ``mesh``, ``<namespace>/<name>`` or a (legacy) name or FQDN."""
    for i, name in enumerate(names):
        p = (*path, i)
        ns, slash, gw = name.partition("/")
        if not slash:
            if "." in name:
                parts = name.split(".")
                yield Finding(p, f"legacy gateway name format {name!r}; prefer "
                                 f"<namespace>/<name>: {parts[1]}/{parts[0]}", "warning")
            yield from check_fqdn(name, p)
            continue
        if not ns or not gw:
            yield Finding(p, f"must be <namespace>/<name> with both parts set, got {name!r}")
            continue
        if not is_dns1123_label(ns):
            yield Finding(p, f"invalid namespace {ns!r} in gateway {name!r}")
        if not is_dns1123_label(gw):
            yield Finding(p, f"invalid gateway name {gw!r} in {name!r}")


def check_regex(pattern: str, path: Path) -> Iterator[Finding]:
    """An RE2 regex as Istio accepts it: not empty, at most 1024 characters, compiles."""
    if not pattern:
        yield Finding(path, "regex must not be empty")
    elif len(pattern) > _REGEX_MAX_LEN:
        yield Finding(path, f"regex is too long: at most {_REGEX_MAX_LEN} characters, "
                            f"got {len(pattern)}")
    elif (err := regex_error(pattern)) is not None:
        yield Finding(path, err)


def _check_string_match(m: StringMatch | None, path: Path, *, empty_prefix_ok: bool = False,
                        presence_ok: bool = False) -> Iterator[Finding]:
    """Exactly one of exact/prefix/regex (``{}`` allowed where it means 'present')."""
    if m is None:
        return
    if presence_ok and m.exact is None and m.prefix is None and m.regex is None:
        return
    findings = list(check_string_match(m, path))
    # check_string_match also compiles the regex; check_regex below says more.
    yield from (f for f in findings if f.path == path)
    if m.prefix == "" and not empty_prefix_ok:
        yield Finding((*path, "prefix"), "prefix must not be empty")
    if m.regex is not None:
        yield from check_regex(m.regex, (*path, "regex"))


def _is_jwt_claim(name: str) -> bool:
    return name.startswith(_JWT_CLAIM_PREFIXES)


def _check_match_header_name(name: str, path: Path) -> Iterator[Finding]:
    if not name:
        yield Finding(path, "header name must not be empty")
    elif _is_jwt_claim(name):
        return
    elif name.startswith(":"):
        if name not in _PSEUDO_HEADERS:
            yield Finding(path, f"unknown pseudo-header {name!r}; use one of "
                                f"{', '.join(_PSEUDO_HEADERS)}")
    else:
        yield from check_header_name(name, path)
        if name != name.lower():
            yield Finding(path, f"header names are matched case-insensitively; Istio documents "
                                f"them in lower case: {name.lower()!r}", "warning")


def _header_value_error(value: str) -> str | None:
    """Envoy header values: no control characters; '%' only as '%%' or around a variable."""
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        return f"header value {value!r} contains control characters"
    i = 0
    while i < len(value):
        if value[i] != "%":
            i += 1
        elif value.startswith("%%", i):
            i += 2
        else:
            end = value.find("%", i + 1)
            if end == -1:
                return (f"header value {value!r} has an unterminated '%' (write '%%' for a "
                        f"literal percent sign)")
            i = end + 1
    return None


def _is_authority(name: str) -> bool:
    return name.lower() in (":authority", "host")


def check_headers(h: Headers | None, path: Path) -> Iterator[Finding]:
    """Header manipulation: valid names and values; ``:``-headers and Host are off limits
    except that a request may set or add the authority (``:authority``/``host``)."""
    if h is None:
        return
    for side in ("request", "response"):
        ops: HeaderOperations | None = getattr(h, side)
        if ops is None:
            continue
        for op in ("set", "add"):
            values: dict[str, str] = ops.set_ if op == "set" else ops.add
            for name, value in values.items():
                p = (*path, side, op, name)
                yield from _check_header_op_name(name, p,
                                                 authority_ok=side == "request")
                if (err := _header_value_error(value)) is not None:
                    yield Finding(p, err)
        for i, name in enumerate(ops.remove):
            yield from _check_header_op_name(name, (*path, side, "remove", i),
                                             authority_ok=False)


def _check_header_op_name(name: str, path: Path, *, authority_ok: bool) -> Iterator[Finding]:
    if not name:
        yield Finding(path, "header name must not be empty")
    elif _is_authority(name):
        if not authority_ok:
            yield Finding(path, f"cannot change the {name!r} header here")
    elif name.startswith(":"):
        yield Finding(path, f"cannot change the pseudo-header {name!r}")
    else:
        yield from check_header_name(name, path)


def check_percentage(p: Percent | None, path: Path) -> Iterator[Finding]:
    """Istio's fault percentages: 0, or within [0.0001, 100]."""
    if p is None:
        return
    found = list(check_percent(p, path))
    yield from found
    if not found and 0 < p.value < 0.0001:
        yield Finding((*path, "value"), f"must be 0 or in [0.0001, 100], got {p.value:g}")


# --- rules -------------------------------------------------------------------------


def validate_virtual_service(spec: VirtualServiceSpec) -> Iterator[Finding]:
    """Istio's VirtualService validation, located."""
    delegate_vs = not spec.hosts
    if delegate_vs:
        yield Finding(("hosts",), "no hosts: this VirtualService only takes effect when "
                                  "another VirtualService delegates to it", "warning")
        if spec.gateways:
            yield Finding(("gateways",), "a delegate VirtualService (one without hosts) must "
                                         "not set gateways; the delegating one decides")
        if spec.tls:
            yield Finding(("tls",), "a delegate VirtualService (one without hosts) cannot have "
                                    "tls routes; only http routes can be delegated")
        if spec.tcp:
            yield Finding(("tcp",), "a delegate VirtualService (one without hosts) cannot have "
                                    "tcp routes; only http routes can be delegated")
    yield from check_gateway_names(spec.gateways, ("gateways",))
    to_gateways = bool(spec.gateways) and MESH_GATEWAY not in spec.gateways
    yield from _check_vs_hosts(spec, to_gateways)
    if not (spec.http or spec.tcp or spec.tls):
        yield Finding((), "must have at least one of http, tls or tcp routes")
    for i, route in enumerate(spec.http):
        yield from _check_http_route(route, ("http", i), spec, delegate_vs, to_gateways)
    for i, tls in enumerate(spec.tls):
        yield from _check_tls_route(tls, ("tls", i), spec, to_gateways)
    for i, tcp in enumerate(spec.tcp):
        yield from _check_tcp_route(tcp, ("tcp", i))
    yield from check_export_to(spec.export_to, ("exportTo",))
    yield from _unreachable_rules(spec)


def _check_vs_hosts(spec: VirtualServiceSpec, to_gateways: bool) -> Iterator[Finding]:
    all_valid = True
    sni = any(m.sni_hosts for t in spec.tls for m in t.match)
    for i, host in enumerate(spec.hosts):
        p: Path = ("hosts", i)
        if host == "*" and not to_gateways:
            all_valid = False
            yield Finding(p, "'*' is not allowed for a VirtualService that applies to sidecars "
                             "(gateways unset or listing 'mesh'); name the hosts")
            continue
        if is_ip(host) or (to_gateways and sni and host.startswith("outbound_")):
            continue
        found = list(check_wildcard_domain(host, p))
        all_valid = all_valid and not found
        yield from found
    if not all_valid:
        return
    for i, a in enumerate(spec.hosts):
        for j in range(i + 1, len(spec.hosts)):
            if _hosts_overlap(a, spec.hosts[j]):
                yield Finding(("hosts", j), f"duplicate host: {spec.hosts[j]!r} overlaps "
                                            f"{a!r} (hosts[{i}])")


def _hosts_overlap(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    if a == b or a == "*" or b == "*":
        return True
    if a.startswith("*"):
        return b.endswith(a[1:])
    if b.startswith("*"):
        return a.endswith(b[1:])
    return False


def _host_subset_of(sni: str, host: str) -> bool:
    """Istio's host.Name.SubsetOf: every name ``sni`` matches is matched by ``host``."""
    sni, host = sni.lower(), host.lower()
    if host == "*" or sni == host:
        return True
    if host.startswith("*"):
        return sni.endswith(host[1:])
    return False


def _match_gateways(match_gateways: list[str], spec: VirtualServiceSpec) -> list[str]:
    return match_gateways or spec.gateways or [MESH_GATEWAY]


def _check_http_route(r: HTTPRoute, p: Path, spec: VirtualServiceSpec, delegate_vs: bool,
                      to_gateways: bool) -> Iterator[Finding]:
    is_root = r.delegate is not None and not delegate_vs
    if delegate_vs and r.delegate is not None:
        yield Finding((*p, "delegate"), "a delegate VirtualService cannot delegate further")
    if is_root:
        assert r.delegate is not None
        if r.redirect is not None:
            yield Finding((*p, "redirect"), "a route that delegates must not also redirect")
        if r.route:
            yield Finding((*p, "route"), "a route that delegates must not also set route; the "
                                         "delegate VirtualService routes")
        if not r.delegate.name:
            yield Finding((*p, "delegate", "name"), "name is required")
    else:
        yield from _check_http_conflicts(r, p)
    for j, m in enumerate(r.match):
        yield from _check_http_match(m, (*p, "match", j), spec, to_gateways)
    yield from check_headers(r.headers, (*p, "headers"))
    yield from _check_cors(r.cors_policy, (*p, "corsPolicy"))
    yield from _check_fault(r.fault, (*p, "fault"))
    yield from _check_mirrors(r, p)
    yield from _check_redirect(r.redirect, (*p, "redirect"))
    yield from _check_direct_response(r.direct_response, (*p, "directResponse"))
    yield from _check_retries(r.retries, (*p, "retries"))
    yield from _check_rewrite(r.rewrite, (*p, "rewrite"))
    yield from _check_authority_rewrite(r, p)
    yield from _check_route_destinations(r.route, (*p, "route"))
    yield from check_duration(r.timeout, (*p, "timeout"))


def _check_http_conflicts(r: HTTPRoute, p: Path) -> Iterator[Finding]:
    if r.redirect is not None:
        if r.route:
            yield Finding((*p, "redirect"), "cannot be used with route: a rule either "
                                            "redirects or routes")
        if r.fault is not None:
            yield Finding((*p, "fault"), "cannot be used with redirect")
        if r.rewrite is not None:
            yield Finding((*p, "rewrite"), "cannot be used with redirect")
        if r.direct_response is not None:
            yield Finding((*p, "directResponse"), "cannot be used with redirect")
    elif r.direct_response is not None:
        if r.route:
            yield Finding((*p, "directResponse"), "cannot be used with route: a rule either "
                                                  "answers directly or routes")
        if r.fault is not None:
            yield Finding((*p, "fault"), "cannot be used with directResponse")
        if r.rewrite is not None:
            yield Finding((*p, "rewrite"), "cannot be used with directResponse")
    elif not r.route:
        yield Finding(p, "must set one of route, redirect, directResponse or delegate")
    if r.mirror is not None and r.mirrors:
        yield Finding((*p, "mirrors"), "cannot be used with mirror; put every mirror in mirrors")


def _check_http_match(m: HTTPMatchRequest, p: Path, spec: VirtualServiceSpec,
                      to_gateways: bool) -> Iterator[Finding]:
    for field, entries in (("headers", m.headers), ("withoutHeaders", m.without_headers)):
        for name, sm in entries.items():
            hp = (*p, field, name)
            yield from _check_match_header_name(name, hp)
            if _is_jwt_claim(name) and not to_gateways:
                yield Finding(hp, "JWT claim based routing is only supported on gateways; this "
                                  "VirtualService applies to sidecars")
            if sm is None:
                yield Finding(hp, "header match must not be null; use {} to match presence")
            elif not (field == "withoutHeaders" and sm.regex == "*"):
                yield from _check_string_match(sm, hp, presence_ok=True)
    for name, sm in m.query_params.items():
        qp = (*p, "queryParams", name)
        if sm is None:
            yield Finding(qp, "query parameter match must not be null; use {} to match presence")
        else:
            yield from _check_string_match(sm, qp, presence_ok=True)
    yield from _check_string_match(m.uri, (*p, "uri"), empty_prefix_ok=True)
    yield from _check_string_match(m.scheme, (*p, "scheme"))
    yield from _check_string_match(m.method, (*p, "method"))
    yield from _check_string_match(m.authority, (*p, "authority"))
    yield from check_port(m.port, (*p, "port"), allow_zero=True)
    yield from check_labels(m.source_labels, (*p, "sourceLabels"))
    yield from check_gateway_names(m.gateways, (*p, "gateways"))
    if m.source_namespace and not is_dns1123_label(m.source_namespace):
        yield Finding((*p, "sourceNamespace"),
                      f"must be a namespace name (DNS-1123 label), got {m.source_namespace!r}")
    yield from _check_source_on_gateways(m.source_labels, m.source_namespace, m.gateways, p,
                                         spec)


def _check_source_on_gateways(source_labels: dict[str, str], source_namespace: str | None,
                              gateways: list[str], p: Path,
                              spec: VirtualServiceSpec) -> Iterator[Finding]:
    """sourceLabels/sourceNamespace select the calling workload, which only sidecars see."""
    if MESH_GATEWAY in _match_gateways(gateways, spec):
        return
    for field, given in (("sourceLabels", bool(source_labels)),
                         ("sourceNamespace", bool(source_namespace))):
        if given:
            yield Finding((*p, field), f"{field} has no effect here: it selects the calling "
                                       "workload, and this match applies only to gateways "
                                       "(add 'mesh' to gateways to apply it to sidecars)",
                          "warning")


def _check_cors(c: CorsPolicy | None, p: Path) -> Iterator[Finding]:
    if c is None:
        return
    for i, origin in enumerate(c.allow_origins):
        op = (*p, "allowOrigins", i)
        value = next((v for v in (origin.exact, origin.prefix, origin.regex) if v is not None),
                     None)
        if value == "":
            yield Finding(op, "an allowed origin must not be empty")
        else:
            yield from _check_string_match(origin, op, empty_prefix_ok=True)
    for i, method in enumerate(c.allow_methods):
        if method not in _CORS_METHODS:
            yield Finding((*p, "allowMethods", i),
                          f"{method!r} is not a supported HTTP method; use one of "
                          f"{', '.join(_CORS_METHODS)}")
    for field, names in (("allowHeaders", c.allow_headers), ("exposeHeaders", c.expose_headers)):
        for i, name in enumerate(names):
            if not name:
                yield Finding((*p, field, i), "header name must not be empty")
            elif name != "*":
                yield from check_header_name(name, (*p, field, i))
    if c.max_age is not None:
        found = list(check_duration(c.max_age, (*p, "maxAge")))
        yield from found
        if not found and c.max_age != int(c.max_age):
            yield Finding((*p, "maxAge"), f"must be a whole number of seconds, got "
                                          f"{c.max_age:g}s")


def _check_fault(f: HTTPFaultInjection | None, p: Path) -> Iterator[Finding]:
    if f is None:
        return
    if f.delay is None and f.abort is None:
        yield Finding(p, "must set delay and/or abort")
    if (d := f.delay) is not None:
        dp = (*p, "delay")
        if d.fixed_delay is None and d.exponential_delay is None:
            yield Finding(dp, "must set fixedDelay")
        elif d.fixed_delay is not None and d.exponential_delay is not None:
            yield Finding((*dp, "exponentialDelay"), "cannot be used with fixedDelay")
        yield from check_duration(d.fixed_delay, (*dp, "fixedDelay"))
        if d.exponential_delay is not None:
            yield Finding((*dp, "exponentialDelay"),
                          "is not supported by Istio; use fixedDelay")
        yield from check_percentage(d.percentage, (*dp, "percentage"))
        if d.percent is not None:
            if not 0 <= d.percent <= 100:
                yield Finding((*dp, "percent"), f"must be in [0, 100], got {d.percent}")
            elif d.percentage is not None:
                yield Finding((*dp, "percent"), "is ignored because percentage is set",
                              "warning")
    if (a := f.abort) is not None:
        ap = (*p, "abort")
        given = [n for n, v in (("httpStatus", a.http_status), ("grpcStatus", a.grpc_status),
                                ("http2Error", a.http2_error)) if v is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            yield Finding(ap, f"must set exactly one of httpStatus, grpcStatus or http2Error, "
                              f"got {got}")
        if a.http_status is not None and not 200 <= a.http_status <= 599:
            yield Finding((*ap, "httpStatus"),
                          f"must be an HTTP status in 200-599, got {a.http_status}")
        if a.grpc_status is not None and a.grpc_status not in _GRPC_STATUSES:
            yield Finding((*ap, "grpcStatus"),
                          f"must be a gRPC status name such as NOT_FOUND or UNAVAILABLE, "
                          f"got {a.grpc_status!r}")
        if a.http2_error is not None:
            yield Finding((*ap, "http2Error"),
                          "is not supported by Istio; use httpStatus or grpcStatus")
        yield from check_percentage(a.percentage, (*ap, "percentage"))


def _check_mirrors(r: HTTPRoute, p: Path) -> Iterator[Finding]:
    if r.mirror_percent is not None:
        if not 0 <= r.mirror_percent <= 100:
            yield Finding((*p, "mirrorPercent"), f"must be in [0, 100], got {r.mirror_percent}")
        yield Finding((*p, "mirrorPercent"), "is deprecated; use mirrorPercentage: "
                                             f"{{value: {r.mirror_percent}}}", "warning")
    yield from check_percent(r.mirror_percentage, (*p, "mirrorPercentage"))
    if r.mirror is not None:
        yield from check_destination(r.mirror, (*p, "mirror"))
    for i, m in enumerate(r.mirrors):
        mp = (*p, "mirrors", i)
        if m.destination is None:
            yield Finding(mp, "destination is required")
        else:
            yield from check_destination(m.destination, (*mp, "destination"))
        yield from check_percent(m.percentage, (*mp, "percentage"))


def _check_redirect(rd: HTTPRedirect | None, p: Path) -> Iterator[Finding]:
    if rd is None:
        return
    if not (rd.uri or rd.authority or rd.port or rd.derive_port or rd.scheme):
        yield Finding(p, "must set at least one of uri, authority, port, derivePort or scheme")
    if rd.redirect_code is not None and rd.redirect_code not in _REDIRECT_CODES:
        yield Finding((*p, "redirectCode"),
                      f"must be one of {', '.join(map(str, _REDIRECT_CODES))}, "
                      f"got {rd.redirect_code}")
    if rd.scheme and rd.scheme not in ("http", "https"):
        yield Finding((*p, "scheme"), f"must be 'http' or 'https', got {rd.scheme!r}")
    if rd.port and rd.derive_port is not None:
        yield Finding((*p, "derivePort"), "cannot be used with port; set one")
    yield from check_port(rd.port, (*p, "port"), allow_zero=True)


def _check_direct_response(dr: HTTPDirectResponse | None, p: Path) -> Iterator[Finding]:
    if dr is None:
        return
    if dr.status is None:
        yield Finding(p, "status is required")
    elif not 200 <= dr.status <= 599:
        yield Finding((*p, "status"), f"must be an HTTP status in 200-599, got {dr.status}")
    body = dr.body
    if body is None:
        return
    bp = (*p, "body")
    size = 0
    if body.string is not None and body.bytes_ is not None:
        yield Finding((*bp, "bytes"), "cannot be used with string; set one")
    if body.string is not None:
        size = len(body.string.encode())
    elif body.bytes_ is not None:
        try:
            size = len(base64.b64decode(body.bytes_, validate=True))
        except (binascii.Error, ValueError):
            yield Finding((*bp, "bytes"), "must be base64-encoded")
    if size > _BODY_ERROR_SIZE:
        yield Finding(bp, f"must be at most 1MB, got {size} bytes")
    elif size > _BODY_WARN_SIZE:
        yield Finding(bp, f"a large direct response ({size} bytes) is held in every proxy's "
                          "configuration", "warning")


def _check_retries(rt: HTTPRetry | None, p: Path) -> Iterator[Finding]:
    if rt is None:
        return
    attempts = rt.attempts or 0
    if attempts < 0:
        yield Finding((*p, "attempts"), f"must be >= 0, got {attempts}")
    if attempts == 0:
        extra = [n for n, v in (("perTryTimeout", rt.per_try_timeout),
                                ("retryOn", rt.retry_on or None),
                                ("retryRemoteLocalities", rt.retry_remote_localities))
                 if v is not None]
        if extra:
            where = (*p, "attempts") if rt.attempts is not None else p
            yield Finding(where, f"attempts is 0 (retries disabled) but {', '.join(extra)} "
                                 f"{'is' if len(extra) == 1 else 'are'} set; set attempts > 0 "
                                 "or remove them")
    yield from check_duration(rt.per_try_timeout, (*p, "perTryTimeout"))
    yield from check_duration(rt.backoff, (*p, "backoff"))
    if rt.retry_on:
        for token in rt.retry_on.split(","):
            if token in RETRY_ON_POLICIES or (token.isdigit() and int(token) in
                                             _KNOWN_STATUS_CODES):
                continue
            hint = " (remove the spaces)" if token.strip() != token else ""
            yield Finding((*p, "retryOn"),
                          f"{token!r} is not a retryOn policy{hint}; use HTTP status codes or "
                          f"{', '.join(RETRY_ON_POLICIES)}")


def _check_rewrite(rw: HTTPRewrite | None, p: Path) -> Iterator[Finding]:
    if rw is None:
        return
    if rw.uri and rw.uri_regex_rewrite is not None:
        yield Finding((*p, "uriRegexRewrite"), "cannot be used with uri; set one")
    if not rw.uri and rw.uri_regex_rewrite is None and not rw.authority:
        yield Finding(p, "must set at least one of uri, uriRegexRewrite or authority")
    if (rr := rw.uri_regex_rewrite) is not None:
        rp = (*p, "uriRegexRewrite")
        if not rr.match:
            yield Finding((*rp, "match"), "match is required")
        else:
            yield from check_regex(rr.match, (*rp, "match"))
        if not rr.rewrite:
            yield Finding((*rp, "rewrite"), "rewrite is required")


def _check_authority_rewrite(r: HTTPRoute, p: Path) -> Iterator[Finding]:
    """The authority may be rewritten in one place only."""
    current = r.rewrite.authority if r.rewrite is not None else None
    request = r.headers.request if r.headers is not None else None
    if request is None:
        return
    for op, values in (("set", request.set_), ("add", request.add)):
        for name, value in values.items():
            if not _is_authority(name):
                continue
            if current:
                yield Finding((*p, "headers", "request", op, name),
                              f"the authority is already rewritten to {current!r}; "
                              f"cannot also set it to {value!r}")
            current = value


def _check_route_destinations(routes: Sequence[HTTPRouteDestination | RouteDestination],
                              p: Path) -> Iterator[Finding]:
    total = 0
    for k, rd in enumerate(routes):
        rp = (*p, k)
        if rd.destination is None:
            yield Finding(rp, "destination is required")
        else:
            yield from check_destination(rd.destination, (*rp, "destination"))
        weight = rd.weight or 0
        if weight < 0:
            yield Finding((*rp, "weight"), f"must be >= 0, got {weight}")
        total += weight
        if isinstance(rd, HTTPRouteDestination):
            yield from check_headers(rd.headers, (*rp, "headers"))
    if len(routes) > 1 and total == 0:
        yield Finding(p, "total destination weight = 0: with several destinations, give at "
                         "least one a weight > 0")


def _check_l4_match_common(destination_subnets: list[str], port: int | None,
                           source_labels: dict[str, str], gateways: list[str],
                           source_namespace: str | None, p: Path) -> Iterator[Finding]:
    for i, subnet in enumerate(destination_subnets):
        yield from check_cidr(subnet, (*p, "destinationSubnets", i))
    yield from check_port(port, (*p, "port"), allow_zero=True)
    yield from check_labels(source_labels, (*p, "sourceLabels"))
    yield from check_gateway_names(gateways, (*p, "gateways"))
    if source_namespace and not is_dns1123_label(source_namespace):
        yield Finding((*p, "sourceNamespace"),
                      f"must be a namespace name (DNS-1123 label), got {source_namespace!r}")


def _check_tls_route(t: TLSRoute, p: Path, spec: VirtualServiceSpec,
                     to_gateways: bool) -> Iterator[Finding]:
    if not t.match:
        yield Finding(p, "a tls route needs at least one match (with sniHosts)")
    for j, m in enumerate(t.match):
        mp = (*p, "match", j)
        if not m.sni_hosts:
            yield Finding(mp, "sniHosts is required: at least one SNI host")
        for k, sni in enumerate(m.sni_hosts):
            yield from _check_sni_host(sni, (*mp, "sniHosts", k), spec, to_gateways)
        yield from _check_l4_match_common(m.destination_subnets, m.port, m.source_labels,
                                          m.gateways, m.source_namespace, mp)
    if not t.route:
        yield Finding(p, "route is required")
    yield from _check_route_destinations(t.route, (*p, "route"))


def _check_sni_host(sni: str, p: Path, spec: VirtualServiceSpec,
                    to_gateways: bool) -> Iterator[Finding]:
    if is_ip(sni):
        yield Finding(p, f"an IP address ({sni!r}) as SNI goes against the SNI specification "
                         "and most clients do not send it", "warning")
        return
    if to_gateways and sni.startswith("outbound_"):
        return
    found = list(check_wildcard_domain(sni, p))
    if found:
        yield from found
        return
    if not any(_host_subset_of(sni, h) for h in spec.hosts):
        yield Finding(p, f"SNI host {sni!r} is not covered by any of the VirtualService hosts: "
                         f"{', '.join(spec.hosts) or 'none'}")


def _check_tcp_route(t: TCPRoute, p: Path) -> Iterator[Finding]:
    for j, m in enumerate(t.match):
        mp = (*p, "match", j)
        yield from _check_l4_match_common(m.destination_subnets, m.port, m.source_labels,
                                          m.gateways, m.source_namespace, mp)
        if m.source_subnet is not None:
            yield Finding((*mp, "sourceSubnet"), "is deprecated and ignored by Istio",
                          "warning")
    if not t.route:
        yield Finding(p, "route is required")
    yield from _check_route_destinations(t.route, (*p, "route"))


def _unreachable_rules(spec: VirtualServiceSpec) -> Iterator[Finding]:
    """Istio's warnings for rules that can never match (first match wins)."""
    groups: tuple[tuple[str, Sequence[HTTPRoute | TLSRoute | TCPRoute]], ...] = (
        ("http", spec.http), ("tls", spec.tls), ("tcp", spec.tcp))
    for field, routes in groups:
        seen: dict[str, int] = {}
        catch_all: int | None = None
        for i, route in enumerate(routes):
            if catch_all is not None:
                yield Finding((field, i), f"unreachable: {field}[{catch_all}] has no match "
                                          "conditions and takes all traffic first", "warning")
                continue
            if not route.match:
                catch_all = i
                continue
            duplicates = 0
            for j, m in enumerate(route.match):
                # field order is the model's, so equal matches serialise equally
                key = m.model_dump_json(exclude={"name"}, exclude_none=True)
                if key in seen:
                    duplicates += 1
                    yield Finding((field, i, "match", j),
                                  f"never used: the same match is in {field}[{seen[key]}]",
                                  "warning")
                else:
                    seen[key] = i
            if duplicates == len(route.match):
                yield Finding((field, i), "unreachable: all its matches are used by earlier "
                                          "rules", "warning")


KIND = KindInfo("VirtualService", NETWORKING, NETWORKING_VERSIONS, VirtualServiceSpec,
                rules=validate_virtual_service)
