"""Outbound TLS: what a DestinationRule's ``tls`` (or auto mTLS) asks of a connection.

Pure decision, no sockets: :func:`plan_origination` turns the cluster's TLS settings,
the destination service and the chosen endpoint into a :class:`TlsOrigination` (or
None for plaintext), and the transports build the SSL context and verify the peer.

Istio's rules, as reproduced here:

* ``DISABLE``: plaintext. ``SIMPLE``: TLS to the server, verified against
  ``caCertificates`` (else the system's roots) and, unless ``insecureSkipVerify``, its
  name: one of ``subjectAltNames``, else the SNI. ``MUTUAL``: the same with the given
  client certificate. ``ISTIO_MUTUAL``: the workload's mesh certificate; the server
  must present a SPIFFE ID the service may run as.
* SNI: ``tls.sni``, else the host for SIMPLE/MUTUAL (Istio's auto SNI); for
  ISTIO_MUTUAL Istio's cluster name form ``outbound_.<port>_.<subset>_.<host>``.
* The identities a service may run as: ``subjectAltNames`` of the DestinationRule,
  else those of the ServiceEntry plus the service accounts of its workloads
  (WorkloadEntry/endpoint ``serviceAccount``). None known: any identity the trust
  bundle vouches for, as Istio does.
* Auto mTLS (``enableAutoMtls``, on by default): with no ``tls`` mode set, endpoints
  labelled ``security.istio.io/tlsMode: istio`` (the label Istio puts on workloads
  that have a mesh proxy, and that meshsdk workloads carry) get ISTIO_MUTUAL; others
  plaintext. Without a workload identity there is nothing to present, so auto mTLS
  stays off; an explicit ISTIO_MUTUAL then fails the connection (503 ``UF``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from meshsdk.config.snapshot import Endpoint, Service
from meshsdk.security.spiffe import SpiffeId

TLS_MODE_LABEL = "security.istio.io/tlsMode"
"""Endpoint label that marks a workload able to terminate mesh mTLS."""

Mode = Literal["SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]


@dataclass(frozen=True, slots=True)
class TlsOrigination:
    """How to open TLS to one endpoint of a cluster."""

    mode: Mode
    sni: str | None
    subject_alt_names: frozenset[str]   # names/IDs the server may present; empty: any
    ca_certificates: str | None = None  # file; None: system roots (SIMPLE/MUTUAL)
    client_certificate: str | None = None
    private_key: str | None = None
    insecure_skip_verify: bool = False
    auto: bool = False                  # chosen by auto mTLS, not by a DestinationRule

    @property
    def context_key(self) -> tuple[str, str | None, str | None, str | None, bool]:
        """What distinguishes one client SSL context from another (pools are per key)."""
        return (self.mode, self.ca_certificates, self.client_certificate, self.private_key,
                self.insecure_skip_verify)


def service_identities(service: Service | None, trust_domain: str) -> frozenset[str]:
    """The SPIFFE IDs a service's workloads may present: the ServiceEntry's
    ``subjectAltNames`` and its workloads' service accounts, each in the namespace of
    the resource that declared the workload."""
    if service is None:
        return frozenset()
    ids = set(service.subject_alt_names)
    for workload in service.workloads:
        if workload.service_account:
            _kind, _, ref = workload.source.partition(" ")
            namespace = ref.partition("/")[0] or service.namespace
            ids.add(SpiffeId(trust_domain, namespace, workload.service_account).uri)
    return frozenset(ids)


def istio_sni(fqdn: str, subset: str | None, port: int | None) -> str:
    """Istio's SNI for mesh mTLS: the outbound cluster name with ``_.`` separators."""
    return f"outbound_.{port or ''}_.{subset or ''}_.{fqdn}"


def plan_origination(tls: Any, *, fqdn: str, subset: str | None, port: int | None,
                     service: Service | None, endpoint: Endpoint, trust_domain: str,
                     auto_mtls: bool, have_identity: bool) -> TlsOrigination | None:
    """The TLS to open to ``endpoint`` (None: plaintext); ``tls`` is the cluster's
    merged ``trafficPolicy.tls`` (a ClientTLSSettings or None)."""
    mode = getattr(tls, "mode", None)
    if mode == "DISABLE":
        return None
    if mode in ("SIMPLE", "MUTUAL"):
        sans = frozenset(tls.subject_alt_names or ())
        return TlsOrigination(
            mode=mode, sni=tls.sni or fqdn, subject_alt_names=sans,
            ca_certificates=tls.ca_certificates or None,
            client_certificate=tls.client_certificate if mode == "MUTUAL" else None,
            private_key=tls.private_key if mode == "MUTUAL" else None,
            insecure_skip_verify=bool(tls.insecure_skip_verify))
    if mode == "ISTIO_MUTUAL":
        return _istio_mutual(tls, fqdn, subset, port, service, trust_domain, auto=False)
    # no mode: auto mTLS for endpoints that speak it, when we have something to present
    if auto_mtls and have_identity and endpoint.labels.get(TLS_MODE_LABEL) == "istio":
        return _istio_mutual(tls, fqdn, subset, port, service, trust_domain, auto=True)
    return None


def _istio_mutual(tls: Any, fqdn: str, subset: str | None, port: int | None,
                  service: Service | None, trust_domain: str, *, auto: bool
                  ) -> TlsOrigination:
    given = frozenset(getattr(tls, "subject_alt_names", None) or ())
    return TlsOrigination(
        mode="ISTIO_MUTUAL", sni=getattr(tls, "sni", None) or istio_sni(fqdn, subset, port),
        subject_alt_names=given or service_identities(service, trust_domain), auto=auto)


__all__ = ["TLS_MODE_LABEL", "TlsOrigination", "istio_sni", "plan_origination",
           "service_identities"]
