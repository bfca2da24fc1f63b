"""CUSTOM authorization over HTTP: Envoy's ext_authz HTTP service, as Istio configures it.

An :class:`HttpExtAuthz` is the ``custom`` callable of :meth:`Authorizer.check` for an
``envoyExtAuthzHttp`` extension provider of the mesh config (:class:`AsyncHttpExtAuthz`
for :meth:`Authorizer.check_async`). Behaviour follows Envoy's raw HTTP ext_authz
client (``ext_authz_http_impl.cc``) with Istio's settings (``builder/extauthz.go``):

* The check request goes to ``http://<service>:<port><pathPrefix><path>?<query>`` with
  the original method, ``Content-Length: 0`` and no body. It carries the original
  ``Host``, ``Authorization`` when present, the headers named by
  ``includeRequestHeadersInCheck`` (exact, ``prefix*`` or ``*suffix``, any case; the
  deprecated ``includeHeadersInCheck`` when that is empty) and, overriding them,
  ``includeAdditionalHeadersInCheck``.
* 200 allows: the answer's headers named by ``headersToUpstreamOnAllow`` go to the
  upstream request, those named in ``x-envoy-auth-headers-to-remove`` are removed from
  it, and ``headersToDownstreamOnAllow`` go to the client's response. Envoy counts
  only 200 as OK: another 2xx (204...) denies like a 4xx.
* Any other status below 500 denies with that status and body; the client gets the
  answer's headers named by ``headersToDownstreamOnDeny`` (plus ``WWW-Authenticate``
  and ``Location``), or all of them when that list is empty.
* A 5xx answer, a connection failure or a timeout (``timeout``, Istio's default 600s)
  is an error: allowed when ``failOpen``, else denied with ``statusOnError`` (403 by
  default) and an empty body.

Not supported: ``includeRequestBodyInCheck`` (the request body is not available at
decision time; the check is sent without it, as Envoy does without that setting).
Connection-level headers (``Connection``, ``Transfer-Encoding``...) and
``Content-Length`` are never copied to or from the authorizer: framing is the sending
side's business.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote

import httpx

from meshsdk.config.mesh import EnvoyExtAuthzHttpProvider
from meshsdk.security.authz import DENIED_STATUS, AuthzRequest, CustomResult, ProviderRef

__all__ = ["DEFAULT_TIMEOUT", "MAX_RESPONSE_BODY", "REMOVE_HEADER", "AsyncHttpExtAuthz",
           "HeaderNames", "HttpExtAuthz"]

DEFAULT_TIMEOUT = 600.0
"""Istio's timeout for an ext_authz check when the provider sets none, in seconds."""
MAX_RESPONSE_BODY = 1 << 20
"""Largest authorizer answer body accepted; a larger one is treated as an error."""
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"
"""Header of a 200 answer naming request headers to remove before going upstream."""

_FRAMING = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                      "te", "trailer", "upgrade", "content-length", "host"})
_ALWAYS_ON_DENY = ("www-authenticate", "location")
_PATH_SAFE = "!$&'()*+,;=:@/%-._~?#[]"


