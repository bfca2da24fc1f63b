"""Building blocks shared by the Istio kinds: the model base, durations, percents,
string matches, selectors, and the small checks every kind's rules reuse.

Wire names are camelCase (Istio's JSON/YAML); Python attributes are snake_case.
As with protobuf's JSON parser, the original snake_case spelling is accepted too.
Unknown fields are errors: a misspelled field that silently does nothing is the
most common Istio complaint.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated, Any

import re2
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from meshsdk.config.diagnostics import Finding, Path


class IstioModel(BaseModel):
    """Base of every config model: camelCase on the wire, frozen, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
        revalidate_instances="never",
    )


# --- durations -----------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6,
    "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}


def parse_duration(value: object) -> float:
    """Parse an Istio duration (``"7s"``, ``"0.5s"``, ``"100ms"``, ``"1m30s"``) to seconds.

    Istio writes protobuf Durations, and its tooling also accepts Go's duration
    syntax; both are accepted. A bare number is not a duration (Istio rejects it
    too) because its unit would be a guess.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"must be a duration string such as '5s' or '100ms', got {value!r}")
    text = value.strip()
    if not text:
        raise ValueError("must be a duration such as '5s' or '100ms', got an empty string")
    pos, total = 0, 0.0
    sign = 1.0
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        pos = 1
    if pos == len(text):
        raise ValueError(f"must be a duration such as '5s' or '100ms', got {value!r}")
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(
                f"must be a duration such as '5s', '0.5s', '100ms' or '1m', got {value!r}"
            )
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Render seconds the way Istio users write them (``"100ms"``, ``"7s"``, ``"1m"``)."""
    if seconds != 0 and abs(seconds) < 1:
        ms = seconds * 1000
        return f"{ms:g}ms" if ms == int(ms) or abs(ms) >= 1 else f"{seconds:g}s"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A duration in seconds, written as ``"5s"`` / ``"100ms"`` in YAML."""


# --- shared message types ---------------------------------------------------------


class Percent(IstioModel):
    """Istio's ``Percent`` message: a double in [0, 100]."""

    value: float = 0.0


class StringMatch(IstioModel):
    """Exactly one of ``exact``, ``prefix`` or ``regex`` (RE2 syntax)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


class WorkloadSelector(IstioModel):
    """``selector: {matchLabels: {...}}``: picks workloads by their labels."""

    match_labels: dict[str, str] = Field(default_factory=dict)


class PolicyTargetReference(IstioModel):
    """``targetRef``/``targetRefs``: a Kubernetes Gateway API style reference."""

    group: str = ""
    kind: str = ""
    name: str = ""
    namespace: str = ""


class PortSelector(IstioModel):
    """``port: {number: 9080}``."""

    number: int = 0


def as_int(value: Any) -> Any:
    """Accept integers written as strings, as protobuf's JSON reader does for int64."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


# --- checks reused by the kinds' rules -------------------------------------------


@lru_cache(maxsize=4096)
def regex_error(pattern: str) -> str | None:
    """Why RE2 rejects ``pattern`` (None if it compiles). Cached: configs repeat regexes."""
    try:
        re2.compile(pattern)
    except Exception as exc:  # re2.error; the binding raises its own type
        return f"invalid RE2 regex {pattern!r}: {exc}"
    return None


def check_string_match(m: StringMatch | None, path: Path) -> Iterator[Finding]:
    """A StringMatch must set exactly one of exact/prefix/regex; regexes must compile."""
    if m is None:
        return
    set_fields = [n for n in ("exact", "prefix", "regex") if getattr(m, n) is not None]
    if len(set_fields) != 1:
        got = ", ".join(set_fields) if set_fields else "none"
        yield Finding(path, f"must set exactly one of exact, prefix or regex, got {got}")
    if m.regex is not None:
        err = regex_error(m.regex)
        if err:
            yield Finding((*path, "regex"), err)


def check_percent(p: Percent | float | None, path: Path) -> Iterator[Finding]:
    """Percentages are doubles in [0, 100]."""
    if p is None:
        return
    value = p.value if isinstance(p, Percent) else p
    if not (0.0 <= value <= 100.0) or math.isnan(value):
        sub = (*path, "value") if isinstance(p, Percent) else path
        yield Finding(sub, f"must be in [0, 100], got {value:g}")


