"""JSON Web Key Sets for RequestAuthentication: parse inline ``jwks``, fetch and cache ``jwksUri``.

:func:`parse_jwks` turns a JWKS document (or a single JWK, as Istio also accepts) into a
:class:`JwkSet` of verification keys built by PyJWT (:class:`jwt.PyJWK`). Keys PyJWT
cannot use are skipped, and a set with no usable key is an error, as in Envoy's
``jwt_verify_lib`` ("Jwks doesn't have any valid public key").

:class:`JwksCache` fetches ``jwksUri`` documents lazily and synchronously, so the first
request that needs a URI may block for up to the fetch timeout (the rule's ``timeout``,
default 5 s as in Istio). Then:

* Keys are kept for ``ttl`` (20 minutes, Istio's ``PILOT_JWT_PUB_KEY_REFRESH_INTERVAL``)
  and refetched by the first request after that.
* A token whose ``kid`` matches no cached key may trigger one early refetch (key
  rotation), at most once per ``kid_refetch_interval`` (60 s) per URI, so a flood of
  tokens with made-up ``kid`` values cannot turn into a flood of fetches.
* A failed refresh keeps serving the last good keys (logged as a warning); a failed
  fetch is retried no sooner than ``failure_retry_interval`` (60 s, Istio's
  ``JwtPubKeyRefreshIntervalOnFailure``), so requests do not each wait for a dead server.
* With no keys ever fetched, :meth:`JwksCache.keys` raises :class:`JwksError` with the
  reason; the authenticator answers 401 ``Jwks remote fetch is failed`` for that token.

Only ``https://`` URIs are fetched, plus ``http://`` to a loopback host (127.0.0.0/8,
``::1``, ``localhost``) for local identity providers and tests: keys fetched in clear
text over a network could be swapped by anyone on the path. ``allow_plain_http=True``
lifts that restriction deliberately. Redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from meshsdk.security.errors import SecurityError

__all__ = [
    "DEFAULT_FAILURE_RETRY_INTERVAL",
    "DEFAULT_KID_REFETCH_INTERVAL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TTL",
    "AuthenticationError",
    "Clock",
    "Jwk",
    "JwkSet",
    "JwksCache",
    "JwksError",
    "JwksStatus",
    "check_jwks_uri",
    "is_loopback_host",
    "parse_jwks",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Seconds; injected so tests can move time (the cache only compares differences)."""

DEFAULT_TTL = 20 * 60.0
"""Istio re-resolves jwksUri every 20 minutes (PILOT_JWT_PUB_KEY_REFRESH_INTERVAL)."""
DEFAULT_TIMEOUT = 5.0
"""Istio's default ``JWTRule.timeout`` for fetching a JWKS."""
DEFAULT_KID_REFETCH_INTERVAL = 60.0
"""At most one unknown-``kid`` refetch per URI per minute."""
DEFAULT_FAILURE_RETRY_INTERVAL = 60.0
"""Istio's JwtPubKeyRefreshIntervalOnFailure: wait this long after a failed fetch."""
MAX_JWKS_BYTES = 1 << 20
"""A JWKS larger than 1 MiB is refused (real ones are a few KiB)."""


class AuthenticationError(SecurityError):
    """End-user (JWT) authentication could not be carried out: no keys, bad key material."""


class JwksError(AuthenticationError):
    """A JWKS could not be parsed, or a ``jwksUri`` has never been fetched successfully."""

    def __init__(self, reason: str, uri: str | None = None) -> None:
        self.reason = reason
        self.uri = uri
        super().__init__(f"JWKS {uri}: {reason}" if uri else reason)


@dataclass(frozen=True, slots=True)
class Jwk:
    """One verification key: PyJWT's key object plus the JWK fields used to pick it."""

    kty: str
    key: Any
    """The key PyJWT verifies with (a ``cryptography`` public key, or bytes for ``oct``)."""
    kid: str | None = None
    alg: str | None = None
    """The JWK's declared ``alg``; None lets any algorithm of the key's type use it."""
    crv: str | None = None

    def fits(self, alg: str) -> bool:
        """Whether a token signed with ``alg`` can be checked with this key (type and curve)."""
        family = alg[:2]
        if family in ("RS", "PS"):
            return self.kty == "RSA"
        if family == "ES":
            return self.kty == "EC" and self.crv == _EC_CURVES.get(alg)
        if family == "HS":
            return self.kty == "oct"
        if alg == "EdDSA":
            return self.kty == "OKP" and self.crv in ("Ed25519", "Ed448")
        return False


_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


@dataclass(frozen=True, slots=True)
class JwkSet:
    """The usable keys of a JWKS, in document order, and why any others were skipped."""

    keys: tuple[Jwk, ...]
    skipped: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Jwk]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def kids(self) -> tuple[str, ...]:
        """The ``kid`` of every key that has one (for logs and ``describe``)."""
        return tuple(k.kid for k in self.keys if k.kid is not None)


