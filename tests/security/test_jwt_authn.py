"""RequestAuthentication with real signed tokens and a real JWKS server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import socket
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshsdk.config.loader import config_from_result, load_string
from meshsdk.errors import ConfigError
from meshsdk.security.jwks import JwksCache, JwksError, parse_jwks
from meshsdk.security.jwt_authn import AuthnResult, JwtAuthenticator, compile_request_authn

ISS = "https://issuer.example"
ISS2 = "https://other.example"
ROOT = "istio-system"
WORKLOAD = {"app": "web"}


# --- keys, tokens, clock ----------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    private: Any
    kid: str
    alg: str

    def jwk(self, **extra: str) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        doc: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        doc["kid"] = self.kid
        doc.update(extra)
        return doc


@dataclass(frozen=True)
class Keys:
    rsa: Key
    rsa_other: Key
    ec: Key
    ed: Key


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(rsa=Key(rsa_key, "rsa-1", "RS256"), rsa_other=Key(other, "rsa-2", "RS256"),
                ec=Key(ec.generate_private_key(ec.SECP256R1()), "ec-1", "ES256"),
                ed=Key(ed25519.Ed25519PrivateKey.generate(), "ed-1", "EdDSA"))


def jwks_doc(*keys: Key) -> dict[str, Any]:
    return {"keys": [k.jwk() for k in keys]}


class Clock:
    """Injected time: Unix seconds for exp/nbf and for the JWKS cache's intervals."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def sign(key: Key, clock: Clock, *, alg: str | None = None, kid: str | None = None,
         **claims: Any) -> str:
    payload: dict[str, Any] = {"iss": ISS, "sub": "alice", "iat": int(clock.now),
                               "exp": int(clock.now) + 3600}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key.private, algorithm=alg or key.alg,
                      headers={"kid": kid or key.kid})


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


# --- the JWKS server --------------------------------------------------------------------------


@dataclass
class JwksServer:
    """Serves ``documents[path]``; ``fail`` answers 503; ``fetches`` counts GETs per path."""

    base: str = ""
    documents: dict[str, Any] = field(default_factory=dict)
    fetches: dict[str, int] = field(default_factory=dict)
    fail: bool = False

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str = "/jwks.json") -> int:
        return self.fetches.get(path, 0)


