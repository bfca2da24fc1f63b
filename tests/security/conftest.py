"""Shared fixtures for the security tests: CAs, plug-in CA files, identities, servers.

CAs are made once per session (key generation is the slow part); identities and
servers are closed after each test.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshsdk.security.ca import MeshCA, certs_pem, private_key_pem, write_file
from meshsdk.security.identity import WorkloadIdentity
from meshsdk.security.tlsserver import Handler, MeshTLSServer, Mode
from meshsdk.testing.clock import FakeClock

HOUR = 3600.0


@pytest.fixture(scope="session")
def mesh_ca() -> MeshCA:
    """A self-signed EC root for cluster.local (real clock)."""
    return MeshCA.create()


@pytest.fixture(scope="session")
def other_ca() -> MeshCA:
    """An unrelated root of the same trust domain: its certificates must not be trusted."""
    return MeshCA.create()


@pytest.fixture(scope="session")
def past_ca() -> MeshCA:
    """A CA whose clock is three days behind: its workload certificates are expired."""
    return MeshCA.create(clock=FakeClock(start=time.time() - 72 * HOUR))


@pytest.fixture
def ca_dir(tmp_path: Path, mesh_ca: MeshCA) -> Path:
    """``mesh_ca`` saved as Istio plug-in CA files."""
    directory = tmp_path / "ca"
    mesh_ca.save(directory)
    return directory


@pytest.fixture
def fake_clock() -> FakeClock:
    """A FakeClock at the current wall-clock time (certificate times are absolute)."""
    return FakeClock(start=time.time())


IdentityFactory = Callable[..., WorkloadIdentity]


@pytest.fixture
def make_identity(mesh_ca: MeshCA) -> Iterator[IdentityFactory]:
    """``make_identity("ns", "sa", ca=..., clock=..., **kw)``: closed after the test."""
    made: list[WorkloadIdentity] = []

    def make(namespace: str = "default", service_account: str = "default", *,
             ca: MeshCA | None = None, **kwargs: Any) -> WorkloadIdentity:
        identity = WorkloadIdentity.from_ca(ca or mesh_ca, namespace, service_account,
                                            **kwargs)
        made.append(identity)
        return identity

    yield make
    for identity in made:
        identity.close()


ServerFactory = Callable[..., MeshTLSServer]


@pytest.fixture
def serve() -> Iterator[ServerFactory]:
    """``serve(identity, mode="STRICT", handler=None)``: a started server, stopped after."""
    started: list[MeshTLSServer] = []

    def start(identity: WorkloadIdentity | None, mode: Mode = "STRICT",
              handler: Handler | None = None) -> MeshTLSServer:
        server = MeshTLSServer(identity, handler, mode=mode).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- Istio plug-in CA files with intermediates ----------------------------------------


@dataclass
class PluginCA:
    """What :func:`write_plugin_ca` made: roots (trust bundle order) and the CA path."""

    directory: Path
    roots: list[x509.Certificate]
    intermediates: list[x509.Certificate]  # signing CA first, then towards the root

    @property
    def signing(self) -> x509.Certificate:
        return self.intermediates[0]


def _ca_cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
             issuer_key: ec.EllipticCurvePrivateKey, *, days: int = 3650) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local"),
                      x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(issuer if issuer_key is not key else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))


def write_plugin_ca(directory: Path, *, levels: int = 1, style: str = "ca+root",
                    extra_roots: int = 0) -> PluginCA:
    """A root and ``levels`` intermediates written as Istio's plug-in CA files.

    ``style`` is how ``cert-chain.pem`` is laid out, as different tools do it:
    ``"ca+root"`` (Istio's Makefile), ``"root+ca"``, ``"ca"`` (the CA path without the
    root). ``extra_roots`` older roots are put before the signing root in
    ``root-cert.pem`` (a root rotation in progress).
    """
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("Root CA", root_key, x509.Name([]), root_key)
    issuer, issuer_key = root.subject, root_key
    path: list[x509.Certificate] = []
    key = root_key
    for level in range(levels):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _ca_cert(f"Intermediate CA {level + 1}", key, issuer, issuer_key)
        path.insert(0, cert)
        issuer, issuer_key = cert.subject, key
    others = []
    for i in range(extra_roots):
        other_key = ec.generate_private_key(ec.SECP256R1())
        others.append(_ca_cert(f"Old Root {i}", other_key, x509.Name([]), other_key))
    roots = [*others, root]
    chain = {"ca+root": [*path, root], "root+ca": [root, *reversed(path)], "ca": path}[style]
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / "ca-cert.pem", certs_pem(path[:1]))
    write_file(directory / "ca-key.pem", private_key_pem(key), private=True)
    write_file(directory / "cert-chain.pem", certs_pem(chain))
    write_file(directory / "root-cert.pem", certs_pem(roots))
    return PluginCA(directory, roots, path)


@pytest.fixture
def plugin_ca(tmp_path: Path) -> PluginCA:
    """Plug-in CA files: root -> one intermediate (the signing CA)."""
    return write_plugin_ca(tmp_path / "plugin")
