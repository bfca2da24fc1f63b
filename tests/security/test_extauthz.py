"""CUSTOM authorization over HTTP against a real authorizer on 127.0.0.1.

The authorizer is a stdlib ``http.server`` in a thread; what it answers depends on
the original request path (which it sees behind the provider's ``pathPrefix``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from meshsdk.config import config_from_result, load_mesh_config_string, load_string
from meshsdk.config.mesh import EnvoyExtAuthzHttpProvider
from meshsdk.security.authz import AuthzRequest, compile_policies
from meshsdk.security.extauthz import (
    DEFAULT_TIMEOUT,
    MAX_RESPONSE_BODY,
    AsyncHttpExtAuthz,
    HeaderNames,
    HttpExtAuthz,
)

SLOW = 0.6  # how long /slow makes the client wait; the providers' timeout is 0.2s


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Authorizer:
    port: int
    seen: list[Seen] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen.append(Seen(self.command, self.path,
                                     {k.lower(): v for k, v in self.headers.items()}))
        path = self.path.removeprefix("/check").partition("?")[0]
        status, headers, body = 200, [("x-user", "alice"), ("x-to-client", "c"),
                                      ("x-not-forwarded", "n"),
                                      ("x-envoy-auth-headers-to-remove", "authorization, x-b")], b""
        if path.startswith("/slow"):
            time.sleep(SLOW)
        elif path.startswith("/deny204"):
            status, headers = 204, [("x-reason", "no content")]
        elif path.startswith("/deny"):
            status, headers, body = 401, [("www-authenticate", "Bearer"),
                                          ("x-reason", "nope")], b"go away"
        elif path.startswith("/boom"):
            status, headers, body = 503, [], b"down"
        elif path.startswith("/big"):
            body = b"x" * (MAX_RESPONSE_BODY + 1)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    seen: list[Seen]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hung up on /slow on purpose


@pytest.fixture(scope="module")
def authz_server() -> Iterator[Authorizer]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield Authorizer(server.server_address[1], server.seen)
    finally:
        server.shutdown()
        server.server_close()


def provider(port: int, **extra: str) -> EnvoyExtAuthzHttpProvider:
    """The ``envoyExtAuthzHttp`` settings, read from a mesh config like a user writes it."""
    options = "".join(f"    {k}: {v}\n" for k, v in extra.items())
    mesh, diags = load_mesh_config_string(f"""
