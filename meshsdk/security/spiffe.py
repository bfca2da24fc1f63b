"""SPIFFE IDs as Istio uses them: ``spiffe://<trust-domain>/ns/<namespace>/sa/<sa>``.

Istio names a workload by its trust domain, namespace and service account; policies
write the same identity without the scheme (a *principal*,
``cluster.local/ns/default/sa/bookinfo-productpage``). Parsing is strict (the SPIFFE
spec's character set, exactly the ``ns``/``sa`` shape) because an identity that
parses loosely is an identity that can be spoofed.
"""

from __future__ import annotations

import re
import ssl
from typing import NamedTuple

from cryptography import x509

from meshsdk.security.errors import SecurityError

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"
_MAX_LENGTH = 2048  # SPIFFE: URIs longer than 2048 bytes are invalid

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
"""SPIFFE trust domain characters: lowercase letters, digits, dot, dash, underscore."""
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
"""SPIFFE path segment characters (``.`` and ``..`` alone are refused separately)."""


class SpiffeId(NamedTuple):
    """A parsed Istio workload identity."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def uri(self) -> str:
        """The ``spiffe://`` form."""
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """Istio's principal form (the URI without ``spiffe://``)."""
        return self.uri[len(SCHEME):]

    def __str__(self) -> str:
        return self.uri


def _check_trust_domain(value: str, what: str) -> None:
    if not value or not _TRUST_DOMAIN.fullmatch(value):
        raise SecurityError(f"{what}: trust domain {value!r} is not valid (lowercase letters, "
                            "digits, '.', '-' and '_' only, not empty)")


def _check_segment(value: str, field: str, what: str) -> None:
    if not value or value in (".", "..") or not _SEGMENT.fullmatch(value):
        raise SecurityError(f"{what}: {field} {value!r} is not a valid SPIFFE path segment "
                            "(letters, digits, '.', '-' and '_' only, not empty, not '.'/'..')")


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``, validated."""
    what = "spiffe_id"
    _check_trust_domain(trust_domain, what)
    _check_segment(namespace, "namespace", what)
    _check_segment(service_account, "service account", what)
    uri = SpiffeId(trust_domain, namespace, service_account).uri
    if len(uri.encode()) > _MAX_LENGTH:
        raise SecurityError(f"{what}: {uri[:60]}... is longer than {_MAX_LENGTH} bytes")
    return uri


def parse_spiffe_id(uri: str) -> SpiffeId:
    """Parse an Istio SPIFFE ID; anything not exactly ``spiffe://TD/ns/NS/sa/SA`` is a
    :class:`SecurityError` saying what is wrong."""
    if not isinstance(uri, str):
        raise SecurityError(f"SPIFFE ID must be a string, got {type(uri).__name__}")
    what = f"SPIFFE ID {uri!r}"
    if len(uri.encode()) > _MAX_LENGTH:
        raise SecurityError(f"SPIFFE ID is longer than {_MAX_LENGTH} bytes")
    if not uri.startswith(SCHEME):
        raise SecurityError(f"{what}: must start with {SCHEME!r}")
    rest = uri[len(SCHEME):]
    if any(c in rest for c in "?#@:%"):
        raise SecurityError(f"{what}: query, fragment, user info, port and percent-encoding "
                            "are not allowed")
    parts = rest.split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        raise SecurityError(f"{what}: expected spiffe://<trust-domain>/ns/<namespace>/sa/"
                            "<service-account>")
    trust_domain, _, namespace, _, service_account = parts
    _check_trust_domain(trust_domain, what)
    _check_segment(namespace, "namespace", what)
    _check_segment(service_account, "service account", what)
    return SpiffeId(trust_domain, namespace, service_account)


def principal(spiffe: str | SpiffeId) -> str:
    """Istio's principal form of an identity: ``cluster.local/ns/NS/sa/SA``."""
    parsed = spiffe if isinstance(spiffe, SpiffeId) else parse_spiffe_id(spiffe)
    return parsed.principal


def spiffe_ids_of(cert: x509.Certificate) -> list[str]:
    """The ``spiffe://`` URI SANs of ``cert`` (in certificate order; may be empty)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(SCHEME)]


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The SPIFFE ID of the peer's certificate, or None when the peer sent no certificate
    or its certificate names no SPIFFE ID.

    The certificate is the one the handshake verified (with ``CERT_REQUIRED`` or
    ``CERT_OPTIONAL`` a presented certificate that does not verify fails the
    handshake). A certificate with several SPIFFE IDs is not a valid X.509-SVID and
    raises :class:`SecurityError`.
    """
    der = ssl_object.getpeercert(True)
    if not der:
        return None
    ids = spiffe_ids_of(x509.load_der_x509_certificate(der))
    if len(ids) > 1:
        raise SecurityError(f"peer certificate has {len(ids)} SPIFFE IDs ({', '.join(ids)}); "
                            "an X.509-SVID has exactly one")
    return ids[0] if ids else None


__all__ = ["DEFAULT_TRUST_DOMAIN", "SCHEME", "SpiffeId", "parse_spiffe_id", "peer_spiffe_id",
           "principal", "spiffe_id", "spiffe_ids_of"]
