"""Gateway: the listeners (servers) of an ingress or egress gateway.

Each server is a port, the hosts it exposes (``namespace/host`` or a bare host)
and its TLS settings. ``ServerTLSSettings`` and the ``namespace/host`` check are
shared with the Sidecar kind. The rules follow Istio's ``ValidateGateway``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.base import NETWORKING, NETWORKING_VERSIONS, KindInfo
from meshsdk.config.types import (
    IstioModel,
    check_labels,
    check_port,
    check_protocol,
    check_unix_address,
    check_wildcard_domain,
    is_dns1123_label,
    is_ip,
    is_partial_wildcard,
)

# --- models ------------------------------------------------------------------------

TLSVersion = Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]


class Port(IstioModel):
    """A listener port: ``number``, ``protocol``, ``name`` (``targetPort`` is deprecated)."""

    number: int | None = None
    protocol: str | None = None
    name: str | None = None
    target_port: int | None = None


class TLSCertificate(IstioModel):
    """One of up to two server certificates (e.g. RSA and ECDSA)."""

    server_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None


class ServerTLSSettings(IstioModel):
    """TLS a server terminates (or passes through)."""

    https_redirect: bool | None = None
    mode: Literal["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL",
                  "OPTIONAL_MUTUAL"] | None = None
    server_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    ca_crl: str | None = None
    credential_name: str | None = None
    credential_names: list[str] = Field(default_factory=list)
    tls_certificates: list[TLSCertificate] = Field(default_factory=list)
    subject_alt_names: list[str] = Field(default_factory=list)
    verify_certificate_spki: list[str] = Field(default_factory=list)
    verify_certificate_hash: list[str] = Field(default_factory=list)
    min_protocol_version: TLSVersion | None = None
    max_protocol_version: TLSVersion | None = None
    cipher_suites: list[str] = Field(default_factory=list)


class Server(IstioModel):
    """One listener of the gateway."""

    port: Port | None = None
    bind: str | None = None
    hosts: list[str] = Field(default_factory=list)
    tls: ServerTLSSettings | None = None
    default_endpoint: str | None = None
    name: str | None = None


class GatewaySpec(IstioModel):
    """``spec`` of a Gateway."""

    servers: list[Server] = Field(default_factory=list)
    selector: dict[str, str] = Field(default_factory=dict)


# --- shared checks -----------------------------------------------------------------

HTTP_PROTOCOLS = ("HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB")
TLS_PROTOCOLS = ("HTTPS", "TLS")
# Istio's security.ValidCipherSuites (Envoy's BoringSSL names).
_CIPHER_SUITES = frozenset({
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256",
    "AES256-GCM-SHA384", "AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
    "AES256-SHA", "DES-CBC3-SHA",
})


def check_namespace_host(host: str, p: Path, *, gateway: bool) -> Iterator[Finding]:
    """``namespace/dnsName`` hosts of Gateway servers and Sidecar egress listeners.

    The namespace may be ``*``, ``.`` (and ``~`` in a Sidecar) or a namespace name; the
    name must be an FQDN, ``*`` or ``*.suffix``. A Gateway also accepts a bare host.
    """
    ns, slash, name = host.partition("/")
    if not slash:
        if gateway:
            yield from _check_host_part(host, p, gateway=True)
        else:
            yield Finding(p, f"must be <namespace>/<host> (e.g. './*' or 'istio-system/*'), "
                             f"got {host!r}")
        return
    if not ns or not name:
        yield Finding(p, f"namespace and host must both be set in {host!r}")
        return
    specials = ("*", ".") if gateway else ("*", ".", "~")
    if ns not in specials and not is_dns1123_label(ns):
        yield Finding(p, f"invalid namespace {ns!r} in {host!r}; use "
                         f"{', '.join(repr(s) for s in specials)} or a namespace name")
    yield from _check_host_part(name, p, gateway=gateway)


def _check_host_part(name: str, p: Path, *, gateway: bool) -> Iterator[Finding]:
    if name != "*" and "." not in name:
        yield Finding(p, f"short name {name!r} is not allowed here; use the fully qualified "
                         f"name (e.g. {name}.<namespace>.svc.cluster.local)")
        return
    if is_partial_wildcard(name):
        yield Finding(p, f"partial wildcard {name!r} is not allowed; use '*' or a '*.' prefix")
        return
    if gateway and is_ip(name):
        return
    yield from check_wildcard_domain(name, p)


def _cipher_ok(cs: str) -> bool:
    # Istio accepts expressions it cannot parse (leading '[', '-', '+', '!').
    return cs in ("", "ALL") or not cs[0].isalnum() or cs in _CIPHER_SUITES


def check_server_tls(tls: ServerTLSSettings | None, p: Path) -> Iterator[Finding]:
    """Istio's validateTLSOptions: what each mode needs and what it must not have."""
    if tls is None:
        return
    mode = tls.mode or "PASSTHROUGH"
    if tls.min_protocol_version in ("TLSV1_0", "TLSV1_1") and not tls.cipher_suites:
        yield Finding((*p, "minProtocolVersion"), "TLS versions below 1.2 need cipherSuites "
                                                  "set: the defaults exclude the ciphers they "
                                                  "use", "warning")
    seen: set[str] = set()
    for i, cs in enumerate(tls.cipher_suites):
        if not _cipher_ok(cs):
            yield Finding((*p, "cipherSuites", i), f"unknown cipher suite {cs!r} is ignored",
                          "warning")
        elif cs in seen:
            yield Finding((*p, "cipherSuites", i), f"duplicate cipher suite {cs!r} is ignored",
                          "warning")
        seen.add(cs)
    cert_fields = (("serverCertificate", tls.server_certificate),
                   ("privateKey", tls.private_key), ("caCertificates", tls.ca_certificates),
                   ("tlsCertificates", tls.tls_certificates or None),
                   ("credentialName", tls.credential_name),
                   ("credentialNames", tls.credential_names or None))
    if mode == "ISTIO_MUTUAL":
        for field, value in cert_fields:
            if value:
                yield Finding((*p, field), "must be empty with mode ISTIO_MUTUAL, which uses "
                                           "the mesh's own certificates")
        return
    if mode in ("PASSTHROUGH", "AUTO_PASSTHROUGH") and (
            tls.ca_crl or any(value for _, value in cert_fields)):
        yield Finding(p, f"mode {mode} does not terminate TLS; its certificates are ignored",
                      "warning")
    sources = [name for name, given in (
        ("serverCertificate/privateKey", tls.server_certificate and tls.private_key),
        ("credentialName", tls.credential_name), ("credentialNames", tls.credential_names),
        ("tlsCertificates", tls.tls_certificates)) if given]
    if len(sources) > 1:
        yield Finding(p, f"set only one certificate source, got {' and '.join(sources)}")
    terminating = mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")
    if terminating and (tls.credential_name or tls.credential_names):
        return  # the secret holds the certificates
    if terminating:
        label = "SIMPLE" if mode == "SIMPLE" else mode
        if mode != "SIMPLE" and not tls.ca_certificates:
            yield Finding(p, f"mode {label} needs caCertificates (the CA of client certificates) "
                             "or credentialName")
        if len(tls.tls_certificates) > 2:
            yield Finding((*p, "tlsCertificates"), f"at most 2 server certificates are "
                                                   f"supported, got {len(tls.tls_certificates)}",
                          "warning")
        if tls.tls_certificates:
            for k, cert in enumerate(tls.tls_certificates):
                cp = (*p, "tlsCertificates", k)
                for field, value in (("serverCertificate", cert.server_certificate),
                                     ("privateKey", cert.private_key)):
                    if not value:
                        yield Finding(cp, f"{field} is required with mode {label}")
        else:
            for field, value in (("serverCertificate", tls.server_certificate),
                                 ("privateKey", tls.private_key)):
                if not value:
                    yield Finding(p, f"mode {label} needs serverCertificate and privateKey, or "
                                     f"credentialName; {field} is missing")
    if tls.ca_crl:
        if tls.credential_name:
            yield Finding((*p, "caCrl"), "cannot be used with credentialName; put the CRL in "
                                         "the credential")
        if mode == "SIMPLE":
            yield Finding((*p, "caCrl"), "has no use with mode SIMPLE (no client certificates)")


