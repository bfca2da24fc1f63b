"""MeshASGIMiddleware on a real uvicorn with mesh mTLS, called by real mesh clients:
identity from the handshake, PeerAuthentication, JWT, AuthorizationPolicy, telemetry
(server span, reporter=destination metrics, access log), a trace and a deadline going
on to a downstream call, streaming, app errors, and certificate rotation."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry.trace import SpanKind

from meshsdk.deadline import deadline_scope
from tests.inbound.conftest import PRODUCTPAGE, Served, token

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_allowed_principal_gets_200_and_the_app_sees_its_identity(
        serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    r = served.get("productpage", "/reviews/1?x=1")
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["peer"] == PRODUCTPAGE
    assert seen["path"] == "/reviews/1" and seen["query"] == "x=1"


def test_disallowed_principal_gets_rbac_403_and_the_app_is_not_called(
        serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    r = served.get("ratings", "/reviews/1")
    assert r.status_code == 403
    assert r.text == "RBAC: access denied"
    assert r.headers["content-type"] == "text/plain"
    ((labels, count),) = served.capture.wait_requests(1)
    assert count == 1 and labels["response_code"] == "403"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/ratings"


@pytest.mark.parametrize(("authorization", "body"), [
    (f"Bearer {token(ec.generate_private_key(ec.SECP256R1()))}", "Jwt verification fails"),
    (f"Bearer {token(exp=1)}", "Jwt is expired"),
    ("Bearer not-a-jwt", "Jwt is not in the form of Header.Payload.Signature with two dots "
                         "and 3 sections"),
], ids=["forged", "expired", "malformed"])
def test_bad_jwt_gets_401_before_authorization(
        serve_reviews: Callable[..., Served], authorization: str, body: str) -> None:
    served = serve_reviews()
    r = served.get("productpage", "/reviews/1", authorization=authorization)
    assert r.status_code == 401
    assert r.text == body
    assert "www-authenticate" in r.headers


def test_valid_jwt_is_verified_and_removed_before_the_app(
        serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    r = served.get("productpage", "/reviews/1", authorization=f"Bearer {token()}")
    assert r.status_code == 200
    seen = r.json()
    assert seen["request_principal"] == "https://issuer.test/alice"
    assert "authorization" not in seen["headers"]  # forwardOriginalToken: false


def test_strict_refuses_plaintext_and_tls_without_a_mesh_certificate(
        serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    port = served.server.port
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/reviews/1", timeout=5)
    no_cert = ssl.create_default_context()
    no_cert.check_hostname = False
    no_cert.verify_mode = ssl.CERT_NONE
    with pytest.raises(httpx.HTTPError):  # TLS 1.3: refused right after the handshake
        httpx.get(f"https://127.0.0.1:{port}/reviews/1", verify=no_cert, timeout=5)
    # a mesh caller without identity sends plaintext: the mesh reports a failed connection
    r = served.get(None, "/reviews/1")
    assert r.status_code == 503
    assert served.capture.requests() == []  # nothing reached the middleware


def test_server_span_metrics_and_access_log(serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    r = served.get("productpage", "/reviews/7", traceparent=f"00-{TRACE}-{PARENT}-01",
                   **{"x-request-id": "rid-42"})
    assert r.status_code == 200

    (span,) = served.capture.spans(1)
    assert span.kind == SpanKind.SERVER
    assert span.name == "/reviews/{id}"  # the route the app named, not the raw path
    assert span.context is not None and f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == "/reviews/{id}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["mesh.request_id"] == "rid-42"

    ((labels, count),) = served.capture.wait_requests(1)
    assert count == 1
    assert labels["reporter"] == "destination"
    assert labels["source_principal"] == PRODUCTPAGE
    assert labels["destination_workload"] == "reviews-v1"
    assert labels["destination_canonical_service"] == "reviews"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["response_code"] == "200"
    assert labels["destination_principal"] == "spiffe://cluster.local/ns/default/sa/reviews"
    assert not [v for v in labels.values() if v.startswith("/")]  # no path or route in labels

    (line,) = served.capture.lines(1)
    assert '"GET /reviews/7 HTTP/1.1" 200' in line
    assert "rid-42" in line


def test_trace_and_deadline_go_on_to_the_downstream_call(
        serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    # the caller's own deadline travels as x-envoy-expected-rq-timeout-ms
    with deadline_scope(1.5):
        r = served.get("productpage", "/call", traceparent=f"00-{TRACE}-{PARENT}-01")
    assert r.status_code == 200, r.text
    downstream = r.json()["headers"]  # what ratings received

    spans = {s.kind: s for s in served.capture.spans(2)}
    server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert server.name == "/call"
    assert server.context is not None and client.context is not None
    assert f"{client.context.trace_id:032x}" == TRACE
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    version, trace_id, span_id, _ = downstream["traceparent"].split("-")
    assert (version, trace_id) == ("00", TRACE)
    assert span_id == f"{client.context.span_id:016x}"

    # the caller gave 1.5 s: the outbound call carries what is left of it
    remaining = int(downstream["x-envoy-expected-rq-timeout-ms"])
    assert 0 < remaining <= 1500


def test_no_deadline_header_means_no_downstream_timeout(
        serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    r = served.get("productpage", "/call")
    assert r.status_code == 200
    assert "x-envoy-expected-rq-timeout-ms" not in r.json()["headers"]


def test_streamed_response_bytes_are_counted(serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    r = served.get("productpage", "/stream")
    assert r.status_code == 200 and r.text == "".join(f"chunk{i};" for i in range(5))
    (line,) = served.capture.lines(1)
    fields = line.split()
    # Envoy's default format: ... "%PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% ...
    # %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ... %BYTES_RECEIVED% %BYTES_SENT%
    assert str(len(r.content)) in fields


def test_app_exception_is_recorded_as_500(serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    r = served.get("productpage", "/boom")
    assert r.status_code == 500
    ((labels, _),) = served.capture.wait_requests(1)
    assert labels["response_code"] == "500"
    (span,) = served.capture.spans(1)
    assert dict(span.attributes or {})["http.response.status_code"] == 500


def _server_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            context.wrap_socket(sock) as tls:
        der = tls.getpeercert(True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_new_connections_present_the_rotated_certificate(
        serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    client = served.make_identity("default", "productpage")
    before = _server_certificate(served.server.port, client.client_context())
    assert before.serial_number == served.identity.certificate.serial_number
    served.identity.rotate()
    after = _server_certificate(served.server.port, client.client_context())
    assert after.serial_number == served.identity.certificate.serial_number
    assert after.serial_number != before.serial_number
    # and requests still pass on the new certificate
    assert served.get("productpage", "/reviews/1").status_code == 200


def test_permissive_server_accepts_tls_without_client_certificate(
        serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews(mode="PERMISSIVE")
    no_cert = ssl.create_default_context()
    no_cert.check_hostname = False
    no_cert.verify_mode = ssl.CERT_NONE
    url = served.server.url("/open/x")
    r = httpx.get(url, verify=no_cert, timeout=5)
    assert r.status_code == 200 and r.json()["peer"] is None
    r = httpx.get(served.server.url("/reviews/1"), verify=no_cert, timeout=5)
    assert r.status_code == 403  # no principal: the ALLOW rule does not match


def test_lifespan_and_json_body_pass_through(serve_reviews: Callable[..., Served]) -> None:
    served = serve_reviews()
    r = served.get("productpage", "/reviews/1")
    assert json.loads(r.content)["headers"]["host"].startswith("reviews")
