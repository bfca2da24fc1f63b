"""InboundHandler on its own (no server): the verdicts, the header changes, the context
it makes current, sync and async alike, and policies following ``mesh.update``. Also
the ASGI middleware's non-HTTP scopes, driven through the ASGI interface directly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry import trace

from meshsdk.deadline import current_deadline
from meshsdk.inbound.asgi import MeshASGIMiddleware
from meshsdk.inbound.handler import (
    RESET_BODY,
    InboundHandler,
    InboundRequest,
    current_request,
    set_route,
)
from meshsdk.inbound.wsgi import environ_facts
from meshsdk.mesh import Mesh
from meshsdk.security.extauthz import HttpExtAuthz
from meshsdk.telemetry.recorder import current_request_id
from meshsdk.testing.builders import config_from_yaml
from meshsdk.testing.upstream import Received, Reply, Upstream
from tests.inbound.conftest import PRODUCTPAGE, REVIEWS, Capture, jwks_json, policies, token

HOST = "reviews.default.svc.cluster.local:9080"
Start = Callable[..., InboundRequest]


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def mesh(capture: Capture) -> Mesh:
    return Mesh(config_from_yaml(policies("STRICT")), REVIEWS,
                telemetry=capture.telemetry(REVIEWS))


def _sync(handler: InboundHandler) -> Start:
    return handler.start


def _async(handler: InboundHandler) -> Start:
    def start(*args: Any, **kwargs: Any) -> InboundRequest:
        return asyncio.run(handler.start_async(*args, **kwargs))
    return start


@pytest.fixture(params=[_sync, _async], ids=["sync", "async"])
def start(request: pytest.FixtureRequest, mesh: Mesh) -> Start:
    maker: Callable[[InboundHandler], Start] = request.param
    return maker(InboundHandler(mesh, trusted_proxies=["10.0.0.0/8"]))


def test_allowed_with_a_verified_peer(start: Start) -> None:
    req = start("GET", "https", HOST, "/reviews/1", [("host", HOST)], peer=PRODUCTPAGE,
                client=("127.0.0.1", 5000), server=("127.0.0.1", 9080))
    assert req.allowed and not req.refused and req.status is None
    assert req.peer == PRODUCTPAGE
    assert req.principal == "cluster.local/ns/default/sa/productpage"
    assert req.removed == ()
    assert req.added == (("x-request-id", req.request_id),)  # made up by the mesh, as Envoy


def test_the_request_keeps_what_the_handler_saw(start: Start) -> None:
    req = start("GET", "https", HOST, "/reviews/1?x=1", [("host", HOST)], peer=PRODUCTPAGE,
                client=("10.1.2.3", 5000), server=("10.1.2.4", 9080),
                server_name="outbound_.9080_._.reviews.default.svc.cluster.local")
    assert (req.method, req.authority, req.path) == ("GET", HOST, "/reviews/1?x=1")
    assert (req.remote_ip, req.local_ip, req.port) == ("10.1.2.3", "10.1.2.4", 9080)
    assert req.server_name == "outbound_.9080_._.reviews.default.svc.cluster.local"


def test_denials_are_envoy_local_replies(start: Start) -> None:
    ratings = "spiffe://cluster.local/ns/default/sa/ratings"
    req = start("GET", "https", HOST, "/reviews/1", [], peer=ratings)
    assert (req.allowed, req.status, req.body) == (False, 403, b"RBAC: access denied")
    assert req.response_headers == (("content-type", "text/plain"), ("content-length", "19"))
    req.finish(403, req.response_headers, len(req.body))

    forged = token(ec.generate_private_key(ec.SECP256R1()))
    req = start("GET", "https", HOST, "/reviews/1", [("authorization", f"Bearer {forged}")],
                peer=PRODUCTPAGE)
    assert req.status == 401 and req.body == b"Jwt verification fails"
    names = [k for k, _ in req.response_headers]
    assert names == ["www-authenticate", "content-type", "content-length"]
    assert dict(req.response_headers)["www-authenticate"] == 'Bearer error="invalid_token"'


def test_strict_without_a_peer_is_refused_as_a_reset(start: Start) -> None:
    req = start("GET", "http", HOST, "/open/1", [])
    assert req.refused and not req.allowed
    assert (req.status, req.body) == (503, RESET_BODY)


def test_jwt_is_removed_and_untrusted_xfcc_stripped(start: Start) -> None:
    xfcc = f"By=x;URI={PRODUCTPAGE}"
    req = start("GET", "https", HOST, "/reviews/1",
                [("authorization", f"Bearer {token()}"), ("x-forwarded-client-cert", xfcc)],
                peer="spiffe://cluster.local/ns/default/sa/productpage",
                client=("127.0.0.1", 1))
    assert req.allowed and req.request_principal == "https://issuer.test/alice"
    assert set(req.removed) == {"authorization", "x-forwarded-client-cert"}
    # the app sees the request id the mesh made up (as behind Envoy), nothing else
    assert [k for k, _ in req.headers] == ["x-request-id"]
    assert ("x-request-id", req.request_id) in req.added


def test_xfcc_from_a_trusted_network_gives_the_peer(start: Start) -> None:
    xfcc = f"By=x;URI={PRODUCTPAGE}"
    req = start("GET", "http", HOST, "/reviews/1", [("x-forwarded-client-cert", xfcc)],
                client=("10.1.2.3", 40000))
    assert req.allowed and req.peer == PRODUCTPAGE
    assert ("x-forwarded-client-cert", xfcc) in req.headers


def test_the_request_context_is_current_inside_with(start: Start, capture: Capture) -> None:
    req = start("GET", "https", HOST, "/reviews/3",
                [("x-envoy-expected-rq-timeout-ms", "800"), ("x-request-id", "r-1")],
                peer=PRODUCTPAGE)
    assert current_request() is None and current_deadline() is None
    with req:
        assert current_request() is req
        assert current_request_id() == "r-1"
        assert trace.get_current_span().get_span_context().is_valid
        deadline = current_deadline()
        assert deadline is not None
        assert set_route("/reviews/{id}")
        with req:  # re-entrant, as a streamed body needs
            assert current_deadline() == deadline
        assert current_request() is req
    assert current_request() is None and current_deadline() is None
    assert not set_route("/x")
    req.finish(200)
    req.finish(500)  # once only
    (span,) = capture.spans(1)
    assert span.name == "/reviews/{id}"
    assert dict(span.attributes or {})["http.response.status_code"] == 200


def test_each_entry_gets_the_deadline_fixed_at_the_first(start: Start) -> None:
    """A streamed body (WSGI chunks, gRPC stream messages) enters the request once per
    step: the caller's time counts from the first entry, not again from each."""
    req = start("GET", "http", HOST, "/reviews/3", [("x-envoy-expected-rq-timeout-ms", "800")],
                peer=PRODUCTPAGE)
    seen = []
    for _ in range(3):
        with req:
            seen.append(current_deadline())
    assert seen[0] is not None and seen == [seen[0]] * 3
    assert current_deadline() is None