def check_positive_duration(d: float | None, path: Path, *, allow_zero: bool = False,
                            minimum: float = 0.0) -> Iterator[Finding]:
    """Durations that Istio requires to be > 0 (or >= a minimum, e.g. 1ms)."""
    if d is None:
        return
    if d < 0 or (d == 0 and not allow_zero):
        op = ">= 0" if allow_zero else "> 0"
        yield Finding(path, f"duration must be {op}, got {format_duration(d)}")
    elif minimum and d < minimum and not (allow_zero and d == 0):
        yield Finding(path, f"duration must be >= {format_duration(minimum)}, "
                            f"got {format_duration(d)}")


def check_port(port: int | None, path: Path, *, allow_zero: bool = False) -> Iterator[Finding]:
    """Ports are 1-65535 (0 only where Istio means 'unset')."""
    if port is None or (allow_zero and port == 0):
        return
    if not 1 <= port <= 65535:
        yield Finding(path, f"port must be in 1-65535, got {port}")


# RFC 7230 token characters; Istio also allows the HTTP/2 pseudo-headers.
_HEADER_NAME = re.compile(r"^:?[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def check_header_name(name: str, path: Path) -> Iterator[Finding]:
    """Header names must be valid HTTP tokens."""
    if not _HEADER_NAME.match(name):
        yield Finding(path, f"invalid header name {name!r}")


_LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                         r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def check_labels(labels: dict[str, str], path: Path) -> Iterator[Finding]:
    """Kubernetes label syntax for selectors and workload labels."""
    for key, value in labels.items():
        if not _LABEL_NAME.match(key):
            yield Finding((*path, key), f"invalid label key {key!r}")
        if not _LABEL_VALUE.match(value):
            yield Finding((*path, key), f"invalid label value {value!r}")


_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_]{0,61}[A-Za-z0-9])?$")


def check_host(host: str, path: Path, *, allow_wildcard: bool = True,
               allow_ip: bool = True) -> Iterator[Finding]:
    """A host name as Istio accepts it: FQDN or short name, optional ``*.`` prefix."""
    if not host:
        yield Finding(path, "host must not be empty")
        return
    if host == "*":
        if not allow_wildcard:
            yield Finding(path, "bare '*' is not allowed here")
        return
    if allow_ip and is_ip(host):
        return
    name = host
    if name.startswith("*."):
        if not allow_wildcard:
            yield Finding(path, f"wildcard host {host!r} is not allowed here")
            return
        name = name[2:]
    elif "*" in name:
        yield Finding(path, f"invalid host {host!r}: '*' is only allowed as a '*.' prefix")
        return
    if len(name) > 253 or not all(_DNS_LABEL.match(p) for p in name.rstrip(".").split(".")):
        yield Finding(path, f"invalid host {host!r}: not a DNS name")


def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 address (no prefix)."""
    if not text or not (text[0].isdigit() or ":" in text):
        return False  # cheap rejection of host names; ipaddress raising is slow
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_cidr(text: str, path: Path) -> Iterator[Finding]:
    """An IP address or CIDR block."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        yield Finding(path, f"invalid IP address or CIDR block {text!r}")


def check_selector_labels(selector: WorkloadSelector | None, path: Path) -> Iterator[Finding]:
    """Selector labels follow Kubernetes label syntax; wildcards are not allowed."""
    if selector is None:
        return
    for key, value in selector.match_labels.items():
        if "*" in key or "*" in value:
            yield Finding((*path, "matchLabels", key), "wildcards are not allowed in selectors")
    yield from check_labels(selector.match_labels, (*path, "matchLabels"))


# Kinds a policy's targetRef(s) may name, as (group, kind); "" and "core" are the core group.
# GatewayClass (Istio 1.25+) is only honoured for policies in the root namespace.
_POLICY_TARGET_KINDS = {
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
}


