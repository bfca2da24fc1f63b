"""WorkloadIdentity: credentials, Istio's rotation rule, file reloads, SSL contexts."""

from __future__ import annotations

import datetime as dt
import os
import random
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from meshsdk.security.ca import (
    IssuedCert,
    MeshCA,
    make_csr,
    new_key,
    private_key_pem,
    write_file,
)
from meshsdk.security.errors import SecurityError
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.testing.clock import FakeClock
from tests.security.conftest import HOUR, IdentityFactory

SPIFFE = "spiffe://cluster.local/ns/shop/sa/cart"


def test_from_ca(make_identity: IdentityFactory, mesh_ca: MeshCA) -> None:
    identity = make_identity("shop", "cart")
    assert identity.spiffe_id == SPIFFE
    assert identity.generation == 0
    cert = identity.certificate
    assert identity.expires_at == cert.not_valid_after_utc.timestamp()
    assert identity.roots_pem == mesh_ca.roots
    chain = x509.load_pem_x509_certificates(identity.chain_pem)
    assert chain[0] == cert
    assert "generation=0" in repr(identity)


def test_rotate_at_is_half_life_with_jitter(make_identity: IdentityFactory) -> None:
    identity = make_identity(rng=random.Random(7))
    nb = identity.certificate.not_valid_before_utc.timestamp()
    life = identity.expires_at - nb
    expected = nb + (0.5 + random.Random(7).uniform(-0.01, 0.01)) * life
    assert identity.rotate_at == pytest.approx(expected)
    spread = {make_identity(rng=random.Random(seed)).rotate_at - nb for seed in range(8)}
    assert all(0.49 * life <= s <= 0.51 * life for s in spread)
    assert len(spread) > 1  # jitter: a fleet does not rotate at once


def test_maybe_rotate_follows_the_clock(make_identity: IdentityFactory,
                                        fake_clock: FakeClock) -> None:
    identity = make_identity(clock=fake_clock)
    first = identity.certificate
    ctx = identity.client_context()
    assert identity.client_context() is ctx  # cached
    fake_clock.advance(11 * HOUR)
    assert not identity.maybe_rotate()
    assert identity.client_context() is ctx and identity.generation == 0
    fake_clock.advance(2 * HOUR)  # 13 h: past 50% +- 1% of 24 h
    assert identity.maybe_rotate()
    assert identity.generation == 1
    second = identity.certificate
    assert second.serial_number != first.serial_number
    assert second.public_key() != first.public_key()  # a new key at every rotation
    assert identity.client_context() is not ctx
    assert identity.spiffe_id == "spiffe://cluster.local/ns/default/sa/default"


def test_contexts(make_identity: IdentityFactory) -> None:
    identity = make_identity()
    client = identity.client_context()
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.check_hostname is False
    assert client.verify_mode == ssl.CERT_REQUIRED
    strict = identity.server_context(require_client_cert=True)
    optional = identity.server_context(require_client_cert=False)
    assert strict.verify_mode == ssl.CERT_REQUIRED
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_2
    assert strict is identity.server_context(require_client_cert=True)
    assert len({id(client), id(strict), id(optional)}) == 3
    # servers keep a connection's peer identity: no renegotiation may change it
    assert strict.options & ssl.OP_NO_RENEGOTIATION
    assert optional.options & ssl.OP_NO_RENEGOTIATION
    assert len(client.get_ca_certs()) == 1


def test_private_temp_dir(make_identity: IdentityFactory) -> None:
    identity = make_identity()
    identity.client_context()
    tmpdir = Path(identity._tmpdir)
    assert stat.S_IMODE(os.stat(tmpdir).st_mode) == 0o700
    assert list(tmpdir.iterdir()) == []  # the key file is removed once loaded
    identity.close()
    assert not tmpdir.exists()
    with pytest.raises(SecurityError, match="closed"):
        identity.rotate()
    with pytest.raises(SecurityError, match="closed"):
        identity.server_context(require_client_cert=False)


def test_several_roots_in_the_bundle(mesh_ca: MeshCA, other_ca: MeshCA) -> None:
    def sign(csr: bytes) -> IssuedCert:
        issued = mesh_ca.sign_csr(csr, namespace="shop", service_account="cart")
        return IssuedCert(issued.cert_pem, issued.chain_pem, other_ca.roots + mesh_ca.roots)

    with WorkloadIdentity.from_signer(sign, SPIFFE) as identity:
        assert len(identity.client_context().get_ca_certs()) == 2


# --- signers ---------------------------------------------------------------------------


def test_from_signer(mesh_ca: MeshCA, fake_clock: FakeClock) -> None:
    csrs: list[bytes] = []

    def sign(csr: bytes) -> IssuedCert:
        csrs.append(csr)
        return mesh_ca.sign_csr(csr, namespace="shop", service_account="cart",
                                lifetime=dt.timedelta(hours=1))

    with WorkloadIdentity.from_signer(sign, SPIFFE, clock=fake_clock) as identity:
        assert len(csrs) == 1 and identity.spiffe_id == SPIFFE
        san = x509.load_pem_x509_csr(csrs[0]).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
        fake_clock.advance(0.6 * HOUR)
        assert identity.maybe_rotate() and len(csrs) == 2


