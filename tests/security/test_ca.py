"""The mesh CA: roots, workload certificates, plug-in CA files, SPIFFE IDs."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from meshsdk.errors import MeshError
from meshsdk.security.ca import (
    CLOCK_SKEW,
    MeshCA,
    certs_pem,
    is_ca,
    issued_by,
    make_csr,
    new_key,
    private_key_pem,
    write_file,
)
from meshsdk.security.errors import SecurityError
from meshsdk.security.spiffe import (
    SpiffeId,
    parse_spiffe_id,
    principal,
    spiffe_id,
    spiffe_ids_of,
)
from meshsdk.testing.clock import FakeClock
from tests.security.conftest import PluginCA, write_plugin_ca

SPIFFE = "spiffe://cluster.local/ns/default/sa/reviews"


def issue(ca: MeshCA, key_type: str = "EC", namespace: str = "default",
          service_account: str = "reviews", **kwargs: object) -> tuple[x509.Certificate,
                                                                      list[x509.Certificate],
                                                                      list[x509.Certificate]]:
    """Issue for a fresh key: (leaf, presented chain, roots)."""
    key = new_key(key_type)  # type: ignore[arg-type]
    issued = ca.sign_csr(make_csr(key, SPIFFE), namespace=namespace,
                         service_account=service_account, **kwargs)  # type: ignore[arg-type]
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    assert chain[0] == issued.certificate
    return chain[0], chain, x509.load_pem_x509_certificates(issued.root_pem)


def verify_chain(chain: list[x509.Certificate], roots: list[x509.Certificate]
                 ) -> list[x509.Certificate]:
    """Path validation by cryptography's RFC 5280 verifier (client profile: mTLS)."""
    verifier = (PolicyBuilder().store(Store(roots)).time(dt.datetime.now(dt.UTC))
                .build_client_verifier())
    result = verifier.verify(chain[0], chain[1:])
    assert [u.value for u in result.subjects or []] == spiffe_ids_of(chain[0])
    return list(result.chain)


def ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> Any:
    """The extension of class ``cls`` (typed loosely: tests read its fields)."""
    return cert.extensions.get_extension_for_class(cls)


# --- SPIFFE IDs ------------------------------------------------------------------------


def test_spiffe_id_and_principal() -> None:
    assert spiffe_id("cluster.local", "default", "reviews") == SPIFFE
    parsed = parse_spiffe_id(SPIFFE)
    assert parsed == SpiffeId("cluster.local", "default", "reviews")
    assert parsed.uri == SPIFFE
    assert principal(SPIFFE) == "cluster.local/ns/default/sa/reviews"
    assert principal(parsed) == "cluster.local/ns/default/sa/reviews"


@pytest.mark.parametrize("bad", [
    "", "http://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa",
    "spiffe://cluster.local/ns/a/sa/b/c", "spiffe://cluster.local/sa/a/ns/b",
    "spiffe://Cluster.Local/ns/a/sa/b", "spiffe://cluster.local:443/ns/a/sa/b",
    "spiffe://user@cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b?x=1",
    "spiffe://cluster.local/ns/a/sa/b#f", "spiffe://cluster.local/ns/../sa/b",
    "spiffe://cluster.local/ns//sa/b", "spiffe:///ns/a/sa/b", "spiffe://c/ns/a%20/sa/b",
    "spiffe://cluster.local/ns/a b/sa/c", "SPIFFE://cluster.local/ns/a/sa/b",
    "spiffe://cluster.local/ns/a/sa/" + "x" * 2100,
])
def test_parse_spiffe_id_is_strict(bad: str) -> None:
    with pytest.raises(SecurityError):
        parse_spiffe_id(bad)


def test_spiffe_id_rejects_bad_parts() -> None:
    with pytest.raises(SecurityError, match="namespace"):
        spiffe_id("cluster.local", "a/b", "sa")
    with pytest.raises(SecurityError, match="trust domain"):
        spiffe_id("", "ns", "sa")
    assert issubclass(SecurityError, MeshError)


# --- the self-signed root ---------------------------------------------------------------


