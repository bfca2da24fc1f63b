"""TLS for the config service's gRPC port: a serving certificate from the mesh CA, and
channels that verify it.

Istio serves xDS and CSR signing on 15012 over TLS with a certificate istiod issues to
itself from the mesh CA (``istiod.istio-system.svc``); proxies verify it with the trust
bundle and authenticate themselves with a token. meshsdk does the same:
:class:`ServingCertificate` issues the service a certificate with the identity
``spiffe://<td>/ns/istio-system/sa/istiod`` and DNS names to be reached by, renews it
at half its life, and feeds gRPC's dynamic server credentials so new connections get
the renewed certificate without a restart. :func:`channel` opens a client channel that
trusts only the mesh's roots and checks the server's name.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import grpc  # type: ignore[import-untyped]

from meshsdk.security.ca import IssuedCert, MeshCA, make_csr, new_key, private_key_pem
from meshsdk.security.spiffe import spiffe_id

__all__ = ["SERVER_NAME", "ServingCertificate", "channel", "read_roots"]

SERVER_NAME: Final = "istiod.istio-system.svc"
"""The name clients check by default, as Istio's proxies check istiod's."""
LIFETIME: Final = dt.timedelta(hours=24)


class ServingCertificate:
    """The config service's own certificate from ``ca``, renewed at half its life.

    ``names`` are the DNS names and IP addresses clients may use (``SERVER_NAME`` is
    always included).
    """

    def __init__(self, ca: MeshCA, names: Sequence[str] = ("localhost", "127.0.0.1"), *,
                 lifetime: dt.timedelta = LIFETIME,
                 clock: Callable[[], float] = time.time) -> None:
        self._ca = ca
        self.names = tuple(dict.fromkeys((SERVER_NAME, *names)))
        self._lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._key_pem = b""
        self._issued: IssuedCert | None = None
        self._renew_at = 0.0
        self._renew()

    def _renew(self) -> None:
        key = new_key("EC")
        csr = make_csr(key, spiffe_id(self._ca.trust_domain, "istio-system", "istiod"))
        issued = self._ca.sign_csr(csr, namespace="istio-system", service_account="istiod",
                                   lifetime=self._lifetime, dns_names=self.names)
        self._key_pem, self._issued = private_key_pem(key), issued
        self._renew_at = self._clock() + self._lifetime.total_seconds() / 2

    @property
    def roots_pem(self) -> bytes:
        """The trust bundle clients need."""
        assert self._issued is not None
        return self._issued.root_pem

    def pem(self) -> tuple[bytes, bytes]:
        """The current private key and certificate chain, renewed if due."""
        with self._lock:
            if self._clock() >= self._renew_at:
                self._renew()
            assert self._issued is not None
            return self._key_pem, self._issued.chain_pem

    def server_credentials(self) -> Any:
        """gRPC server credentials that pick up every renewal for new connections."""
        def configuration() -> Any:
            key, chain = self.pem()
            return grpc.ssl_server_certificate_configuration([(key, chain)])
        return grpc.dynamic_ssl_server_credentials(configuration(), configuration)


def read_roots(roots: bytes | str | os.PathLike[str]) -> bytes:
    """PEM roots given as bytes, or the path of a PEM file."""
    return roots if isinstance(roots, bytes) else Path(roots).read_bytes()


def channel(address: str, roots: bytes | None, server_name: str = SERVER_NAME) -> Any:
    """A gRPC channel to ``address``: TLS trusting only ``roots`` and checking that the
    server's certificate names ``server_name``, or plaintext when ``roots`` is None."""
    if roots is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots),
                               options=[("grpc.ssl_target_name_override", server_name)])
