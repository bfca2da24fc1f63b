"""Server credentials from the workload's mesh identity, following its rotation.

``grpc.dynamic_ssl_server_credentials`` asks a fetcher for the certificate
configuration at every new TLS handshake; ours returns a new one whenever the
:class:`~meshsdk.security.identity.WorkloadIdentity` rotated, so new connections get the
new certificate while open ones keep theirs, as Envoy's SDS does.

Clients need nothing from here: :func:`meshsdk_grpc.channel` opens mesh TLS itself
when the core's flow says so (DestinationRule ``ISTIO_MUTUAL`` or auto mTLS) and
checks the server's SPIFFE ID before the request is sent (see ``_pool``).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]


class PemIdentity(Protocol):
    """What the server credentials need of a workload identity."""

    @property
    def generation(self) -> int: ...

    def pem_credentials(self) -> tuple[bytes, bytes, bytes]: ...


def _configuration(identity: PemIdentity) -> Any:
    key, chain, roots = identity.pem_credentials()
    return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)


def server_credentials(identity: PemIdentity, *, require_client_auth: bool = True) -> Any:
    """gRPC server credentials presenting the workload certificate and verifying
    clients against the mesh trust bundle. ``require_client_auth`` True is mTLS
    (PeerAuthentication STRICT); False accepts TLS clients without a certificate too
    (their calls carry no peer identity). gRPC serves TLS or plaintext on a port, not
    both: for PERMISSIVE, add a second, plaintext port (``add_insecure_port``)."""
    lock = threading.Lock()
    served = [identity.generation]

    def fetch() -> Any:
        with lock:
            generation = identity.generation
            if generation == served[0]:
                return None  # unchanged: gRPC keeps the current configuration
            served[0] = generation
        return _configuration(identity)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(identity), fetch, require_client_authentication=require_client_auth)


__all__ = ["PemIdentity", "server_credentials"]