extensionProviders:
- name: ext
  envoyExtAuthzHttp:
    service: "foo/127.0.0.1"
    port: {port}
    timeout: 0.2s
    pathPrefix: /check
    includeRequestHeadersInCheck: ["x-ext-*", "cookie"]
    includeAdditionalHeadersInCheck: {{x-added: "yes"}}
    headersToUpstreamOnAllow: ["x-user", "authorization"]
    headersToDownstreamOnAllow: ["x-to-client"]
{options}""")
    assert mesh is not None, diags
    found = mesh.find_provider("ext")
    assert found is not None and found.envoy_ext_authz_http is not None
    return found.envoy_ext_authz_http


def request(path: str, **kw: Any) -> AuthzRequest:
    headers = {"authorization": "Bearer t0ken", "x-ext-tenant": "acme", "cookie": "s=1",
               "x-other": "private", "connection": "keep-alive"}
    return AuthzRequest(principal="cluster.local/ns/client/sa/sleep", method="POST",
                        host="httpbin.foo:8000", path=path, headers=headers, **kw)


def test_allow_sends_what_envoy_sends(authz_server: Authorizer) -> None:
    with HttpExtAuthz(provider(authz_server.port)) as check:
        result = check(request("/allow/x?q=1&r=%2F"))
    assert result.allowed and result.status == 200 and result.error is None
    assert result.headers_to_upstream == (("x-user", "alice"),)
    assert result.headers_to_downstream == (("x-to-client", "c"),)
    assert result.headers_to_remove == ("authorization", "x-b")
    seen = authz_server.seen[-1]
    assert (seen.method, seen.path) == ("POST", "/check/allow/x?q=1&r=%2F")
    assert seen.headers["host"] == "httpbin.foo:8000"
    assert seen.headers["authorization"] == "Bearer t0ken"
    assert seen.headers["x-ext-tenant"] == "acme" and seen.headers["cookie"] == "s=1"
    assert seen.headers["x-added"] == "yes" and seen.headers["content-length"] == "0"
    assert "x-other" not in seen.headers


def test_deny_passes_status_body_and_all_headers(authz_server: Authorizer) -> None:
    with HttpExtAuthz(provider(authz_server.port)) as check:
        result = check(request("/deny"))
    assert (result.allowed, result.status, result.body) == (False, 401, b"go away")
    names = [name for name, _ in result.headers_to_downstream]
    assert "www-authenticate" in names and "x-reason" in names
    assert "content-length" not in names and "host" not in names


def test_deny_headers_limited_by_list(authz_server: Authorizer) -> None:
    settings = provider(authz_server.port, headersToDownstreamOnDeny='["x-reason"]')
    with HttpExtAuthz(settings) as check:
        result = check(request("/deny"))
    assert dict(result.headers_to_downstream) == {"www-authenticate": "Bearer",
                                                  "x-reason": "nope"}


def test_only_200_allows(authz_server: Authorizer) -> None:
    with HttpExtAuthz(provider(authz_server.port)) as check:
        result = check(request("/deny204"))
    assert (result.allowed, result.status) == (False, 204)


@pytest.mark.parametrize(("extra", "allowed", "status"), [
    ({}, False, 403),
    ({"statusOnError": '"503"'}, False, 503),
    ({"failOpen": "true"}, True, 200),
])
def test_5xx_is_an_error(authz_server: Authorizer, extra: dict[str, str], allowed: bool,
                         status: int) -> None:
    with HttpExtAuthz(provider(authz_server.port, **extra)) as check:
        result = check(request("/boom"))
    assert (result.allowed, result.status, result.body) == (allowed, status, b"")
    assert result.error is not None and "503" in result.error


@pytest.mark.parametrize(("extra", "allowed", "status"), [
    ({}, False, 403),
    ({"statusOnError": '"504"'}, False, 504),
    ({"failOpen": "true"}, True, 200),
])
def test_timeout(authz_server: Authorizer, extra: dict[str, str], allowed: bool,
                 status: int) -> None:
    with HttpExtAuthz(provider(authz_server.port, **extra)) as check:
        assert check.timeout == 0.2
        started = time.monotonic()
        result = check(request("/slow"))
        elapsed = time.monotonic() - started
    assert (result.allowed, result.status) == (allowed, status)
    assert result.error is not None and "0.2s" in result.error
    assert elapsed < SLOW - 0.1, elapsed


def test_connection_refused_fails_closed_or_open() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with HttpExtAuthz(provider(port)) as check:
        closed = check(request("/allow"))
    with HttpExtAuthz(provider(port, failOpen="true")) as check:
        opened = check(request("/allow"))
    assert (closed.allowed, closed.status) == (False, 403) and closed.error
    assert opened.allowed and opened.error and "failOpen" in opened.error


def test_oversized_answer_is_an_error(authz_server: Authorizer) -> None:
    with HttpExtAuthz(provider(authz_server.port)) as check:
        result = check(request("/big"))
    assert (result.allowed, result.status) == (False, 403)
    assert result.error is not None and "body" in result.error


def test_async_twin(authz_server: Authorizer) -> None:
    async def run() -> tuple[Any, ...]:
        async with AsyncHttpExtAuthz(provider(authz_server.port)) as check:
            allowed = await check(request("/allow"))
            denied = await check(request("/deny"))
            started = time.monotonic()
            slow = await check(request("/slow"))
            return allowed, denied, slow, time.monotonic() - started

    allowed, denied, slow, elapsed = asyncio.run(run())
    assert allowed.allowed and allowed.headers_to_upstream == (("x-user", "alice"),)
    assert (denied.allowed, denied.status, denied.body) == (False, 401, b"go away")
    assert (slow.allowed, slow.status) == (False, 403) and elapsed < SLOW - 0.1


def test_default_timeout_is_istio_s() -> None:
    settings = EnvoyExtAuthzHttpProvider.model_validate({"service": "authz", "port": 80})
    with HttpExtAuthz(settings) as check:
        assert check.timeout == DEFAULT_TIMEOUT == 600.0


def test_header_names() -> None:
    names = HeaderNames(["X-Exact", "x-pre-*", "*-suf"])
    assert [n for n in ("x-exact", "x-pre-a", "a-suf", "x-other") if names(n)] == [
        "x-exact", "x-pre-a", "a-suf"]
    assert not HeaderNames([])


def test_authorizer_with_http_provider(authz_server: Authorizer) -> None:
    mesh_text = f"""
extensionProviders:
- name: ext
  envoyExtAuthzHttp:
    service: 127.0.0.1
    port: {authz_server.port}
    timeout: 0.2s
    headersToUpstreamOnAllow: ["x-user"]
"""
    mesh, diags = load_mesh_config_string(mesh_text)
    assert mesh is not None, diags
    result = load_string("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: ext}
  rules: [{to: [{operation: {paths: ["/allow*", "/deny*", "/slow*"]}}]}]
""")
    authz = compile_policies(config_from_result(result, mesh=mesh), "foo", {"app": "httpbin"},
                             root_namespace="istio-system")
    assert authz.provider is not None and authz.provider.settings is not None
    assert isinstance(authz.provider.settings, EnvoyExtAuthzHttpProvider)
    with HttpExtAuthz(authz.provider.settings) as check:
        allowed = authz.check(request("/allow"), custom=check)
        denied = authz.check(request("/deny"), custom=check)
        timed_out = authz.check(request("/slow"), custom=check)
        calls = len(authz_server.seen)
        untouched = authz.check(request("/other"), custom=check)
        assert len(authz_server.seen) == calls  # no CUSTOM rule matched: no call
    assert allowed.allowed and allowed.custom is not None
    assert allowed.custom.headers_to_upstream == (("x-user", "alice"),)
    assert (denied.allowed, denied.action, denied.policy) == (False, "CUSTOM", "foo/ext")
    assert (denied.http_status, denied.body) == (401, b"go away")
    assert (timed_out.allowed, timed_out.http_status) == (False, 403)
    assert "no answer within 0.2s" in timed_out.reason
    assert untouched.allowed and untouched.custom is None
