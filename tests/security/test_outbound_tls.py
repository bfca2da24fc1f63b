"""Outbound TLS through the mesh clients, against real TLS servers on 127.0.0.1:
DestinationRule ``tls.mode`` (ISTIO_MUTUAL, SIMPLE, DISABLE), auto mTLS, and the
check that the server is who the service may run as, made before any request byte
is sent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from meshsdk.mesh import Mesh
from meshsdk.security.ca import MeshCA
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.security.tlsserver import MeshTLSServer
from meshsdk.telemetry.metrics import DEFAULT_VIEW, MetricsView
from meshsdk.telemetry.record import CallRecord
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.transport.common import EXTENSION
from meshsdk.workload import Workload
from tests.security.conftest import IdentityFactory, ServerFactory

URL = "http://reviews.default.svc.cluster.local/r"
CLIENT = Workload("productpage-v1", "default", {"app": "productpage"}, "productpage")
MESH_LABELS = {"security.istio.io/tlsMode": "istio"}


class Seen:
    """A server handler that answers with the peer's SPIFFE ID and counts requests."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, method: str, path: str, headers: Mapping[str, str],
                 peer: str | None) -> tuple[int, str]:
        self.requests += 1
        return 200, peer or "plaintext"


def _dr(tls: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    tls: {tls}
"""


def _mesh(server: MeshTLSServer, *docs: str, identity: WorkloadIdentity | None,
          labels: Mapping[str, str] | None = None, service_account: str | None = "reviews"
          ) -> Mesh:
    se = service_entry("reviews", [(server.port, dict(labels or {}))],
                       service_account=service_account)
    return Mesh(config_from_yaml(se, *docs), CLIENT, identity=identity, telemetry=False)


Get = Callable[[Mesh], httpx.Response]


def _sync_get(mesh: Mesh) -> httpx.Response:
    with mesh.client() as client:
        return client.get(URL)


def _async_get(mesh: Mesh) -> httpx.Response:
    async def main() -> httpx.Response:
        async with mesh.async_client() as client:
            return await client.get(URL)
    return asyncio.run(main())


@pytest.fixture(params=[_sync_get, _async_get], ids=["sync", "async"])
def get(request: pytest.FixtureRequest) -> Get:
    fn: Get = request.param
    return fn


def _flags(r: httpx.Response) -> str:
    return str(r.extensions[EXTENSION].response_flags)


def test_istio_mutual_presents_the_workload_and_checks_the_server(
        make_identity: IdentityFactory, serve: ServerFactory, get: Get) -> None:
    seen = Seen()
    server = serve(make_identity("default", "reviews"), "STRICT", seen)
    mesh = _mesh(server, _dr("{mode: ISTIO_MUTUAL}"),
                 identity=make_identity("default", "productpage"))
    r = get(mesh)
    assert r.status_code == 200
    assert r.text == "spiffe://cluster.local/ns/default/sa/productpage"
    assert seen.requests == 1


def test_a_server_with_another_identity_gets_no_request(
        make_identity: IdentityFactory, serve: ServerFactory, get: Get) -> None:
    seen = Seen()
    server = serve(make_identity("default", "impostor"), "STRICT", seen)
    mesh = _mesh(server, _dr("{mode: ISTIO_MUTUAL}"),
                 identity=make_identity("default", "productpage"))
    r = get(mesh)
    assert r.status_code == 503 and "UF" in _flags(r)
    assert seen.requests == 0  # refused during connection setup, before the request


def test_subject_alt_names_of_the_rule_decide_who_may_serve(
        make_identity: IdentityFactory, serve: ServerFactory) -> None:
    server = serve(make_identity("other", "special"), "STRICT", Seen())
    allowed = _dr("{mode: ISTIO_MUTUAL, subjectAltNames: "
                  "[spiffe://cluster.local/ns/other/sa/special]}")
    mesh = _mesh(server, allowed, identity=make_identity("default", "productpage"))
    assert _sync_get(mesh).status_code == 200


def test_a_server_from_another_ca_is_refused(
        make_identity: IdentityFactory, serve: ServerFactory, other_ca: MeshCA) -> None:
    seen = Seen()
    server = serve(make_identity("default", "reviews", ca=other_ca), "STRICT", seen)
    mesh = _mesh(server, _dr("{mode: ISTIO_MUTUAL}"),
                 identity=make_identity("default", "productpage"))
    r = _sync_get(mesh)
    assert r.status_code == 503 and "UF" in _flags(r) and seen.requests == 0


def test_a_client_from_another_ca_is_refused_by_a_strict_server(
        make_identity: IdentityFactory, serve: ServerFactory, other_ca: MeshCA) -> None:
    seen = Seen()
    server = serve(make_identity("default", "reviews"), "STRICT", seen)
    stranger = make_identity("default", "productpage", ca=other_ca)
    # trusts the server's CA (so our side of the check passes), presents another CA's cert
    allowed = _dr("{mode: ISTIO_MUTUAL, subjectAltNames: []}")
    mesh = _mesh(server, allowed, identity=stranger)
    r = _sync_get(mesh)
    assert r.status_code == 503 and seen.requests == 0


def test_istio_mutual_without_an_identity_fails_loudly(
        make_identity: IdentityFactory, serve: ServerFactory, get: Get) -> None:
    server = serve(make_identity("default", "reviews"), "STRICT", Seen())
    mesh = _mesh(server, _dr("{mode: ISTIO_MUTUAL}"), identity=None)
    r = get(mesh)
    assert r.status_code == 503 and "UF" in _flags(r)


def test_auto_mtls_for_mesh_endpoints_plaintext_for_others(
        make_identity: IdentityFactory, serve: ServerFactory, get: Get) -> None:
    strict = serve(make_identity("default", "reviews"), "STRICT", Seen())
    meshed = _mesh(strict, identity=make_identity("default", "productpage"),
                   labels=MESH_LABELS)
    r = get(meshed)
    assert r.status_code == 200 and r.text.startswith("spiffe://")

    plain_seen = Seen()
    plain = serve(None, "DISABLE", plain_seen)
    legacy = _mesh(plain, identity=make_identity("default", "productpage"))
    r = get(legacy)
    assert r.status_code == 200 and r.text == "plaintext"


def test_disable_sends_plaintext_which_a_strict_server_refuses(
        make_identity: IdentityFactory, serve: ServerFactory) -> None:
    seen = Seen()
    server = serve(make_identity("default", "reviews"), "STRICT", seen)
    mesh = _mesh(server, _dr("{mode: DISABLE}"),
                 identity=make_identity("default", "productpage"), labels=MESH_LABELS)
    r = _sync_get(mesh)
    assert r.status_code == 503 and seen.requests == 0


def test_permissive_server_takes_both(make_identity: IdentityFactory,
                                      serve: ServerFactory) -> None:
    seen = Seen()
    server = serve(make_identity("default", "reviews"), "PERMISSIVE", seen)
    me = make_identity("default", "productpage")
    assert _sync_get(_mesh(server, _dr("{mode: ISTIO_MUTUAL}"), identity=me)).text \
        == "spiffe://cluster.local/ns/default/sa/productpage"
    assert _sync_get(_mesh(server, _dr("{mode: DISABLE}"), identity=me)).text == "plaintext"


class _TlsOnlyServer:
    """An HTTPS server that asks for no client certificate (an external service)."""

    def __init__(self, identity: WorkloadIdentity) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "5")
                self.end_headers()
                self.wfile.write(b"https")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = identity.server_context(require_client_cert=False)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_simple_origination_verifies_the_server_names(
        make_identity: IdentityFactory, mesh_ca: MeshCA, tmp_path: Path) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_bytes(mesh_ca.roots)
    server = _TlsOnlyServer(make_identity("default", "reviews"))
    try:
        def call(tls: str) -> httpx.Response:
            se = service_entry("reviews", [(server.port, {})])
            mesh = Mesh(config_from_yaml(se, _dr(tls)), CLIENT, telemetry=False)
            return _sync_get(mesh)

        spiffe = "spiffe://cluster.local/ns/default/sa/reviews"
        ok = call(f"{{mode: SIMPLE, caCertificates: {roots}, subjectAltNames: [{spiffe}]}}")
        assert ok.status_code == 200 and ok.text == "https"
        # without subjectAltNames the name checked is the SNI (the host): not in this cert
        r = call(f"{{mode: SIMPLE, caCertificates: {roots}}}")
        assert r.status_code == 503 and "UF" in _flags(r)
        # another CA's roots: the chain does not verify
        wrong_roots = tmp_path / "other.pem"
        wrong_roots.write_bytes(MeshCA.create().roots)
        r = call(f"{{mode: SIMPLE, caCertificates: {wrong_roots}}}")
        assert r.status_code == 503 and "UF" in _flags(r)
        r = call("{mode: SIMPLE, insecureSkipVerify: true}")
        assert r.status_code == 200
    finally:
        server.stop()


def test_rotation_moves_new_connections_to_the_new_certificate(
        make_identity: IdentityFactory, serve: ServerFactory) -> None:
    server = serve(make_identity("default", "reviews"), "STRICT", Seen())
    me = make_identity("default", "productpage")
    mesh = _mesh(server, _dr("{mode: ISTIO_MUTUAL}"), identity=me)
    with mesh.client() as client:
        assert client.get(URL).status_code == 200
        before = me.certificate.serial_number
        me.rotate()
        assert me.certificate.serial_number != before
        for _ in range(5):
            assert client.get(URL).status_code == 200


def test_metrics_name_both_principals_over_mtls(make_identity: IdentityFactory,
                                                serve: ServerFactory) -> None:
    records: list[CallRecord] = []

    class Sink:
        def record(self, record: CallRecord, view: MetricsView = DEFAULT_VIEW) -> None:
            records.append(record)

    server = serve(make_identity("default", "reviews"), "STRICT", Seen())
    se = service_entry("reviews", [(server.port, MESH_LABELS)], service_account="reviews")
    telemetry = Telemetry(CLIENT, metrics=[Sink()], otel_metrics=False)
    mesh = Mesh(config_from_yaml(se), CLIENT, telemetry=telemetry,
                identity=make_identity("default", "productpage"))
    assert _sync_get(mesh).status_code == 200
    (record,) = records
    assert record.source.principal == "spiffe://cluster.local/ns/default/sa/productpage"
    assert record.destination.principal == "spiffe://cluster.local/ns/default/sa/reviews"
