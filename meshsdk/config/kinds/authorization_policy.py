"""AuthorizationPolicy (security.istio.io): who may do what to a workload.

Evaluation (done elsewhere, in the authz engine): CUSTOM denies -> deny; any DENY
matches -> deny; no ALLOW policy -> allow; any ALLOW matches -> allow; else deny.
AUDIT never changes the answer. Inside a rule one ``from`` and one ``to`` must
match and every ``when``; inside a source/operation fields AND and values OR.

Validation follows Istio's ``ValidateAuthorizationPolicy`` (pkg/config/validation)
and its helpers in pkg/config/security, with two deliberate differences, both
stricter: ``from: []`` / ``to: []`` are reported even when they reach us as an
explicit empty list (Istio's JSON decoding turns them into "absent", i.e. *any*
source, which is rarely what the author meant), and ports must be 1-65535 (Istio
lets ``"0"`` through, which can never match).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.base import SECURITY, SECURITY_VERSIONS, KindInfo
from meshsdk.config.types import (
    IstioModel,
    PolicyTargetReference,
    WorkloadSelector,
    check_cidr,
    check_policy_selection,
)

Action = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]


class Source(IstioModel):
    """``from[].source``: the peer. Fields AND together; the values of one field OR."""

    principals: list[str] = Field(default_factory=list)
    not_principals: list[str] = Field(default_factory=list)
    request_principals: list[str] = Field(default_factory=list)
    not_request_principals: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    not_namespaces: list[str] = Field(default_factory=list)
    service_accounts: list[str] = Field(default_factory=list)
    not_service_accounts: list[str] = Field(default_factory=list)
    ip_blocks: list[str] = Field(default_factory=list)
    not_ip_blocks: list[str] = Field(default_factory=list)
    remote_ip_blocks: list[str] = Field(default_factory=list)
    not_remote_ip_blocks: list[str] = Field(default_factory=list)
    trust_domains: list[str] = Field(default_factory=list)
    not_trust_domains: list[str] = Field(default_factory=list)


class Operation(IstioModel):
    """``to[].operation``: what the request does. ``ports`` are strings, as in Istio."""

    hosts: list[str] = Field(default_factory=list)
    not_hosts: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list)
    not_ports: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    not_methods: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    not_paths: list[str] = Field(default_factory=list)


class RuleFrom(IstioModel):
    source: Source | None = None


class RuleTo(IstioModel):
    operation: Operation | None = None


class Condition(IstioModel):
    """``when[]``: an attribute (``key``) and the values it must (not) have."""

    key: str = ""
    values: list[str] = Field(default_factory=list)
    not_values: list[str] = Field(default_factory=list)


class Rule(IstioModel):
    """One rule. Absent ``from``/``to`` match anything; ``when`` conditions all must hold."""

    from_: list[RuleFrom] | None = Field(default=None, alias="from")
    to: list[RuleTo] | None = None
    when: list[Condition] = Field(default_factory=list)


class ExtensionProviderRef(IstioModel):
    """``provider: {name: ...}`` of a CUSTOM policy: an ``extensionProviders`` entry of the mesh."""

    name: str = ""


class AuthorizationPolicySpec(IstioModel):
    """``spec`` of an AuthorizationPolicy. ``spec: {}`` is an ALLOW policy that allows nothing."""

    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    action: Action = "ALLOW"
    provider: ExtensionProviderRef | None = None


# --- the attributes of `when` ----------------------------------------------------------

_MAP_KEYS = ("request.headers", "request.experimental.inline.headers", "request.auth.claims",
             "experimental.envoy.filters.")
_IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})
_PLAIN_KEYS = frozenset({
    "source.namespace", "source.principal", "source.trustDomain", "request.auth.principal",
    "request.auth.audiences", "request.auth.presenter", "connection.sni",
})
_REMOVED_KEYS = {
    "destination.namespace": "it is replaced by the policy's metadata.namespace",
    "destination.name": "it was only supported in v1alpha1",
    "destination.user": "it was only supported in v1alpha1",
}
KNOWN_CONDITION_KEYS = (
    "request.headers[<name>]", "request.experimental.inline.headers[<name>]", "source.ip",
    "remote.ip", "source.namespace", "source.serviceAccount", "source.principal",
    "source.trustDomain", "request.auth.principal", "request.auth.audiences",
    "request.auth.presenter", "request.auth.claims[<claim>]...", "destination.ip",
    "destination.port", "connection.sni", "experimental.envoy.filters.<filter>[<key>]",
)
"""The ``when`` keys Istio accepts, for messages and documentation."""

# Peer identity is not available to the ext_authz (CUSTOM) filter's matcher.
_CUSTOM_UNSUPPORTED_SOURCE = ("namespaces", "not_namespaces", "service_accounts",
                              "not_service_accounts", "principals", "not_principals",
                              "request_principals", "not_request_principals", "trust_domains",
                              "not_trust_domains")
_CUSTOM_UNSUPPORTED_KEYS = frozenset({"source.namespace", "source.serviceAccount",
                                      "source.principal", "source.trustDomain"})

_SOURCE_FIELDS = tuple(Source.model_fields)
_OPERATION_FIELDS = tuple(Operation.model_fields)
_TCP_SOURCE_FIELDS = tuple(f for f in _SOURCE_FIELDS
                           if f not in ("request_principals", "not_request_principals"))

MAX_SERVICE_ACCOUNTS = 16
MAX_SERVICE_ACCOUNT_LENGTH = 320

# RFC 3986 pchar: what a literal path segment may contain next to a {*}/{**} template.
_PCHAR_SEGMENT = re.compile(r"^[a-zA-Z0-9\-._~%!$&'()+,;:@=]+$")
_MATCH_ONE, _MATCH_ANY = "{*}", "{**}"


def _wire(name: str) -> str:
    field = Source.model_fields.get(name) or Operation.model_fields.get(name)
    return field.alias if field is not None and field.alias else name


# --- rules -----------------------------------------------------------------------------


def validate_authorization_policy(spec: AuthorizationPolicySpec) -> Iterator[Finding]:
    """Istio's AuthorizationPolicy validation, with paths relative to ``spec``."""
    yield from check_policy_selection(spec.selector, spec.target_ref, spec.target_refs)
    custom = spec.action == "CUSTOM"
    if custom:
        if not spec.rules:
            yield Finding(("rules",), "action CUSTOM without rules never triggers; add an empty "
                                      "rule `rules: [{}]` to send every request to the provider")
        if spec.provider is None:
            yield Finding(("provider",), "action CUSTOM needs provider.name, the name of an "
                                         "extensionProviders entry in the mesh config")
        elif not spec.provider.name:
            yield Finding(("provider", "name"), "provider.name must not be empty")
    elif spec.provider is not None:
        yield Finding(("provider",), f"provider is only allowed with action CUSTOM, "
                                     f"got action {spec.action}")
    if spec.action == "DENY" and not spec.rules:
        yield Finding(("rules",), "action DENY without rules never triggers; add an empty rule "
                                  "`rules: [{}]` to deny every request")
    if spec.action == "AUDIT" and not spec.rules:
        yield Finding(("rules",), "action AUDIT without rules never triggers", severity="warning")
    for i, rule in enumerate(spec.rules):
        yield from _check_rule(rule, ("rules", i), spec.action)


