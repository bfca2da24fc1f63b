"""CORS, as Envoy's CORS filter applies an Istio ``corsPolicy``.

Istio puts the policy on the route (``TranslateCORSPolicy``): origins from
``allowOrigins`` (or, when that is empty, the deprecated exact-only ``allowOrigin``),
methods, headers and exposed headers joined with ``","``, ``maxAge`` in whole seconds,
``allowCredentials``, and ``forward_not_matching_preflights`` = false only for
``unmatchedPreflights: IGNORE``. Envoy then:

* **preflight** (``OPTIONS`` with a non-empty ``Origin`` and a non-empty
  ``Access-Control-Request-Method``): when the origin is allowed it answers itself
  with ``200``, ``access-control-allow-origin: <the request's origin>``,
  ``access-control-allow-credentials: true`` (if set), ``-allow-methods``,
  ``-allow-headers`` (``*`` echoes the request's ``Access-Control-Request-Method`` /
  ``-Headers``) and ``-max-age``. When the origin is not allowed it forwards the
  preflight to the upstream (Istio's default, ``FORWARD``), or with ``IGNORE``
  answers ``200`` itself without ``access-control-allow-origin``.
* **actual requests** with an allowed origin: the response gets
  ``access-control-allow-origin``, ``-allow-credentials`` and ``-expose-headers``.

An origin is allowed when one of the matchers matches it or matches the literal
``"*"`` (so ``exact: "*"`` allows every origin). The filter only acts on routes that
forward traffic: a redirect or direct-response route answers without CORS headers.
"""

from __future__ import annotations

from meshsdk.config.kinds.virtual_service import CorsPolicy
from meshsdk.memo import remember
from meshsdk.outcome import LocalReply
from meshsdk.routing.match import StrPredicate, string_matcher
from meshsdk.routing.request import RequestView

_LIMIT = 4096
_origin_cache: dict[int, tuple[CorsPolicy, tuple[StrPredicate, ...]]] = {}


def is_preflight(req: RequestView) -> bool:
    """``OPTIONS`` with a non-empty ``Origin`` and ``Access-Control-Request-Method``."""
    if req.method != "OPTIONS":
        return False
    headers = req.headers
    return bool(headers.get("origin")) and bool(headers.get("access-control-request-method"))


def _origin_matchers(policy: CorsPolicy) -> tuple[StrPredicate, ...]:
    entry = _origin_cache.get(id(policy))
    if entry is not None and entry[0] is policy:
        return entry[1]
    matchers: list[StrPredicate] = []
    if policy.allow_origins:
        for sm in policy.allow_origins:
            predicate = string_matcher(sm)
            if predicate is not None:  # Istio drops matchers it cannot convert ({})
                matchers.append(predicate)
    else:
        for origin in policy.allow_origin:
            matchers.append(origin.__eq__)
    result = tuple(matchers)
    remember(_origin_cache, id(policy), (policy, result), _LIMIT)
    return result


def origin_allowed(policy: CorsPolicy, origin: str) -> bool:
    """Envoy's ``isOriginAllowed``: a matcher accepts ``"*"`` or the origin itself."""
    return any(matcher("*") or matcher(origin) for matcher in _origin_matchers(policy))


def preflight_reply(policy: CorsPolicy, req: RequestView) -> LocalReply | None:
    """The answer to a preflight, or None when it goes to the upstream.

    None also for requests that are not preflights.
    """
    if not is_preflight(req):
        return None
    origin = req.headers["origin"]
    allowed = origin_allowed(policy, origin)
    if not allowed and policy.unmatched_preflights != "IGNORE":
        return None
    headers: list[tuple[str, str]] = []
    if allowed:
        headers.append(("access-control-allow-origin", origin))
    if policy.allow_credentials:
        headers.append(("access-control-allow-credentials", "true"))
    methods = ",".join(policy.allow_methods)
    if methods:
        if methods == "*":
            methods = req.headers.get("access-control-request-method", "")
        headers.append(("access-control-allow-methods", methods))
    allow_headers = ",".join(policy.allow_headers)
    if allow_headers:
        if allow_headers == "*":
            allow_headers = req.headers.get("access-control-request-headers", "")
        headers.append(("access-control-allow-headers", allow_headers))
    if policy.max_age is not None:
        headers.append(("access-control-max-age", str(int(policy.max_age))))
    return LocalReply(200, b"", tuple(headers))


def cors_response_headers(policy: CorsPolicy, req: RequestView) -> list[tuple[str, str]]:
    """Headers to set (replacing any the upstream sent) on the response to a request
    whose ``Origin`` is allowed; empty otherwise."""
    origin = req.headers.get("origin")
    if not origin or not origin_allowed(policy, origin):
        return []
    out = [("access-control-allow-origin", origin)]
    if policy.allow_credentials:
        out.append(("access-control-allow-credentials", "true"))
    expose = ",".join(policy.expose_headers)
    if expose:
        out.append(("access-control-expose-headers", expose))
    return out


__all__ = ["cors_response_headers", "is_preflight", "origin_allowed", "preflight_reply"]