def check_target_ref(ref: PolicyTargetReference, path: Path) -> Iterator[Finding]:
    """A policy ``targetRef``: a Service, ServiceEntry, Gateway or GatewayClass, same namespace."""
    if not ref.name:
        yield Finding((*path, "name"), "targetRef name must be set")
    if ref.namespace:
        yield Finding((*path, "namespace"),
                      f"must not be set (cross-namespace references are not supported), "
                      f"got {ref.namespace!r}")
    if ((ref.group or "core"), ref.kind) not in _POLICY_TARGET_KINDS:
        yield Finding((*path, "kind"),
                      "must reference a Service (group ''), a ServiceEntry (networking.istio.io) "
                      "or a Gateway or GatewayClass (gateway.networking.k8s.io), got group "
                      f"{ref.group!r} kind {ref.kind!r}")


def check_policy_selection(selector: WorkloadSelector | None,
                           target_ref: PolicyTargetReference | None,
                           target_refs: list[PolicyTargetReference]) -> Iterator[Finding]:
    """How a policy picks its workloads: at most one of ``selector``, ``targetRef``, ``targetRefs``.

    Paths are relative to ``spec``. A selector without labels is a warning, as in
    Istio: it selects every workload of the namespace, which is rarely meant.
    """
    given = [name for name, value in (("selector", selector), ("targetRef", target_ref),
                                      ("targetRefs", target_refs or None)) if value is not None]
    if len(given) > 1:
        yield Finding((given[1],), f"only one of selector, targetRef or targetRefs may be set, "
                                   f"got {' and '.join(given)}")
    if selector is not None:
        yield from check_selector_labels(selector, ("selector",))
        if not selector.match_labels:
            yield Finding(("selector",), "selector has no matchLabels: it selects every "
                                         "workload in the namespace", severity="warning")
    if target_ref is not None:
        yield from check_target_ref(target_ref, ("targetRef",))
    for i, ref in enumerate(target_refs):
        yield from check_target_ref(ref, ("targetRefs", i))


# --- networking helpers (VirtualService, DestinationRule, ServiceEntry, Gateway, Sidecar) ---


class LabelSelector(IstioModel):
    """The networking API's ``WorkloadSelector`` (ServiceEntry, Sidecar): ``{labels: {...}}``.

    Not to be confused with :class:`WorkloadSelector` (``matchLabels``), which the
    security and telemetry kinds and DestinationRule use.
    """

    labels: dict[str, str] = Field(default_factory=dict)


_ISTIO_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$")


def is_dns1123_label(value: str) -> bool:
    """Istio's ``labels.IsDNS1123Label``: 1-63 letters, digits and '-', no leading/trailing '-'.

    Istio accepts upper case here (Kubernetes does not); so do we.
    """
    return bool(_ISTIO_DNS_LABEL.match(value))


def check_duration(d: float | None, path: Path) -> Iterator[Finding]:
    """Istio's ``ValidateDuration``: at least 1ms, in whole milliseconds."""
    if d is None:
        return
    if d < 0.001:
        yield Finding(path, f"duration must be >= 1ms, got {format_duration(d)}")
    elif abs(d * 1000 - round(d * 1000)) > 1e-6:
        yield Finding(path, f"duration must be a whole number of milliseconds, "
                            f"got {format_duration(d)}")


# Istio's protocol.Parse: matched case-insensitively.
PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB", "TCP", "TLS", "UDP",
             "MONGO", "REDIS", "MYSQL")


def check_protocol(protocol: str | None, path: Path, *,
                   required: bool = False) -> Iterator[Finding]:
    """A port protocol Istio knows (case-insensitive); empty means 'sniff' unless required."""
    if not protocol:
        if required:
            yield Finding(path, "protocol is required")
        return
    if protocol.upper() not in PROTOCOLS:
        yield Finding(path, f"unsupported protocol {protocol!r}; use one of "
                            f"{', '.join(PROTOCOLS)}")


def check_unix_address(address: str, path: Path) -> Iterator[Finding]:
    """``unix://`` + an absolute file path, or ``unix://@name`` (abstract socket)."""
    rest = address.removeprefix("unix://")
    if not rest:
        yield Finding(path, "unix address must not be empty")
    elif not rest.startswith("@") and (not rest.startswith("/") or rest.endswith("/")):
        yield Finding(path, f"unix address must be an absolute path to a file or @name, "
                            f"got {address!r}")


