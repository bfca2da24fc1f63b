"""RequestAuthentication: find and verify end-user JWTs the way Istio's sidecar (Envoy) does.

:func:`compile_request_authn` merges the ``jwtRules`` of every RequestAuthentication
that applies to a workload (mesh-wide ones in the root namespace, namespace-wide ones,
and selector/targetRef ones, including root-namespace selector policies as Istio does)
into a :class:`JwtAuthenticator`. :meth:`JwtAuthenticator.authenticate` looks at one
request's headers and query and returns an :class:`AuthnResult`: accepted or not, the
request identity, and the header changes to apply. It never touches the request itself.

Behaviour reproduced from Envoy's ``jwt_authn`` filter as Istio configures it:

* Token places per rule: ``fromHeaders`` (the prefix is searched in the value, and the
  token starts at the first base64url character after it), ``fromParams``,
  ``fromCookies``; with none of them, ``Authorization: Bearer <token>`` and the
  ``access_token`` query parameter. Every place is looked at, not just the first hit.
* No token: accepted, no identity (``request_principal`` None), unless a rule says
  ``presence: REQUIRED`` (401 ``Jwt is missing``).
* A token is checked by the rules that read its place and whose ``issuer`` equals its
  ``iss`` (rules without an issuer accept any). None: 401 ``Jwt issuer is not
  configured``. Several: the first that accepts it wins.
* Checks in Envoy's order, with Envoy's messages as the 401 body: format, issuer, time
  (``exp``/``nbf`` with 60 s clock skew: ``Jwt is expired`` / ``Jwt not yet valid``),
  audiences (403 ``Audiences in Jwt are not allowed``; an empty ``audiences`` accepts
  any; ``http(s)://`` prefixes and a trailing ``/`` are ignored when comparing), keys
  (``Jwks remote fetch is failed``), signature (``Jwks doesn't have key to match kid or
  alg from Jwt`` when no key fits the token's ``kid``/``alg``, else ``Jwt verification
  fails``).
* Every token present must be valid (Envoy's stated rule: a good token must not let a
  bad one through). Stricter than Istio's generated config in one corner: a bad token in
  a place only another rule reads is rejected even when a good token is also present.
* Request principal ``<iss>/<sub>``; with several valid tokens, the one whose issuer
  sorts first (Istio's authn filter picks by issuer in dictionary order).
* On success: ``outputPayloadToHeader`` gets the token's base64url payload segment
  (unpadded), ``outputClaimToHeaders`` the claim value (string, number or bool; a
  dotted claim name walks nested objects; other types are skipped), and unless
  ``forwardOriginalToken`` the header carrying the token is removed (the whole header,
  as Envoy does) or the query parameter dropped (:attr:`AuthnResult.query`); cookies are
  left alone (Envoy does not remove them either).
* Those output headers are always removed from the incoming request first, valid
  token or not, so a client cannot forge them (Envoy's ``sanitizeHeaders``).
* CORS preflight requests (``OPTIONS`` with ``Origin`` and
  ``Access-Control-Request-Method``) are not checked (Istio sets
  ``bypass_cors_preflight``).

Remote keys come from a :class:`~meshsdk.security.jwks.JwksCache`, fetched lazily and
synchronously: the first request needing a ``jwksUri`` may block for up to the rule's
``timeout`` (5 s by default). Inline ``jwks`` are parsed once, at compile time.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus

import jwt

from meshsdk.config.diagnostics import Diagnostic, Finding
from meshsdk.config.kinds.request_authentication import JwtRule, RequestAuthenticationSpec
from meshsdk.config.resource import Config, Resource
from meshsdk.config.selection import policies_for
from meshsdk.errors import ConfigError
from meshsdk.security.jwks import (
    DEFAULT_TIMEOUT,
    AuthenticationError,
    JwksCache,
    JwksError,
    JwkSet,
    parse_jwks,
)

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "KIND",
    "AuthenticationError",
    "AuthnResult",
    "CompiledJwtRule",
    "JwtAuthenticator",
    "TokenLocation",
    "VerifiedJwt",
    "compile_request_authn",
]

log = logging.getLogger(__name__)

KIND = "RequestAuthentication"
CLOCK_SKEW_SECONDS = 60.0
"""Envoy's default ``clock_skew_seconds`` (Istio does not change it)."""
BEARER_PREFIX = "Bearer "
ACCESS_TOKEN_PARAM = "access_token"

