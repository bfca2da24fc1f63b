"""ServiceEntry: adds a service (external or mesh-internal) to the registry.

Hosts, virtual addresses, ports, where endpoints come from (resolution NONE,
STATIC, DNS or DNS_ROUND_ROBIN; inline ``endpoints`` or a ``workloadSelector``),
and visibility. The rules follow Istio's ``ValidateServiceEntry``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Literal

from pydantic import Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.base import NETWORKING, NETWORKING_VERSIONS, KindInfo
from meshsdk.config.kinds.workload_entry import WorkloadEntrySpec, check_workload_entry
from meshsdk.config.types import (
    FlowStr,
    IstioModel,
    LabelSelector,
    check_cidr,
    check_export_to,
    check_fqdn,
    check_labels,
    check_port,
    check_protocol,
    check_wildcard_domain,
    is_dns1123_label,
    is_partial_wildcard,
)

# --- models ------------------------------------------------------------------------


class ServicePort(IstioModel):
    """A port of the service: ``number``, ``name``, ``protocol``, optional ``targetPort``."""

    number: int | None = None
    protocol: str | None = None
    name: str = ""
    target_port: int | None = None


class ServiceEntrySpec(IstioModel):
    """``spec`` of a ServiceEntry."""

    hosts: list[str] = Field(default_factory=list)
    addresses: list[FlowStr] = Field(default_factory=list)
    ports: list[ServicePort] = Field(default_factory=list)
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] | None = None
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] | None = None
    endpoints: list[WorkloadEntrySpec] = Field(default_factory=list)
    workload_selector: LabelSelector | None = None
    export_to: list[str] = Field(default_factory=list)
    subject_alt_names: list[str] = Field(default_factory=list)


# --- rules -------------------------------------------------------------------------

_HTTP_PROTOCOLS = ("HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB")
_TLS_PROTOCOLS = ("HTTPS", "TLS")


def check_label_selector(sel: LabelSelector | None, p: Path) -> Iterator[Finding]:
    """The networking ``workloadSelector``: label syntax, no wildcards, warn when empty."""
    if sel is None:
        return
    for key, value in sel.labels.items():
        if not key:
            yield Finding((*p, "labels"), "empty label keys are not allowed in a selector")
        elif "*" in key or "*" in value:
            yield Finding((*p, "labels", key), "wildcards are not allowed in selectors")
    yield from check_labels({k: v for k, v in sel.labels.items() if k and "*" not in k + v},
                            (*p, "labels"))
    if not sel.labels:
        yield Finding(p, "workloadSelector has no labels: it selects every workload in the "
                         "namespace", "warning")


def validate_service_entry(spec: ServiceEntrySpec) -> Iterator[Finding]:
    """Istio's ServiceEntry validation, located."""
    resolution = spec.resolution or "NONE"
    yield from check_label_selector(spec.workload_selector, ("workloadSelector",))
    if spec.workload_selector is not None and spec.endpoints:
        yield Finding(("endpoints",), "cannot be used with workloadSelector; set one")
    yield from _check_hosts(spec.hosts)
    cidr = False
    for i, address in enumerate(spec.addresses):
        cidr = cidr or "/" in address
        yield from check_cidr(address, ("addresses", i))
    if cidr and resolution not in ("NONE", "STATIC"):
        yield Finding(("addresses",), f"CIDR addresses are only allowed with resolution NONE or "
                                      f"STATIC, got {resolution}")
    port_names = yield from _check_ports(spec.ports)
    if resolution == "NONE":
        if spec.endpoints:
            yield Finding(("endpoints",), "resolution NONE (the default) takes no endpoints; "
                                          "use STATIC or DNS")
        if spec.workload_selector is not None:
            yield Finding(("workloadSelector",), "has no effect with resolution NONE (the "
                                                 "default); use STATIC", "warning")
    elif resolution == "STATIC":
        if not spec.endpoints and spec.workload_selector is None:
            yield Finding(("resolution",), "resolution STATIC needs endpoints or a "
                                           "workloadSelector: there is nothing to send to")
        for i, ep in enumerate(spec.endpoints):
            yield from check_workload_entry(ep, ("endpoints", i), service_ports=port_names,
                                            allow_hostname=False)
    else:
        yield from _check_dns(spec, resolution, port_names)
    if resolution != "NONE" and len(spec.hosts) > 1:
        for i, port in enumerate(spec.ports):
            proto = (port.protocol or "").upper()
            if proto not in _HTTP_PROTOCOLS + _TLS_PROTOCOLS:
                yield Finding(("ports", i, "protocol"),
                              f"several hosts need HTTP or TLS ports to tell them apart, got "
                              f"{port.protocol or 'unset (TCP)'} with resolution {resolution}")
                break
    yield from check_export_to(spec.export_to, ("exportTo",), allow_none=True)