# --- rules -------------------------------------------------------------------------


def validate_gateway(spec: GatewaySpec) -> Iterator[Finding]:
    """Istio's Gateway validation, located."""
    if not spec.servers:
        yield Finding(("servers",), "at least one server is required")
    port_names: dict[str, int] = {}
    server_names: dict[str, int] = {}
    for i, server in enumerate(spec.servers):
        p: Path = ("servers", i)
        yield from _check_server(server, p)
        if server.port is not None:
            name = server.port.name
            if name and name in port_names:
                yield Finding((*p, "port", "name"), f"duplicate port name {name!r} (also "
                                                    f"servers[{port_names[name]}])")
            elif name:
                port_names[name] = i
            proto = (server.port.protocol or "").upper()
            if server.tls is not None and server.tls.https_redirect and \
                    proto not in HTTP_PROTOCOLS:
                yield Finding((*p, "tls", "httpsRedirect"), "only has an effect on HTTP servers",
                              "warning")
        if server.name:
            if server.name in server_names:
                yield Finding((*p, "name"), f"duplicate server name {server.name!r} (also "
                                            f"servers[{server_names[server.name]}])", "warning")
            server_names.setdefault(server.name, i)
    yield from check_labels(spec.selector, ("selector",))


def _check_server(s: Server, p: Path) -> Iterator[Finding]:
    if not s.hosts:
        yield Finding((*p, "hosts"), "at least one host is required")
    for k, host in enumerate(s.hosts):
        yield from check_namespace_host(host, (*p, "hosts", k), gateway=True)
    bind = s.bind or ""
    port_found: list[Finding] = []
    if s.port is None:
        port_found.append(Finding(p, "port is required"))
    else:
        pp = (*p, "port")
        port_found += check_protocol(s.port.protocol, (*pp, "protocol"), required=True)
        if s.port.number or not bind.startswith("unix://"):
            if s.port.number is None:
                port_found.append(Finding(pp, "port number is required"))
            else:
                port_found += check_port(s.port.number, (*pp, "number"))
        if s.port.target_port:
            port_found.append(Finding((*pp, "targetPort"), "has no effect on Gateways"))
        if not s.port.name:
            port_found.append(Finding(pp, "port name is required"))
    yield from port_found
    if bind.startswith("unix://"):
        yield from check_unix_address(bind, (*p, "bind"))
        if s.port is not None and s.port.number:
            yield Finding((*p, "port", "number"), "must be 0 for a unix domain socket bind")
    elif bind and not is_ip(bind):
        yield Finding((*p, "bind"), f"must be an IP address or unix://path, got {bind!r}")
    yield from check_server_tls(s.tls, (*p, "tls"))
    if port_found or s.port is None:
        return
    proto = (s.port.protocol or "").upper()
    if proto in TLS_PROTOCOLS and s.tls is None:
        yield Finding((*p, "tls"), f"a {proto} server needs tls settings")
    elif proto not in TLS_PROTOCOLS and s.tls is not None:
        if proto in HTTP_PROTOCOLS:
            t = s.tls
            if t.mode not in (None, "PASSTHROUGH", "AUTO_PASSTHROUGH") or \
                    t.ca_certificates or t.private_key or t.server_certificate:
                yield Finding((*p, "tls"), f"a plain-text {proto} server can only use "
                                           "tls.httpsRedirect; use protocol HTTPS to "
                                           "terminate TLS")
        else:
            yield Finding((*p, "tls"), f"tls settings need an HTTPS or TLS port, got "
                                       f"protocol {s.port.protocol}")


KIND = KindInfo("Gateway", NETWORKING, NETWORKING_VERSIONS, GatewaySpec,
                rules=validate_gateway)