# Envoy's texts (jwt_verify_lib status strings), used as the 401/403 body.
JWT_MISSING = "Jwt is missing"
JWT_EXPIRED = "Jwt is expired"
JWT_NOT_YET_VALID = "Jwt not yet valid"
JWT_BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
JWT_UNKNOWN_ISSUER = "Jwt issuer is not configured"
JWT_AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
JWT_VERIFICATION_FAILS = "Jwt verification fails"
JWKS_KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
JWKS_FETCH_FAILED = "Jwks remote fetch is failed"

_IMPLEMENTED_ALGS = frozenset({
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "EdDSA",
})
_B64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


# --- compiled configuration ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenLocation:
    """Where a token may be: a header (with a value prefix), a query parameter or a cookie."""

    kind: Literal["header", "param", "cookie"]
    name: str
    """Header names are lowercase; parameter and cookie names are case-sensitive."""
    prefix: str = ""


DEFAULT_LOCATIONS = (TokenLocation("header", "authorization", BEARER_PREFIX),
                     TokenLocation("param", ACCESS_TOKEN_PARAM))


@dataclass(frozen=True, slots=True)
class CompiledJwtRule:
    """One ``jwtRules[]`` entry, ready to verify tokens."""

    source: str
    """``RequestAuthentication ns/name jwtRules[i]``: for logs and ``describe``."""
    issuer: str | None
    audiences: frozenset[str]
    """Sanitized (no ``http(s)://`` prefix, no trailing ``/``); empty accepts any."""
    locations: tuple[TokenLocation, ...]
    inline_keys: JwkSet | None = None
    jwks_uri: str | None = None
    """None with no inline keys: the URI is found by OpenID discovery from the issuer."""
    timeout: float = DEFAULT_TIMEOUT
    output_payload_to_header: str | None = None
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()
    """(header, claim) pairs; headers lowercase."""
    forward_original_token: bool = False
    required: bool = False
    """``presence: REQUIRED``: a request without a token for this rule is rejected."""

    @property
    def output_headers(self) -> tuple[str, ...]:
        """Headers this rule writes (removed from every incoming request)."""
        out = [h for h, _ in self.output_claim_to_headers]
        if self.output_payload_to_header:
            out.insert(0, self.output_payload_to_header)
        return tuple(out)


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedJwt:
    """A token that passed every check, and the rule that accepted it."""

    issuer: str
    subject: str
    claims: Mapping[str, Any]
    audiences: tuple[str, ...]
    rule: str
    location: TokenLocation


@dataclass(frozen=True, slots=True)
class AuthnResult:
    """The outcome for one request. Apply ``headers_to_remove`` first, then ``headers_to_set``.

    Rejected: ``ok`` False, ``status`` 401 (403 for a disallowed audience), ``body`` the
    Envoy message, ``response_headers`` the ``WWW-Authenticate`` challenge. ``reason`` has
    more detail for logs and must not be sent to the client.
    """

    ok: bool
    status: int | None = None
    body: bytes = b""
    request_principal: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    audiences: tuple[str, ...] = ()
    presenter: str | None = None
    issuer: str | None = None
    headers_to_set: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    query: str | None = None
    """The query string without the token parameter(s); None means unchanged."""
    response_headers: tuple[tuple[str, str], ...] = ()
    tokens: tuple[VerifiedJwt, ...] = ()
    """Every verified token (the identity fields above come from the first by issuer)."""
    reason: str = ""


# --- the authenticator ------------------------------------------------------------------------