def check_export_to(export_to: list[str], path: Path, *,
                    allow_none: bool = False) -> Iterator[Finding]:
    """``exportTo``: '.', '*', namespace names (and '~' = nobody, for ServiceEntry only).

    Duplicates are errors, as is '*' (or '~') next to anything else. Whether '.' and
    the resource's own namespace name both appear needs the namespace; not checked here.
    """
    seen: set[str] = set()
    for i, entry in enumerate(export_to):
        if entry in seen:
            yield Finding((*path, i), f"duplicate exportTo entry {entry!r}")
            continue
        seen.add(entry)
        if entry in (".", "*") or (allow_none and entry == "~"):
            continue
        if not is_dns1123_label(entry):
            allowed = "'.', '*', '~'" if allow_none else "'.', '*'"
            yield Finding((*path, i), f"must be {allowed} or a namespace name, got {entry!r}")
    for special, what in (("*", "public (*)"), ("~", "nobody (~)")):
        if special in seen and len(export_to) > 1:
            yield Finding(path, f"cannot export to {what} and to other namespaces, "
                                f"got {', '.join(export_to)}")


_WILDCARD_FIRST_LABEL = re.compile(r"^(\*|(\*|\*-)?[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)$")


def _dns_labels_error(domain: str, labels: list[str]) -> str | None:
    if labels and labels[-1].isdigit():
        return f"invalid host {domain!r}: the top-level domain {labels[-1]!r} is all digits"
    for i, label in enumerate(labels):
        if i == len(labels) - 1 and label == "":
            return None  # a trailing dot: 'istio.io.'
        if not is_dns1123_label(label):
            return f"invalid host {domain!r}: label {label!r} is not a DNS-1123 label"
    return None


def check_fqdn(host: str, path: Path) -> Iterator[Finding]:
    """Istio's ``ValidateFQDN``: dot-separated DNS-1123 labels, no wildcard."""
    if not host:
        yield Finding(path, "host must not be empty")
    elif len(host) > 255:
        yield Finding(path, f"host is longer than 255 characters: {host[:40]!r}...")
    elif (err := _dns_labels_error(host, host.split("."))) is not None:
        yield Finding(path, err)


def check_wildcard_domain(host: str, path: Path) -> Iterator[Finding]:
    """Istio's ``ValidateWildcardDomain``: a DNS name whose first label may be a wildcard.

    Accepted first labels: ``*``, ``*name``, ``*-name`` or a plain label, so ``*``,
    ``*.example.com`` and (as Istio does) ``*x.example.com`` pass. Unlike
    :func:`check_host`, IPs are not special-cased and numeric top-level domains fail.
    """
    if not host:
        yield Finding(path, "host must not be empty")
        return
    if len(host) > 255:
        yield Finding(path, f"host is longer than 255 characters: {host[:40]!r}...")
        return
    first, dot, rest = host.partition(".")
    if len(first) > 63 or not _WILDCARD_FIRST_LABEL.match(first):
        hint = "; '*' may only start the first label" if "*" in host else ""
        yield Finding(path, f"invalid host {host!r}: label {first!r} is not a DNS-1123 "
                            f"label{hint}")
    elif dot and (err := _dns_labels_error(host, rest.split("."))) is not None:
        yield Finding(path, err)


def is_partial_wildcard(host: str) -> bool:
    """``*x.example.com``: a '*' that is neither the whole host nor a ``*.`` prefix."""
    return "*" in host and host != "*" and not host.startswith("*.")


def _rejoin_flow_scalar(value: Any) -> Any:
    """Undo a PyYAML quirk: in a flow sequence, ``[1.2.3.4, 2001:db8::]`` parses its last
    item as the mapping ``{'2001:db8:': None}`` (the final ':' read as a key indicator),
    where Kubernetes' YAML parser reads the string ``'2001:db8::'``."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, val),) = value.items()
        if isinstance(key, str) and val is None:
            return f"{key}:"
    return value


FlowStr = Annotated[str, BeforeValidator(_rejoin_flow_scalar)]
"""A string list item that may be an IPv6 address ending in '::' in a YAML flow list."""