class HeaderNames:
    """Envoy's list of header-name matchers: exact, ``prefix*`` or ``*suffix``, any case."""

    __slots__ = ("_exact", "_prefixes", "_suffixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        for pattern in patterns:
            pattern = pattern.lower()
            if pattern.startswith("*"):
                suffixes.append(pattern[1:])
            elif pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self._suffixes = tuple(suffixes)

    def __bool__(self) -> bool:
        return bool(self._exact or self._prefixes or self._suffixes)

    def __call__(self, name: str) -> bool:
        """Whether the (lower-case) header ``name`` is in the list."""
        return name in self._exact or name.startswith(self._prefixes) or \
            name.endswith(self._suffixes)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A provider's settings, digested once."""

    host: str
    port: int
    path_prefix: str
    timeout: float
    fail_open: bool
    status_on_error: int
    include: HeaderNames
    additional: tuple[tuple[str, str], ...]
    upstream: HeaderNames
    downstream_on_allow: HeaderNames
    downstream_on_deny: HeaderNames

    @classmethod
    def of(cls, provider: EnvoyExtAuthzHttpProvider) -> _Plan:
        included = provider.include_request_headers_in_check or provider.include_headers_in_check
        return cls(
            host=provider.service.rpartition("/")[2].strip("[]"),  # [<namespace>/]<hostname>
            port=provider.port,
            path_prefix=provider.path_prefix or "",
            timeout=provider.timeout if provider.timeout is not None else DEFAULT_TIMEOUT,
            fail_open=provider.fail_open,
            status_on_error=int(provider.status_on_error) if provider.status_on_error
            else DENIED_STATUS,
            include=HeaderNames(included),
            additional=tuple((k.lower(), v) for k, v in
                             sorted(provider.include_additional_headers_in_check.items())),
            upstream=HeaderNames(provider.headers_to_upstream_on_allow),
            downstream_on_allow=HeaderNames(provider.headers_to_downstream_on_allow),
            downstream_on_deny=HeaderNames(provider.headers_to_downstream_on_deny),
        )

    def request(self, req: AuthzRequest) -> httpx.Request:
        """The check request for ``req``."""
        headers: dict[str, str] = {"content-length": "0"}
        if req.host:
            headers["host"] = req.host
        for name, value in req.headers.items():
            name = name.lower()
            if name in _FRAMING or name.startswith(":"):
                continue
            if name == "authorization" or self.include(name):
                headers[name] = value
        for name, value in self.additional:
            headers[name] = value
        target = quote(self.path_prefix + (req.target or "/"), safe=_PATH_SAFE)
        url = httpx.URL(scheme="http", host=self.host, port=self.port,
                        raw_path=target.encode("ascii"))
        # Every network wait is bounded by the provider timeout (httpx reads it here).
        return httpx.Request(req.method or "GET", url, headers=headers,
                             extensions={"timeout": httpx.Timeout(self.timeout).as_dict()})

    def answer(self, status: int, headers: Sequence[tuple[str, str]],
               body: bytes) -> CustomResult:
        """Envoy's reading of the authorizer's answer."""
        if status >= 500:
            return self.error(f"authorizer answered {status}")
        if status == 200:
            remove: list[str] = []
            upstream, downstream = [], []
            for name, value in headers:
                if name == REMOVE_HEADER:
                    remove.extend(h.strip().lower() for h in value.split(",") if h.strip())
                    continue
                if name in _FRAMING:
                    continue
                if self.upstream(name):
                    upstream.append((name, value))
                if self.downstream_on_allow(name):
                    downstream.append((name, value))
            return CustomResult(True, 200, tuple(upstream), tuple(downstream), b"",
                                tuple(remove))
        wanted = self.downstream_on_deny
        client = tuple((name, value) for name, value in headers
                       if name not in _FRAMING and name != REMOVE_HEADER
                       and (not wanted or wanted(name) or name in _ALWAYS_ON_DENY))
        return CustomResult(False, status, (), client, body)

    def error(self, why: str) -> CustomResult:
        """The result when the authorizer could not give an answer."""
        if self.fail_open:
            return CustomResult(True, 200, error=f"{why} (failOpen: allowed)")
        return CustomResult(False, self.status_on_error, error=why)


def _describe(exc: Exception, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"no answer within {timeout:g}s"
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class HttpExtAuthz:
    """Ask an ``envoyExtAuthzHttp`` provider whether a request may proceed (blocking).

    ``client`` is used as given (and left open); without one a client is created and
    closed by :meth:`close`. Safe to call from several threads when the client is.
    """

    def __init__(self, provider: EnvoyExtAuthzHttpProvider, *,
                 client: httpx.Client | None = None) -> None:
        self._plan = _Plan.of(provider)
        self._owned = client is None
        self._client = client if client is not None else httpx.Client(trust_env=False)

    @property
    def timeout(self) -> float:
        return self._plan.timeout

    def __call__(self, req: AuthzRequest, provider: ProviderRef | None = None) -> CustomResult:
        """Send the check for ``req``; ``provider`` (the CUSTOM provider) is not needed."""
        plan = self._plan
        deadline = time.monotonic() + plan.timeout
        try:
            response = self._client.send(plan.request(req), stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BODY:
                        return plan.error(f"answer body over {MAX_RESPONSE_BODY} bytes")
                    if time.monotonic() > deadline:
                        raise TimeoutError
            finally:
                response.close()
            if time.monotonic() > deadline:
                raise TimeoutError
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return plan.error(_describe(exc, plan.timeout))
        return plan.answer(response.status_code, response.headers.multi_items(), bytes(body))

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owned:
            self._client.close()

    def __enter__(self) -> HttpExtAuthz:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncHttpExtAuthz:
    """:class:`HttpExtAuthz` for asyncio; the timeout bounds the whole exchange."""

    def __init__(self, provider: EnvoyExtAuthzHttpProvider, *,
                 client: httpx.AsyncClient | None = None) -> None:
        self._plan = _Plan.of(provider)
        self._owned = client is None
        self._client = client if client is not None else httpx.AsyncClient(trust_env=False)

    @property
    def timeout(self) -> float:
        return self._plan.timeout

    async def __call__(self, req: AuthzRequest,
                       provider: ProviderRef | None = None) -> CustomResult:
        """Send the check for ``req``; ``provider`` (the CUSTOM provider) is not needed."""
        plan = self._plan
        try:
            async with asyncio.timeout(plan.timeout):
                response = await self._client.send(plan.request(req), stream=True)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > MAX_RESPONSE_BODY:
                            return plan.error(f"answer body over {MAX_RESPONSE_BODY} bytes")
                finally:
                    await response.aclose()
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return plan.error(_describe(exc, plan.timeout))
        return plan.answer(response.status_code, response.headers.multi_items(), bytes(body))

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owned:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncHttpExtAuthz:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