def test_signer_failure_keeps_the_credentials(mesh_ca: MeshCA, fake_clock: FakeClock) -> None:
    fail = False

    def sign(csr: bytes) -> IssuedCert:
        if fail:
            raise SecurityError("config service unavailable")
        return mesh_ca.sign_csr(csr, namespace="shop", service_account="cart")

    with WorkloadIdentity.from_signer(sign, SPIFFE, clock=fake_clock) as identity:
        before = identity.certificate
        fail = True
        fake_clock.advance(13 * HOUR)
        with pytest.raises(SecurityError, match="unavailable"):
            identity.maybe_rotate()
        assert identity.certificate == before and identity.generation == 0
        fail = False
        assert identity.maybe_rotate() and identity.generation == 1


def test_signer_returning_another_key_is_refused(mesh_ca: MeshCA) -> None:
    def sign(csr: bytes) -> IssuedCert:
        return mesh_ca.sign_csr(make_csr(new_key(), SPIFFE), namespace="shop",
                                service_account="cart")

    with pytest.raises(SecurityError, match="key does not match"):
        WorkloadIdentity.from_signer(sign, SPIFFE)


def test_from_signer_validates_the_id(mesh_ca: MeshCA) -> None:
    with pytest.raises(SecurityError):
        WorkloadIdentity.from_signer(lambda csr: IssuedCert(b"", b"", b""), "spiffe://x/y")


# --- files written by an agent -----------------------------------------------------------


def write_credentials(directory: Path, ca: MeshCA, *, key_too: bool = True) -> None:
    """What an agent writes: key.pem, cert-chain.pem, root-cert.pem (each atomically)."""
    key = new_key()
    issued = ca.sign_csr(make_csr(key, SPIFFE), namespace="shop", service_account="cart")
    directory.mkdir(exist_ok=True)
    write_file(directory / "cert-chain.pem", issued.chain_pem)
    write_file(directory / "root-cert.pem", issued.root_pem)
    if key_too:
        write_file(directory / "key.pem", private_key_pem(key), private=True)


def files_identity(directory: Path, poll_interval: float = 5.0) -> WorkloadIdentity:
    return WorkloadIdentity.from_files(directory / "cert-chain.pem", directory / "key.pem",
                                       directory / "root-cert.pem",
                                       poll_interval=poll_interval)


def test_from_files_reloads_on_change(tmp_path: Path, mesh_ca: MeshCA) -> None:
    write_credentials(tmp_path, mesh_ca)
    with files_identity(tmp_path) as identity:
        assert identity.spiffe_id == SPIFFE
        ctx = identity.client_context()
        assert not identity.maybe_rotate()
        first = identity.certificate
        # the agent has written the certificate but not yet the key: keep the old set
        write_credentials(tmp_path, mesh_ca, key_too=False)
        assert not identity.maybe_rotate()
        assert identity.certificate == first and identity.client_context() is ctx
        assert not identity.maybe_rotate()  # same files: not retried
        write_credentials(tmp_path, mesh_ca)
        assert identity.maybe_rotate()
        assert identity.generation == 1 and identity.certificate != first
        assert identity.client_context() is not ctx
        # rewritten with identical content: no new generation
        for name in ("cert-chain.pem", "key.pem", "root-cert.pem"):
            write_file(tmp_path / name, (tmp_path / name).read_bytes())
        assert not identity.maybe_rotate() and identity.generation == 1


def test_from_files_errors_name_the_file(tmp_path: Path, mesh_ca: MeshCA) -> None:
    write_credentials(tmp_path, mesh_ca)
    os.unlink(tmp_path / "root-cert.pem")
    with pytest.raises(SecurityError, match=r"root-cert\.pem: missing"):
        files_identity(tmp_path)
    write_credentials(tmp_path, mesh_ca)
    write_file(tmp_path / "key.pem", private_key_pem(new_key()), private=True)
    with pytest.raises(SecurityError, match=r"key\.pem: key does not match the first "
                       r"certificate of .*cert-chain\.pem"):
        files_identity(tmp_path)
    write_credentials(tmp_path, mesh_ca)
    write_file(tmp_path / "cert-chain.pem", b"nonsense")
    with pytest.raises(SecurityError, match=r"cert-chain\.pem: not a PEM certificate chain"):
        files_identity(tmp_path)


# --- the rotation thread ----------------------------------------------------------------


def test_thread_rotates_and_stops_promptly() -> None:
    ca = MeshCA.create()
    ca.clock_skew = dt.timedelta(0)  # a 2 s certificate rotates after about 1 s
    identity = WorkloadIdentity.from_ca(ca, "shop", "cart", lifetime=dt.timedelta(seconds=2))
    try:
        identity.start()
        identity.start()  # idempotent
        deadline = time.monotonic() + 6
        while identity.generation < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert identity.generation >= 1
    finally:
        started = time.monotonic()
        identity.close()
        assert time.monotonic() - started < 1.0
    assert identity._thread is not None and not identity._thread.is_alive()


def test_thread_polls_files(tmp_path: Path, mesh_ca: MeshCA) -> None:
    write_credentials(tmp_path, mesh_ca)
    with files_identity(tmp_path, poll_interval=0.02) as identity:
        identity.start()
        write_credentials(tmp_path, mesh_ca)
        deadline = time.monotonic() + 5
        while identity.generation < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert identity.generation == 1


def test_rotating_server_context_refuses_renegotiation(make_identity: IdentityFactory) -> None:
    from meshsdk.inbound.servers import rotating_server_context
    for require in (True, False):
        ctx = rotating_server_context(make_identity(), require_client_cert=require)
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