def _check_rule(rule: Rule, path: Path, action: Action) -> Iterator[Finding]:
    custom = action == "CUSTOM"
    if rule.from_ is not None and not rule.from_:
        yield Finding((*path, "from"), "`from` must not be an empty list; omit it to match "
                                       "any source")
    for j, entry in enumerate(rule.from_ or ()):
        where = (*path, "from", j)
        if entry.source is None:
            yield Finding(where, "`from` entry needs a `source`, got none")
            continue
        yield from _check_source(entry.source, (*where, "source"), custom)
    if rule.to is not None and not rule.to:
        yield Finding((*path, "to"), "`to` must not be an empty list; omit it to match "
                                     "any operation")
    for j, target in enumerate(rule.to or ()):
        where = (*path, "to", j)
        if target.operation is None:
            yield Finding(where, "`to` entry needs an `operation`, got none")
            continue
        yield from _check_operation(target.operation, (*where, "operation"))
    for k, cond in enumerate(rule.when):
        yield from _check_condition(cond, (*path, "when", k), custom)
    if action == "DENY" and _http_only(rule):
        yield Finding(path, "this DENY rule uses only HTTP attributes, so it denies all "
                            "traffic to TCP ports in the policy's scope; add `ports` to the "
                            "operation to limit it", severity="warning")


