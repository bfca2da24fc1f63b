"""The inbound pieces together, on real mTLS: a STRICT server for ``reviews`` whose
handler asks :class:`InboundSecurity` (JWT, then AuthorizationPolicy) before
answering, called by mesh clients of allowed and disallowed workloads."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshsdk.mesh import Mesh
from meshsdk.security.inbound import InboundDecision, InboundSecurity
from meshsdk.security.tlsserver import MeshTLSServer
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.jwt import TestIssuer
from meshsdk.workload import Workload
from tests.security.conftest import IdentityFactory, ServerFactory

ISSUER = "https://issuer.test"
URL = "http://reviews.default.svc.cluster.local/reviews/1"
REVIEWS = Workload("reviews-v1", "default", {"app": "reviews"}, "reviews")
JWT = TestIssuer(ISSUER)
SIGNING_KEY = JWT.key
token = JWT.token


POLICIES = f"""
{JWT.request_authentication("reviews")}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-callers, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/productpage]}}}}]
    to: [{{operation: {{methods: [GET], paths: [/reviews/*]}}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  mtls: {{mode: STRICT}}
"""


class Guarded:
    """The server's handler: InboundSecurity decides, then the app answers."""

    def __init__(self, security: InboundSecurity) -> None:
        self.security = security
        self.decisions: list[InboundDecision] = []
        self.app_saw: list[Mapping[str, str]] = []

    def __call__(self, method: str, path: str, headers: Mapping[str, str],
                 peer: str | None) -> tuple[int, bytes]:
        decision = self.security.check(method=method, host=headers.get("host", ""),
                                       path=path, headers=list(headers.items()), peer=peer)
        self.decisions.append(decision)
        if not decision.allowed:
            assert decision.status is not None
            return decision.status, decision.body
        seen = {k: v for k, v in headers.items() if k not in decision.headers_to_remove}
        seen.update(dict(decision.headers_to_set))
        self.app_saw.append(seen)
        return 200, f"reviews for {peer} as {decision.request_principal}".encode()


@pytest.fixture
def setup(make_identity: IdentityFactory, serve: ServerFactory
          ) -> Iterator[tuple[MeshTLSServer, Guarded, IdentityFactory]]:
    config = config_from_yaml(POLICIES)
    mesh_config = Mesh(config, REVIEWS, telemetry=False).snapshot.mesh
    security = InboundSecurity(config, mesh_config, REVIEWS)
    assert security.mode_for(9080) == "STRICT"
    guarded = Guarded(security)
    server = serve(make_identity("default", "reviews"), security.mode_for(9080), guarded)
    yield server, guarded, make_identity


def _client_mesh(server: MeshTLSServer, identity: object) -> Mesh:
    se = service_entry("reviews", [(server.port, {"security.istio.io/tlsMode": "istio"})],
                       service_account="reviews")
    return Mesh(config_from_yaml(se), Workload("caller", "default"), telemetry=False,
                identity=identity)  # type: ignore[arg-type]


def _get(mesh: Mesh, **headers: str) -> httpx.Response:
    with mesh.client() as client:
        return client.get(URL, headers=headers)


def test_allowed_principal_with_a_valid_token_passes_and_the_token_is_dropped(
        setup: tuple[MeshTLSServer, Guarded, IdentityFactory]) -> None:
    server, guarded, make_identity = setup
    mesh = _client_mesh(server, make_identity("default", "productpage"))
    r = _get(mesh, authorization=f"Bearer {token()}")
    assert r.status_code == 200
    assert r.text == ("reviews for spiffe://cluster.local/ns/default/sa/productpage "
                      f"as {ISSUER}/alice")
    assert "authorization" not in guarded.app_saw[-1]  # forwardOriginalToken: false
    decision = guarded.decisions[-1]
    assert decision.authz is not None and decision.authz.policy == "default/reviews-callers"


def test_allowed_principal_without_a_token_passes(
        setup: tuple[MeshTLSServer, Guarded, IdentityFactory]) -> None:
    server, _, make_identity = setup
    r = _get(_client_mesh(server, make_identity("default", "productpage")))
    assert r.status_code == 200 and r.text.endswith("as None")


def test_another_principal_is_denied_with_rbac_and_audited(
        setup: tuple[MeshTLSServer, Guarded, IdentityFactory],
        caplog: pytest.LogCaptureFixture) -> None:
    server, guarded, make_identity = setup
    with caplog.at_level(logging.INFO, logger="meshsdk.audit"):
        r = _get(_client_mesh(server, make_identity("default", "ratings")))
    assert r.status_code == 403 and r.text == "RBAC: access denied"
    assert not guarded.app_saw
    records = [rec for rec in caplog.records if rec.name == "meshsdk.audit"]
    assert records and records[-1].levelno == logging.WARNING
    fields = records[-1].mesh_authz  # type: ignore[attr-defined]
    assert "ratings" in str(fields)


def test_a_bad_token_is_401_before_authorization(
        setup: tuple[MeshTLSServer, Guarded, IdentityFactory]) -> None:
    server, guarded, make_identity = setup
    mesh = _client_mesh(server, make_identity("default", "productpage"))
    forged = token(ec.generate_private_key(ec.SECP256R1()))
    r = _get(mesh, authorization=f"Bearer {forged}")
    assert r.status_code == 401 and r.text == "Jwt verification fails"
    expired = token(exp=int(time.time()) - 3600)
    r = _get(mesh, authorization=f"Bearer {expired}")
    assert r.status_code == 401 and r.text == "Jwt is expired"
    assert all(d.authz is None for d in guarded.decisions)


def test_strict_refuses_a_plaintext_client(
        setup: tuple[MeshTLSServer, Guarded, IdentityFactory]) -> None:
    server, guarded, _ = setup
    r = _get(_client_mesh(server, None))  # no identity: auto mTLS off, plaintext
    assert r.status_code == 503
    assert not guarded.decisions
