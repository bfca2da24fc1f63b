"""AuthorizationPolicy enforcement: Istio's decision, precompiled, pure (no I/O).

:func:`compile_policies` picks the AuthorizationPolicies that apply to one workload and
compiles every rule into one generated Python function; :meth:`Authorizer.check` then
decides one :class:`AuthzRequest` in a few microseconds. Rules are grouped by action and
indexed on an attribute each requires to take one of a few exact values (principal,
service account, path, namespace, host, port or method), so a request only evaluates
the rules that can match it; the decision for every rule is built ahead of time, so
the common path allocates nothing. With several matching rules, the first in policy
order (root, namespace, workload; oldest first; rule order) is the one reported.

Istio's semantics, as reproduced here (istio/istio ``pilot/pkg/security/authz``):

* Order: CUSTOM (a matching CUSTOM rule sends the request to the extension provider;
  its denial is final) -> AUDIT (recorded, never decides) -> DENY (any match denies) ->
  no ALLOW policy applies: allow -> any ALLOW matches: allow -> else deny.
* ``spec: {}`` is an ALLOW policy with no rules: it applies and never matches, so alone
  it denies everything. ``rules: [{}]`` matches everything. A rule matches when one
  ``from`` matches, one ``to`` matches and every ``when`` holds; absent sections match.
  Inside a source/operation the fields AND, the values of a field OR, ``not*`` negate
  (a missing attribute never matches a value, so it always satisfies a ``not*``).
* String values: ``*`` (any non-empty value), ``abc*`` (prefix), ``*abc`` (suffix), else
  exact; a leading ``*`` wins, so ``*.example.com:*`` is a suffix ending in ``:*``.
* ``hosts`` match the ``:authority`` exactly as sent, ignoring case and NOT ignoring a
  port: ``example.com`` does not match ``example.com:8080`` (istio/istio#44080; list
  ``example.com:*`` too). ``paths`` match the path without its query string or
  fragment (Envoy's ``url_path``); ``{*}`` is one path segment and ``{**}`` any number
  (Envoy's URI templates). ``principals`` follow the mesh's trust domain aliases.
* A peer's namespace, service account and trust domain come from its principal, so they
  need mTLS. ``requestPrincipals`` compare issuer and subject separately, splitting the
  value at its last ``/``. Claims (``request.auth.claims[a][b]``) are read nested; a
  list claim matches when one element does; only string values are compared.
* On a plain TCP connection (``AuthzRequest.tcp``) the HTTP-only attributes (hosts,
  methods, paths, request principals, headers, JWT attributes) do not exist: an ALLOW
  rule using one never matches, while DENY, AUDIT and CUSTOM rules drop the attribute
  and so match more (Istio's fail-closed generation). ``experimental.envoy.filters.*``
  conditions are not supported and are handled the same way, with a warning.
* ``istio.io/dry-run: "true"``: the policy is evaluated and reported in
  :attr:`Decision.dry_run_results` / :attr:`Decision.dry_run_allowed`, never enforced.
* A workload may use one CUSTOM provider; several, or one that is not an ext_authz
  provider of the mesh config, make Istio deny every request, and so do we.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from meshsdk.config.kinds.authorization_policy import (
    AuthorizationPolicySpec,
    Condition,
    Operation,
    Rule,
    Source,
)
from meshsdk.config.mesh import (
    EnvoyExtAuthzGrpcProvider,
    EnvoyExtAuthzHttpProvider,
    MeshConfig,
)
from meshsdk.config.resource import Config, Resource
from meshsdk.config.selection import policies_for

__all__ = [
    "DENIED_BODY",
    "DENIED_GRPC_STATUS",
    "DENIED_STATUS",
    "DRY_RUN_ANNOTATION",
    "Authorizer",
    "AuthzRequest",
    "CustomResult",
    "Decision",
    "DryRunResult",
    "ProviderRef",
    "compile_policies",
    "grpc_status_for_http",
]

DENIED_STATUS = 403
"""HTTP status of a request denied by an AuthorizationPolicy (Envoy's RBAC filter)."""
DENIED_BODY = b"RBAC: access denied"
"""Body Envoy's RBAC filter answers a denied HTTP request with."""
DENIED_GRPC_STATUS = 7
"""gRPC status of a denied call: PERMISSION_DENIED."""
DRY_RUN_ANNOTATION = "istio.io/dry-run"
"""Annotation that makes a policy evaluated and reported but not enforced."""

DecisionAction = Literal["CUSTOM", "DENY", "ALLOW", "DEFAULT"]
PolicyAction = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]

_EMPTY_MAP: Mapping[str, Any] = MappingProxyType({})
_SPIFFE = "spiffe://"
_CLUSTER_LOCAL = "cluster.local"


# --- the request ---------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True, init=False)
class AuthzRequest:
    """Everything an authorization decision reads about one request or connection.

    Give what the proxy knows; the rest is derived once here so that a decision only
    compares precomputed values. ``namespace``, ``trust_domain`` and ``service_account``
    (``ns/sa``) come from ``principal`` (a peer identity needs mTLS). ``path`` is the
    request path as sent: a ``?query`` (and any ``#fragment``) is split off into
    ``query``, because policies match the path alone. ``audiences``/``presenter``
    default to the ``aud``/``azp`` claims. ``remote_ip`` (the original client, from
    X-Forwarded-For or PROXY protocol) defaults to ``source_ip`` (the direct peer).
    ``headers`` have lower-case names, repeated headers joined with ``,``. Treat as
    read-only (see ``__init__`` for why it is not frozen).
    """

    principal: str | None = None
    """Peer SPIFFE identity without ``spiffe://``: ``cluster.local/ns/NS/sa/SA``."""
    request_principal: str | None = None
    """``<iss>/<sub>`` of a validated JWT; None without one."""
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY_MAP)
    """Claims of the validated JWT (nested mappings and lists as decoded)."""
    audiences: tuple[str, ...] = ()
    presenter: str | None = None
    source_ip: str | None = None
    remote_ip: str | None = None
    destination_ip: str | None = None
    destination_port: int | None = None
    host: str = ""
    """The ``:authority``/``Host`` as sent, port included when the client sent one."""
    method: str = ""
    """HTTP method; gRPC calls are ``POST`` (the default when ``grpc`` is set)."""
    path: str = ""
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY_MAP)
    sni: str | None = None
    """TLS server name requested by the peer (``connection.sni``)."""
    grpc: bool = False
    tcp: bool = False
    """A plain TCP connection: HTTP-only attributes are not available."""
    # Derived in __init__.
    namespace: str | None = field(init=False)
    """Peer namespace, from ``principal``."""
    trust_domain: str | None = field(init=False)
    """Peer trust domain, from ``principal``."""
    service_account: str | None = field(init=False)
    """Peer ``namespace/serviceaccount``, from ``principal``."""
    host_lower: str = field(init=False, repr=False, compare=False)
    issuer: str | None = field(init=False, repr=False, compare=False)
    subject: str | None = field(init=False, repr=False, compare=False)

    def __init__(self, *, principal: str | None = None, request_principal: str | None = None,
                 claims: Mapping[str, Any] = _EMPTY_MAP, audiences: tuple[str, ...] = (),
                 presenter: str | None = None, source_ip: str | None = None,
                 remote_ip: str | None = None, destination_ip: str | None = None,
                 destination_port: int | None = None, host: str = "", method: str = "",
                 path: str = "", query: str = "", headers: Mapping[str, str] = _EMPTY_MAP,
                 sni: str | None = None, grpc: bool = False, tcp: bool = False) -> None:
        # Written by hand to derive the peer's parts once. The class is not frozen: a
        # frozen dataclass stores each of the 23 fields with object.__setattr__, which
        # was most of an inbound request's authorization cost; treat it as read-only.
        if principal is not None and principal.startswith(_SPIFFE):
            principal = principal[len(_SPIFFE):]
        td = ns = sa = None
        if principal:
            td, ns, sa = _principal_parts(principal)
        elif principal == "":
            principal = None
        if remote_ip is None:
            remote_ip = source_ip
        if "?" in path or "#" in path:
            path, question, rest = path.partition("#")[0].partition("?")
            if question:
                query = rest
        if grpc and not method:
            method = "POST"
        if not audiences and "aud" in claims:
            audiences = _strings(claims["aud"])
        if presenter is None:
            azp = claims.get("azp")
            if isinstance(azp, str):
                presenter = azp
        iss = sub = None
        if request_principal is not None:
            iss, sub = claims.get("iss"), claims.get("sub")
            if not (isinstance(iss, str) and isinstance(sub, str)):
                iss, _, sub = request_principal.rpartition("/")
        self.principal = principal
        self.request_principal = request_principal
        self.claims = claims
        self.audiences = audiences
        self.presenter = presenter
        self.source_ip = source_ip
        self.remote_ip = remote_ip
        self.destination_ip = destination_ip
        self.destination_port = destination_port
        self.host = host
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.sni = sni
        self.grpc = grpc
        self.tcp = tcp
        self.namespace = ns
        self.trust_domain = td
        self.service_account = f"{ns}/{sa}" if ns is not None and sa is not None else None
        self.host_lower = host.lower()
        self.issuer = iss
        self.subject = sub

    def __post_init__(self) -> None:
        """Only for dataclass subclasses, whose generated ``__init__`` stores the given
        fields and calls this: derive the rest as :meth:`__init__` does."""
        AuthzRequest.__init__(self, **{name: getattr(self, name) for name in _GIVEN})

    @property
    def target(self) -> str:
        """The ``:path`` as sent: path plus ``?query`` when there is one."""
        return f"{self.path}?{self.query}" if self.query else self.path


