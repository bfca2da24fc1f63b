"""MeshWSGIMiddleware on a real gunicorn (its own process, a gthread worker) with mesh
mTLS from identity files, called by real mesh clients. The worker writes its spans and
access log to files and serves its Prometheus metrics; the test reads them."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from meshsdk.deadline import deadline_scope
from meshsdk.mesh import Mesh
from meshsdk.security.ca import MeshCA, make_csr, new_key, private_key_pem, write_file
from meshsdk.security.spiffe import spiffe_id
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.upstream import Upstream, echo, free_port, wait_until
from meshsdk.workload import Workload
from tests.inbound.conftest import PRODUCTPAGE, URL, policies, token
from tests.security.conftest import IdentityFactory

REPO = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def write_identity(ca: MeshCA, directory: Path, service_account: str = "reviews"
                   ) -> x509.Certificate:
    """Istio's three files for default/<service_account>, each replaced atomically."""
    key = new_key()
    issued = ca.sign_csr(make_csr(key, spiffe_id(ca.trust_domain, "default", service_account)),
                         namespace="default", service_account=service_account)
    for name, data, private in (("key.pem", private_key_pem(key), True),
                                ("cert-chain.pem", issued.chain_pem, False),
                                ("root-cert.pem", issued.root_pem, False)):
        tmp = directory / f".{name}.tmp"
        write_file(tmp, data, private=private)
        os.replace(tmp, directory / name)
    return issued.certificate


