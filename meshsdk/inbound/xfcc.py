"""Envoy's ``X-Forwarded-Client-Cert`` header: who called the sidecar in front of this app.

When a sidecar (Envoy, ``meshproxy``) terminates mesh mTLS and forwards plaintext to the
app on the same host, it says who the caller was in XFCC::

    By=spiffe://cluster.local/ns/default/sa/reviews;Hash=1a2b...;Subject="";URI=spiffe://cluster.local/ns/default/sa/productpage

Elements are separated by ``,`` (one per proxy hop, the nearest last), key/value pairs
by ``;``, and a value may be double-quoted (then ``,``, ``;`` and ``=`` are literal and
``\\"`` is a quote). Keys are ``By``, ``Hash``, ``Cert``, ``Chain``, ``Subject``,
``URI`` and ``DNS`` (case-insensitive; ``URI`` and ``DNS`` may repeat).

The header proves nothing by itself: any client can send it. :class:`InboundHandler`
trusts it only on connections from the configured sidecar addresses and removes it
from every other request before the app sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from meshsdk.security.errors import SecurityError
from meshsdk.security.spiffe import SCHEME, parse_spiffe_id

HEADER = "x-forwarded-client-cert"
"""The header name, lower case."""

_KEYS = {"by": "by", "hash": "hash", "cert": "cert", "chain": "chain", "subject": "subject",
         "uri": "uri", "dns": "dns"}
_MAX_LENGTH = 64 * 1024


class XfccError(SecurityError):
    """A malformed ``X-Forwarded-Client-Cert`` value."""


@dataclass(frozen=True, slots=True)
class XfccElement:
    """One hop of XFCC: the certificate the proxy ``by`` saw from its client."""

    by: tuple[str, ...] = ()
    hash: str | None = None
    cert: str | None = None
    chain: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()

    @property
    def spiffe_ids(self) -> tuple[str, ...]:
        """The ``spiffe://`` URIs the client certificate carried."""
        return tuple(u for u in self.uri if u.startswith(SCHEME))


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes; an unbalanced quote is an error."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise XfccError("unterminated quoted value")
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for ch in inner:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                raise XfccError("unescaped quote inside a quoted value")
            else:
                out.append(ch)
        return "".join(out)
    if '"' in value:
        raise XfccError(f"stray quote in value {value[:40]!r}")
    return value


def _element(text: str) -> XfccElement:
    fields: dict[str, list[str]] = {}
    for pair in _split(text, ";"):
        if not pair.strip():
            raise XfccError("empty key=value pair")
        key, eq, raw = pair.partition("=")
        name = _KEYS.get(key.strip().lower())
        if not eq or name is None:
            raise XfccError(f"unknown or malformed pair {pair.strip()[:40]!r}")
        fields.setdefault(name, []).append(_unquote(raw))
    for single in ("hash", "cert", "chain", "subject"):
        if len(fields.get(single, ())) > 1:
            raise XfccError(f"{single} given more than once in one element")

    def one(name: str) -> str | None:
        values = fields.get(name)
        return values[0] if values else None

    return XfccElement(by=tuple(fields.get("by", ())), hash=one("hash"), cert=one("cert"),
                       chain=one("chain"), subject=one("subject"),
                       uri=tuple(fields.get("uri", ())), dns=tuple(fields.get("dns", ())))


def parse_xfcc(value: str) -> list[XfccElement]:
    """Every element of an XFCC value, the nearest proxy's last; :class:`XfccError`
    when it is malformed (empty, unbalanced quotes, unknown keys, empty pairs)."""
    if len(value) > _MAX_LENGTH:
        raise XfccError(f"value longer than {_MAX_LENGTH} characters")
    if not value.strip():
        raise XfccError("empty value")
    return [_element(part) for part in _split(value, ",")]


def xfcc_peer(values: list[str]) -> str | None:
    """The caller's SPIFFE ID from the XFCC header value(s) a trusted sidecar sent.

    The nearest hop (the last element of the last value) is the one the trusted sidecar
    wrote; it must carry exactly one valid SPIFFE ID. None when there is no header;
    :class:`XfccError` (or SecurityError for a bad SPIFFE ID) when it is unusable.
    """
    if not values:
        return None
    value = ",".join(values)
    return _cached_peer(value) if len(value) <= _CACHED_LENGTH else _peer_of(value)


_CACHED_LENGTH = 8192
"""Values up to this length are cached (at most 256 of them: about 2 MB at worst)."""


@lru_cache(maxsize=256)
def _cached_peer(value: str) -> str:
    """:func:`_peer_of`, cached: a sidecar sends the same few values (one per calling
    workload) again and again, and parsing one costs tens of microseconds. An unusable
    value raises, which is not cached."""
    return _peer_of(value)


def _peer_of(value: str) -> str:
    """The SPIFFE ID of the nearest element of one joined XFCC value."""
    elements = parse_xfcc(value)
    ids = elements[-1].spiffe_ids
    if len(ids) != 1:
        raise XfccError(f"the nearest element names {len(ids)} SPIFFE IDs; expected one")
    return parse_spiffe_id(ids[0]).uri


__all__ = ["HEADER", "XfccElement", "XfccError", "parse_xfcc", "xfcc_peer"]
