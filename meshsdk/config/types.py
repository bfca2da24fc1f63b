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
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer
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

    match_labels: dict[str, str] = {}


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