def test_grpc_timeout_is_a_deadline_too(start: Start) -> None:
    req = start("POST", "https", HOST, "/reviews/1", [("grpc-timeout", "250m")],
                peer=PRODUCTPAGE)
    assert req.timeout == pytest.approx(0.25)


def test_policies_follow_mesh_update(mesh: Mesh) -> None:
    handler = InboundHandler(mesh)
    assert handler.mode_for() == "STRICT"
    assert handler.start("GET", "http", HOST, "/open/1", []).refused
    mesh.update(config_from_yaml(policies("PERMISSIVE")))
    assert handler.mode_for() == "PERMISSIVE"
    req = handler.start("GET", "http", HOST, "/open/1", [])
    assert req.allowed and req.peer is None


def test_a_certificate_gives_the_peer(mesh: Mesh, make_identity: Callable[..., Any]) -> None:
    identity = make_identity("default", "productpage")
    handler = InboundHandler(mesh)
    from_der = handler.start("GET", "https", HOST, "/reviews/1", [],
                             peer_certificate=identity.certificate.public_bytes(
                                 _der()))
    from_pem = handler.start("GET", "https", HOST, "/reviews/1", [],
                             peer_certificate=identity.chain_pem.decode())
    assert from_der.peer == from_pem.peer == PRODUCTPAGE
    assert from_der.allowed and from_pem.allowed


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding
    return Encoding.DER


# -- ASGI scopes other than http --------------------------------------------------------


def test_lifespan_passes_through(mesh: Mesh) -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        message = await receive()
        seen.append(message["type"])
        await send({"type": "lifespan.startup.complete"})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(MeshASGIMiddleware(app, mesh)({"type": "lifespan"}, receive, send))
    assert seen == ["lifespan", "lifespan.startup"]
    assert sent == [{"type": "lifespan.startup.complete"}]