def _check_hosts(hosts: list[str]) -> Iterator[Finding]:
    if not hosts:
        yield Finding(("hosts",), "at least one host is required")
    for i, host in enumerate(hosts):
        p: Path = ("hosts", i)
        if host == "*":
            yield Finding(p, "'*' is not allowed; name the hosts (a '*.' prefix is allowed)")
            continue
        yield from check_wildcard_domain(host, p)
        if is_partial_wildcard(host):
            yield Finding(p, f"partial wildcard {host!r}: only a leading '*.' is supported",
                          "warning")


def _check_ports(ports: list[ServicePort]) -> Generator[Finding, None, set[str]]:
    """Yields the ports' findings; returns the set of port names, for the endpoints."""
    names: dict[str, int] = {}
    numbers: dict[int, int] = {}
    for i, port in enumerate(ports):
        p: Path = ("ports", i)
        if not port.name:
            yield Finding(p, "port name is required")
        elif not is_dns1123_label(port.name):
            yield Finding((*p, "name"), f"must be a DNS-1123 label (letters, digits and '-'), "
                                        f"got {port.name!r}")
        elif port.name in names:
            yield Finding((*p, "name"), f"duplicate port name {port.name!r} "
                                        f"(also ports[{names[port.name]}])")
        if port.name:
            names.setdefault(port.name, i)
        if port.number is None:
            yield Finding(p, "port number is required")
        else:
            yield from check_port(port.number, (*p, "number"))
            if port.number in numbers:
                yield Finding((*p, "number"), f"duplicate port number {port.number} "
                                              f"(also ports[{numbers[port.number]}])")
            numbers.setdefault(port.number, i)
        yield from check_protocol(port.protocol, (*p, "protocol"))
        yield from check_port(port.target_port, (*p, "targetPort"), allow_zero=True)
    return set(names)


def _check_dns(spec: ServiceEntrySpec, resolution: str,
               port_names: set[str]) -> Iterator[Finding]:
    if not spec.endpoints:
        for i, host in enumerate(spec.hosts):
            if host != "*" and list(check_fqdn(host, ("hosts", i))):
                yield Finding(("hosts", i), f"must be a DNS name (no wildcard) with resolution "
                                            f"{resolution} and no endpoints, got {host!r}")
    if resolution == "DNS_ROUND_ROBIN" and len(spec.endpoints) > 1:
        yield Finding(("endpoints",), f"resolution DNS_ROUND_ROBIN takes at most one endpoint, "
                                      f"got {len(spec.endpoints)}")
    for i, ep in enumerate(spec.endpoints):
        if ep.address.startswith("unix://"):
            yield Finding(("endpoints", i, "address"),
                          f"must be an IP address or a DNS name with resolution {resolution}, "
                          f"got {ep.address!r}")
            continue
        yield from check_workload_entry(ep, ("endpoints", i), service_ports=port_names)


KIND = KindInfo("ServiceEntry", NETWORKING, NETWORKING_VERSIONS, ServiceEntrySpec,
                rules=validate_service_entry)