def test_root_properties() -> None:
    clock = FakeClock(start=1_800_000_000.0)
    ca = MeshCA.create("example.org", clock=clock)
    root = ca.certificate
    assert ca.trust_domain == "example.org"
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value \
        == "example.org"
    assert root.subject == root.issuer and issued_by(root, root)
    constraints = ext(root, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ext(root, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign
    now = dt.datetime.fromtimestamp(clock(), tz=dt.UTC)
    assert root.not_valid_before_utc == now - CLOCK_SKEW
    assert root.not_valid_after_utc == now + dt.timedelta(days=3650)
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert ca.roots == certs_pem([root])
    assert is_ca(root)


# --- workload certificates --------------------------------------------------------------


def test_workload_certificate_ec(mesh_ca: MeshCA) -> None:
    leaf, chain, roots = issue(mesh_ca)
    assert spiffe_ids_of(leaf) == [SPIFFE]
    san = ext(leaf, x509.SubjectAlternativeName)
    assert san.critical and leaf.subject == x509.Name([])  # Istio: empty subject
    assert san.value.get_values_for_type(x509.DNSName) == []
    eku = ext(leaf, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH,
                        ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = ext(leaf, x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    assert not usage.key_cert_sign
    assert not ext(leaf, x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc \
        == dt.timedelta(hours=24) + CLOCK_SKEW
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert leaf.issuer == mesh_ca.certificate.subject
    assert len(chain) == 1  # the root is in the trust bundle, not sent
    assert verify_chain(chain, roots)[-1] == mesh_ca.certificate


def test_workload_certificate_rsa(mesh_ca: MeshCA) -> None:
    leaf, chain, roots = issue(mesh_ca, "RSA")
    key = leaf.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    usage = ext(leaf, x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    verify_chain(chain, roots)


def test_validity_follows_the_ca_clock() -> None:
    clock = FakeClock(start=1_800_000_000.0)
    ca = MeshCA.create(clock=clock)
    clock.advance(3600)
    leaf, _, _ = issue(ca, lifetime=dt.timedelta(hours=2))
    now = dt.datetime.fromtimestamp(clock(), tz=dt.UTC)
    assert leaf.not_valid_before_utc == now - CLOCK_SKEW
    assert leaf.not_valid_after_utc == now + dt.timedelta(hours=2)


def test_serials_are_random_and_unique(mesh_ca: MeshCA) -> None:
    serials = {issue(mesh_ca)[0].serial_number for _ in range(20)}
    assert len(serials) == 20
    assert all(s.bit_length() > 64 for s in serials)


def test_csr_identity_is_ignored(mesh_ca: MeshCA) -> None:
    key = new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
           .add_extension(x509.SubjectAlternativeName([
               x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin"),
               x509.DNSName("kubernetes.default.svc")]), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    leaf = mesh_ca.sign_csr(csr, namespace="shop", service_account="cart").certificate
    assert spiffe_ids_of(leaf) == ["spiffe://cluster.local/ns/shop/sa/cart"]
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert leaf.subject == x509.Name([])


def test_bad_csr_signature_is_rejected(mesh_ca: MeshCA) -> None:
    der = bytearray(x509.load_pem_x509_csr(make_csr(new_key(), SPIFFE))
                    .public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the signature's s
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(SecurityError, match="signature does not verify"):
        mesh_ca.sign_csr(tampered, namespace="default", service_account="x")


def test_garbage_csr_and_weak_keys(mesh_ca: MeshCA) -> None:
    with pytest.raises(SecurityError, match="not a PEM certificate signing request"):
        mesh_ca.sign_csr(b"hello", namespace="default", service_account="x")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(SecurityError, match="1024 bits is too small"):
        mesh_ca.sign_csr(make_csr(weak, SPIFFE), namespace="default", service_account="x")
    p521 = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(SecurityError, match="secp521r1 is not accepted"):
        mesh_ca.sign_csr(make_csr(p521, SPIFFE), namespace="default", service_account="x")


@pytest.mark.parametrize("lifetime", [dt.timedelta(0), dt.timedelta(days=91)])
def test_lifetime_bounds(mesh_ca: MeshCA, lifetime: dt.timedelta) -> None:
    with pytest.raises(SecurityError, match="lifetime"):
        issue(mesh_ca, lifetime=lifetime)


def test_bad_identity_parts_are_rejected(mesh_ca: MeshCA) -> None:
    with pytest.raises(SecurityError, match="service account"):
        issue(mesh_ca, service_account="a/b")


def test_new_key_types() -> None:
    assert isinstance(new_key("EC"), ec.EllipticCurvePrivateKey)
    with pytest.raises(SecurityError, match="key_type"):
        new_key("DSA")  # type: ignore[arg-type]


# --- save and load ----------------------------------------------------------------------


def test_save_and_load_round_trip(mesh_ca: MeshCA, ca_dir: Path) -> None:
    assert stat.S_IMODE(os.stat(ca_dir / "ca-key.pem").st_mode) == 0o600
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]
    loaded = MeshCA.load(ca_dir)
    assert loaded.certificate == mesh_ca.certificate
    assert loaded.roots == mesh_ca.roots
    assert loaded.intermediates == ()
    _leaf, chain, roots = issue(loaded)
    assert verify_chain(chain, roots)[-1] == mesh_ca.certificate


@pytest.mark.parametrize("style", ["ca+root", "root+ca", "ca"])
def test_plugin_ca_with_intermediate(tmp_path: Path, style: str) -> None:
    plugin = write_plugin_ca(tmp_path / "ca", style=style)
    ca = MeshCA.load(plugin.directory)
    assert ca.certificate == plugin.signing
    leaf, chain, roots = issue(ca)
    assert chain == [leaf, plugin.signing]  # ca-cert + cert-chain, without the root
    assert roots == plugin.roots
    assert verify_chain(chain, roots) == [leaf, plugin.signing, plugin.roots[-1]]


def test_plugin_ca_two_intermediates(tmp_path: Path) -> None:
    plugin = write_plugin_ca(tmp_path / "ca", levels=2)
    ca = MeshCA.load(plugin.directory)
    leaf, chain, roots = issue(ca)
    assert chain == [leaf, *plugin.intermediates]
    assert verify_chain(chain, roots)[-1] == plugin.roots[-1]
    # saving writes Istio's layout, which loads back to the same CA
    ca.save(tmp_path / "copy")
    again = MeshCA.load(tmp_path / "copy")
    assert again.intermediates == ca.intermediates and again.roots == ca.roots


def test_several_roots(tmp_path: Path) -> None:
    plugin = write_plugin_ca(tmp_path / "ca", extra_roots=2)
    ca = MeshCA.load(plugin.directory)
    assert len(x509.load_pem_x509_certificates(ca.roots)) == 3
    _leaf, chain, roots = issue(ca)
    assert roots == plugin.roots
    verify_chain(chain, roots)


@pytest.mark.parametrize("name", ["ca-cert.pem", "ca-key.pem", "root-cert.pem",
                                  "cert-chain.pem"])
def test_missing_file_is_named(plugin_ca: PluginCA, name: str) -> None:
    (plugin_ca.directory / name).unlink()
    with pytest.raises(SecurityError, match=rf"{name}: missing"):
        MeshCA.load(plugin_ca.directory)


def test_key_that_does_not_match(plugin_ca: PluginCA) -> None:
    write_file(plugin_ca.directory / "ca-key.pem", private_key_pem(new_key()), private=True)
    with pytest.raises(SecurityError, match=r"ca-key\.pem: key does not match the "
                       r"certificate in .*ca-cert\.pem"):
        MeshCA.load(plugin_ca.directory)


def test_ca_cert_that_is_not_a_ca(plugin_ca: PluginCA, mesh_ca: MeshCA) -> None:
    key = new_key()
    leaf = mesh_ca.sign_csr(make_csr(key, SPIFFE), namespace="a", service_account="b")
    write_file(plugin_ca.directory / "ca-cert.pem", leaf.cert_pem)
    write_file(plugin_ca.directory / "ca-key.pem", private_key_pem(key), private=True)
    with pytest.raises(SecurityError, match=r"ca-cert\.pem: not a CA certificate"):
        MeshCA.load(plugin_ca.directory)


def test_ca_cert_that_does_not_chain_to_the_roots(plugin_ca: PluginCA,
                                                  other_ca: MeshCA) -> None:
    write_file(plugin_ca.directory / "root-cert.pem", other_ca.roots)
    with pytest.raises(SecurityError, match=r"ca-cert\.pem: does not chain to any root in "
                       r".*root-cert\.pem"):
        MeshCA.load(plugin_ca.directory)


def test_root_file_with_a_leaf(plugin_ca: PluginCA, mesh_ca: MeshCA) -> None:
    leaf = mesh_ca.sign_csr(make_csr(new_key(), SPIFFE), namespace="a", service_account="b")
    roots = (plugin_ca.directory / "root-cert.pem").read_bytes()
    write_file(plugin_ca.directory / "root-cert.pem", roots + leaf.cert_pem)
    with pytest.raises(SecurityError, match=r"root-cert\.pem: certificate #2 .* is not a CA"):
        MeshCA.load(plugin_ca.directory)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("ca-cert.pem", b"not pem", r"ca-cert\.pem: not a PEM CA certificate"),
    ("root-cert.pem", b"", r"root-cert\.pem: not a PEM root certificate \(the file is empty"),
    ("cert-chain.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
     r"cert-chain\.pem: not a PEM certificate chain"),
    ("ca-key.pem", b"junk", r"ca-key\.pem: not an unencrypted PEM private key"),
])
def test_unreadable_files_are_named(plugin_ca: PluginCA, name: str, content: bytes,
                                    message: str) -> None:
    write_file(plugin_ca.directory / name, content)
    with pytest.raises(SecurityError, match=message):
        MeshCA.load(plugin_ca.directory)


def test_expired_ca_is_refused(tmp_path: Path, mesh_ca: MeshCA) -> None:
    mesh_ca.save(tmp_path / "ca")
    later = FakeClock(start=mesh_ca.certificate.not_valid_after_utc.timestamp() + 1)
    with pytest.raises(SecurityError, match=r"ca-cert\.pem: the CA certificate expired"):
        MeshCA.load(tmp_path / "ca", clock=later)