class JwtAuthenticator:
    """Verifies the JWTs of requests to one workload (see the module docstring).

    Thread-safe; ``clock`` gives Unix time in seconds for ``exp``/``nbf``.
    """

    def __init__(self, rules: Sequence[CompiledJwtRule], *, jwks_cache: JwksCache | None = None,
                 clock: Callable[[], float] = time.time,
                 clock_skew: float = CLOCK_SKEW_SECONDS) -> None:
        self.rules = tuple(rules)
        self._cache = jwks_cache
        self._clock = clock
        self._skew = clock_skew
        sanitize: dict[str, None] = {}
        locations: dict[TokenLocation, list[CompiledJwtRule]] = {}
        for rule in self.rules:
            for header in rule.output_headers:
                sanitize[header] = None
            for location in rule.locations:
                locations.setdefault(location, []).append(rule)
        self._sanitize = tuple(sanitize)
        kind_order = {"header": 0, "param": 1, "cookie": 2}
        self._locations = tuple(sorted(((loc, tuple(r)) for loc, r in locations.items()),
                                       key=lambda item: kind_order[item[0].kind]))
        self._required = tuple(r for r in self.rules if r.required)
        self._by_source = {rule.source: rule for rule in self.rules}

    @property
    def source(self) -> tuple[str, ...]:
        """The rules in force, as ``RequestAuthentication ns/name jwtRules[i]``."""
        return tuple(rule.source for rule in self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def authenticate(self, headers: Sequence[tuple[str, str]], query: str, *,
                     method: str | None = None, realm: str | None = None) -> AuthnResult:
        """Check the tokens of one request.

        ``headers`` as received (any case; repeated names allowed), ``query`` the raw
        query string without ``?``. ``method`` (else the ``:method`` pseudo-header)
        enables the CORS preflight bypass; ``realm`` (the request URI, as Envoy uses) goes
        into the ``WWW-Authenticate`` challenge of a rejection.
        """
        if not self.rules:
            return AuthnResult(ok=True)
        if _is_cors_preflight(headers, method):
            return AuthnResult(ok=True, headers_to_remove=self._sanitize)
        found = self._extract(headers, query)
        verified: list[VerifiedJwt] = []
        payload_segments: list[str] = []
        for location, token, rules in found:
            outcome = self._verify(token, rules)
            if isinstance(outcome, _Failure):
                log.debug("JWT from %s %s rejected: %s%s", location.kind, location.name,
                          outcome.message, f" ({outcome.detail})" if outcome.detail else "")
                return _reject(outcome, realm)
            rule, parsed = outcome
            verified.append(VerifiedJwt(parsed.iss or "", parsed.sub or "", parsed.payload,
                                        parsed.audiences, rule.source, location))
            payload_segments.append(parsed.payload_b64)
        accepted_by = {v.rule for v in verified}
        for rule in self._required:
            if rule.source not in accepted_by:
                return _reject(_Failure(JWT_MISSING, f"{rule.source} requires a token"), realm,
                               missing=True)
        return self._accept(verified, payload_segments, query)

    # --- extraction -----------------------------------------------------------------------

    def _extract(self, headers: Sequence[tuple[str, str]],
                 query: str) -> list[tuple[TokenLocation, str, tuple[CompiledJwtRule, ...]]]:
        found: list[tuple[TokenLocation, str, tuple[CompiledJwtRule, ...]]] = []
        params: dict[str, str] | None = None
        cookies: dict[str, str] | None = None
        for location, rules in self._locations:
            if location.kind == "header":
                for name, value in headers:
                    if name.lower() != location.name:
                        continue
                    token = _from_header_value(value, location.prefix)
                    if token is not None:
                        found.append((location, token, rules))
            elif location.kind == "param":
                if params is None:
                    params = _first_values(parse_qsl(query, keep_blank_values=True))
                if location.name in params:
                    found.append((location, params[location.name], rules))
            else:
                if cookies is None:
                    cookies = _parse_cookies(headers)
                if location.name in cookies:
                    found.append((location, cookies[location.name], rules))
        return found

    # --- verification ------------------------------------------------------------------------

    def _verify(self, token: str,
                rules: tuple[CompiledJwtRule, ...]) -> tuple[CompiledJwtRule, _Jwt] | _Failure:
        parsed = _parse(token)
        if isinstance(parsed, _Failure):
            return parsed
        candidates = [r for r in rules if r.issuer is not None and r.issuer == parsed.iss]
        if not candidates:
            candidates = [r for r in rules if r.issuer is None]
        if not candidates:
            return _Failure(JWT_UNKNOWN_ISSUER, f"iss {parsed.iss!r}")
        first_failure: _Failure | None = None
        for rule in candidates:
            failure = self._check(parsed, rule)
            if failure is None:
                return rule, parsed
            first_failure = first_failure or failure
        assert first_failure is not None
        return first_failure

    def _check(self, token: _Jwt, rule: CompiledJwtRule) -> _Failure | None:
        """Envoy's order: time, audiences, keys, signature."""
        now = self._clock()
        if token.nbf is not None and now + self._skew < token.nbf:
            return _Failure(JWT_NOT_YET_VALID, f"nbf {token.nbf}, now {now:.0f}")
        if token.exp and now > token.exp + self._skew:
            return _Failure(JWT_EXPIRED, f"exp {token.exp}, now {now:.0f}")
        if rule.audiences and not any(_sanitize_audience(a) in rule.audiences
                                      for a in token.audiences):
            return _Failure(JWT_AUDIENCE_NOT_ALLOWED, f"aud {list(token.audiences)}", status=403)
        uri: str | None = None
        if rule.inline_keys is not None:
            keys = rule.inline_keys
        else:
            cache = self._jwks_cache()
            try:
                uri = rule.jwks_uri or cache.discover(rule.issuer or "", timeout=rule.timeout)
                keys = cache.keys(uri, timeout=rule.timeout)
            except JwksError as exc:
                log.warning("%s: no keys to verify a token of %s: %s", rule.source,
                            token.iss, exc)
                return _Failure(JWKS_FETCH_FAILED, str(exc))
        failure = _verify_signature(token, keys)
        if failure is not None and failure.message == JWKS_KID_ALG_MISMATCH and uri is not None:
            newer = self._jwks_cache().refetch(uri, keys, timeout=rule.timeout)
            if newer is not None:
                failure = _verify_signature(token, newer)
        return failure

    def _jwks_cache(self) -> JwksCache:
        if self._cache is None:
            self._cache = JwksCache()
        return self._cache

    # --- success --------------------------------------------------------------------------------

    def _accept(self, verified: list[VerifiedJwt], payload_segments: list[str],
                query: str) -> AuthnResult:
        to_remove: dict[str, None] = dict.fromkeys(self._sanitize)
        to_set: list[tuple[str, str]] = []
        drop_params: set[str] = set()
        for token, segment in zip(verified, payload_segments, strict=True):
            rule = self._by_source[token.rule]
            if rule.output_payload_to_header:
                to_set.append((rule.output_payload_to_header, segment))
            for header, claim in rule.output_claim_to_headers:
                value = _claim_text(_claim(token.claims, claim))
                if value:
                    to_set.append((header, value))
            if not rule.forward_original_token:
                if token.location.kind == "header":
                    to_remove[token.location.name] = None
                elif token.location.kind == "param":
                    drop_params.add(token.location.name)
        new_query = _without_params(query, drop_params) if drop_params else None
        if not verified:
            return AuthnResult(ok=True, headers_to_remove=tuple(to_remove))
        chosen = min(verified, key=lambda v: v.issuer)
        presenter = chosen.claims.get("azp")
        return AuthnResult(
            ok=True,
            request_principal=f"{chosen.issuer}/{chosen.subject}",
            claims=chosen.claims,
            audiences=chosen.audiences,
            presenter=presenter if isinstance(presenter, str) else None,
            issuer=chosen.issuer,
            headers_to_set=tuple(dict.fromkeys(to_set)),  # one token may sit in two places
            headers_to_remove=tuple(to_remove),
            query=new_query,
            tokens=tuple(verified),
        )


# --- compile ------------------------------------------------------------------------------------


def compile_request_authn(config: Config, namespace: str, labels: Mapping[str, str], *,
                          root_namespace: str, jwks_cache: JwksCache | None = None,
                          clock: Callable[[], float] = time.time, workload_kind: str = "",
                          workload_name: str = "") -> JwtAuthenticator:
    """Build the authenticator of one workload from every RequestAuthentication applying to it.

    Rules are merged in Istio's order: root namespace, namespace, then selector/targetRef
    policies, each oldest first. Inline ``jwks`` are parsed here. Pass a shared
    ``jwks_cache`` so fetched keys survive recompiles (a private one is made otherwise).
    Raises :class:`ConfigError` naming the resource and field for a malformed inline JWKS
    or a ``jwksUri`` the cache refuses (plain http to a non-loopback host).
    """
    scopes = policies_for(config.of_kind(KIND), namespace, labels, root_namespace=root_namespace,
                          workload_kind=workload_kind, workload_name=workload_name,
                          root_selectors=True)
    cache = jwks_cache if jwks_cache is not None else JwksCache()
    rules: list[CompiledJwtRule] = []
    problems: list[Diagnostic] = []
    for resource in scopes:
        spec: RequestAuthenticationSpec = resource.spec
        for i, rule in enumerate(spec.jwt_rules):
            compiled = _compile_rule(resource, i, rule, cache, problems)
            if compiled is not None:
                rules.append(compiled)
    if problems:
        n = len(problems)
        raise ConfigError(f"RequestAuthentication: {n} unusable JWT rule{'s' * (n != 1)}",
                          problems)
    return JwtAuthenticator(rules, jwks_cache=cache, clock=clock)


def _compile_rule(resource: Resource, index: int, rule: JwtRule, cache: JwksCache,
                  problems: list[Diagnostic]) -> CompiledJwtRule | None:
    path = ("spec", "jwtRules", index)

    def problem(field_name: str, message: str) -> None:
        problems.append(resource.diagnostic(Finding((*path, field_name), message)))

    inline: JwkSet | None = None
    uri: str | None = None
    if rule.jwks is not None:
        try:
            inline = parse_jwks(rule.jwks)
        except JwksError as exc:
            problem("jwks", f"invalid jwks: {exc.reason}")
            return None
    elif rule.jwks_uri:
        refused = cache.check_uri(rule.jwks_uri)
        if refused:
            problem("jwksUri", f"jwksUri refused: {refused}")
            return None
        uri = rule.jwks_uri
    else:
        refused = cache.check_uri(rule.issuer or "")
        if refused:
            problem("issuer", f"no jwks or jwksUri, and the issuer cannot be used for OpenID "
                              f"discovery: {refused}")
            return None
    locations: list[TokenLocation] = []
    for header in rule.from_headers:
        locations.append(TokenLocation("header", header.name.lower(), header.prefix or ""))
    locations.extend(TokenLocation("param", name) for name in rule.from_params)
    locations.extend(TokenLocation("cookie", name) for name in rule.from_cookies)
    return CompiledJwtRule(
        source=f"{resource.ref} jwtRules[{index}]",
        issuer=rule.issuer or None,
        audiences=frozenset(_sanitize_audience(a) for a in rule.audiences),
        locations=tuple(dict.fromkeys(locations)) or DEFAULT_LOCATIONS,
        inline_keys=inline,
        jwks_uri=uri,
        timeout=rule.timeout if rule.timeout is not None else DEFAULT_TIMEOUT,
        output_payload_to_header=(rule.output_payload_to_header or "").lower() or None,
        output_claim_to_headers=tuple((o.header.lower(), o.claim)
                                      for o in rule.output_claim_to_headers),
        forward_original_token=rule.forward_original_token,
        required=rule.presence == "REQUIRED",
    )


# --- token parsing (Envoy's jwt_verify_lib checks and messages) ----------------------------------


@dataclass(frozen=True, slots=True)
class _Failure:
    message: str
    detail: str = ""
    status: int = 401


@dataclass(frozen=True, slots=True)
class _Jwt:
    token: str
    alg: str
    kid: str | None
    payload: Mapping[str, Any]
    payload_b64: str
    iss: str | None
    sub: str | None
    audiences: tuple[str, ...]
    exp: float | None
    nbf: float | None


def _parse(token: str) -> _Jwt | _Failure:
    if token.count(".") != 2:
        return _Failure(JWT_BAD_FORMAT)
    header_b64, payload_b64, signature_b64 = token.split(".")
    if not header_b64 or not payload_b64 or not signature_b64:
        return _Failure(JWT_BAD_FORMAT)
    header_raw = _b64url(header_b64)
    if header_raw is None:
        return _Failure("Jwt header is an invalid Base64url encoded")
    header = _json_object(header_raw)
    if header is None:
        return _Failure("Jwt header is an invalid JSON")
    alg = header.get("alg")
    if not isinstance(alg, str):
        return _Failure("Jwt header [alg] field is required and must be a string")
    if alg not in _IMPLEMENTED_ALGS:
        return _Failure("Jwt header [alg] is not supported", f"alg {alg!r}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        return _Failure("Jwt header [kid] field is not a string")
    payload_raw = _b64url(payload_b64)
    if payload_raw is None:
        return _Failure("Jwt payload is an invalid Base64url encoded")
    payload = _json_object(payload_raw)
    if payload is None:
        return _Failure("Jwt payload is an invalid JSON")
    for name in ("iss", "sub", "jti"):
        if name in payload and not isinstance(payload[name], str):
            return _Failure(f"Jwt payload [{name}] field is not a string")
    times: dict[str, float | None] = {}
    for name in ("iat", "nbf", "exp"):
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return _Failure(f"Jwt payload [{name}] field is not an integer")
        if value is not None and value < 0:
            return _Failure(f"Jwt payload [{name}] field is not a positive 64 bit integer")
        times[name] = value
    aud = payload.get("aud")
    if aud is None:
        audiences: tuple[str, ...] = ()
    elif isinstance(aud, str):
        audiences = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        audiences = tuple(aud)
    else:
        return _Failure("Jwt payload [aud] field is not a string or string list")
    if _b64url(signature_b64) is None:
        return _Failure("Jwt signature is an invalid Base64url encoded")
    return _Jwt(token, alg, kid, MappingProxyType(payload), payload_b64, payload.get("iss"),
                payload.get("sub"), audiences, times["exp"], times["nbf"])


def _b64url(segment: str) -> bytes | None:
    if not _B64URL.match(segment):
        return None
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _verify_signature(token: _Jwt, keys: JwkSet) -> _Failure | None:
    """jwt_verify_lib's key choice: skip keys whose kid or alg differ; try the rest."""
    matched = False
    for key in keys:
        if token.kid and key.kid and key.kid != token.kid:
            continue
        if key.alg and key.alg != token.alg:
            continue
        matched = True
        if not key.fits(token.alg):
            continue
        try:
            jwt.PyJWS().decode_complete(token.token, key=key.key, algorithms=[token.alg])
        except jwt.PyJWTError:
            continue
        except (TypeError, ValueError):  # key object PyJWT cannot use with this alg
            continue
        return None
    if not matched:
        return _Failure(JWKS_KID_ALG_MISMATCH, f"kid {token.kid!r}, alg {token.alg}")
    return _Failure(JWT_VERIFICATION_FAILS, f"kid {token.kid!r}, alg {token.alg}")


def _sanitize_audience(audience: str) -> str:
    """jwt_verify_lib's CheckAudience: ignore an ``http://``/``https://`` prefix and a
    trailing slash."""
    for scheme in ("http://", "https://"):
        if audience.startswith(scheme):
            audience = audience[len(scheme):]
            break
    return audience[:-1] if audience.endswith("/") else audience


# --- helpers --------------------------------------------------------------------------------------


def _reject(failure: _Failure, realm: str | None, *, missing: bool = False) -> AuthnResult:
    challenge = f'Bearer realm="{realm}"' if realm is not None else "Bearer"
    if not missing:
        challenge += ', error="invalid_token"' if realm is not None else ' error="invalid_token"'
    reason = f"{failure.message}: {failure.detail}" if failure.detail else failure.message
    return AuthnResult(ok=False, status=failure.status, body=failure.message.encode(),
                       response_headers=(("www-authenticate", challenge),), reason=reason)


def _is_cors_preflight(headers: Sequence[tuple[str, str]], method: str | None) -> bool:
    """Envoy's test: OPTIONS with non-empty Origin and Access-Control-Request-Method."""
    verb = method
    if verb is None:
        verb = next((value for name, value in headers if name == ":method"), "")
    if verb.upper() != "OPTIONS":
        return False
    names = {name.lower(): value for name, value in reversed(headers)}
    return bool(names.get("origin")) and bool(names.get("access-control-request-method"))


def _from_header_value(value: str, prefix: str) -> str | None:
    """Envoy's header extraction: the prefix anywhere in the value, then the token from
    the first base64url character after it (the whole value when there is none)."""
    if not prefix:
        return value
    pos = value.find(prefix)
    if pos < 0:
        return None
    for i in range(pos + len(prefix), len(value)):
        if value[i] in _TOKEN_CHARS:
            return value[i:]
    return value


def _first_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _parse_cookies(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for name, value in headers:
        if name.lower() != "cookie":
            continue
        for part in value.split(";"):
            key, sep, val = part.strip().partition("=")
            if not sep or not key:
                continue
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1]
            cookies.setdefault(key.strip(), val)
    return cookies


def _without_params(query: str, names: set[str]) -> str:
    kept = [part for part in query.split("&")
            if part and unquote_plus(part.partition("=")[0]) not in names]
    return "&".join(kept)


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; ``a.b.c`` walks nested objects (Envoy's claim paths)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _claim_text(value: Any) -> str:
    """Envoy's header text for a claim: strings as is, bools as true/false, whole numbers
    without a decimal point; anything else (objects, lists, null) gives no header."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and 0 <= value < 2.0**64:
            return str(int(value))
        return f"{value:f}"
    return ""