_GIVEN = tuple(f.name for f in fields(AuthzRequest) if f.init)
"""The fields an AuthzRequest is made from (the others are derived)."""

def _strings(value: Any) -> tuple[str, ...]:
    """A claim that is a string or a list of strings, as a tuple of its strings."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(v for v in value if isinstance(v, str))
    return ()


@lru_cache(maxsize=1024)
def _principal_parts(principal: str) -> tuple[str | None, str | None, str | None]:
    """Trust domain, namespace and service account of ``td/ns/NS/sa/SA`` (extra pairs allowed)."""
    parts = principal.split("/")
    td = parts[0] or None
    ns = sa = None
    for i in range(1, len(parts) - 1):
        if ns is None and parts[i] == "ns":
            ns = parts[i + 1] or None
        elif ns is not None and parts[i] == "sa":
            sa = parts[i + 1] or None
            break
    return td, ns, sa


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderRef:
    """The CUSTOM extension provider a workload's CUSTOM policies name."""

    name: str
    settings: EnvoyExtAuthzHttpProvider | EnvoyExtAuthzGrpcProvider | None = None

    @property
    def fail_open(self) -> bool:
        return bool(self.settings is not None and self.settings.fail_open)

    @property
    def status_on_error(self) -> int:
        """Status of a request denied because the provider failed (default 403)."""
        status = self.settings.status_on_error if self.settings is not None else None
        return int(status) if status else DENIED_STATUS


@dataclass(frozen=True, slots=True)
class CustomResult:
    """What an external authorizer answered for a CUSTOM check.

    On allow, ``headers_to_upstream`` are set on the request sent on,
    ``headers_to_remove`` removed from it, and ``headers_to_downstream`` added to the
    response. On deny, ``status``, ``headers_to_downstream`` and ``body`` are the answer
    to the client. ``error`` says why the provider could not be asked (for logs).
    """

    allowed: bool
    status: int = DENIED_STATUS
    headers_to_upstream: tuple[tuple[str, str], ...] = ()
    headers_to_downstream: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    headers_to_remove: tuple[str, ...] = ()
    error: str | None = None


CustomCheck = Callable[["AuthzRequest", ProviderRef], CustomResult]
AsyncCustomCheck = Callable[["AuthzRequest", ProviderRef], Awaitable[CustomResult]]


@dataclass(frozen=True, slots=True)
class DryRunResult:
    """How one dry-run policy evaluated: whether (and by which rule) it matched."""

    policy: str
    action: PolicyAction
    matched: bool
    rule: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request and why.

    ``action`` is what decided: ``CUSTOM`` (the provider, or a broken CUSTOM setup),
    ``DENY`` or ``ALLOW`` (a matching policy; ``policy`` is ``ns/name`` and ``rule`` its
    rule index) or ``DEFAULT`` (nothing matched: allowed when no ALLOW policy applies,
    denied when some do). ``audit`` names the AUDIT policies that matched.
    ``dry_run_allowed`` is what the answer would be with the dry-run policies enforced
    (None when there are none).
    """

    allowed: bool
    action: DecisionAction
    policy: str | None = None
    rule: int | None = None
    reason: str = ""
    audit: tuple[str, ...] = ()
    dry_run_results: tuple[DryRunResult, ...] = ()
    dry_run_allowed: bool | None = None
    custom: CustomResult | None = None

    @property
    def http_status(self) -> int | None:
        """Status to answer a denied HTTP request with; None when allowed."""
        if self.allowed:
            return None
        if self.custom is not None and not self.custom.allowed:
            return self.custom.status
        return DENIED_STATUS

    @property
    def body(self) -> bytes:
        """Body to answer a denied HTTP request with (empty when allowed)."""
        if self.allowed:
            return b""
        if self.custom is not None and not self.custom.allowed:
            return self.custom.body
        return DENIED_BODY

    @property
    def grpc_status(self) -> int:
        """gRPC status for the decision: 0 when allowed, else mapped from the HTTP status."""
        status = self.http_status
        return 0 if status is None else grpc_status_for_http(status)


def grpc_status_for_http(status: int) -> int:
    """gRPC's HTTP-to-gRPC status mapping, as Envoy applies it to local replies."""
    return {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14,
            504: 14}.get(status, 2)


# --- predicates ----------------------------------------------------------------------------
#
# A rule compiles to one Python function over the request, generated from small
# expressions (:class:`_Expr`): ``r.method == _k3 and (_v4 := r.path) is not None and
# _v4.startswith(_k5)``. Policy values never appear in the generated source: they are
# bound as constants (``_k3``) of the function's namespace. One flat function per rule
# is several times faster than a tree of closures, which matters with many policies.

Pred = Callable[["AuthzRequest"], bool]
StrTest = Callable[[str | None], bool]


def _always(req: AuthzRequest) -> bool:
    return True


def _never(req: AuthzRequest) -> bool:
    return False


class _Unusable(Exception):
    """An attribute that cannot be evaluated here (HTTP-only on TCP, or unsupported)."""


_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class _Expr:
    """A boolean (or value) expression over the request ``r``, with the constants it names."""

    code: str
    consts: tuple[tuple[str, Any], ...] = ()


_TRUE, _FALSE = _Expr("True"), _Expr("False")


def _const(value: Any) -> _Expr:
    name = f"_k{next(_ids)}"
    return _Expr(name, ((name, value),))


def _attr(name: str) -> _Expr:
    """``r.<name>``: an attribute of :class:`AuthzRequest` (names from this module only)."""
    assert name.isidentifier() and name in AuthzRequest.__dataclass_fields__
    return _Expr(f"r.{name}")


def _join(op: str, parts: Sequence[_Expr], unit: _Expr, absorbing: _Expr) -> _Expr:
    if any(p.code == absorbing.code for p in parts):
        return absorbing
    kept = [p for p in parts if p.code != unit.code]
    if not kept:
        return unit
    if len(kept) == 1:
        return kept[0]
    return _Expr("(" + f" {op} ".join(p.code for p in kept) + ")",
                 tuple(c for p in kept for c in p.consts))


