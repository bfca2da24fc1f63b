"""RequestAuthentication (security.istio.io): which JWTs a workload accepts.

A request with an invalid token is rejected (401); a request without a token is
accepted with no request identity (unless a rule has ``presence: REQUIRED``), so
requiring a token takes an AuthorizationPolicy too. Default token places:
``Authorization: Bearer <token>``, then the ``access_token`` query parameter.

Validation follows Istio's ``ValidateRequestAuthentication``/``validateJwtRule``.
Istio 1.30 accepts a rule with ``jwksUri`` and no ``issuer`` (the issuer is then not
checked), so only "neither issuer nor jwksUri" is an error here. Setting both
``jwks`` and ``jwksUri`` is an error here; Istio silently ignores ``jwksUri`` then.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.base import SECURITY, SECURITY_VERSIONS, KindInfo
from meshsdk.config.types import (
    Duration,
    IstioModel,
    PolicyTargetReference,
    WorkloadSelector,
    check_duration,
    check_header_name,
    check_host,
    check_policy_selection,
)


class JwtHeader(IstioModel):
    """``fromHeaders[]``: a header carrying the token, with a prefix to strip (``"Bearer "``)."""

    name: str = ""
    prefix: str | None = None


class ClaimToHeader(IstioModel):
    """``outputClaimToHeaders[]``: copy a verified claim into a request header."""

    header: str = ""
    claim: str = ""


class JwtRule(IstioModel):
    """``jwtRules[]``: one accepted issuer and how to find and check its tokens."""

    issuer: str | None = None
    audiences: list[str] = Field(default_factory=list)
    jwks_uri: str | None = None
    jwks: str | None = None
    from_headers: list[JwtHeader] = Field(default_factory=list)
    from_params: list[str] = Field(default_factory=list)
    from_cookies: list[str] = Field(default_factory=list)
    output_payload_to_header: str | None = None
    forward_original_token: bool = False
    output_claim_to_headers: list[ClaimToHeader] = Field(default_factory=list)
    timeout: Duration | None = None
    space_delimited_claims: list[str] = Field(default_factory=list)
    # Istio 1.30: REQUIRED makes a missing token a 401 (OPTIONAL, the default, lets it through).
    presence: Literal["OPTIONAL", "REQUIRED"] | None = None


class RequestAuthenticationSpec(IstioModel):
    """``spec`` of a RequestAuthentication."""

    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = Field(default_factory=list)
    jwt_rules: list[JwtRule] = Field(default_factory=list)


MAX_SPACE_DELIMITED_CLAIMS = 64
# Istio's ValidateStrictHTTPHeaderName: the header names it will emit.
_STRICT_HEADER = re.compile(r"^[-_A-Za-z0-9]+$")


def validate_request_authentication(spec: RequestAuthenticationSpec) -> Iterator[Finding]:
    """Istio's RequestAuthentication validation, with paths relative to ``spec``."""
    yield from check_policy_selection(spec.selector, spec.target_ref, spec.target_refs)
    for i, rule in enumerate(spec.jwt_rules):
        yield from _check_jwt_rule(rule, ("jwtRules", i))


def _check_jwt_rule(rule: JwtRule, path: Path) -> Iterator[Finding]:
    if not rule.issuer and not rule.jwks_uri:
        yield Finding((*path, "issuer"), "issuer must be set (or at least jwksUri), got none")
    for k, audience in enumerate(rule.audiences):
        if not audience:
            yield Finding((*path, "audiences", k), "audience must not be an empty string")
    if rule.jwks_uri:
        yield from _check_jwks_uri(rule.jwks_uri, (*path, "jwksUri"))
    if rule.jwks is not None:
        if rule.jwks_uri:
            yield Finding((*path, "jwks"), "set only one of jwks and jwksUri: with both, "
                                           "jwksUri is ignored")
        err = jwks_error(rule.jwks)
        if err:
            yield Finding((*path, "jwks"), err)
    for k, header in enumerate(rule.from_headers):
        where = (*path, "fromHeaders", k, "name")
        if not header.name:
            yield Finding(where, "header name must not be empty")
        else:
            yield from check_header_name(header.name, where)
    for field, values in (("fromParams", rule.from_params), ("fromCookies", rule.from_cookies)):
        for k, value in enumerate(values):
            if not value:
                yield Finding((*path, field, k), "must not be an empty string")
    for k, out in enumerate(rule.output_claim_to_headers):
        where = (*path, "outputClaimToHeaders", k)
        if not out.header:
            yield Finding((*where, "header"), "header must not be empty")
        elif not _STRICT_HEADER.match(out.header):
            yield Finding((*where, "header"), f"invalid header name {out.header!r}: use letters, "
                                              f"digits, '-' and '_' only")
        if not out.claim:
            yield Finding((*where, "claim"), "claim must not be empty")
    yield from check_duration(rule.timeout, (*path, "timeout"))
    if len(rule.space_delimited_claims) > MAX_SPACE_DELIMITED_CLAIMS:
        yield Finding((*path, "spaceDelimitedClaims"),
                      f"at most {MAX_SPACE_DELIMITED_CLAIMS} claims are allowed, "
                      f"got {len(rule.space_delimited_claims)}")
    for k, claim in enumerate(rule.space_delimited_claims):
        if not claim:
            yield Finding((*path, "spaceDelimitedClaims", k), "must not be an empty string")


def _check_jwks_uri(uri: str, path: Path) -> Iterator[Finding]:
    """An ``http://`` or ``https://`` URL with a host (the proxy fetches keys from it)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        yield Finding(path, f"invalid jwksUri {uri!r}: {exc}")
        return
    if parts.scheme not in ("http", "https"):
        yield Finding(path, f"jwksUri must be an http:// or https:// URL, got {uri!r}")
        return
    if not parts.hostname:
        yield Finding(path, f"jwksUri has no host: {uri!r}")
        return
    for f in check_host(parts.hostname, path, allow_wildcard=False):
        yield Finding(f.path, f"invalid jwksUri {uri!r}: {f.message}")
    if port == 0:
        yield Finding(path, f"jwksUri port must be in 1-65535, got 0 in {uri!r}")


def jwks_error(text: str) -> str | None:
    """Why ``text`` is not a JSON Web Key Set (or a single JWK), None if it looks like one."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"jwks is not valid JSON: {exc}"
    if isinstance(data, dict) and isinstance(data.get("keys"), list):
        keys = data["keys"]
    elif isinstance(data, dict) and "kty" in data:
        keys = [data]
    else:
        return "jwks must be a JSON Web Key Set: an object with a \"keys\" list"
    for n, key in enumerate(keys):
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            return f"jwks key #{n} is not a JSON Web Key (an object with \"kty\")"
    return None


KIND = KindInfo("RequestAuthentication", SECURITY, SECURITY_VERSIONS, RequestAuthenticationSpec,
                rules=validate_request_authentication)