def parse_jwks(data: str | bytes | Mapping[str, Any]) -> JwkSet:
    """Parse a JWKS (``{"keys": [...]}``) or a single JWK into verification keys.

    Raises :class:`JwksError` when the text is not JSON, not a key set, or holds no key
    PyJWT can use. Unusable keys next to usable ones are skipped (``JwkSet.skipped``).
    """
    if isinstance(data, Mapping):
        doc: Any = data
    else:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise JwksError(f"not valid JSON: {exc}") from exc
    if isinstance(doc, Mapping) and isinstance(doc.get("keys"), list):
        raw_keys: list[Any] = doc["keys"]
    elif isinstance(doc, Mapping) and "kty" in doc:
        raw_keys = [doc]
    else:
        raise JwksError('not a JSON Web Key Set: expected an object with a "keys" list')
    if not raw_keys:
        raise JwksError('the "keys" list is empty')
    keys: list[Jwk] = []
    skipped: list[str] = []
    for n, raw in enumerate(raw_keys):
        key, why = _one_key(raw)
        if key is not None:
            keys.append(key)
        else:
            skipped.append(f"key #{n}: {why}")
    if not keys:
        raise JwksError("no usable public key (" + "; ".join(skipped) + ")")
    return JwkSet(tuple(keys), tuple(skipped))