def _and(parts: Sequence[_Expr]) -> _Expr:
    return _join("and", parts, _TRUE, _FALSE)


def _or(parts: Sequence[_Expr]) -> _Expr:
    return _join("or", parts, _FALSE, _TRUE)


def _not(part: _Expr) -> _Expr:
    if part.code in ("True", "False"):
        return _FALSE if part.code == "True" else _TRUE
    return _Expr(f"(not {part.code})", part.consts)


def _apply(test: Callable[[Any], Any], value: _Expr) -> _Expr:
    """``test(value)`` for a test that has no inline form (CIDRs, templates, claims...)."""
    fn = _const(test)
    return _Expr(f"bool({fn.code}({value.code}))", fn.consts + value.consts)


def _call(pred: Pred) -> _Expr:
    """``pred(r)`` for a predicate over the whole request."""
    fn = _const(pred)
    return _Expr(f"{fn.code}(r)", fn.consts)


def _materialize(expr: _Expr) -> Pred:
    """Turn an expression into a function of the request."""
    if expr.code == "True":
        return _always
    if expr.code == "False":
        return _never
    if len(expr.consts) == 1 and expr.code == f"{expr.consts[0][0]}(r)":
        pred: Pred = expr.consts[0][1]
        return pred
    namespace: dict[str, Any] = dict(expr.consts)
    # The source holds only names made here; policy values are bound constants.
    exec(f"def _rule(r):\n    return {expr.code}\n", namespace)
    rule: Pred = namespace["_rule"]
    return rule


@dataclass(frozen=True, slots=True)
class _StrSpec:
    """Istio's string match, sorted: ``*`` presence, ``*x`` suffix, ``x*`` prefix, exact."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    present: bool


def _str_spec(patterns: Iterable[str], *, lower: bool = False) -> _StrSpec:
    """A leading ``*`` wins over a trailing one (Istio checks it first)."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    present = False
    for value in patterns:
        if lower:
            value = value.lower()
        if value == "*":
            present = True
        elif value.startswith("*"):
            suffixes.append(value[1:])
        elif value.endswith("*"):
            prefixes.append(value[:-1])
        else:
            exact.add(value)
    return _StrSpec(frozenset(exact), tuple(prefixes), tuple(suffixes), present)


def _str_test(patterns: Iterable[str]) -> StrTest:
    """Test one value against ``patterns`` (``*`` wants a non-empty value: Envoy's ``.+``)."""
    spec = _str_spec(patterns)
    if spec.present:
        return bool
    frozen, pre, suf = spec.exact, spec.prefixes, spec.suffixes
    if not pre and not suf:
        return frozen.__contains__

    def test(s: str | None) -> bool:
        return s is not None and (s in frozen or s.startswith(pre) or s.endswith(suf))

    return test


def _str_match(value: _Expr, patterns: Iterable[str], *, lower: bool = False,
               empty_ok: bool = False) -> _Expr:
    """Istio's string match of ``value`` as an inline expression.

    ``lower`` folds the patterns (the value must already be folded). ``*`` wants a
    non-empty value unless ``empty_ok`` (a header's presence match).
    """
    spec = _str_spec(patterns, lower=lower)
    if spec.present:
        code = f"({value.code} is not None)" if empty_ok else f"bool({value.code})"
        return _Expr(code, value.consts)
    if not spec.prefixes and not spec.suffixes:
        if len(spec.exact) == 1:
            (only,) = spec.exact
            k = _const(only)
            return _Expr(f"({value.code} == {k.code})", value.consts + k.consts)
        k = _const(spec.exact)
        return _Expr(f"({value.code} in {k.code})", value.consts + k.consts)
    var = f"_v{next(_ids)}"
    tests: list[str] = []
    consts = list(value.consts)
    for fmt, const in (("{v} in {k}", spec.exact), ("{v}.startswith({k})", spec.prefixes),
                       ("{v}.endswith({k})", spec.suffixes)):
        if const:
            k = _const(const)
            consts.extend(k.consts)
            tests.append(fmt.format(v=var, k=k.code))
    return _Expr(f"(({var} := {value.code}) is not None and ({' or '.join(tests)}))",
                 tuple(consts))


# IP addresses: parsed once per distinct string, kept in a small bounded cache.
_IP_CACHE: dict[str, tuple[int, int] | None] = {}
_IP_CACHE_LIMIT = 4096


def _parse_ip(text: str) -> tuple[int, int] | None:
    """``(version, integer)`` of an address; IPv4-mapped IPv6 counts as IPv4."""
    hit = _IP_CACHE.get(text, _IP_CACHE)
    if hit is not _IP_CACHE:
        return hit  # type: ignore[return-value]
    value: tuple[int, int] | None
    try:
        addr = ipaddress.ip_address(text.strip("[]").partition("%")[0])
        mapped = getattr(addr, "ipv4_mapped", None)
        if mapped is not None:
            addr = mapped
        value = (addr.version, int(addr))
    except ValueError:
        value = None
    if len(_IP_CACHE) >= _IP_CACHE_LIMIT:
        _IP_CACHE.clear()
    _IP_CACHE[text] = value
    return value


def _cidr_test(values: Iterable[str]) -> StrTest:
    """Whether an address falls in one of the CIDRs (a bare IP is a /32 or /128)."""
    nets: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for value in values:
        try:
            net = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError as exc:
            raise _Unusable(f"invalid IP or CIDR {value!r}") from exc
        nets[net.version].append((int(net.network_address), int(net.netmask)))
    v4, v6 = tuple(nets[4]), tuple(nets[6])

    def test(s: str | None) -> bool:
        if s is None:
            return False
        parsed = _parse_ip(s)
        if parsed is None:
            return False
        version, n = parsed
        for base, mask in v4 if version == 4 else v6:  # noqa: SIM110 - faster than any()
            if n & mask == base:
                return True
        return False

    return test


def _cidr_match(name: str) -> Callable[[Sequence[str]], _Expr]:
    return lambda values: _apply(_cidr_test(values), _attr(name))


# Envoy's URI template pieces: a path glob is one or more pchars, a text glob any
# number of pchars and slashes (RFC 3986 pchar without '*' and '=').
_PCHAR = r"a-zA-Z0-9\-._~%!$&'()+,;:@"
_LITERAL = re.compile(f"^[{_PCHAR}]+$")


def path_template_regex(template: str) -> re.Pattern[str]:
    """Compile an authorization path with ``{*}``/``{**}`` as Envoy's URI template does.

    Raises ValueError for a template Envoy would reject.
    """
    path = template.replace("{**}", "**").replace("{*}", "*")
    if not path.startswith("/"):
        raise ValueError(f"path template {template!r} must start with '/'")
    pieces: list[str] = []
    segments = path[1:].split("/")
    seen_text_glob = False
    suffix = ""
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment.startswith("*"):
            if seen_text_glob:
                raise ValueError(f"path template {template!r}: no glob may follow {{**}}")
            text_glob = segment.startswith("**")
            seen_text_glob = text_glob
            pieces.append(f"[{_PCHAR}/]*" if text_glob else f"[{_PCHAR}]+")
            rest = segment[2 if text_glob else 1:]
            if rest:
                if not last or not _LITERAL.match(rest):
                    raise ValueError(f"path template {template!r}: invalid segment {segment!r}")
                suffix = re.escape(rest)
        elif segment == "" and last and i > 0:
            pieces.append("")
        elif _LITERAL.match(segment):
            pieces.append(re.escape(segment))
        else:
            raise ValueError(f"path template {template!r}: invalid segment {segment!r}")
    return re.compile("/" + "/".join(pieces) + suffix)