@pytest.fixture
def server() -> Iterator[JwksServer]:
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.fetches[self.path] = state.fetches.get(self.path, 0) + 1
            doc = state.documents.get(self.path)
            if state.fail or doc is None:
                self.send_response(503 if state.fail else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cache(clock: Clock) -> Iterator[JwksCache]:
    client = httpx.Client(trust_env=False)  # no proxy for 127.0.0.1, whatever the env says
    with client, JwksCache(client, clock=clock, timeout=2.0) as jwks_cache:
        yield jwks_cache


def closed_port_url() -> str:
    """A loopback URL nothing listens on: fetches fail fast with "connection refused"."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


# --- config -----------------------------------------------------------------------------------


def ra(spec: str, *, name: str = "jwt", namespace: str = "default") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n"
            f"  name: {name}\n  namespace: {namespace}\nspec:\n{body}\n")


def rule(uri: str, *, issuer: str = ISS, extra: str = "") -> str:
    text = f"jwtRules:\n- issuer: {issuer}\n  jwksUri: {uri}\n"
    return text + textwrap.indent(textwrap.dedent(extra).strip("\n"), "  ") + "\n"


def authenticator(*docs: str, cache: JwksCache, clock: Clock,
                  labels: Mapping[str, str] = WORKLOAD) -> JwtAuthenticator:
    result = load_string("---\n".join(docs))
    assert not result.errors, [d.format() for d in result.errors]
    return compile_request_authn(config_from_result(result), "default", labels,
                                 root_namespace=ROOT, jwks_cache=cache, clock=clock)


@pytest.fixture
def served(server: JwksServer, keys: Keys) -> JwksServer:
    server.documents["/jwks.json"] = jwks_doc(keys.rsa, keys.ec, keys.ed)
    return server


@pytest.fixture
def authn(served: JwksServer, cache: JwksCache, clock: Clock) -> JwtAuthenticator:
    return authenticator(ra(rule(served.url("/jwks.json"))), cache=cache, clock=clock)


def rejected(result: AuthnResult, body: str, status: int = 401) -> None:
    assert not result.ok, result
    assert (result.status, result.body) == (status, body.encode()), result.reason
    assert result.request_principal is None


# --- valid tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize(("key_name", "alg"), [
    ("rsa", "RS256"), ("rsa", "RS384"), ("rsa", "PS256"), ("ec", "ES256"), ("ed", "EdDSA"),
])
def test_valid_token(key_name: str, alg: str, authn: JwtAuthenticator, keys: Keys,
                     clock: Clock, served: JwksServer) -> None:
    key: Key = getattr(keys, key_name)
    token = sign(key, clock, alg=alg, aud=["web", "api"], azp="frontend", role="admin")
    result = authn.authenticate(bearer(token), "")
    assert result.ok, result.reason
    assert result.status is None and result.body == b""
    assert result.request_principal == f"{ISS}/alice"
    assert result.claims["role"] == "admin"
    assert result.audiences == ("web", "api")
    assert result.presenter == "frontend"
    assert result.issuer == ISS
    assert [t.rule for t in result.tokens] == ["RequestAuthentication default/jwt jwtRules[0]"]
    authn.authenticate(bearer(token), "")
    assert served.count() == 1  # fetched once, then cached


def test_no_token_is_accepted_without_identity(authn: JwtAuthenticator,
                                               served: JwksServer) -> None:
    result = authn.authenticate([("Authorization", "Basic dXNlcjpwdw=="), ("Accept", "*/*")], "")
    assert result.ok and result.request_principal is None and result.claims == {}
    assert served.count() == 0  # nothing to verify, nothing fetched


# --- invalid tokens ---------------------------------------------------------------------------


def test_wrong_signature(authn: JwtAuthenticator, keys: Keys, clock: Clock) -> None:
    forged = sign(keys.rsa_other, clock, kid=keys.rsa.kid)  # right kid, wrong private key
    rejected(authn.authenticate(bearer(forged), ""), "Jwt verification fails")


def test_tampered_payload(authn: JwtAuthenticator, keys: Keys, clock: Clock) -> None:
    header, _, signature = sign(keys.rsa, clock).split(".")
    evil = base64.urlsafe_b64encode(json.dumps(
        {"iss": ISS, "sub": "root", "exp": int(clock.now) + 60}).encode()).rstrip(b"=").decode()
    rejected(authn.authenticate(bearer(f"{header}.{evil}.{signature}"), ""),
             "Jwt verification fails")


def test_expired_with_clock_skew(authn: JwtAuthenticator, keys: Keys, clock: Clock) -> None:
    token = sign(keys.rsa, clock, exp=int(clock.now) + 100)
    clock.advance(159)  # 59 s past exp: inside Envoy's 60 s skew
    assert authn.authenticate(bearer(token), "").ok
    clock.advance(2)
    result = authn.authenticate(bearer(token), "")
    rejected(result, "Jwt is expired")
    assert result.response_headers == (("www-authenticate", 'Bearer error="invalid_token"'),)


def test_not_yet_valid(authn: JwtAuthenticator, keys: Keys, clock: Clock) -> None:
    rejected(authn.authenticate(bearer(sign(keys.rsa, clock, nbf=int(clock.now) + 120)), ""),
             "Jwt not yet valid")
    assert authn.authenticate(bearer(sign(keys.rsa, clock, nbf=int(clock.now) + 30)), "").ok


def test_wrong_issuer(authn: JwtAuthenticator, keys: Keys, clock: Clock) -> None:
    result = authn.authenticate(bearer(sign(keys.rsa, clock, iss="https://evil.example")), "",
                                realm="http://web.default/path")
    rejected(result, "Jwt issuer is not configured")
    assert result.response_headers == (
        ("www-authenticate", 'Bearer realm="http://web.default/path", error="invalid_token"'),)


@pytest.mark.parametrize("token", [
    "not-a-jwt", "a.b", "a..c", "a.b.c.d", "!!!.e30.sig",
])
def test_malformed_token(token: str, authn: JwtAuthenticator) -> None:
    result = authn.authenticate(bearer(token), "")
    assert not result.ok and result.status == 401
    assert result.body.startswith(b"Jwt ")


def test_unknown_kid_without_new_keys(authn: JwtAuthenticator, keys: Keys, clock: Clock,
                                      served: JwksServer) -> None:
    token = sign(keys.rsa_other, clock)  # kid rsa-2 is not served
    rejected(authn.authenticate(bearer(token), ""),
             "Jwks doesn't have key to match kid or alg from Jwt")
    assert served.count() == 1  # refetch rate-limited: the first fetch was just now


def test_bad_token_next_to_good_one_is_rejected(authn: JwtAuthenticator, keys: Keys,
                                                clock: Clock) -> None:
    good = sign(keys.rsa, clock)
    bad = sign(keys.rsa_other, clock, kid=keys.rsa.kid)
    rejected(authn.authenticate(bearer(good), f"access_token={bad}"), "Jwt verification fails")


# --- audiences --------------------------------------------------------------------------------


def test_audiences(served: JwksServer, cache: JwksCache, clock: Clock, keys: Keys) -> None:
    authn = authenticator(ra(rule(served.url("/jwks.json"),
                                  extra="audiences: [web.example.com, api]")),
                          cache=cache, clock=clock)
    assert authn.authenticate(bearer(sign(keys.rsa, clock, aud="api")), "").ok
    # Envoy ignores an http(s):// prefix and a trailing slash when comparing audiences.
    assert authn.authenticate(bearer(sign(keys.rsa, clock, aud=["x", "https://web.example.com/"])),
                              "").ok
    rejected(authn.authenticate(bearer(sign(keys.rsa, clock, aud="other")), ""),
             "Audiences in Jwt are not allowed", status=403)
    rejected(authn.authenticate(bearer(sign(keys.rsa, clock)), ""),
             "Audiences in Jwt are not allowed", status=403)


def test_empty_audiences_accept_any(authn: JwtAuthenticator, keys: Keys, clock: Clock) -> None:
    assert authn.authenticate(bearer(sign(keys.rsa, clock, aud="anything")), "").ok
    assert authn.authenticate(bearer(sign(keys.rsa, clock, aud=["a", "b"])), "").ok


# --- token places -----------------------------------------------------------------------------


def test_custom_header_with_prefix(served: JwksServer, cache: JwksCache, clock: Clock,
                                   keys: Keys) -> None:
    authn = authenticator(ra(rule(served.url("/jwks.json"), extra="""
        fromHeaders:
        - name: X-Jwt-Assertion
          prefix: "Token "
        """)), cache=cache, clock=clock)
    token = sign(keys.rsa, clock)
    result = authn.authenticate([("x-jwt-assertion", f"Token {token}")], "")
    assert result.ok and result.request_principal == f"{ISS}/alice"
    assert result.headers_to_remove == ("x-jwt-assertion",)
    # Without the prefix the header holds no token; the default places are not used.
    assert authn.authenticate([("X-Jwt-Assertion", token)], "").request_principal is None
    assert authn.authenticate(bearer(token), "").request_principal is None
    rejected(authn.authenticate([("X-Jwt-Assertion", "Token garbage")], ""),
             "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")


def test_query_param(served: JwksServer, cache: JwksCache, clock: Clock, keys: Keys) -> None:
    authn = authenticator(ra(rule(served.url("/jwks.json"), extra="fromParams: [my_token]")),
                          cache=cache, clock=clock)
    token = sign(keys.rsa, clock)
    result = authn.authenticate([], f"a=1&my_token={token}&b=2")
    assert result.ok and result.request_principal == f"{ISS}/alice"
    assert result.query == "a=1&b=2"  # forwardOriginalToken false drops the parameter


def test_default_places_include_access_token_param(authn: JwtAuthenticator, keys: Keys,
                                                   clock: Clock) -> None:
    result = authn.authenticate([], f"access_token={sign(keys.ec, clock)}")
    assert result.ok and result.request_principal == f"{ISS}/alice"
    assert result.query == ""


def test_cookie(served: JwksServer, cache: JwksCache, clock: Clock, keys: Keys) -> None:
    authn = authenticator(ra(rule(served.url("/jwks.json"), extra="fromCookies: [session]")),
                          cache=cache, clock=clock)
    token = sign(keys.rsa, clock, sub="bob")
    result = authn.authenticate([("Cookie", f"theme=dark; session={token}; x=y")], "")
    assert result.ok and result.request_principal == f"{ISS}/bob"
    assert result.headers_to_remove == ()  # Envoy leaves cookies in place
    assert authn.authenticate(bearer(token), "").request_principal is None


def test_two_rules_two_issuers(server: JwksServer, cache: JwksCache, clock: Clock,
                               keys: Keys) -> None:
    server.documents["/a.json"] = jwks_doc(keys.rsa)
    server.documents["/b.json"] = jwks_doc(keys.ec)
    authn = authenticator(
        ra(rule(server.url("/a.json")), name="namespace-wide"),
        ra("selector: {matchLabels: {app: web}}\n" + rule(server.url("/b.json"), issuer=ISS2),
           name="web-only"),
        cache=cache, clock=clock)
    assert len(authn.rules) == 2
    first = authn.authenticate(bearer(sign(keys.rsa, clock)), "")
    second = authn.authenticate(bearer(sign(keys.ec, clock, iss=ISS2, sub="carol")), "")
    assert first.request_principal == f"{ISS}/alice"
    assert second.request_principal == f"{ISS2}/carol"
    assert second.tokens[0].rule == "RequestAuthentication default/web-only jwtRules[0]"
    assert (server.count("/a.json"), server.count("/b.json")) == (1, 1)
    # ISS2's token signed with ISS's key: checked against ISS2's keys only.
    rejected(authn.authenticate(bearer(sign(keys.rsa, clock, iss=ISS2)), ""),
             "Jwks doesn't have key to match kid or alg from Jwt")
    # The selector policy does not reach another workload.
    other = authenticator(ra(rule(server.url("/a.json")), name="namespace-wide"),
                          ra("selector: {matchLabels: {app: web}}\n"
                             + rule(server.url("/b.json"), issuer=ISS2), name="web-only"),
                          cache=cache, clock=clock, labels={"app": "db"})
    rejected(other.authenticate(bearer(sign(keys.ec, clock, iss=ISS2)), ""),
             "Jwt issuer is not configured")


def test_root_namespace_rules_apply_mesh_wide(served: JwksServer, cache: JwksCache,
                                              clock: Clock, keys: Keys) -> None:
    authn = authenticator(ra(rule(served.url("/jwks.json")), name="mesh", namespace=ROOT),
                          cache=cache, clock=clock)
    assert authn.source == ("RequestAuthentication istio-system/mesh jwtRules[0]",)
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok


# --- JWKS fetching ----------------------------------------------------------------------------


def test_kid_rotation_refetches_once_rate_limited(authn: JwtAuthenticator, served: JwksServer,
                                                  keys: Keys, clock: Clock) -> None:
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok
    assert served.count() == 1
    served.documents["/jwks.json"] = jwks_doc(keys.rsa_other)  # the issuer rotates its key
    clock.advance(61)
    rotated = sign(keys.rsa_other, clock)
    assert authn.authenticate(bearer(rotated), "").ok  # unknown kid: one refetch
    assert served.count() == 2
    assert authn.authenticate(bearer(rotated), "").ok
    assert served.count() == 2
    # Another unknown kid within the minute: no refetch.
    unknown = sign(keys.rsa, clock, kid="rsa-3")
    rejected(authn.authenticate(bearer(unknown), ""),
             "Jwks doesn't have key to match kid or alg from Jwt")
    rejected(authn.authenticate(bearer(unknown), ""),
             "Jwks doesn't have key to match kid or alg from Jwt")
    assert served.count() == 2
    clock.advance(61)
    rejected(authn.authenticate(bearer(unknown), ""),
             "Jwks doesn't have key to match kid or alg from Jwt")
    assert served.count() == 3
    # The old key is gone from the served set.
    rejected(authn.authenticate(bearer(sign(keys.rsa, clock)), ""),
             "Jwks doesn't have key to match kid or alg from Jwt")


def test_ttl_refresh(authn: JwtAuthenticator, served: JwksServer, keys: Keys,
                     clock: Clock) -> None:
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok
    clock.advance(19 * 60)
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok
    assert served.count() == 1
    clock.advance(61)  # past Istio's 20 minute refresh interval
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok
    assert served.count() == 2


def test_server_down_after_first_fetch_keeps_cached_keys(
        authn: JwtAuthenticator, served: JwksServer, keys: Keys, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok
    served.fail = True
    clock.advance(21 * 60)
    with caplog.at_level(logging.WARNING, logger="meshsdk.security.jwks"):
        assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok
    assert served.count() == 2
    assert "still using the copy" in caplog.text and "HTTP 503" in caplog.text
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok
    assert served.count() == 2  # no retry until the failure interval has passed
    served.fail = False
    clock.advance(61)
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok
    assert served.count() == 3


def test_never_fetched_and_server_down(cache: JwksCache, clock: Clock, keys: Keys,
                                       caplog: pytest.LogCaptureFixture) -> None:
    uri = closed_port_url()
    authn = authenticator(ra(rule(uri)), cache=cache, clock=clock)
    with caplog.at_level(logging.WARNING):
        result = authn.authenticate(bearer(sign(keys.rsa, clock)), "")
    rejected(result, "Jwks remote fetch is failed")
    assert "ConnectError" in result.reason
    assert uri in caplog.text and "rejected (401)" in caplog.text
    assert cache.status(uri).fetches == 1
    # Requests without a token are still let through.
    assert authn.authenticate([], "").ok
    with pytest.raises(JwksError, match="ConnectError"):
        cache.keys(uri)
    assert cache.status(uri).fetches == 1  # failed fetches are retried once a minute


def test_openid_discovery(server: JwksServer, cache: JwksCache, clock: Clock,
                          keys: Keys) -> None:
    issuer = server.url("/idp")
    server.documents["/idp/.well-known/openid-configuration"] = {
        "issuer": issuer, "jwks_uri": server.url("/idp/keys")}
    server.documents["/idp/keys"] = jwks_doc(keys.ec)
    authn = authenticator(ra(f"jwtRules:\n- issuer: {issuer}\n"), cache=cache, clock=clock)
    result = authn.authenticate(bearer(sign(keys.ec, clock, iss=issuer)), "")
    assert result.ok and result.request_principal == f"{issuer}/alice"
    assert server.count("/idp/.well-known/openid-configuration") == 1
    assert server.count("/idp/keys") == 1


# --- outputs ----------------------------------------------------------------------------------


def test_output_payload_to_header(served: JwksServer, cache: JwksCache, clock: Clock,
                                  keys: Keys) -> None:
    authn = authenticator(ra(rule(served.url("/jwks.json"),
                                  extra="outputPayloadToHeader: X-Jwt-Payload")),
                          cache=cache, clock=clock)
    token = sign(keys.rsa, clock, groups=["a", "b"])
    result = authn.authenticate([*bearer(token), ("x-jwt-payload", "forged")], "")
    assert result.ok
    headers = dict(result.headers_to_set)
    assert headers["x-jwt-payload"] == token.split(".")[1]  # base64url, unpadded
    encoded = headers["x-jwt-payload"]
    decoded = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert decoded == dict(result.claims)
    assert "x-jwt-payload" in result.headers_to_remove  # the client's copy goes first
    # Without a valid token the client's copy is still removed and nothing is set.
    anonymous = authn.authenticate([("X-Jwt-Payload", "forged")], "")
    assert anonymous.ok and anonymous.headers_to_set == ()
    assert anonymous.headers_to_remove == ("x-jwt-payload",)


def test_output_claim_to_headers(served: JwksServer, cache: JwksCache, clock: Clock,
                                 keys: Keys) -> None:
    authn = authenticator(ra(rule(served.url("/jwks.json"), extra="""
        outputClaimToHeaders:
        - {header: x-jwt-sub, claim: sub}
        - {header: X-Jwt-Team, claim: org.team}
        - {header: x-jwt-admin, claim: admin}
        - {header: x-jwt-level, claim: level}
        - {header: x-jwt-groups, claim: groups}
        - {header: x-jwt-missing, claim: nope}
        """)), cache=cache, clock=clock)
    token = sign(keys.rsa, clock, org={"team": "payments"}, admin=True, level=3,
                 groups=["a", "b"])
    result = authn.authenticate([*bearer(token), ("X-Jwt-Sub", "mallory")], "")
    assert result.ok
    assert result.headers_to_set == (("x-jwt-sub", "alice"), ("x-jwt-team", "payments"),
                                     ("x-jwt-admin", "true"), ("x-jwt-level", "3"))
    assert {"x-jwt-sub", "x-jwt-team", "x-jwt-groups", "x-jwt-missing"} <= set(
        result.headers_to_remove)


@pytest.mark.parametrize(("forward", "removed"), [("false", True), ("true", False)])
def test_forward_original_token(forward: str, removed: bool, served: JwksServer,
                                cache: JwksCache, clock: Clock, keys: Keys) -> None:
    authn = authenticator(ra(rule(served.url("/jwks.json"),
                                  extra=f"forwardOriginalToken: {forward}")),
                          cache=cache, clock=clock)
    token = sign(keys.rsa, clock)
    result = authn.authenticate(bearer(token), f"access_token={token}")
    assert result.ok
    assert ("authorization" in result.headers_to_remove) is removed
    assert result.query == ("" if removed else None)


def test_forward_defaults_to_false(authn: JwtAuthenticator, keys: Keys, clock: Clock) -> None:
    result = authn.authenticate(bearer(sign(keys.rsa, clock)), "")
    assert result.headers_to_remove == ("authorization",)


# --- inline JWKS and configuration errors -----------------------------------------------------


def test_inline_jwks(server: JwksServer, cache: JwksCache, clock: Clock, keys: Keys) -> None:
    inline = json.dumps(jwks_doc(keys.rsa, keys.ec))
    authn = authenticator(ra(f"jwtRules:\n- issuer: {ISS}\n  jwks: '{inline}'\n"),
                          cache=cache, clock=clock)
    assert authn.authenticate(bearer(sign(keys.ec, clock)), "").ok
    rejected(authn.authenticate(bearer(sign(keys.rsa_other, clock, kid=keys.rsa.kid)), ""),
             "Jwt verification fails")
    assert server.fetches == {}


def test_inline_single_jwk_with_alg_restriction(cache: JwksCache, clock: Clock,
                                                keys: Keys) -> None:
    inline = json.dumps(keys.rsa.jwk(alg="RS256"))
    authn = authenticator(ra(f"jwtRules:\n- issuer: {ISS}\n  jwks: '{inline}'\n"),
                          cache=cache, clock=clock)
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok
    # The key declares RS256: an RS384 token finds no key (jwt_verify_lib's kid/alg match).
    rejected(authn.authenticate(bearer(sign(keys.rsa, clock, alg="RS384")), ""),
             "Jwks doesn't have key to match kid or alg from Jwt")


def test_bad_inline_jwks_is_a_config_error(cache: JwksCache, clock: Clock) -> None:
    # Valid JSON shaped like a JWKS (so the loader accepts it), but the key is unusable.
    inline = json.dumps({"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB"}]})
    with pytest.raises(ConfigError) as err:
        authenticator(ra(f"jwtRules:\n- issuer: {ISS}\n  jwks: '{inline}'\n", name="broken"),
                      cache=cache, clock=clock)
    text = str(err.value)
    assert "RequestAuthentication default/broken" in text
    assert "spec.jwtRules[0].jwks" in text
    assert "no usable public key" in text
    assert err.value.diagnostics[0].path == ("spec", "jwtRules", 0, "jwks")


def test_plain_http_jwks_uri_to_remote_host_is_refused(cache: JwksCache, clock: Clock) -> None:
    with pytest.raises(ConfigError, match=r"jwtRules\[0\]\.jwksUri.*plain http"):
        authenticator(ra(rule("http://idp.example.com/jwks.json")), cache=cache, clock=clock)


def test_parse_jwks() -> None:
    with pytest.raises(JwksError, match="not valid JSON"):
        parse_jwks("{")
    with pytest.raises(JwksError, match="keys"):
        parse_jwks('{"foo": 1}')


# --- presence and CORS ------------------------------------------------------------------------


def test_presence_required(served: JwksServer, cache: JwksCache, clock: Clock,
                           keys: Keys) -> None:
    authn = authenticator(ra(rule(served.url("/jwks.json"), extra="presence: REQUIRED")),
                          cache=cache, clock=clock)
    result = authn.authenticate([], "")
    rejected(result, "Jwt is missing")
    assert result.response_headers == (("www-authenticate", "Bearer"),)
    assert authn.authenticate(bearer(sign(keys.rsa, clock)), "").ok


def test_cors_preflight_is_not_checked(authn: JwtAuthenticator) -> None:
    preflight = [("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST"),
                 ("Authorization", "Bearer garbage")]
    assert authn.authenticate(preflight, "", method="OPTIONS").ok
    assert authn.authenticate([(":method", "OPTIONS"), *preflight], "").ok
    assert not authn.authenticate(preflight, "", method="GET").ok


def test_no_policies_accepts_everything(cache: JwksCache, clock: Clock) -> None:
    authn = compile_request_authn(config_from_result(load_string("")), "default", {},
                                  root_namespace=ROOT, jwks_cache=cache, clock=clock)
    assert not authn
    assert authn.authenticate(bearer("garbage"), "") == AuthnResult(ok=True)
