"""Sidecar: narrows what a workload's proxy sees and listens on.

``egress`` listeners list the hosts (``namespace/host``) the workload may reach,
``ingress`` listeners describe its inbound ports, plus the outbound traffic policy
and inbound connection limits. The rules follow Istio's ``ValidateSidecar``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.base import NETWORKING, NETWORKING_VERSIONS, KindInfo
from meshsdk.config.kinds.destination_rule import ConnectionPoolSettings, check_connection_pool
from meshsdk.config.kinds.gateway import (
    HTTP_PROTOCOLS,
    TLS_PROTOCOLS,
    Port,
    ServerTLSSettings,
    check_namespace_host,
    check_server_tls,
)
from meshsdk.config.kinds.service_entry import check_label_selector
from meshsdk.config.kinds.virtual_service import Destination, check_destination
from meshsdk.config.types import (
    IstioModel,
    LabelSelector,
    check_port,
    check_protocol,
    check_unix_address,
    is_dns1123_label,
    is_ip,
)

# --- models ------------------------------------------------------------------------

CaptureMode = Literal["DEFAULT", "IPTABLES", "NONE"]


class IstioIngressListener(IstioModel):
    """An inbound listener: the workload port, where to forward, optional TLS."""

    port: Port | None = None
    bind: str | None = None
    capture_mode: CaptureMode | None = None
    default_endpoint: str | None = None
    tls: ServerTLSSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None


class IstioEgressListener(IstioModel):
    """An outbound listener and the ``namespace/host`` entries it can reach."""

    port: Port | None = None
    bind: str | None = None
    capture_mode: CaptureMode | None = None
    hosts: list[str] = Field(default_factory=list)


class OutboundTrafficPolicy(IstioModel):
    """Unknown destinations: ``REGISTRY_ONLY`` (blocked) or ``ALLOW_ANY`` (passed through)."""

    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY"] | None = None
    egress_proxy: Destination | None = None


class SidecarSpec(IstioModel):
    """``spec`` of a Sidecar."""

    workload_selector: LabelSelector | None = None
    ingress: list[IstioIngressListener] = Field(default_factory=list)
    egress: list[IstioEgressListener] = Field(default_factory=list)
    inbound_connection_pool: ConnectionPoolSettings | None = None
    outbound_traffic_policy: OutboundTrafficPolicy | None = None


# --- rules -------------------------------------------------------------------------

_LOCAL_HOSTS = ("127.0.0.1", "0.0.0.0", "::1", "::")


def validate_sidecar(spec: SidecarSpec) -> Iterator[Finding]:
    """Istio's Sidecar validation, located."""
    yield from check_label_selector(spec.workload_selector, ("workloadSelector",))
    if not (spec.egress or spec.ingress or spec.outbound_traffic_policy is not None
            or spec.inbound_connection_pool is not None):
        yield Finding((), "empty Sidecar: set at least one of egress, ingress, "
                          "outboundTrafficPolicy or inboundConnectionPool")
        return
    ports: dict[int, int] = {}
    for i, listener in enumerate(spec.ingress):
        yield from _check_ingress(listener, i, ports)
    yield from check_connection_pool(spec.inbound_connection_pool, ("inboundConnectionPool",))
    yield from _check_egress(spec.egress)
    yield from _check_outbound(spec.outbound_traffic_policy, ("outboundTrafficPolicy",))


def _check_port_common(port: Port, p: Path) -> Iterator[Finding]:
    if port.target_port:
        yield Finding((*p, "targetPort"), "has no effect on Sidecars")
    if port.name and not is_dns1123_label(port.name):
        yield Finding((*p, "name"), f"must be a DNS-1123 label (letters, digits and '-'), "
                                    f"got {port.name!r}")
    yield from check_protocol(port.protocol, (*p, "protocol"))


def _check_bind_ip(bind: str | None, p: Path) -> Iterator[Finding]:
    if bind and not is_ip(bind):
        yield Finding(p, f"must be an IP address, got {bind!r}")


def _check_ingress(listener: IstioIngressListener, index: int,
                   ports: dict[int, int]) -> Iterator[Finding]:
    p: Path = ("ingress", index)
    if listener.port is None:
        yield Finding(p, "port is required for ingress listeners")
        return
    pp = (*p, "port")
    yield from _check_port_common(listener.port, pp)
    number = listener.port.number or 0
    yield from check_port(number, (*pp, "number"))
    yield from _check_bind_ip(listener.bind, (*p, "bind"))
    if number in ports:
        yield Finding((*pp, "number"), f"duplicate port {number} (also ingress[{ports[number]}])")
    ports.setdefault(number, index)
    if listener.default_endpoint:
        yield from _check_default_endpoint(listener.default_endpoint, (*p, "defaultEndpoint"))
    proto = (listener.port.protocol or "").upper()
    if (tls := listener.tls) is not None:
        tp = (*p, "tls")
        for field, given in (("subjectAltNames", tls.subject_alt_names),
                             ("httpsRedirect", tls.https_redirect),
                             ("credentialName", tls.credential_name),
                             ("credentialNames", tls.credential_names),
                             ("tlsCertificates", tls.tls_certificates)):
            if given:
                yield Finding((*tp, field), "is not supported in a Sidecar's ingress tls")
        if tls.mode in ("ISTIO_MUTUAL", "AUTO_PASSTHROUGH"):
            yield Finding((*tp, "mode"), f"cannot be {tls.mode} in a Sidecar's ingress tls")
        if proto not in TLS_PROTOCOLS:
            yield Finding(tp, f"tls settings need an HTTPS or TLS port, got protocol "
                              f"{listener.port.protocol or 'unset'}")
        yield from check_server_tls(tls, tp)
    yield from check_connection_pool(listener.connection_pool, (*p, "connectionPool"))
    pool = listener.connection_pool
    if pool is not None and pool.http is not None and proto not in HTTP_PROTOCOLS:
        yield Finding((*p, "connectionPool", "http"),
                      f"only applies to HTTP ports; port {number} is "
                      f"{listener.port.protocol or 'not declared HTTP'}, so only the tcp "
                      "settings apply", "warning")