def test_websocket_denied_is_closed_before_accept(mesh: Mesh, capture: Capture) -> None:
    called: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(True)

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "scheme": "ws", "path": "/reviews/1", "raw_path": b"/reviews/1",
             "query_string": b"", "headers": [(b"host", HOST.encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 9080)}
    asyncio.run(MeshASGIMiddleware(app, mesh)(scope, receive, send))
    assert not called
    assert sent == [{"type": "websocket.close", "code": 1008}]  # no peer under STRICT


# -- policies that do I/O: a remote JWKS and a CUSTOM authorizer -----------------------


def _mesh_configmap(body: str) -> str:
    return ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}"
            "\ndata:\n  mesh: |\n" + "".join(f"    {line}\n" for line in body.splitlines()))


def _authorizer(req: Received, n: int) -> Reply:
    if "/ext/deny" in req.path:
        return Reply(403, b"denied by ext", {"x-reason": "nope"})
    return Reply(200, b"", {"x-user": "alice"})


def _jwks_server(req: Received, n: int) -> Reply:
    return Reply(200, jwks_json().encode(), {"content-type": "application/json"})


@pytest.fixture
def io_mesh(capture: Capture) -> Iterator[tuple[Mesh, HttpExtAuthz]]:
    with Upstream("authz", _authorizer) as authz, Upstream("jwks", _jwks_server) as keys:
        yaml = f"""
{_mesh_configmap(f'''extensionProviders:
- name: ext
  envoyExtAuthzHttp:
    service: "authz/127.0.0.1"
    port: {authz.port}
    pathPrefix: /check
    headersToUpstreamOnAllow: ["x-user"]''')}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules: [{{issuer: "https://issuer.test", jwksUri: "http://127.0.0.1:{keys.port}/jwks"}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext, namespace: default}}
spec:
  action: CUSTOM
  provider: {{name: ext}}
  rules: [{{to: [{{operation: {{paths: [/ext/*]}}}}]}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  accessLogging: [{{providers: [{{name: envoy}}]}}]
"""
        mesh = Mesh(config_from_yaml(yaml), REVIEWS, telemetry=capture.telemetry(REVIEWS))
        provider = mesh.snapshot.mesh.find_provider("ext")
        assert provider is not None and provider.envoy_ext_authz_http is not None
        with HttpExtAuthz(provider.envoy_ext_authz_http) as check:
            yield mesh, check
        mesh.close()


def test_remote_jwks_and_custom_authorizer_on_the_async_path(
        io_mesh: tuple[Mesh, HttpExtAuthz], capture: Capture) -> None:
    mesh, check = io_mesh
    handler = InboundHandler(mesh, custom=check)

    async def run(path: str, *headers: tuple[str, str]) -> InboundRequest:
        return await handler.start_async("GET", "http", HOST, path, list(headers))

    req = asyncio.run(run("/ext/ok", ("authorization", f"Bearer {token()}")))
    assert req.allowed and req.request_principal == "https://issuer.test/alice"
    assert ("x-user", "alice") in req.added  # the authorizer's header for the app
    req.finish(200)

    req = asyncio.run(run("/ext/deny"))
    assert (req.allowed, req.status, req.body) == (False, 403, b"denied by ext")
    assert ("x-reason", "nope") in req.response_headers
    req.finish(403, req.response_headers, len(req.body))
    lines = capture.lines(2)
    assert " 403 UAEX " in lines[-1]  # Envoy's flag for an ext-authz denial

    req = asyncio.run(run("/ext/ok", ("authorization", "Bearer x.y.z")))
    assert req.status == 401


def test_environ_facts_reads_what_wsgi_servers_write() -> None:
    facts = environ_facts({
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "/app", "PATH_INFO": "/a b",
        "QUERY_STRING": "x=1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": 5555,  # werkzeug
        "SERVER_NAME": "h", "SERVER_PORT": "8080", "HTTP_HOST": "h:8080",
        "CONTENT_LENGTH": "3", "CONTENT_TYPE": "text/plain", "HTTP_X_A": "1",
        "wsgi.url_scheme": "http"})
    assert facts["client"] == ("127.0.0.1", 5555)
    assert facts["server"] == ("h", 8080)
    assert facts["path"] == "/app/a%20b?x=1" and facts["authority"] == "h:8080"
    assert sorted(facts["headers"]) == [("content-length", "3"), ("content-type", "text/plain"),
                                        ("host", "h:8080"), ("x-a", "1")]
    assert facts["peer_certificate"] is None
    raw = environ_facts({"RAW_URI": "/a%20b?x=1", "REMOTE_ADDR": "::1", "REMOTE_PORT": "7"})
    assert raw["path"] == "/a%20b?x=1" and raw["client"] == ("::1", 7)
