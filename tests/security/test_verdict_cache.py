"""InboundSecurity's verdict cache: kept only where a verdict is a pure function of the
request's method, host, path, peer and addresses (no JWT, no CUSTOM, no header
condition), never for a verdict that is logged, and gone with the compiled policies."""

from __future__ import annotations

import logging

import pytest

from meshsdk.mesh import Mesh
from meshsdk.security.inbound import InboundSecurity
from meshsdk.testing.builders import config_from_yaml
from meshsdk.testing.jwt import TestIssuer
from meshsdk.workload import Workload

REVIEWS = Workload("reviews-v1", "default", {"app": "reviews"}, "reviews")
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"

BY_PEER_AND_PATH = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-callers, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
    to: [{operation: {methods: [GET], paths: [/reviews/*]}}]
"""

BY_HEADER = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-by-header, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: [/reviews/*]}}]
    when: [{key: "request.headers[x-team]", values: [blue]}]
"""


def security_for(yaml: str) -> InboundSecurity:
    config = config_from_yaml(yaml)
    mesh_config = Mesh(config, REVIEWS, telemetry=False).snapshot.mesh
    return InboundSecurity(config, mesh_config, REVIEWS)


def check(security: InboundSecurity, path: str = "/reviews/1", peer: str | None = PRODUCTPAGE,
          method: str = "GET", **headers: str) -> bool:
    return security.check(method=method, host="reviews:9080", path=path,
                          headers=[("host", "reviews:9080"), *headers.items()], peer=peer,
                          source_ip="10.0.0.1", destination_port=9080).allowed


def test_repeated_requests_get_the_first_verdict_and_each_attribute_counts() -> None:
    security = security_for(BY_PEER_AND_PATH)
    for _ in range(3):
        assert check(security)
    assert check(security, path="/reviews/2")
    # every attribute of the key changes the answer where the policy says so
    assert not check(security, peer=RATINGS)
    assert not check(security, peer=None)
    assert not check(security, method="POST")
    assert not check(security, path="/ratings/1")
    assert check(security)  # and the kept verdict is still the right one
    assert security._verdicts is not None and len(security._verdicts) == 2  # allows only


def test_a_policy_reading_a_header_is_never_cached() -> None:
    security = security_for(BY_HEADER)
    assert security._verdicts is None
    assert check(security, **{"x-team": "blue"})
    assert not check(security, **{"x-team": "red"})  # same key, other header
    assert check(security, **{"x-team": "blue"})


def test_with_request_authentication_nothing_is_cached() -> None:
    issuer = TestIssuer("https://issuer.test")
    security = security_for(issuer.request_authentication("reviews") + "---\n"
                            + BY_PEER_AND_PATH)
    assert security._verdicts is None
    assert check(security, authorization=f"Bearer {issuer.token()}")
    assert not check(security, authorization="Bearer not-a-jwt")


def test_each_denial_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    security = security_for(BY_PEER_AND_PATH)
    with caplog.at_level(logging.WARNING, logger="meshsdk.audit"):
        for _ in range(3):
            assert not check(security, peer=RATINGS)
    assert [r.getMessage().startswith("authz deny") for r in caplog.records] == [True] * 3


def test_the_cache_is_bounded() -> None:
    security = security_for(BY_PEER_AND_PATH)
    for i in range(5000):
        assert check(security, path=f"/reviews/{i}")
    assert security._verdicts is not None and 0 < len(security._verdicts) <= 4096
    assert not check(security, path="/ratings/1")


def test_a_config_update_decides_anew() -> None:
    from meshsdk.inbound.handler import InboundHandler
    mesh = Mesh(config_from_yaml(BY_PEER_AND_PATH), REVIEWS, telemetry=False)
    handler = InboundHandler(mesh)

    def allowed() -> bool:
        return handler.security.check(method="GET", host="reviews:9080", path="/reviews/1",
                                      headers=[], peer=PRODUCTPAGE).allowed
    assert allowed() and allowed()
    mesh.update(config_from_yaml(BY_PEER_AND_PATH.replace("productpage", "ratings")))
    assert not allowed()
    mesh.close()