def _check_default_endpoint(endpoint: str, p: Path) -> Iterator[Finding]:
    """``127.0.0.1:<port>``, ``0.0.0.0:<port>``, ``[::1]:<port>``, ``[::]:<port>``,
    ``:<port>`` or ``unix://path``."""
    if endpoint.startswith("unix://"):
        yield from check_unix_address(endpoint, p)
        return
    if endpoint.startswith("["):
        end = endpoint.find("]")
        host, port = endpoint[1:end], endpoint[end + 2:]
        ok = end > 0 and endpoint[end + 1:end + 2] == ":"
    else:
        host, sep, port = endpoint.rpartition(":")
        ok = bool(sep) and ":" not in host
    if not ok or (host and host not in _LOCAL_HOSTS):
        yield Finding(p, "must be 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, "
                         f"[::]:<port>, :<port> or unix://<path>, got {endpoint!r}")
        return
    if not port.isdigit():
        yield Finding(p, f"the port of {endpoint!r} is not a number")
    else:
        yield from check_port(int(port), p)


def _check_egress(listeners: list[IstioEgressListener]) -> Iterator[Finding]:
    ports: dict[int, int] = {}
    sockets: dict[str, int] = {}
    catch_all: int | None = None
    for i, listener in enumerate(listeners):
        p: Path = ("egress", i)
        if listener.port is None:
            if catch_all is not None:
                yield Finding(p, f"only one egress listener may omit the port (also "
                                 f"egress[{catch_all}])")
            elif i != len(listeners) - 1:
                yield Finding(p, "the egress listener without a port must be the last one")
            catch_all = i if catch_all is None else catch_all
        else:
            yield from _check_egress_port(listener, i, ports, sockets)
        if not listener.hosts:
            yield Finding((*p, "hosts"), "at least one host is required")
        yield from _check_egress_hosts(listener.hosts, (*p, "hosts"))


def _check_egress_port(listener: IstioEgressListener, index: int, ports: dict[int, int],
                       sockets: dict[str, int]) -> Iterator[Finding]:
    assert listener.port is not None
    p: Path = ("egress", index)
    pp = (*p, "port")
    yield from _check_port_common(listener.port, pp)
    bind = listener.bind or ""
    if not listener.port.number:
        if not bind.startswith("unix://"):
            yield Finding((*p, "bind"), "a listener with port 0 must bind a unix domain socket "
                                        "(unix://path)")
        else:
            yield from check_unix_address(bind, (*p, "bind"))
            if bind in sockets:
                yield Finding((*p, "bind"), f"duplicate unix domain socket {bind!r} (also "
                                            f"egress[{sockets[bind]}])")
            sockets.setdefault(bind, index)
        if listener.capture_mode not in (None, "DEFAULT", "NONE"):
            yield Finding((*p, "captureMode"), "must be DEFAULT or NONE for a unix domain "
                                               "socket listener")
        return
    number = listener.port.number
    yield from check_port(number, (*pp, "number"))
    yield from _check_bind_ip(listener.bind, (*p, "bind"))
    if number in ports:
        yield Finding((*pp, "number"), f"duplicate port {number} (also egress[{ports[number]}])")
    ports.setdefault(number, index)


def _check_egress_hosts(hosts: list[str], p: Path) -> Iterator[Finding]:
    by_ns: dict[str, set[str]] = {}
    for k, host in enumerate(hosts):
        hp = (*p, k)
        yield from check_namespace_host(host, hp, gateway=False)
        ns, slash, name = host.partition("/")
        if not slash:
            continue
        names = by_ns.setdefault(ns, set())
        if name in names or "*" in names or (name == "*" and names):
            yield Finding(hp, f"duplicate egress host {host!r}: already covered by an earlier "
                              "entry", "warning")
        names.add(name)
    if "*" in by_ns.get("*", set()) and len(by_ns) > 1:
        yield Finding(p, "'*/*' selects every host; the other entries add nothing", "warning")


def _check_outbound(tp: OutboundTrafficPolicy | None, p: Path) -> Iterator[Finding]:
    if tp is None or tp.egress_proxy is None:
        return
    ep = (*p, "egressProxy")
    if tp.mode != "ALLOW_ANY":
        yield Finding(ep, f"egressProxy needs mode ALLOW_ANY, got "
                          f"{tp.mode or 'REGISTRY_ONLY (the default)'}")
        return
    proxy = tp.egress_proxy
    if proxy.port is None:
        yield Finding(ep, "port is required for the egress proxy")
    found = list(check_destination(proxy, ep))
    yield from found
    if not found and "*" in proxy.host:
        yield Finding((*ep, "host"), f"must be a fully qualified name, got {proxy.host!r}")


KIND = KindInfo("Sidecar", NETWORKING, NETWORKING_VERSIONS, SidecarSpec, rules=validate_sidecar)
