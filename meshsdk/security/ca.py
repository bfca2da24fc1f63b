"""The mesh certificate authority: Istio's self-signed root or its plug-in CA files.

Istio's CA (in istiod) signs each workload's CSR with a certificate naming the
workload's SPIFFE ID. What it reproduces here:

* The identity comes from who is asking (the caller's credential, here the
  ``namespace``/``service_account`` arguments), never from the CSR: the CSR's subject
  and SANs are ignored, only its public key and signature are used. A CSR whose
  signature does not verify is refused (the requester must hold the key).
* Workload certificates: empty subject, one critical URI SAN
  ``spiffe://<td>/ns/<ns>/sa/<sa>``, EKU serverAuth + clientAuth, key usage
  digitalSignature (+ keyEncipherment for RSA keys), a random serial, a 24 h lifetime.
  ``notBefore`` is set :data:`CLOCK_SKEW` (1 minute) in the past so a peer whose clock
  is slightly behind the CA's does not reject a fresh certificate; ``notAfter`` is
  ``now + lifetime`` (clipped to the CA certificate's own expiry).
* A self-signed root (:meth:`MeshCA.create`): 10 years, CA:TRUE, keyCertSign,
  organization = the trust domain.
* Plug-in CA (:meth:`MeshCA.load`): ``ca-cert.pem`` + ``ca-key.pem`` sign,
  ``cert-chain.pem`` holds the chain from the CA certificate towards the root (tools
  differ on whether it repeats ``ca-cert.pem`` and the root; both are accepted),
  ``root-cert.pem`` is the trust bundle and may hold several roots during a root
  rotation.

Keys are made where they are used and never travel: :func:`new_key` and
:func:`make_csr` run in the workload; the CA only ever sees the CSR.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshsdk.security.errors import SecurityError
from meshsdk.security.spiffe import DEFAULT_TRUST_DOMAIN, parse_spiffe_id, spiffe_id

KeyType = Literal["EC", "RSA"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
Clock = Callable[[], float]
"""Wall-clock time in seconds since the epoch (``time.time``, or a FakeClock started at
``time.time()``): certificate validity is absolute time."""

CLOCK_SKEW = dt.timedelta(minutes=1)
"""How far ``notBefore`` is backdated, for peers whose clock is a little behind."""
WORKLOAD_LIFETIME = dt.timedelta(hours=24)
"""Istio's default workload certificate lifetime."""
MAX_WORKLOAD_LIFETIME = dt.timedelta(days=90)
"""Istio's default ``max-workload-cert-ttl``: longer requests are refused."""
ROOT_LIFETIME = dt.timedelta(days=3650)
"""Istio's self-signed root lifetime (10 years)."""

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
ROOT_CERT = "root-cert.pem"
CERT_CHAIN = "cert-chain.pem"
PLUGIN_FILES = (CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN)

_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_MIN_RSA_BITS = 2048
_MAX_CHAIN = 8


# --- keys and CSRs (workload side) ---------------------------------------------------


def new_key(key_type: KeyType = "EC") -> PrivateKey:
    """A fresh private key: ECDSA P-256 (Istio's default for speed) or RSA 2048."""
    if key_type == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise SecurityError(f"key_type must be 'EC' or 'RSA', got {key_type!r}")


def make_csr(key: PrivateKey, spiffe: str) -> bytes:
    """A PEM CSR for ``spiffe`` signed by ``key`` (the CA decides the identity anyway;
    the SAN says what the workload believes it is)."""
    parse_spiffe_id(spiffe)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(spiffe)]), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (what Istio's ``key.pem`` holds)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certs_pem(certs: Sequence[x509.Certificate]) -> bytes:
    """Certificates concatenated as PEM."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_description(key: object) -> str:
    """``"EC P-256"``, ``"RSA 2048"``... for messages and ``meshctl ca inspect``."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


def _check_public_key(key: object, where: str) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ALLOWED_CURVES):
            raise SecurityError(f"{where}: EC curve {key.curve.name} is not accepted "
                                "(P-256 or P-384)")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise SecurityError(f"{where}: RSA key of {key.key_size} bits is too small "
                                f"(at least {_MIN_RSA_BITS})")
        return
    raise SecurityError(f"{where}: key type {key_description(key)} is not accepted "
                        "(EC P-256/P-384 or RSA)")