def _path_match(values: Sequence[str]) -> _Expr:
    plain = [v for v in values if "{*}" not in v and "{**}" not in v]
    parts = [_str_match(_attr("path"), plain)] if plain else []
    for value in values:
        if value in plain:
            continue
        try:
            regex = path_template_regex(value)
        except ValueError as exc:
            raise _Unusable(str(exc)) from exc
        # The literal text around the templates rules most paths out without the regex.
        head, tail = value[:value.index("{")], value[value.rindex("}") + 1:]
        full, pre, post = _const(regex.fullmatch), _const(head), _const(tail)
        code = f"(r.path.startswith({pre.code}) and {full.code}(r.path) is not None)"
        if tail:
            code = f"(r.path.endswith({post.code}) and {code})"
        parts.append(_Expr(code, full.consts + pre.consts + post.consts))
    return _or(parts)


def _namespace_match(values: Sequence[str]) -> _Expr:
    """Istio matches namespaces with ``.*/ns/<value, * as .*>/.*``: a glob on the namespace.

    The usual shapes (exact, ``*``, ``prefix*``, ``*suffix``) are plain string matches;
    any other use of ``*`` becomes a regular expression.
    """
    simple: list[str] = []
    parts: list[_Expr] = []
    for value in values:
        stars = value.count("*")
        if stars == 0 or value == "*" or (stars == 1 and (value[0] == "*" or value[-1] == "*")):
            simple.append(value)
        else:
            glob = re.compile(".*".join(re.escape(p) for p in value.split("*")))
            parts.append(_apply(_glob_test(glob), _attr("namespace")))
    if simple:
        parts.insert(0, _str_match(_attr("namespace"), simple))
    return _or(parts)


def _glob_test(glob: re.Pattern[str]) -> StrTest:
    return lambda s: s is not None and glob.fullmatch(s) is not None


def _exact(value: str) -> StrTest:
    return frozenset([value]).__contains__


def _prefix(value: str) -> StrTest:
    return lambda s: s is not None and s.startswith(value)


def _suffix(value: str) -> StrTest:
    return lambda s: s is not None and s.endswith(value)


def _request_principal_match(values: Iterable[str]) -> _Expr:
    """Istio's ``requestPrincipals``: issuer and subject matched apart, split at the last '/'.

    ``*`` wants both present; ``*x/sub`` is an issuer suffix with an exact subject,
    ``iss/x*`` an exact issuer with a subject prefix; without a ``/`` a leading ``*``
    is a subject suffix and a trailing one an issuer prefix.
    """
    anything: StrTest = bool
    pairs: list[tuple[StrTest, StrTest]] = []
    for value in values:
        iss, slash, sub = value.rpartition("/")
        if value == "*":
            pairs.append((anything, anything))
        elif value.startswith("*"):
            if slash:
                pairs.append((anything if iss == "*" else _suffix(iss[1:]), _exact(sub)))
            else:
                pairs.append((anything, _suffix(value[1:])))
        elif value.endswith("*"):
            if slash:
                pairs.append((_exact(iss), anything if sub == "*" else _prefix(sub[:-1])))
            else:
                pairs.append((_prefix(value[:-1]), anything))
        else:
            pairs.append((_exact(iss), _exact(sub)) if slash else (_exact(value), _exact("")))
    frozen = tuple(pairs)

    def test(req: AuthzRequest) -> bool:
        if req.request_principal is None:
            return False
        iss, sub = req.issuer, req.subject
        return any(ti(iss) and ts(sub) for ti, ts in frozen)

    return _call(test)


def _claim_match(path: tuple[str, ...]) -> Callable[[Sequence[str]], _Expr]:
    """A (nested) JWT claim: strings compared, lists match when one element does."""
    def build(values: Sequence[str]) -> _Expr:
        test = _str_test(values)

        def claim(req: AuthzRequest) -> bool:
            if req.request_principal is None:
                return False
            value: Any = req.claims
            for name in path:
                if not isinstance(value, Mapping):
                    return False
                value = value.get(name)
            if isinstance(value, str):
                return test(value)
            if isinstance(value, list | tuple):
                return any(isinstance(v, str) and test(v) for v in value)
            return False

        return _call(claim)

    return build


def _audiences_match(values: Sequence[str]) -> _Expr:
    test = _str_test(values)
    return _call(lambda r: r.request_principal is not None and any(test(a) for a in r.audiences))


def _presenter_match(values: Sequence[str]) -> _Expr:
    return _and([_Expr("(r.request_principal is not None)"),
                 _str_match(_attr("presenter"), values)])


def _port_match(values: Sequence[str]) -> _Expr:
    try:
        ports = frozenset(int(v) for v in values)
    except ValueError as exc:
        raise _Unusable(f"invalid port in {list(values)!r}") from exc
    if len(ports) == 1:
        (only,) = ports
        k = _const(only)
        return _Expr(f"(r.destination_port == {k.code})", k.consts)
    k = _const(ports)
    return _Expr(f"(r.destination_port in {k.code})", k.consts)


def _header_value(name: str) -> _Expr:
    """The value of a request header (pseudo-headers read from the request's fields)."""
    name = name.lower()
    if name == ":method":
        return _Expr("(r.method or None)")
    if name == ":authority":
        return _Expr("(r.host or None)")
    if name == ":path":
        return _Expr("(r.target or None)")
    k = _const(name)
    return _Expr(f"r.headers.get({k.code})", k.consts)


def _bracketed(key: str, prefix: str) -> list[str]:
    """``prefix[a][b]`` -> ``["a", "b"]``."""
    inner = key[len(prefix):]
    if not (inner.startswith("[") and inner.endswith("]")) or len(inner) < 3:
        raise _Unusable(f"key {key!r} must look like {prefix}[name]")
    return inner[1:-1].split("][")


# --- trust domains -------------------------------------------------------------------------


def _string_match(value: str, patterns: Iterable[str]) -> bool:
    for p in patterns:
        if value == p or p == "*" or (p.endswith("*") and value.startswith(p[:-1])) or (
                p.startswith("*") and value.endswith(p[1:])):
            return True
    return False


def expand_principals(values: Iterable[str], trust_domains: Sequence[str]) -> list[str]:
    """Istio's ``ReplaceTrustDomainAliases``: principals of the local trust domain (or of
    ``cluster.local``, which stands for it) are matched in every alias too."""
    out: list[str] = []
    for principal in values:
        parts = principal.split("/")
        if len(parts) != 5 or parts[0] == "*":
            out.append(principal)
            continue
        td = parts[0]
        if not (_string_match(td, trust_domains) or td == _CLUSTER_LOCAL):
            out.append(principal)
            continue
        for domain in trust_domains:
            new = principal if td.startswith("*") and domain.endswith(td[1:]) else \
                "/".join([domain, *parts[1:]])
            if new not in out:
                out.append(new)
    return out


def _expand_trust_domains(values: Iterable[str], trust_domains: Sequence[str]) -> list[str]:
    """Istio's ``ExpandTrustDomainAliases`` for ``trustDomains``/``source.trustDomain``."""
    out: list[str] = []
    for value in values:
        for v in (trust_domains if value in trust_domains else (value,)):
            if v not in out:
                out.append(v)
    return out


# --- rule compilation ----------------------------------------------------------------------

# Rough evaluation cost of each kind of test, to run the cheap ones first in an AND.
_COST_PORT, _COST_STR, _COST_IP, _COST_HEAVY = 1, 2, 3, 4

Build = Callable[[Sequence[str]], _Expr]


def _on_attr(name: str, **options: bool) -> Build:
    return lambda values: _str_match(_attr(name), values, **options)