@dataclass
class Gunicorn:
    """One gunicorn process serving tests.inbound.wsgi_app."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    directory: Path
    ratings: Upstream
    make_identity: IdentityFactory
    callers: list[Mesh] = field(default_factory=list)

    def caller(self, service_account: str | None) -> Mesh:
        identity = (self.make_identity("default", service_account)
                    if service_account is not None else None)
        se = service_entry("reviews", [(self.port, {"security.istio.io/tlsMode": "istio"})],
                           service_account="reviews")
        mesh = Mesh(config_from_yaml(se), Workload("caller", "default"), telemetry=False,
                    identity=identity)
        self.callers.append(mesh)
        return mesh

    def get(self, service_account: str | None, path: str, **headers: str) -> httpx.Response:
        with self.caller(service_account).client() as client:
            return client.get(f"{URL}{path}", headers=headers)

    def spans(self, expected: int) -> list[dict[str, Any]]:
        path = self.directory / "spans.jsonl"

        def read() -> list[dict[str, Any]]:
            if not path.exists():
                return []
            return [json.loads(line) for line in path.read_text().splitlines() if line]

        wait_until(lambda: len(read()) >= expected)
        return read()

    def lines(self, expected: int) -> list[str]:
        path = self.directory / "access.log"

        def read() -> list[str]:
            return path.read_text().splitlines() if path.exists() else []

        wait_until(lambda: len(read()) >= expected)
        return read()

    def requests(self, total: int) -> list[tuple[dict[str, str], float]]:
        def read() -> list[tuple[dict[str, str], float]]:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
            return [(dict(s.labels), s.value)
                    for family in text_string_to_metric_families(text)
                    for s in family.samples if s.name == "istio_requests_total"]

        wait_until(lambda: sum(v for _, v in read()) >= total)
        return read()


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def gunicorn(tmp_path: Path, mesh_ca: MeshCA, make_identity: IdentityFactory
             ) -> Iterator[Callable[..., Gunicorn]]:
    """``gunicorn(mode="STRICT")``: a started gunicorn; terminated (then killed if
    need be) after the test, with everything else it needed."""
    started: list[Gunicorn] = []

    def start(mode: str = "STRICT") -> Gunicorn:
        ratings = Upstream("ratings", echo).start()
        directory = tmp_path / f"gunicorn{len(started)}"
        directory.mkdir()
        write_identity(mesh_ca, directory)
        (directory / "config").mkdir()
        (directory / "config" / "reviews.yaml").write_text(policies(mode, ratings.port))
        port, metrics_port = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "MESHSDK_TEST_IDENTITY": str(directory),
               "MESHSDK_TEST_MODE": mode, "MESHSDK_TEST_PORT": str(port),
               "MESHSDK_TEST_CONFIG": str(directory / "config"),
               "MESHSDK_TEST_SPANS": str(directory / "spans.jsonl"),
               "MESHSDK_TEST_ACCESS_LOG": str(directory / "access.log"),
               "MESHSDK_TEST_METRICS_PORT": str(metrics_port)}
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(REPO / "tests/inbound/gunicorn_conf.py"),
             "tests.inbound.wsgi_app:app"], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=open(directory / "gunicorn.err", "wb"))  # noqa: SIM115
        server = Gunicorn(process, port, metrics_port, directory, ratings, make_identity)
        started.append(server)
        ready = wait_until(lambda: process.poll() is not None
                           or (_accepting(port) and _accepting(metrics_port)), timeout=30)
        if not ready or process.poll() is not None:
            raise RuntimeError("gunicorn did not start: "
                               + (directory / "gunicorn.err").read_text()[-2000:])
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=5)
        server.ratings.stop()
        for mesh in server.callers:
            mesh.close()


def test_allowed_denied_and_bad_jwt(gunicorn: Callable[..., Gunicorn]) -> None:
    server = gunicorn()
    r = server.get("productpage", "/reviews/1?x=1")
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["peer"] == PRODUCTPAGE and seen["query"] == "x=1"

    r = server.get("ratings", "/reviews/1")
    assert (r.status_code, r.text) == (403, "RBAC: access denied")

    forged = token(ec.generate_private_key(ec.SECP256R1()))
    r = server.get("productpage", "/reviews/1", authorization=f"Bearer {forged}")
    assert (r.status_code, r.text) == (401, "Jwt verification fails")
    r = server.get("productpage", "/reviews/1")
    assert r.status_code == 200
    r = server.get("productpage", "/reviews/1", authorization=f"Bearer {token()}")
    assert r.status_code == 200
    seen = r.json()
    assert seen["request_principal"] == "https://issuer.test/alice"
    assert "authorization" not in seen["headers"]


def test_strict_refuses_plaintext(gunicorn: Callable[..., Gunicorn]) -> None:
    server = gunicorn()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/reviews/1", timeout=5)
    no_cert = ssl.create_default_context()
    no_cert.check_hostname = False
    no_cert.verify_mode = ssl.CERT_NONE
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://127.0.0.1:{server.port}/reviews/1", verify=no_cert, timeout=5)
    assert server.get(None, "/reviews/1").status_code == 503


def test_span_metrics_and_access_log(gunicorn: Callable[..., Gunicorn]) -> None:
    server = gunicorn()
    r = server.get("productpage", "/reviews/7", traceparent=f"00-{TRACE}-{PARENT}-01",
                   **{"x-request-id": "rid-7"})
    assert r.status_code == 200
    (span,) = server.spans(1)
    assert span["kind"] == "SERVER" and span["name"] == "/reviews/{id}"
    assert span["trace_id"] == TRACE and span["parent"] == PARENT
    assert span["attributes"]["http.route"] == "/reviews/{id}"

    ((labels, count),) = server.requests(1)
    assert count == 1
    assert labels["reporter"] == "destination"
    assert labels["source_principal"] == PRODUCTPAGE
    assert labels["destination_workload"] == "reviews-v1"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["response_code"] == "200"

    (line,) = server.lines(1)
    assert '"GET /reviews/7 HTTP/1.1" 200' in line and "rid-7" in line


def test_trace_and_deadline_reach_the_downstream_call(
        gunicorn: Callable[..., Gunicorn]) -> None:
    server = gunicorn()
    with deadline_scope(2.0):
        r = server.get("productpage", "/call", traceparent=f"00-{TRACE}-{PARENT}-01")
    assert r.status_code == 200, r.text
    downstream = r.json()["headers"]
    spans = {s["kind"]: s for s in server.spans(2)}
    assert spans["SERVER"]["name"] == "/call"
    assert spans["CLIENT"]["trace_id"] == TRACE
    assert spans["CLIENT"]["parent"] == spans["SERVER"]["span_id"]
    assert downstream["traceparent"].split("-")[1:3] == [TRACE, spans["CLIENT"]["span_id"]]
    assert 0 < int(downstream["x-envoy-expected-rq-timeout-ms"]) <= 2000


def test_streaming_and_app_errors(gunicorn: Callable[..., Gunicorn]) -> None:
    server = gunicorn()
    r = server.get("productpage", "/stream")
    assert r.status_code == 200 and r.text == "".join(f"chunk{i};" for i in range(5))
    r = server.get("productpage", "/boom")
    assert r.status_code == 500
    codes = sorted(labels["response_code"] for labels, _ in server.requests(2))
    assert codes == ["200", "500"]
    lines = server.lines(2)
    stream_line = next(line for line in lines if "/stream" in line)
    assert " 35 " in f" {stream_line} "  # BYTES_SENT: the five chunks


def _served_serial(port: int, context: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            context.wrap_socket(sock) as tls:
        der = tls.getpeercert(True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_new_connections_present_the_rotated_certificate(
        gunicorn: Callable[..., Gunicorn], mesh_ca: MeshCA) -> None:
    server = gunicorn()
    client = server.make_identity("default", "productpage").client_context()
    first = x509.load_pem_x509_certificate(
        (server.directory / "cert-chain.pem").read_bytes()).serial_number
    assert _served_serial(server.port, client) == first
    rotated = write_identity(mesh_ca, server.directory)  # what an agent does at rotation
    assert rotated.serial_number != first
    assert wait_until(lambda: _served_serial(server.port, client) == rotated.serial_number,
                      timeout=20)
    assert server.get("productpage", "/reviews/1").status_code == 200