def _http_only(rule: Rule) -> bool:
    """Istio's test for a DENY rule that would also deny plain TCP traffic."""
    sources = [f.source for f in rule.from_ or () if f.source is not None]
    operations = [t.operation for t in rule.to or () if t.operation is not None]
    tcp_from = any(getattr(s, n) for s in sources for n in _TCP_SOURCE_FIELDS)
    tcp_to = any(o.ports or o.not_ports for o in operations)
    return bool((sources and not operations and not tcp_from) or (operations and not tcp_to))


def _check_source(src: Source, path: Path, custom: bool) -> Iterator[Finding]:
    if not any(getattr(src, n) for n in _SOURCE_FIELDS):
        yield Finding(path, "`source` must not be empty: set at least one field, or remove "
                            "the `from` entry to match any source")
    sa_fields = [n for n in ("service_accounts", "not_service_accounts") if getattr(src, n)]
    clashing = [_wire(n) for n in ("principals", "not_principals", "namespaces",
                                   "not_namespaces") if getattr(src, n)]
    if sa_fields and clashing:
        yield Finding((*path, _wire(sa_fields[0])),
                      f"serviceAccounts/notServiceAccounts cannot be combined with namespaces "
                      f"or principals in one source, found {', '.join(clashing)}")
    for name in _SOURCE_FIELDS:
        values: list[str] = getattr(src, name)
        where = (*path, _wire(name))
        if custom and values and name in _CUSTOM_UNSUPPORTED_SOURCE:
            yield Finding(where, f"{_wire(name)} is not supported with action CUSTOM")
        if name in ("service_accounts", "not_service_accounts"):
            yield from _check_service_accounts(values, where)
            continue
        for k, value in enumerate(values):
            if not value:
                yield Finding((*where, k), "empty value is not allowed")
            elif name.endswith("ip_blocks"):
                yield from _check_ip(value, (*where, k))


def _check_service_accounts(values: list[str], path: Path) -> Iterator[Finding]:
    """``ns/sa`` or ``sa`` (the policy's namespace); no wildcards; at most 16 entries."""
    if len(values) > MAX_SERVICE_ACCOUNTS:
        yield Finding(path, f"at most {MAX_SERVICE_ACCOUNTS} service accounts are allowed, "
                            f"got {len(values)}")
    for k, value in enumerate(values):
        where = (*path, k)
        if not value:
            yield Finding(where, "empty value is not allowed")
        elif "*" in value:
            yield Finding(where, f"wildcards are not allowed in service accounts, got {value!r}")
        elif value.count("/") > 1:
            yield Finding(where, f"must be 'serviceAccount' or 'namespace/serviceAccount', "
                                 f"got {value!r}")
        elif len(value) > MAX_SERVICE_ACCOUNT_LENGTH:
            yield Finding(where, f"must be at most {MAX_SERVICE_ACCOUNT_LENGTH} characters, "
                                 f"got {len(value)}")
        elif "/" in value:
            ns, sa = value.split("/")
            if not ns or not sa:
                part = "namespace" if not ns else "service account"
                yield Finding(where, f"must be 'serviceAccount' or 'namespace/serviceAccount', "
                                     f"got {value!r} with an empty {part}")


def _check_ip(value: str, path: Path) -> Iterator[Finding]:
    yield from check_cidr(value, path)


def _check_port_value(value: str, path: Path) -> Iterator[Finding]:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        yield Finding(path, f"port must be a number in 1-65535, got {value!r}")