@dataclass
class _RuleCompiler:
    """Turns one policy's rules into predicates, for HTTP or for plain TCP (``tcp``)."""

    policy: str
    namespace: str
    action: PolicyAction
    trust_domains: tuple[str, ...]
    warnings: list[str]
    tcp: bool = False

    @property
    def strict(self) -> bool:
        """ALLOW drops a rule it cannot evaluate; the other actions drop the attribute."""
        return self.action == "ALLOW"

    def rule(self, rule: Rule, index: int) -> Pred:
        try:
            parts: list[tuple[int, _Expr]] = []
            froms = [f.source for f in rule.from_ or ()]
            if len(froms) == 1:  # one source: its tests join the rule's AND directly
                parts.extend(self._source(froms[0], index))
            elif froms:
                parts.append((_COST_HEAVY, _or(
                    [_sorted_and(self._source(s, index)) for s in froms])))
            tos = [t.operation for t in rule.to or ()]
            if len(tos) == 1:
                parts.extend(self._operation(tos[0], index))
            elif tos:
                parts.append((_COST_HEAVY, _or(
                    [_sorted_and(self._operation(o, index)) for o in tos])))
            for cond in rule.when:
                self._condition(parts, cond, index)
        except _Unusable:
            return _never
        return _materialize(_sorted_and(parts))

    def _field(self, parts: list[tuple[int, _Expr]], cost: int, values: Sequence[str],
               not_values: Sequence[str], build: Build, where: str, *,
               http_only: bool = False) -> None:
        """Add ``values`` (OR) and ``not_values`` (NOT OR) of one attribute to an AND.

        An attribute that cannot be evaluated makes an ALLOW rule never match and is
        left out of the other actions' rules (Istio's fail-closed generation).
        """
        if not values and not not_values:
            return
        try:
            if http_only and self.tcp:
                raise _Unusable("")  # expected on TCP: no warning
            if values:
                parts.append((cost, build(values)))
            if not_values:
                parts.append((cost, _not(build(not_values))))
        except _Unusable as exc:
            self._unusable(where, str(exc))

    def _unusable(self, where: str, why: str) -> None:
        if why and not self.tcp:  # warn once, from the HTTP compilation
            effect = "the rule never matches" if self.strict else "it is ignored"
            self.warnings.append(f"{self.policy}: {where}: {why}; {effect}")
        if self.strict:
            raise _Unusable(why)

    def _source(self, src: Source | None, index: int) -> list[tuple[int, _Expr]]:
        """The AND of one source's tests, as (cost, expression) parts."""
        if src is None:
            return []
        parts: list[tuple[int, _Expr]] = []
        td, at = self.trust_domains, f"rule {index} source"
        self._field(parts, _COST_STR, expand_principals(src.principals, td),
                    expand_principals(src.not_principals, td), _on_attr("principal"),
                    f"{at} principals")
        self._field(parts, _COST_STR, src.request_principals, src.not_request_principals,
                    _request_principal_match, f"{at} requestPrincipals", http_only=True)
        self._field(parts, _COST_STR, src.namespaces, src.not_namespaces, _namespace_match,
                    f"{at} namespaces")
        self._field(parts, _COST_PORT, src.service_accounts, src.not_service_accounts,
                    self._service_accounts, f"{at} serviceAccounts")
        self._field(parts, _COST_STR, _expand_trust_domains(src.trust_domains, td),
                    _expand_trust_domains(src.not_trust_domains, td), _on_attr("trust_domain"),
                    f"{at} trustDomains")
        self._field(parts, _COST_IP, src.ip_blocks, src.not_ip_blocks, _cidr_match("source_ip"),
                    f"{at} ipBlocks")
        self._field(parts, _COST_IP, src.remote_ip_blocks, src.not_remote_ip_blocks,
                    _cidr_match("remote_ip"), f"{at} remoteIpBlocks")
        return parts

    def _operation(self, op: Operation | None, index: int) -> list[tuple[int, _Expr]]:
        """The AND of one operation's tests, as (cost, expression) parts."""
        if op is None:
            return []
        parts: list[tuple[int, _Expr]] = []
        at = f"rule {index} operation"
        self._field(parts, _COST_PORT, op.ports, op.not_ports, _port_match, f"{at} ports")
        self._field(parts, _COST_STR, op.methods, op.not_methods, _on_attr("method"),
                    f"{at} methods", http_only=True)
        self._field(parts, _COST_STR, op.hosts, op.not_hosts,
                    _on_attr("host_lower", lower=True), f"{at} hosts", http_only=True)
        self._field(parts, _COST_STR, op.paths, op.not_paths, _path_match, f"{at} paths",
                    http_only=True)
        return parts

    def _service_accounts(self, values: Sequence[str]) -> _Expr:
        """``ns/sa`` or ``sa`` (the policy's namespace), matched in any trust domain."""
        wanted = _const(frozenset(v if "/" in v else f"{self.namespace}/{v}" for v in values))
        return _Expr(f"(r.service_account in {wanted.code})", wanted.consts)

    def _condition(self, parts: list[tuple[int, _Expr]], cond: Condition, index: int) -> None:
        key, values, not_values = cond.key, cond.values, cond.not_values
        where = f"rule {index} when {key!r}"
        try:
            build, cost, http_only = self._condition_kind(key)
        except _Unusable as exc:
            self._unusable(where, str(exc))
            return
        if key == "source.principal":
            values = expand_principals(values, self.trust_domains)
            not_values = expand_principals(not_values, self.trust_domains)
        elif key == "source.trustDomain":
            values = _expand_trust_domains(values, self.trust_domains)
            not_values = _expand_trust_domains(not_values, self.trust_domains)
        self._field(parts, cost, values, not_values, build, where, http_only=http_only)

    def _condition_kind(self, key: str) -> tuple[Build, int, bool]:
        """How to build a ``when`` key's test: (builder, cost, HTTP only)."""
        if key.startswith(_HEADER_KEYS):  # _reads_headers knows these keys
            header = _header_value(_bracketed(key, key[:key.index("[")])[0])
            return (lambda v: _str_match(header, v, empty_ok=True)), _COST_STR, True
        if key.startswith("request.auth.claims["):
            path = tuple(_bracketed(key, "request.auth.claims"))
            return _claim_match(path), _COST_HEAVY, True
        simple = _CONDITIONS.get(key)
        if simple is not None:
            return simple
        if key == "source.serviceAccount":
            return self._service_accounts, _COST_PORT, False
        if key.startswith("experimental.envoy.filters."):
            raise _Unusable("experimental.envoy.filters.* reads Envoy filter metadata, which "
                            "meshsdk does not have")
        raise _Unusable("unknown condition key")


def _sorted_and(parts: list[tuple[int, _Expr]]) -> _Expr:
    """AND of the parts, cheapest first."""
    parts.sort(key=lambda part: part[0])
    return _and([expr for _, expr in parts])


_CONDITIONS: dict[str, tuple[Build, int, bool]] = {
    "source.ip": (_cidr_match("source_ip"), _COST_IP, False),
    "remote.ip": (_cidr_match("remote_ip"), _COST_IP, False),
    "destination.ip": (_cidr_match("destination_ip"), _COST_IP, False),
    "destination.port": (_port_match, _COST_PORT, False),
    "source.namespace": (_namespace_match, _COST_STR, False),
    "source.principal": (_on_attr("principal"), _COST_STR, False),
    "source.trustDomain": (_on_attr("trust_domain"), _COST_STR, False),
    "request.auth.principal": (_request_principal_match, _COST_STR, True),
    "request.auth.audiences": (_audiences_match, _COST_STR, True),
    "request.auth.presenter": (_presenter_match, _COST_STR, True),
    "connection.sni": (_on_attr("sni"), _COST_STR, False),
}
"""The ``when`` keys without an argument: (test builder, cost, HTTP only)."""


# --- indexing ------------------------------------------------------------------------------

RuleKey = tuple[str, frozenset[Any]]
"""``(attribute, values)``: a rule can only match a request whose attribute is one of the
values; for ``path_prefix``, whose path starts with one of them."""

