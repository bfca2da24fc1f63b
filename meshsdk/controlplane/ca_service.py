"""CSR signing over gRPC, authenticated by a bootstrap token (istiod's CA endpoint).

Istio's workloads get certificates from istiod's ``istio.v1.auth.IstioCertificateService``
/ ``CreateCertificate``. Its protos are not in ``xds-protos``, so this service speaks the
same shape with JSON bytes as the wire encoding, registered with a generic handler:

* method ``/meshsdk.ca.v1.CertificateService/CreateCertificate`` (unary);
* request ``{"csr": "<PEM>", "validity_duration": <seconds>}`` (Istio's field names;
  ``validity_duration`` is optional, 0 or absent means the default 24 h, and longer
  requests are capped at 90 days, :data:`~meshsdk.security.ca.MAX_WORKLOAD_LIFETIME`);
* response ``{"cert_chain": "<PEM>", "root_cert": "<PEM>"}``: ``cert_chain`` is the
  workload certificate then its intermediates (Istio sends a list ending with the root;
  here the root travels separately in ``root_cert``, every root during a root rotation).

Authentication: the caller sends ``authorization: Bearer <token>`` in the gRPC metadata.
The token decides the identity (namespace, service account); the CSR's SANs are ignored,
exactly as istiod signs for the identity of the caller's credential, not for the one the
CSR asks for. A missing or unknown token is ``UNAUTHENTICATED``; a bad request or CSR is
``INVALID_ARGUMENT`` with the reason.

Tokens come from a :class:`TokenDirectory`: one file per identity, named
``<namespace>.<service-account>.token``, holding the secret (surrounding whitespace is
stripped). Kubernetes namespaces cannot contain dots, so the name splits at the first dot
and the service account may contain dots. Lookups compare every token with
:func:`hmac.compare_digest` (no early exit), so timing says nothing about which token
nearly matched.

Kubernetes service-account tokens (not implemented): istiod receives the pod's projected
JWT (audience ``istio-ca``) in the same header and validates it with a ``TokenReview``
(``authentication.k8s.io/v1``) against the API server; an authenticated review's
``status.user.username`` is ``system:serviceaccount:<namespace>:<sa>``, which maps to the
same (namespace, service account) pair. Such an authenticator only needs to implement
:class:`Authenticator` and is passed to :func:`add_ca_service` instead of the directory.

Transport: this port is plaintext for now (``remote_signer`` opens an insecure channel);
the token therefore crosses the network in clear. TLS with the CA's root comes later.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, Protocol

import grpc  # type: ignore[import-untyped]
from cryptography import x509

from meshsdk.controlplane.tls import SERVER_NAME
from meshsdk.controlplane.tls import channel as open_channel
from meshsdk.security.ca import (
    MAX_WORKLOAD_LIFETIME,
    WORKLOAD_LIFETIME,
    IssuedCert,
    MeshCA,
    certs_pem,
)
from meshsdk.security.errors import SecurityError
from meshsdk.security.spiffe import DEFAULT_TRUST_DOMAIN, spiffe_id

__all__ = [
    "METHOD",
    "SERVICE",
    "TOKEN_SUFFIX",
    "Authenticator",
    "Caller",
    "TokenDirectory",
    "add_ca_service",
    "bearer_token",
    "remote_signer",
]

log = logging.getLogger(__name__)

SERVICE = "meshsdk.ca.v1.CertificateService"
"""The gRPC service name (Istio's is ``istio.v1.auth.IstioCertificateService``)."""
METHOD = f"/{SERVICE}/CreateCertificate"
"""The full method path the client calls."""
TOKEN_SUFFIX = ".token"
"""Token files are ``<namespace>.<service-account>.token``."""
MIN_TOKEN_LENGTH = 16
"""Shorter tokens are refused when the directory is loaded: they are guessable."""


class Caller(NamedTuple):
    """The identity a token stands for."""

    namespace: str
    service_account: str


class Authenticator(Protocol):
    """Maps a bearer token to the identity it proves, or None if it proves nothing."""

    def authenticate(self, token: str) -> Caller | None:
        """The caller's identity for ``token``; None when the token is not valid."""
        ...


class TokenDirectory:
    """Bootstrap tokens read from ``<namespace>.<service-account>.token`` files.

    Loaded at construction; :meth:`reload` re-reads the directory (e.g. after a token is
    added or revoked) and keeps the old set if the new one is not valid. Every problem
    (bad file name, empty or short token, a token shared by two identities) is a
    SecurityError naming the file, because a token must map to exactly one identity.
    Thread-safe.
    """

    def __init__(self, path: str | Path) -> None:
        """Read every token file under ``path`` (names must be valid SPIFFE segments)."""
        self._path = Path(path)
        self._lock = threading.Lock()
        self._entries: tuple[tuple[bytes, Caller], ...] = self._load()

    @property
    def path(self) -> Path:
        """The directory the tokens are read from."""
        return self._path

    def __len__(self) -> int:
        return len(self._entries)

    def reload(self) -> None:
        """Re-read the directory; on error the current tokens stay and the error raises."""
        entries = self._load()
        with self._lock:
            self._entries = entries

    def _load(self) -> tuple[tuple[bytes, Caller], ...]:
        try:
            files = sorted(p for p in self._path.iterdir() if p.name.endswith(TOKEN_SUFFIX))
        except OSError as exc:
            raise SecurityError(f"{self._path}: cannot list token directory: "
                                f"{exc.strerror or exc}") from exc
        entries: list[tuple[bytes, Caller]] = []
        owners: dict[bytes, Path] = {}
        for file in files:
            caller = self._caller_of(file)
            try:
                secret = file.read_text(encoding="utf-8").strip().encode()
            except (OSError, UnicodeDecodeError) as exc:
                raise SecurityError(f"{file}: cannot read token: {exc}") from exc
            if len(secret) < MIN_TOKEN_LENGTH:
                raise SecurityError(f"{file}: token is empty or shorter than "
                                    f"{MIN_TOKEN_LENGTH} characters")
            if secret in owners:
                raise SecurityError(f"{file}: same token as {owners[secret].name}; a token "
                                    "must map to exactly one identity")
            owners[secret] = file
            entries.append((secret, caller))
        return tuple(entries)

    def _caller_of(self, file: Path) -> Caller:
        stem = file.name[:-len(TOKEN_SUFFIX)]
        namespace, dot, service_account = stem.partition(".")
        if not dot:
            raise SecurityError(f"{file}: token file names must be "
                                f"<namespace>.<service-account>{TOKEN_SUFFIX}")
        try:
            spiffe_id(DEFAULT_TRUST_DOMAIN, namespace, service_account)
        except SecurityError as exc:
            raise SecurityError(f"{file}: {exc}") from exc
        return Caller(namespace, service_account)

    def authenticate(self, token: str) -> Caller | None:
        """The identity whose file holds ``token``, or None (constant-time comparisons
        against every token)."""
        presented = token.encode()
        with self._lock:
            entries = self._entries
        found: Caller | None = None
        for secret, caller in entries:
            if hmac.compare_digest(secret, presented):
                found = caller
        return found


def bearer_token(context: Any) -> str | None:
    """The bearer token of the call's ``authorization`` metadata, or None."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _parse_request(request: bytes) -> tuple[bytes, dt.timedelta]:
    """(CSR PEM, lifetime) from the JSON request; ValueError saying what is wrong."""
    try:
        body = json.loads(request)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"request is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise ValueError("request must be a JSON object")
    csr = body.get("csr")
    if not isinstance(csr, str) or not csr.strip():
        raise ValueError("'csr' must be a non-empty PEM string")
    seconds = body.get("validity_duration", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ValueError("'validity_duration' must be an integer number of seconds")
    if seconds < 0:
        raise ValueError(f"'validity_duration' must not be negative, got {seconds}")
    lifetime = dt.timedelta(seconds=seconds) if seconds else WORKLOAD_LIFETIME
    return csr.encode(), min(lifetime, MAX_WORKLOAD_LIFETIME)


def _abort(context: Any, code: Any, details: str) -> NoReturn:
    """End the call with ``code`` (``context.abort`` raises; typed here as not returning)."""
    context.abort(code, details)
    raise AssertionError("grpc context.abort returned")  # pragma: no cover


def _handler(ca: MeshCA, tokens: Authenticator) -> Callable[[bytes, Any], bytes]:
    """The CreateCertificate implementation: authenticate, then sign for the caller."""

    def create_certificate(request: bytes, context: Any) -> bytes:
        token = bearer_token(context)
        if token is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED,
                   "missing 'authorization: Bearer <token>' metadata")
        caller = tokens.authenticate(token)
        if caller is None:
            log.warning("CreateCertificate refused: unknown token from %s", context.peer())
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown bootstrap token")
        try:
            csr, lifetime = _parse_request(request)
            issued = ca.sign_csr(csr, namespace=caller.namespace,
                                 service_account=caller.service_account, lifetime=lifetime)
        except (ValueError, SecurityError) as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("issued certificate for %s/%s (serial %x, %s)", caller.namespace,
                 caller.service_account, issued.certificate.serial_number, lifetime)
        return json.dumps({"cert_chain": issued.chain_pem.decode(),
                           "root_cert": issued.root_pem.decode()}).encode()

    return create_certificate


def add_ca_service(server: Any, ca: MeshCA, tokens: Authenticator) -> None:
    """Register ``CreateCertificate`` on ``server`` (a ``grpc.Server``, before start);
    ``tokens`` (a :class:`TokenDirectory` or any :class:`Authenticator`) decides who the
    caller is."""
    method = grpc.unary_unary_rpc_method_handler(_handler(ca, tokens))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"CreateCertificate": method}),))


def _issued(response: bytes, where: str) -> IssuedCert:
    """The IssuedCert in a JSON response; SecurityError if it is malformed."""
    try:
        body = json.loads(response)
        chain_pem = body["cert_chain"].encode()
        root_pem = body["root_cert"].encode()
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise SecurityError(f"{where}: malformed CreateCertificate response ({exc})") from exc
    return IssuedCert(cert_pem=certs_pem([leaf]), chain_pem=chain_pem, root_pem=root_pem)


def remote_signer(address: str, token: str, *, timeout: float = 5.0,
                  lifetime: dt.timedelta | None = None, roots: bytes | None = None,
                  server_name: str = SERVER_NAME) -> Callable[[bytes], IssuedCert]:
    """A signer for ``WorkloadIdentity.from_signer`` that asks the CA at ``address``
    (``host:port``) with bootstrap ``token``.

    Each call opens a new channel: TLS trusting ``roots`` and checking ``server_name``
    when roots are given (``meshctl serve --tls``), else plaintext, where the token
    crosses the wire in the clear. ``lifetime`` None lets the CA choose (24 h). Every
    failure is a SecurityError naming the CA and the gRPC status (UNAUTHENTICATED: the
    token was refused).
    """
    where = f"CA at {address}"
    validity = 0 if lifetime is None else int(lifetime.total_seconds())

    def sign(csr_pem: bytes) -> IssuedCert:
        request = json.dumps({"csr": csr_pem.decode(), "validity_duration": validity})
        with open_channel(address, roots, server_name) as channel:
            call = channel.unary_unary(METHOD)
            try:
                response = call(request.encode(), timeout=timeout,
                                metadata=(("authorization", f"Bearer {token}"),))
            except grpc.RpcError as exc:
                code = exc.code()
                name = code.name if code is not None else "UNKNOWN"
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise SecurityError(f"{where} refused the bootstrap token "
                                        f"(UNAUTHENTICATED: {exc.details()})") from None
                raise SecurityError(f"{where}: CreateCertificate failed "
                                    f"({name}: {exc.details()})") from None
        return _issued(response, where)

    return sign