def _one_key(raw: Any) -> tuple[Jwk | None, str]:
    if not isinstance(raw, dict):
        return None, "not a JSON object"
    kty = raw.get("kty")
    if not isinstance(kty, str):
        return None, '"kty" is missing or not a string'
    if raw.get("use") not in (None, "sig"):
        return None, f'"use" is {raw.get("use")!r}, not "sig"'
    kid, alg, crv = raw.get("kid"), raw.get("alg"), raw.get("crv")
    if kid is not None and not isinstance(kid, str):
        return None, '"kid" is not a string'
    if alg is not None and not isinstance(alg, str):
        return None, '"alg" is not a string'
    try:
        pyjwk = jwt.PyJWK(raw)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        return None, f"{kty} key not usable: {exc}"
    return Jwk(kty=kty, key=pyjwk.key, kid=kid, alg=alg,
               crv=crv if isinstance(crv, str) else None), ""


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP (127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_jwks_uri(uri: str, *, allow_plain_http: bool = False) -> str | None:
    """Why meshsdk will not fetch keys from ``uri``; None when it will.

    ``https://`` always; ``http://`` only to a loopback host unless ``allow_plain_http``.
    """
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
    except ValueError as exc:
        return f"invalid URL {uri!r}: {exc}"
    if not host:
        return f"URL {uri!r} has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http":
        if allow_plain_http or is_loopback_host(host):
            return None
        return (f"{uri!r} uses plain http to a non-loopback host; keys fetched in clear text "
                f"can be replaced on the way. Use https (http is accepted for 127.0.0.1, ::1 "
                f"and localhost only)")
    return f"{uri!r} is not an https:// URL"


@dataclass(frozen=True, slots=True)
class JwksStatus:
    """What the cache knows about one URI (for ``describe`` and debugging)."""

    uri: str
    fetches: int
    """Fetch attempts so far, successful or not."""
    kids: tuple[str, ...]
    age: float | None
    """Seconds since the last successful fetch; None if there never was one."""
    last_error: str | None


@dataclass
class _Entry:
    """Cache state of one URL; ``value`` is a JwkSet (jwksUri) or a str (discovery)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    value: Any = None
    fetched_at: float = -math.inf
    attempted_at: float = -math.inf
    error: str | None = None
    fetches: int = 0


class JwksCache:
    """Fetches and caches ``jwksUri`` key sets; thread-safe; one fetch at a time per URI.

    ``client`` is used as given (and not closed); without one the cache makes its own
    ``httpx.Client`` on first use and :meth:`close` closes it.
    """

    def __init__(self, client: httpx.Client | None = None, *, clock: Clock = time.monotonic,
                 ttl: float = DEFAULT_TTL, timeout: float = DEFAULT_TIMEOUT,
                 kid_refetch_interval: float = DEFAULT_KID_REFETCH_INTERVAL,
                 failure_retry_interval: float = DEFAULT_FAILURE_RETRY_INTERVAL,
                 allow_plain_http: bool = False) -> None:
        self._client = client
        self._owns_client = client is None
        self._clock = clock
        self.ttl = ttl
        self.timeout = timeout
        self.kid_refetch_interval = kid_refetch_interval
        self.failure_retry_interval = failure_retry_interval
        self.allow_plain_http = allow_plain_http
        self._entries: dict[str, _Entry] = {}
        self._entries_lock = threading.Lock()

    # --- public -------------------------------------------------------------------------

    def check_uri(self, uri: str) -> str | None:
        """Why this cache would refuse to fetch ``uri`` (see :func:`check_jwks_uri`)."""
        return check_jwks_uri(uri, allow_plain_http=self.allow_plain_http)

    def keys(self, uri: str, *, timeout: float | None = None) -> JwkSet:
        """The keys of ``uri``: cached while fresh, else fetched (blocking up to ``timeout``).

        A failed refresh falls back to the previous keys. Raises :class:`JwksError` when
        no keys were ever fetched.
        """
        keys: JwkSet = self._get(uri, parse_jwks, timeout)
        return keys

    def discover(self, issuer: str, *, timeout: float | None = None) -> str:
        """The ``jwks_uri`` of ``issuer`` by OpenID Connect discovery (Istio's fallback when a
        rule has neither ``jwks`` nor ``jwksUri``), cached like keys."""
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        uri: str = self._get(url, self._parse_discovery, timeout)
        return uri

    def refetch(self, uri: str, seen: JwkSet | None, *,
                timeout: float | None = None) -> JwkSet | None:
        """Refresh ``uri`` early because a token's ``kid`` matched none of ``seen``.

        Returns keys newer than ``seen`` (fetched now, or by a concurrent request), or
        None when there are none: rate-limited (one attempt per
        ``kid_refetch_interval``) or the fetch failed.
        """
        entry = self._entry(uri)
        with entry.lock:
            if entry.value is not None and entry.value is not seen:
                fresh: JwkSet = entry.value
                return fresh
            if self._clock() - entry.attempted_at < self.kid_refetch_interval:
                log.debug("JWKS %s: unknown kid, refetch rate-limited", uri)
                return None
            self._fetch(entry, uri, parse_jwks, timeout)
            if entry.value is not None and entry.value is not seen:
                fetched: JwkSet = entry.value
                return fetched
            return None

    def status(self, uri: str) -> JwksStatus:
        """Fetch count, key ids, age and last error of ``uri``."""
        entry = self._entry(uri)
        keys = entry.value if isinstance(entry.value, JwkSet) else None
        age = self._clock() - entry.fetched_at if keys is not None else None
        return JwksStatus(uri, entry.fetches, keys.kids if keys else (), age, entry.error)

    def close(self) -> None:
        """Close the HTTP client if this cache created it."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> JwksCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------

    def _entry(self, uri: str) -> _Entry:
        entry = self._entries.get(uri)
        if entry is None:
            with self._entries_lock:
                entry = self._entries.setdefault(uri, _Entry())
        return entry

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, follow_redirects=False)
        return self._client

    def _get(self, url: str, parse: Callable[[bytes], Any], timeout: float | None) -> Any:
        entry = self._entry(url)
        value = entry.value
        if value is not None and self._clock() - entry.fetched_at < self.ttl:
            return value
        with entry.lock:
            now = self._clock()
            if entry.value is not None and now - entry.fetched_at < self.ttl:
                return entry.value
            if entry.error is None or now - entry.attempted_at >= self.failure_retry_interval:
                self._fetch(entry, url, parse, timeout)
            if entry.value is None:
                raise JwksError(entry.error or "not fetched yet", url)
            return entry.value

    def _fetch(self, entry: _Entry, url: str, parse: Callable[[bytes], Any],
               timeout: float | None) -> None:
        """One fetch attempt; the caller holds ``entry.lock``."""
        entry.attempted_at = self._clock()
        entry.fetches += 1
        try:
            value = parse(self._download(url, self.timeout if timeout is None else timeout))
        except (httpx.HTTPError, JwksError) as exc:
            entry.error = _reason(exc)
            if entry.value is not None:
                log.warning("JWKS refresh from %s failed: %s; still using the copy fetched "
                            "%.0fs ago", url, entry.error, self._clock() - entry.fetched_at)
            else:
                log.warning("JWKS fetch from %s failed: %s; tokens needing it are rejected "
                            "(401) until a fetch succeeds", url, entry.error)
            return
        if isinstance(value, JwkSet):
            for why in value.skipped:
                log.warning("JWKS %s: skipped %s", url, why)
            log.debug("JWKS %s fetched: kids %s", url, ", ".join(value.kids) or "(none)")
        entry.value = value
        entry.fetched_at = self._clock()
        entry.error = None

    def _parse_discovery(self, body: bytes) -> str:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise JwksError(f"OpenID configuration is not valid JSON: {exc}") from exc
        uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
        if not isinstance(uri, str) or not uri:
            raise JwksError('OpenID configuration has no "jwks_uri"')
        refused = self.check_uri(uri)
        if refused:
            raise JwksError(f"discovered jwks_uri refused: {refused}")
        return uri

    def _download(self, uri: str, timeout: float) -> bytes:
        """GET ``uri`` (refusing non-https URLs, see :func:`check_jwks_uri`): 200 or error."""
        refused = self.check_uri(uri)
        if refused:
            raise JwksError(refused, uri)
        response = self._http().get(uri, timeout=timeout)
        if response.status_code != 200:
            raise JwksError(f"HTTP {response.status_code} from {uri}", uri)
        body = response.content
        if len(body) > MAX_JWKS_BYTES:
            raise JwksError(f"document larger than {MAX_JWKS_BYTES} bytes", uri)
        return body


def _reason(exc: Exception) -> str:
    if isinstance(exc, JwksError):
        return exc.reason
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