_INDEX_ATTRIBUTES = ("principal", "service_account", "path", "namespace", "host_lower",
                     "destination_port", "path_prefix", "method")
"""Attributes a rule may be indexed on, the most selective first."""
_HTTP_ATTRIBUTES = frozenset({"path", "path_prefix", "host_lower", "method"})
_PREFIX_OF = {"path_prefix": "path"}
"""Prefix needs, and the request attribute whose start they constrain."""


def _path_heads(values: Sequence[str]) -> frozenset[Any] | None:
    """The literal start every path matching one of ``values`` has, or None.

    Exact paths are their own head, ``abc*`` has ``abc`` and a template the text before
    its first ``{``; ``*`` and ``*suffix`` have none.
    """
    heads: set[str] = set()
    for value in values:
        if "{" in value:
            head = value[:value.index("{")]
        elif value.startswith("*"):
            return None
        else:
            head = value[:-1] if value.endswith("*") else value
        if not head:
            return None
        heads.add(head)
    return frozenset(heads) if heads else None


def _exact_values(values: Sequence[str], *, lower: bool = False) -> frozenset[Any] | None:
    """The values when all are exact strings (no ``*`` of any kind), else None."""
    if not values or any("*" in v for v in values):
        return None
    return frozenset(v.lower() for v in values) if lower else frozenset(values)


def _port_values(values: Sequence[str]) -> frozenset[Any] | None:
    if not values or not all(v.isdigit() for v in values):
        return None
    return frozenset(int(v) for v in values)


def rule_needs(rule: Rule, namespace: str, trust_domains: Sequence[str], *,
               tcp: bool = False) -> tuple[RuleKey, ...]:
    """The attributes ``rule`` requires to take one of a few exact values.

    A rule needs an attribute when every ``from`` (or every ``to``) entry lists exact
    values for it, or a ``when`` condition does; several needs of one attribute
    intersect. On TCP, HTTP attributes are never needs (they are dropped or make the
    rule void). Negations never make a need. Empty: the rule must always be evaluated.
    """
    def sa(values: Sequence[str]) -> frozenset[Any] | None:
        found = _exact_values(values)
        return None if found is None else frozenset(
            v if "/" in v else f"{namespace}/{v}" for v in found)

    def principals(values: Sequence[str]) -> frozenset[Any] | None:
        return _exact_values(expand_principals(values, trust_domains))

    source_fields: tuple[tuple[str, Callable[[Source], frozenset[Any] | None]], ...] = (
        ("principal", lambda src: principals(src.principals)),
        ("service_account", lambda src: sa(src.service_accounts)),
        ("namespace", lambda src: _exact_values(src.namespaces)),
    )
    operation_fields: tuple[tuple[str, Callable[[Operation], frozenset[Any] | None]], ...] = (
        ("path", lambda op: _exact_values(op.paths)),
        ("path_prefix", lambda op: _path_heads(op.paths)),
        ("host_lower", lambda op: _exact_values(op.hosts, lower=True)),
        ("destination_port", lambda op: _port_values(op.ports)),
        ("method", lambda op: _exact_values(op.methods)),
    )
    when_fields: dict[str, tuple[str, Callable[[Sequence[str]], frozenset[Any] | None]]] = {
        "source.principal": ("principal", principals),
        "source.serviceAccount": ("service_account", sa),
        "source.namespace": ("namespace", _exact_values),
        "destination.port": ("destination_port", _port_values),
    }
    needs: dict[str, frozenset[Any]] = {}

    def need(attribute: str, values: frozenset[Any] | None) -> None:
        if values is None or (tcp and attribute in _HTTP_ATTRIBUTES):
            return
        known = needs.get(attribute)
        if known is not None and attribute in _PREFIX_OF:
            return  # prefixes do not intersect as sets; one need is enough
        needs[attribute] = values if known is None else known & values

    sources = [f.source for f in rule.from_ or ()]
    if sources and all(src is not None for src in sources):
        for attribute, read in source_fields:
            found = [read(src) for src in sources if src is not None]
            if all(v is not None for v in found):
                need(attribute, frozenset().union(*(v for v in found if v is not None)))
    operations = [t.operation for t in rule.to or ()]
    if operations and all(op is not None for op in operations):
        for attribute, read_op in operation_fields:
            found = [read_op(op) for op in operations if op is not None]
            if all(v is not None for v in found):
                need(attribute, frozenset().union(*(v for v in found if v is not None)))
    for cond in rule.when:
        if cond.key in when_fields:
            attribute, read_values = when_fields[cond.key]
            need(attribute, read_values(cond.values))
    return tuple((a, needs[a]) for a in _INDEX_ATTRIBUTES if a in needs)


_T = TypeVar("_T")


_Entry = tuple[int, Pred, _T]
_Table = tuple[Callable[["AuthzRequest"], Any], int, dict[Any, tuple[_Entry[_T], ...]]]


@dataclass(frozen=True, slots=True)
class _Stage(Generic[_T]):
    """The rules of one action, in policy order, indexed by what each one needs.

    ``loose`` rules are always evaluated. ``tables`` hold the other rules by the value
    they need of an attribute: ``(getter, length, table)``, looked up with the
    attribute's value, or with its first ``length`` characters for a prefix need.
    """

    loose: tuple[_Entry[_T], ...] = ()
    tables: tuple[_Table[_T], ...] = ()

    @classmethod
    def build(cls, entries: Iterable[tuple[int, Pred, _T, tuple[RuleKey, ...]]]) -> _Stage[_T]:
        """Index each rule on the need that shares its buckets with the fewest other rules."""
        kept = [e for e in entries if e[1] is not _never]
        counts: dict[tuple[str, Any], int] = {}
        for *_, needs in kept:
            for attribute, values in needs:
                for value in values:
                    counts[attribute, value] = counts.get((attribute, value), 0) + 1
        loose: list[_Entry[_T]] = []
        tables: dict[tuple[str, int], dict[Any, list[_Entry[_T]]]] = {}
        for order, pred, payload, needs in kept:
            if not needs:
                loose.append((order, pred, payload))
                continue
            attribute, values = min(needs, key=lambda need: (
                max((counts[need[0], v] for v in need[1]), default=0), len(need[1])))
            prefix = attribute in _PREFIX_OF
            for value in values:
                where = (_PREFIX_OF[attribute], len(value)) if prefix else (attribute, -1)
                tables.setdefault(where, {}).setdefault(value, []).append(
                    (order, pred, payload))
        built = tuple((attrgetter(attribute), length, {v: tuple(e) for v, e in table.items()})
                      for (attribute, length), table in tables.items())
        return cls(tuple(loose), built)

    def __bool__(self) -> bool:
        return bool(self.loose or self.tables)

    def _candidates(self, req: AuthzRequest) -> Iterator[tuple[_Entry[_T], ...]]:
        yield self.loose
        for get, length, table in self.tables:
            value = get(req)
            if length >= 0:
                if value is None or len(value) < length:
                    continue
                value = value[:length]
            found = table.get(value)
            if found:
                yield found

    def first(self, req: AuthzRequest) -> _T | None:
        """The payload of the first rule (in policy order) matching ``req``."""
        # _candidates inlined: this runs up to three times per request
        best: _T | None = None
        best_order = _NO_ORDER
        for order, pred, payload in self.loose:
            if pred(req):
                best, best_order = payload, order
                break
        for get, length, table in self.tables:
            value = get(req)
            if length >= 0:
                if value is None or len(value) < length:
                    continue
                value = value[:length]
            for order, pred, payload in table.get(value, ()):
                if order >= best_order:
                    break
                if pred(req):
                    best, best_order = payload, order
                    break
        return best

    def all(self, req: AuthzRequest) -> tuple[_T, ...]:
        """The distinct payloads of every rule matching ``req``, in policy order."""
        candidates = [e for found in self._candidates(req) for e in found]
        if self.tables:
            candidates.sort(key=_order)
        matched: list[_T] = []
        for _, pred, payload in candidates:
            if payload not in matched and pred(req):
                matched.append(payload)
        return tuple(matched)