def _check_operation(op: Operation, path: Path) -> Iterator[Finding]:
    if not any(getattr(op, n) for n in _OPERATION_FIELDS):
        yield Finding(path, "`operation` must not be empty: set at least one field, or remove "
                            "the `to` entry to match any operation")
    for name in _OPERATION_FIELDS:
        values: list[str] = getattr(op, name)
        where = (*path, _wire(name))
        for k, value in enumerate(values):
            if not value:
                yield Finding((*where, k), "empty value is not allowed")
            elif name in ("ports", "not_ports"):
                yield from _check_port_value(value, (*where, k))
            elif name in ("paths", "not_paths"):
                err = path_template_error(value)
                if err:
                    yield Finding((*where, k), err)


def path_template_error(path: str) -> str | None:
    """Why Istio rejects ``path`` as an authorization path (None if it is fine).

    ``{*}`` matches one segment and ``{**}`` any number; once ``{**}`` appeared no
    other template may follow it. Braces are only allowed as those two operators,
    and a path with a template may only hold RFC 3986 characters in its other
    segments (so no ``*`` glob next to a template).
    """
    has_template = _MATCH_ONE in path or _MATCH_ANY in path
    seen_any = False
    for segment in path.strip("/").split("/"):
        if segment in (_MATCH_ONE, _MATCH_ANY):
            if seen_any:
                return f"invalid path template {path!r}: {{**}} must be the last template operator"
            seen_any = segment == _MATCH_ANY
            continue
        if "{" in segment or "}" in segment:
            return (f"invalid path {path!r}: '{{' and '}}' are only allowed as the whole-segment "
                    f"templates {{*}} and {{**}}, found segment {segment!r}")
        if has_template and not _PCHAR_SEGMENT.match(segment):
            return (f"invalid path template {path!r}: segment {segment!r} is not a plain path "
                    f"segment (no '*' or empty segments next to {{*}}/{{**}})")
    return None


def _check_condition(cond: Condition, path: Path, custom: bool) -> Iterator[Finding]:
    key = cond.key
    if not key:
        yield Finding((*path, "key"), "`key` must not be empty")
        return
    if not cond.values and not cond.not_values:
        yield Finding(path, f"at least one of `values` or `notValues` must be set for key {key!r}")
        return
    key_error = _condition_key_error(key)
    if key_error:
        yield Finding((*path, "key"), key_error)
        return
    if custom and (key in _CUSTOM_UNSUPPORTED_KEYS or key.startswith("request.auth.")):
        yield Finding((*path, "key"), f"key {key!r} is not supported with action CUSTOM")
    for field, values in (("values", cond.values), ("notValues", cond.not_values)):
        where = (*path, field)
        if key == "source.serviceAccount":
            yield from _check_service_accounts(values, where)
            continue
        for k, value in enumerate(values):
            if not value:
                yield Finding((*where, k), "empty value is not allowed")
            elif key in _IP_KEYS:
                yield from _check_ip(value, (*where, k))
            elif key == "destination.port":
                yield from _check_port_value(value, (*where, k))


def _condition_key_error(key: str) -> str | None:
    if key.startswith(_MAP_KEYS):
        return _map_key_error(key)
    if key in _IP_KEYS or key in _PLAIN_KEYS or key in ("source.serviceAccount",
                                                        "destination.port"):
        return None
    if key in _REMOVED_KEYS:
        return f"key {key!r} is not supported: {_REMOVED_KEYS[key]}"
    if key.startswith("destination.labels"):
        return f"key {key!r} is not supported: it is replaced by the policy's selector"
    return f"unknown key {key!r}; known keys: {', '.join(KNOWN_CONDITION_KEYS)}"


def _map_key_error(key: str) -> str | None:
    open_at = key.find("[")
    if key.endswith("]") and 0 < open_at < len(key) - 2:
        return None
    return f"key {key!r} must have the form name[item], e.g. request.headers[x-user]"


KIND = KindInfo("AuthorizationPolicy", SECURITY, SECURITY_VERSIONS, AuthorizationPolicySpec,
                rules=validate_authorization_policy)