def _public_der(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Whether ``cert`` certifies ``key``'s public key."""
    return _public_der(key.public_key()) == _public_der(cert.public_key())


# --- issued certificates -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """What the CA returns for a CSR, as PEM.

    ``cert_pem`` is the workload certificate alone; ``chain_pem`` is what the workload
    presents in TLS (the certificate then the intermediates up to, not including, the
    root); ``root_pem`` is the trust bundle (every root, for root rotation).
    """

    cert_pem: bytes
    chain_pem: bytes
    root_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        """The workload certificate, parsed."""
        return x509.load_pem_x509_certificate(self.cert_pem)


# --- loading files -------------------------------------------------------------------


def read_certs(path: Path, *, what: str = "certificate") -> list[x509.Certificate]:
    """Every PEM certificate in ``path``; SecurityError naming the file if there are none
    or the file cannot be read."""
    data = read_pem(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
            reason = "it holds a private key"
        elif b"-----BEGIN " not in data:
            reason = "no PEM block found" if data.strip() else "the file is empty"
        else:
            reason = str(exc).split(". See ", 1)[0]
        raise SecurityError(f"{path}: not a PEM {what} ({reason})") from exc
    if not certs:  # pragma: no cover - cryptography raises on an empty list
        raise SecurityError(f"{path}: no PEM {what} found")
    return certs


def read_key(path: Path) -> PrivateKey:
    """The unencrypted PEM private key (EC or RSA) in ``path``."""
    data = read_pem(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SecurityError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise SecurityError(f"{path}: key type {type(key).__name__} is not supported "
                            "(EC or RSA)")
    return key


def read_pem(path: Path, what: str) -> bytes:
    """A PEM file's bytes; a SecurityError naming the file when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SecurityError(f"{path}: missing (expected a PEM {what})") from None
    except OSError as exc:
        raise SecurityError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode``, replacing the file atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write PEM ``data`` atomically; ``private`` files (keys) get mode 0600."""
    try:
        _write(path, data, 0o600 if private else 0o644)
    except OSError as exc:
        raise SecurityError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def is_ca(cert: x509.Certificate) -> bool:
    """CA:TRUE, and keyCertSign when a key usage extension is present."""
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent``'s key signed ``child`` (names match and the signature verifies)."""
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _path_to_root(cert: x509.Certificate, candidates: Sequence[x509.Certificate],
                  roots: Sequence[x509.Certificate]
                  ) -> tuple[list[x509.Certificate], x509.Certificate] | None:
    """(intermediates above ``cert``, the root they end at), or None if no path exists."""
    root_ders = {r.public_bytes(serialization.Encoding.DER): r for r in roots}
    path: list[x509.Certificate] = []
    current = cert
    for _ in range(_MAX_CHAIN):
        anchor = root_ders.get(current.public_bytes(serialization.Encoding.DER))
        if anchor is not None:
            return path[:-1] if path else [], anchor
        for root in roots:
            if issued_by(current, root):
                return path, root
        seen = [cert, *path]
        parent = next((c for c in candidates if c not in seen and issued_by(current, c)), None)
        if parent is None:
            return None
        path.append(parent)
        current = parent
    return None


def _timestamp(when: dt.datetime) -> float:
    return when.timestamp()


def _authority_key_id(cert: x509.Certificate, key: PrivateKey) -> x509.AuthorityKeyIdentifier:
    """The AKI naming ``cert``: its SKI when it has one, else one derived from the key."""
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


# --- the CA --------------------------------------------------------------------------


class MeshCA:
    """Signs workload CSRs with SPIFFE identities of one trust domain.

    Build with :meth:`create` (a new self-signed root) or :meth:`load` (Istio's plug-in
    CA files). Thread-safe: signing keeps no mutable state.
    """

    def __init__(self, cert: x509.Certificate, key: PrivateKey, *,
                 roots: Sequence[x509.Certificate],
                 intermediates: Sequence[x509.Certificate] = (),
                 trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 clock: Clock = time.time,
                 clock_skew: dt.timedelta = CLOCK_SKEW) -> None:
        """Prefer :meth:`create`/:meth:`load`; this trusts its arguments to be consistent
        except that the key must match the certificate and roots must be given."""
        spiffe_id(trust_domain, "ns", "sa")  # validates the trust domain
        if not key_matches(key, cert):
            raise SecurityError("MeshCA: the key does not match the CA certificate")
        if not roots:
            raise SecurityError("MeshCA: at least one root certificate is needed")
        self._cert = cert
        self._key = key
        self._roots = tuple(roots)
        self._intermediates = tuple(intermediates)
        self._trust_domain = trust_domain
        self._clock = clock
        self.clock_skew = clock_skew
        """Backdating of ``notBefore`` (may be set to zero in tests of short lifetimes)."""
        self._hash = hashes.SHA256()
        self._aki = _authority_key_id(cert, key)
        # What workloads present after their own certificate: the signing CA unless it
        # is a root itself, then the intermediates above it (roots are in the bundle).
        above = [] if cert in self._roots else [cert]
        self._chain_tail = certs_pem([*above, *self._intermediates])
        self._roots_pem = certs_pem(self._roots)
        self._not_after = cert.not_valid_after_utc

    # construction

    @classmethod
    def create(cls, trust_domain: str = DEFAULT_TRUST_DOMAIN, *, key_type: KeyType = "EC",
               lifetime: dt.timedelta = ROOT_LIFETIME, clock: Clock = time.time) -> MeshCA:
        """A new self-signed root for ``trust_domain`` (organization = trust domain)."""
        spiffe_id(trust_domain, "ns", "sa")
        key = new_key(key_type)
        now = dt.datetime.fromtimestamp(clock(), tz=dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(now + lifetime)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ski), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(cert, key, roots=[cert], trust_domain=trust_domain, clock=clock)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *,
             trust_domain: str = DEFAULT_TRUST_DOMAIN, clock: Clock = time.time) -> MeshCA:
        """Load Istio's plug-in CA files from ``directory``.

        ``ca-cert.pem`` (the signing CA; extra certificates after it are treated as chain),
        ``ca-key.pem``, ``cert-chain.pem`` and ``root-cert.pem`` (one or more roots) must
        all exist. Every problem is a SecurityError naming the file and what is wrong.
        """
        base = Path(directory)
        missing = [name for name in PLUGIN_FILES if not (base / name).is_file()]
        if missing:
            raise SecurityError(f"{base / missing[0]}: missing (Istio's plug-in CA needs "
                                f"{', '.join(PLUGIN_FILES)}; missing: {', '.join(missing)})")
        cert_path, key_path = base / CA_CERT, base / CA_KEY
        root_path, chain_path = base / ROOT_CERT, base / CERT_CHAIN
        cert, *extra = read_certs(cert_path, what="CA certificate")
        key = read_key(key_path)
        chain = read_certs(chain_path, what="certificate chain")
        roots = read_certs(root_path, what="root certificate")
        if not is_ca(cert):
            raise SecurityError(f"{cert_path}: not a CA certificate (needs basicConstraints "
                                "CA:TRUE and keyUsage keyCertSign)")
        if not key_matches(key, cert):
            raise SecurityError(f"{key_path}: key does not match the certificate in "
                                f"{cert_path}")
        for i, root in enumerate(roots, 1):
            if not is_ca(root):
                raise SecurityError(f"{root_path}: certificate #{i} "
                                    f"({root.subject.rfc4514_string() or 'no subject'}) "
                                    "is not a CA")
        found = _path_to_root(cert, [*extra, *chain], roots)
        if found is None:
            raise SecurityError(f"{cert_path}: does not chain to any root in {root_path} "
                                f"(through {chain_path})")
        intermediates, _anchor = found
        now = clock()
        if _timestamp(cert.not_valid_after_utc) <= now:
            raise SecurityError(f"{cert_path}: the CA certificate expired on "
                                f"{cert.not_valid_after_utc.isoformat()}")
        if _timestamp(cert.not_valid_before_utc) > now + CLOCK_SKEW.total_seconds():
            raise SecurityError(f"{cert_path}: the CA certificate is not valid before "
                                f"{cert.not_valid_before_utc.isoformat()}")
        return cls(cert, key, roots=roots, intermediates=intermediates,
                   trust_domain=trust_domain, clock=clock)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the plug-in CA files (``ca-key.pem`` with mode 0600) into ``directory``.

        ``cert-chain.pem`` follows Istio's tooling: the CA certificate, its
        intermediates, then the root they chain to.
        """
        base = Path(directory)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SecurityError(f"{base}: cannot create directory: {exc.strerror}") from exc
        found = _path_to_root(self._cert, self._intermediates, self._roots)
        anchor = found[1] if found else None
        chain = [self._cert, *self._intermediates]
        if anchor is not None and anchor not in chain:
            chain.append(anchor)
        write_file(base / CA_KEY, private_key_pem(self._key), private=True)
        write_file(base / CA_CERT, certs_pem([self._cert]))
        write_file(base / CERT_CHAIN, certs_pem(chain))
        write_file(base / ROOT_CERT, self._roots_pem)

    # properties

    @property
    def trust_domain(self) -> str:
        """The trust domain of every identity this CA issues."""
        return self._trust_domain

    @property
    def roots(self) -> bytes:
        """The trust bundle: every root certificate, PEM."""
        return self._roots_pem

    @property
    def certificate(self) -> x509.Certificate:
        """The signing CA certificate (the root itself for a self-signed CA)."""
        return self._cert

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """Certificates between the signing CA certificate and the root."""
        return self._intermediates

    # signing

    def sign_csr(self, csr_pem: bytes, *, namespace: str, service_account: str,
                 lifetime: dt.timedelta = WORKLOAD_LIFETIME,
                 dns_names: Sequence[str] = ()) -> IssuedCert:
        """A workload certificate for ``spiffe://<td>/ns/<namespace>/sa/<service_account>``
        on the CSR's public key. The CSR's subject and SANs are ignored (the caller's
        credential, not the CSR, decides the identity); its signature must verify.
        ``dns_names`` (host names or IP addresses) are added as SANs for a server that
        clients reach by name, such as the config service (istiod's
        ``istiod.istio-system.svc``); workloads get none."""
        uri = spiffe_id(self._trust_domain, namespace, service_account)
        if lifetime <= dt.timedelta(0) or lifetime > MAX_WORKLOAD_LIFETIME:
            raise SecurityError(f"sign_csr: lifetime {lifetime} is outside (0, "
                                f"{MAX_WORKLOAD_LIFETIME.days} days]")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except (ValueError, TypeError) as exc:
            raise SecurityError(f"CSR: not a PEM certificate signing request ({exc})") from exc
        if not csr.is_signature_valid:
            raise SecurityError("CSR: signature does not verify (the requester does not "
                                "hold the private key of the public key it sent)")
        public = csr.public_key()
        _check_public_key(public, "CSR")
        is_rsa = isinstance(public, rsa.RSAPublicKey)
        now = dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)
        not_after = min(now + lifetime, self._not_after)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self._cert.subject)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - self.clock_skew)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=is_rsa, data_encipherment=False, key_agreement=False,
                    key_cert_sign=False, crl_sign=False, encipher_only=False,
                    decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False)
                .add_extension(self._aki, critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(uri), *_names(dns_names)]), critical=True)
                .sign(self._key, self._hash))
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return IssuedCert(cert_pem=cert_pem, chain_pem=cert_pem + self._chain_tail,
                          root_pem=self._roots_pem)

    def __repr__(self) -> str:
        return (f"MeshCA(trust_domain={self._trust_domain!r}, "
                f"subject={self._cert.subject.rfc4514_string()!r}, roots={len(self._roots)})")


def _names(names: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses as SAN entries."""
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


__all__ = ["CA_CERT", "CA_KEY", "CERT_CHAIN", "CLOCK_SKEW", "MAX_WORKLOAD_LIFETIME",
           "PLUGIN_FILES", "ROOT_CERT", "ROOT_LIFETIME", "WORKLOAD_LIFETIME", "Clock",
           "IssuedCert", "KeyType", "MeshCA", "PrivateKey", "certs_pem", "is_ca",
           "issued_by", "key_description", "key_matches", "make_csr", "new_key",
           "private_key_pem", "read_certs", "read_key", "write_file"]