_NO_ORDER = 1 << 62
_AUDITED_CACHE_LIMIT = 1024


def _order(entry: tuple[int, Pred, Any]) -> int:
    return entry[0]


# --- policies ------------------------------------------------------------------------------


def parse_go_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool`` (how Istio reads ``istio.io/dry-run``); None if invalid."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One AuthorizationPolicy, its rules compiled for HTTP and for plain TCP."""

    name: str
    action: PolicyAction
    dry_run: bool
    http_rules: tuple[Pred, ...]
    tcp_rules: tuple[Pred, ...]
    provider: str | None = None
    http_needs: tuple[tuple[RuleKey, ...], ...] = ()
    """Per rule, the attributes it requires to take one of a few exact values (indexing)."""
    tcp_needs: tuple[tuple[RuleKey, ...], ...] = ()
    reads_headers: bool = False
    """Some rule has a ``when`` on a request header: its decision depends on headers."""

    def first_match(self, req: AuthzRequest) -> int | None:
        """Index of the first rule matching ``req``, None if none does."""
        for i, pred in enumerate(self.tcp_rules if req.tcp else self.http_rules):
            if pred(req):
                return i
        return None


def compile_policy(resource: Resource, *, trust_domains: Sequence[str] = (_CLUSTER_LOCAL,),
                   warnings: list[str] | None = None) -> CompiledPolicy:
    """Compile one AuthorizationPolicy resource (its dry-run annotation included)."""
    spec: AuthorizationPolicySpec = resource.spec
    name = f"{resource.namespace}/{resource.name}"
    sink = warnings if warnings is not None else []
    raw = resource.annotations.get(DRY_RUN_ANNOTATION)
    dry_run = False
    if raw is not None:
        parsed = parse_go_bool(raw)
        if parsed is None:
            sink.append(f"{name}: annotation {DRY_RUN_ANNOTATION}={raw!r} is not a boolean; "
                        f"the policy is enforced")
        dry_run = bool(parsed)
    tds = tuple(trust_domains)
    compiled: dict[bool, tuple[Pred, ...]] = {}
    needs: dict[bool, tuple[tuple[RuleKey, ...], ...]] = {}
    for tcp in (False, True):
        compiler = _RuleCompiler(name, resource.namespace, spec.action, tds, sink, tcp)
        compiled[tcp] = tuple(compiler.rule(rule, i) for i, rule in enumerate(spec.rules))
        needs[tcp] = tuple(rule_needs(rule, resource.namespace, tds, tcp=tcp)
                           for rule in spec.rules)
    provider = spec.provider.name if spec.action == "CUSTOM" and spec.provider else None
    return CompiledPolicy(name, spec.action, dry_run, compiled[False], compiled[True], provider,
                          needs[False], needs[True], _reads_headers(spec))


def _reads_headers(spec: AuthorizationPolicySpec) -> bool:
    """Whether a rule of ``spec`` tests a request header: the only ``when`` keys that
    read ``AuthzRequest.headers`` (see ``_RuleCompiler._condition_kind``). Pseudo-headers
    count too, although they read the request's own fields: this errs on the safe side."""
    return any(cond.key.startswith(_HEADER_KEYS) for rule in spec.rules for cond in rule.when)


_HEADER_KEYS = ("request.headers[", "request.experimental.inline.headers[")


def compile_policies(config: Config, namespace: str, labels: Mapping[str, str], *,
                     root_namespace: str | None = None, workload_kind: str = "",
                     workload_name: str = "") -> Authorizer:
    """The :class:`Authorizer` of one workload: the AuthorizationPolicies that apply to it.

    Root-namespace policies apply mesh-wide, the others to their namespace, narrowed by
    ``selector`` (a root-namespace selector reaches matching workloads of every
    namespace, as in Istio) or ``targetRefs``. ``root_namespace`` defaults to the mesh
    config's.
    """
    mesh = config.mesh
    root = mesh.root_namespace if root_namespace is None else root_namespace
    scopes = policies_for(config.of_kind("AuthorizationPolicy"), namespace, labels,
                          root_namespace=root, workload_kind=workload_kind,
                          workload_name=workload_name, root_selectors=True)
    return Authorizer.from_resources(tuple(scopes), mesh=mesh)


# --- the authorizer ------------------------------------------------------------------------

_PROVIDER_KINDS = ("envoy_ext_authz_http", "envoy_ext_authz_grpc")


