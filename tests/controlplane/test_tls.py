"""The config service over TLS (real handshakes on 127.0.0.1): a serving certificate from
the mesh CA, meshes and the CA client that trust only the mesh's roots, and what happens
with the wrong roots or none."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from meshsdk.controlplane.ca_service import TokenDirectory, add_ca_service, remote_signer
from meshsdk.controlplane.filestore import ConfigStore
from meshsdk.controlplane.server import ConfigServer
from meshsdk.controlplane.tls import SERVER_NAME, ServingCertificate
from meshsdk.mesh import Mesh
from meshsdk.security.ca import MeshCA, make_csr, new_key
from meshsdk.security.errors import SecurityError
from meshsdk.workload import Workload
from tests.controlplane.conftest import wait_for

WORKLOAD = Workload("productpage-v1", "default", {"app": "productpage"})
TOKEN = "bootstrap-token-for-productpage-0123456789"


@pytest.fixture
def ca() -> MeshCA:
    return MeshCA.create("cluster.local")


@pytest.fixture
def server(tmp_path: Path, ca: MeshCA) -> Iterator[ConfigServer]:
    config = tmp_path / "config"
    config.mkdir()
    (config / "dr.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: reviews, namespace: default}\nspec: {host: reviews}\n")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "default.bookinfo-productpage.token").write_text(TOKEN)
    serving = ServingCertificate(ca)
    with ConfigStore(config).start() as store, ConfigServer(
            store, port=0, credentials=serving.server_credentials(),
            services=[lambda s: add_ca_service(s, ca, TokenDirectory(tokens))]) as srv:
        yield srv


def test_the_serving_certificate_is_istiods(ca: MeshCA) -> None:
    key, chain = ServingCertificate(ca, ["cp.example.internal", "10.0.0.5"]).pem()
    assert b"PRIVATE KEY" in key
    leaf = x509.load_pem_x509_certificates(chain)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/istio-system/sa/istiod"]
    assert san.get_values_for_type(x509.DNSName) == [SERVER_NAME, "cp.example.internal"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]


def test_renewed_at_half_life(ca: MeshCA) -> None:
    now = [1_000.0]
    serving = ServingCertificate(ca, lifetime=dt.timedelta(hours=2), clock=lambda: now[0])
    first = serving.pem()
    now[0] += 3_500.0
    assert serving.pem() == first
    now[0] += 200.0  # past one hour: renewed
    assert serving.pem() != first


def test_a_mesh_trusting_the_roots_connects(server: ConfigServer, ca: MeshCA,
                                            tmp_path: Path) -> None:
    roots = tmp_path / "root-cert.pem"
    roots.write_bytes(ca.roots)
    mesh = Mesh.connect(f"127.0.0.1:{server.port}", WORKLOAD, ca_roots=roots,
                        cache_dir=tmp_path / "cache", telemetry=False)
    try:
        assert mesh.status().connected and mesh.status().source == "server"
        assert [r.name for r in mesh.snapshot.config.of_kind("DestinationRule")] == ["reviews"]
    finally:
        mesh.close()


@pytest.mark.parametrize("case", ["other roots", "plaintext", "wrong name"])
def test_a_mesh_that_cannot_verify_the_server_gets_nothing(
        server: ConfigServer, ca: MeshCA, tmp_path: Path, case: str) -> None:
    kwargs: dict[str, object] = {}
    if case == "other roots":
        kwargs["ca_roots"] = MeshCA.create("cluster.local").roots
    elif case == "wrong name":
        kwargs["ca_roots"] = ca.roots
        kwargs["server_name"] = "someone-else.example.com"
    mesh = Mesh.connect(f"127.0.0.1:{server.port}", WORKLOAD, wait=1.0,
                        cache_dir=tmp_path / "cache", telemetry=False,
                        **kwargs)  # type: ignore[arg-type]
    try:
        wait_for(lambda: mesh.status().last_error is not None, "the failure")
        status = mesh.status()
        assert not status.connected and status.version is None
        assert "config service" in str(status.last_error)
    finally:
        mesh.close()


def test_csr_signing_over_tls(server: ConfigServer, ca: MeshCA) -> None:
    key = new_key()
    csr = make_csr(key, "spiffe://cluster.local/ns/default/sa/bookinfo-productpage")
    signed = remote_signer(f"127.0.0.1:{server.port}", TOKEN, roots=ca.roots)(csr)
    leaf = x509.load_pem_x509_certificates(signed.chain_pem)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"]
    with pytest.raises(SecurityError):  # the same call trusting another CA never gets there
        remote_signer(f"127.0.0.1:{server.port}", TOKEN, timeout=2.0,
                      roots=MeshCA.create("cluster.local").roots)(csr)


@pytest.mark.parametrize("flags, says", [
    (["--tls"], "--tls needs --ca-dir"),
    (["--authenticate"], "--authenticate needs --tokens"),
    (["--ca-dir", "x"], "--ca-dir and --tokens go together"),
])
def test_serve_refuses_options_it_cannot_honour(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str) -> None:
    from meshsdk.controlplane.server import main
    assert main(["--config", str(tmp_path), *flags]) == 2
    assert says in capsys.readouterr().err


@pytest.fixture
def guarded(tmp_path: Path, ca: MeshCA) -> Iterator[ConfigServer]:
    """TLS, and every subscriber must prove its namespace and service account."""
    config = tmp_path / "guarded-config"
    config.mkdir()
    (config / "se.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: ratings, namespace: default}\nspec:\n"
        "  hosts: [ratings.default.svc.cluster.local]\n  resolution: STATIC\n"
        "  ports: [{number: 80, name: http, protocol: HTTP}]\n"
        "  workloadSelector: {labels: {app: ratings}}\n")
    tokens = tmp_path / "guarded-tokens"
    tokens.mkdir()
    (tokens / "default.bookinfo-productpage.token").write_text(TOKEN)
    with ConfigStore(config).start() as store, ConfigServer(
            store, port=0, credentials=ServingCertificate(ca).server_credentials(),
            authenticator=TokenDirectory(tokens)) as srv:
        yield srv


PRODUCTPAGE_SA = Workload("productpage-v1", "default", {"app": "productpage"},
                          "bookinfo-productpage")


def test_an_authenticated_subscriber_is_served_and_registered(
        guarded: ConfigServer, ca: MeshCA, tmp_path: Path) -> None:
    mesh = Mesh.connect(f"127.0.0.1:{guarded.port}", PRODUCTPAGE_SA, ca_roots=ca.roots,
                        token=TOKEN, register=True, ip="127.0.0.1", ports={"http": 9080},
                        cache_dir=tmp_path / "cache", telemetry=False)
    try:
        assert mesh.status().connected and mesh.status().source == "server"
        [entry] = guarded.syncz()
        assert entry["authenticated_as"] == "default/bookinfo-productpage"
        assert [e["name"] for e in guarded.registryz()] == ["auto-productpage-v1-127-0-0-1"]
    finally:
        mesh.close()


@pytest.mark.parametrize("case, code", [
    ("no token", "UNAUTHENTICATED"),
    ("unknown token", "UNAUTHENTICATED"),
    ("another service account", "PERMISSION_DENIED"),
])
def test_a_subscriber_that_cannot_prove_its_identity_gets_nothing(
        guarded: ConfigServer, ca: MeshCA, tmp_path: Path, case: str, code: str) -> None:
    workload, token = PRODUCTPAGE_SA, TOKEN
    if case == "no token":
        token = None  # type: ignore[assignment]
    elif case == "unknown token":
        token = "x" * 40
    else:  # a valid token, but the node claims to be ratings: it may not register as it
        workload = Workload("ratings-v1", "default", {"app": "ratings"}, "bookinfo-ratings")
    mesh = Mesh.connect(f"127.0.0.1:{guarded.port}", workload, ca_roots=ca.roots,
                        token=token, register=True, ip="127.0.0.1", ports={"http": 9080},
                        cache_dir=tmp_path / "cache", wait=1.0, telemetry=False)
    try:
        wait_for(lambda: mesh.status().last_error is not None, "the refusal")
        status = mesh.status()
        assert status.version is None and code in str(status.last_error)
        assert guarded.registryz() == []
    finally:
        mesh.close()