class Authorizer:
    """Decides requests for one workload with its compiled policies; safe to share."""

    __slots__ = ("_allow", "_audit", "_audited", "_broken", "_custom", "_default_allow", "_deny",
                 "_dry", "_dry_has_allow", "_has_allow", "_no_match", "_trivial",
                 "policies", "provider", "warnings")

    def __init__(self, policies: Sequence[CompiledPolicy], *, mesh: MeshConfig | None = None,
                 warnings: Sequence[str] = ()) -> None:
        self.policies: tuple[CompiledPolicy, ...] = tuple(policies)
        found: list[str] = list(warnings)
        enforced = [p for p in self.policies if not p.dry_run]
        dry = [p for p in self.policies if p.dry_run]
        self._has_allow = any(p.action == "ALLOW" for p in enforced)
        self._dry_has_allow = any(p.action == "ALLOW" for p in dry)
        self._trivial = not self.policies
        self._default_allow = Decision(
            True, "DEFAULT", reason="allowed: no ALLOW policy applies to the workload"
            if self.policies else "allowed: no authorization policy applies to the workload")
        allow_names = [p.name for p in enforced if p.action == "ALLOW"]
        shown = ", ".join(allow_names[:5]) + (f" and {len(allow_names) - 5} more"
                                             if len(allow_names) > 5 else "")
        self._no_match = Decision(False, "DEFAULT",
                                  reason=f"denied: no ALLOW policy matched ({shown})")
        self.provider, self._broken = self._resolve_provider(mesh, found)
        # per protocol (tcp False/True); None for a stage without rules, so that the
        # request path skips it with one comparison
        self._custom: dict[bool, _Stage[tuple[str, int]] | None] = {}
        self._deny: dict[bool, _Stage[Decision] | None] = {}
        self._allow: dict[bool, _Stage[Decision] | None] = {}
        self._audit: dict[bool, _Stage[str] | None] = {}
        self._dry: tuple[CompiledPolicy, ...] = tuple(dry)
        self._audited: dict[tuple[int, tuple[str, ...]], Decision] = {}
        # Istio ignores CUSTOM with an HTTP provider on TCP traffic.
        http_provider = self.provider is not None and isinstance(self.provider.settings,
                                                                 EnvoyExtAuthzHttpProvider)
        for tcp in (False, True):
            custom: list[tuple[int, Pred, tuple[str, int], tuple[RuleKey, ...]]] = []
            deny: list[tuple[int, Pred, Decision, tuple[RuleKey, ...]]] = []
            allow: list[tuple[int, Pred, Decision, tuple[RuleKey, ...]]] = []
            audit: list[tuple[int, Pred, str, tuple[RuleKey, ...]]] = []
            for policy in enforced:
                rules = policy.tcp_rules if tcp else policy.http_rules
                keys = (policy.tcp_needs if tcp else policy.http_needs) or ((),) * len(rules)
                for i, (pred, key) in enumerate(zip(rules, keys, strict=True)):
                    order = len(custom) + len(deny) + len(allow) + len(audit)
                    if policy.action == "AUDIT":
                        audit.append((order, pred, policy.name, key))
                    elif policy.action == "CUSTOM":
                        if not (tcp and http_provider):
                            custom.append((order, pred, (policy.name, i), key))
                    elif policy.action == "DENY":
                        deny.append((order, pred, Decision(
                            False, "DENY", policy.name, i,
                            f"denied by DENY policy {policy.name} rule {i}"), key))
                    else:
                        allow.append((order, pred, Decision(
                            True, "ALLOW", policy.name, i,
                            f"allowed by ALLOW policy {policy.name} rule {i}"), key))
            self._custom[tcp] = _Stage.build(custom) or None
            self._deny[tcp] = _Stage.build(deny) or None
            self._allow[tcp] = _Stage.build(allow) or None
            self._audit[tcp] = _Stage.build(audit) or None
        self.warnings: tuple[str, ...] = tuple(dict.fromkeys(found))

    @classmethod
    def from_resources(cls, resources: Iterable[Resource], *,
                       mesh: MeshConfig | None = None) -> Authorizer:
        """Compile AuthorizationPolicy resources (already selected for one workload)."""
        mesh = mesh or MeshConfig()
        trust_domains = (mesh.trust_domain, *mesh.trust_domain_aliases)
        warnings: list[str] = []
        compiled = [compile_policy(r, trust_domains=trust_domains, warnings=warnings)
                    for r in resources if r.kind == "AuthorizationPolicy"]
        return cls(compiled, mesh=mesh, warnings=warnings)

    def _resolve_provider(self, mesh: MeshConfig | None,
                          warnings: list[str]) -> tuple[ProviderRef | None, Decision | None]:
        """The one CUSTOM provider; a deny-all decision when the CUSTOM setup is unusable."""
        customs = [p for p in self.policies if p.action == "CUSTOM"]
        if not customs:
            return None, None
        names = list(dict.fromkeys(p.provider or "" for p in customs))
        problem: str | None = None
        ref: ProviderRef | None = None
        if len(names) > 1:
            problem = f"only 1 provider can be used per workload, found {', '.join(names)}"
        else:
            name = names[0]
            found = mesh.find_provider(name) if mesh is not None and name else None
            kind = found.provider_type if found is not None else None
            if found is None:
                problem = f"no extension provider named {name!r} in the mesh config"
            elif kind not in _PROVIDER_KINDS:
                problem = f"extension provider {name!r} is {kind}, not an ext_authz provider"
            else:
                ref = ProviderRef(name, getattr(found, kind))
        if problem is None:
            return ref, None
        warnings.append(f"CUSTOM action unusable: {problem}; every request is denied")
        return None, Decision(False, "CUSTOM", reason=f"denied: CUSTOM action is misconfigured "
                                                      f"({problem})")

    # -- deciding ---------------------------------------------------------------------------

    def check(self, req: AuthzRequest, *, custom: CustomCheck | None = None) -> Decision:
        """Decide ``req``; ``custom`` asks the CUSTOM provider when a CUSTOM rule matches."""
        first = self._before_custom(req)
        if isinstance(first, Decision):
            return first
        assert self.provider is not None
        if custom is None:
            result = _no_handler(self.provider)
        else:
            try:
                result = custom(req, self.provider)
            except Exception as exc:  # a broken authorizer must not open the door
                result = _provider_failed(self.provider, exc)
        return self._after_custom(req, first, result)

    async def check_async(self, req: AuthzRequest, *,
                          custom: AsyncCustomCheck | None = None) -> Decision:
        """:meth:`check` with an asynchronous CUSTOM provider."""
        first = self._before_custom(req)
        if isinstance(first, Decision):
            return first
        assert self.provider is not None
        if custom is None:
            result = _no_handler(self.provider)
        else:
            try:
                result = await custom(req, self.provider)
            except Exception as exc:  # a broken authorizer must not open the door
                result = _provider_failed(self.provider, exc)
        return self._after_custom(req, first, result)

    def _before_custom(self, req: AuthzRequest) -> Decision | tuple[str, int]:
        """The decision when no CUSTOM provider needs asking, else the CUSTOM rule that
        matched (policy, rule index): the part :meth:`check` and :meth:`check_async`
        share; only the call to the provider differs."""
        if self._trivial:
            return self._default_allow
        hit = self._custom_hit(req)
        if hit is None:
            return self._decide(req, None)
        if isinstance(hit, Decision):
            return self._with_extras(req, hit, ())
        return hit

    def _custom_hit(self, req: AuthzRequest) -> tuple[str, int] | Decision | None:
        if self._broken is not None:
            return self._broken
        stage = self._custom[req.tcp]
        return stage.first(req) if stage is not None else None

    def _after_custom(self, req: AuthzRequest, hit: tuple[str, int],
                      result: CustomResult) -> Decision:
        policy, index = hit
        if result.allowed:
            return self._decide(req, result)
        assert self.provider is not None
        why = f": {result.error}" if result.error else ""
        decision = Decision(False, "CUSTOM", policy, index,
                            f"denied by CUSTOM provider {self.provider.name!r} (status "
                            f"{result.status}) after policy {policy} rule {index}{why}",
                            custom=result)
        return self._with_extras(req, decision, ())

    def _decide(self, req: AuthzRequest, custom: CustomResult | None) -> Decision:
        tcp = req.tcp
        audits = self._audit[tcp]
        audit = audits.all(req) if audits is not None else ()
        deny = self._deny[tcp]
        decision = deny.first(req) if deny is not None else None
        if decision is None:
            if not self._has_allow:
                decision = self._default_allow
            else:
                allow = self._allow[tcp]
                decision = (allow.first(req) if allow is not None else None) or self._no_match
        if custom is not None or self._dry:
            return self._with_extras(req, decision, audit, custom)
        if audit:
            # The same few (decision, audit) pairs recur: reuse their combined decisions.
            # Base decisions live as long as the authorizer, so their ids are stable keys.
            key = (id(decision), audit)
            audited = self._audited.get(key)
            if audited is None:
                if len(self._audited) >= _AUDITED_CACHE_LIMIT:
                    self._audited.clear()
                audited = self._audited[key] = self._with_extras(req, decision, audit)
            return audited
        return decision

    def _with_extras(self, req: AuthzRequest, decision: Decision, audit: tuple[str, ...],
                     custom: CustomResult | None = None) -> Decision:
        """A copy of ``decision`` with the AUDIT matches, the CUSTOM answer and the dry run."""
        results: tuple[DryRunResult, ...] = ()
        would: bool | None = None
        dry = self._dry
        if dry:
            found: list[DryRunResult] = []
            dry_deny = dry_allow = False
            for policy in dry:
                index = policy.first_match(req)
                found.append(DryRunResult(policy.name, policy.action, index is not None, index))
                if index is not None:
                    dry_deny = dry_deny or policy.action == "DENY"
                    dry_allow = dry_allow or policy.action == "ALLOW"
            results = tuple(found)
            if dry_deny or (not decision.allowed and decision.action in ("CUSTOM", "DENY")):
                would = False
            elif not (self._has_allow or self._dry_has_allow):
                would = True
            else:
                would = decision.action == "ALLOW" or dry_allow
        return Decision(decision.allowed, decision.action, decision.policy, decision.rule,
                        decision.reason, audit, results, would,
                        custom if custom is not None else decision.custom)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for p in self.policies:
            key = p.action + (" (dry-run)" if p.dry_run else "")
            counts[key] = counts.get(key, 0) + 1
        body = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no policies"
        return f"<Authorizer {body}>"


def _no_handler(provider: ProviderRef) -> CustomResult:
    return CustomResult(False, provider.status_on_error,
                        error=f"no handler for CUSTOM provider {provider.name!r}")


def _provider_failed(provider: ProviderRef, exc: Exception) -> CustomResult:
    detail = str(exc)[:200]  # bounded: it ends up in logs
    error = f"CUSTOM provider {provider.name!r} failed: {type(exc).__name__}: {detail}"
    if provider.fail_open:
        return CustomResult(True, 200, error=error)
    return CustomResult(False, provider.status_on_error, error=error)
