"""WorkloadEntry (one non-Kubernetes workload: a VM, a process) and WorkloadGroup
(the template from which WorkloadEntries are made, with a readiness probe).

``WorkloadEntrySpec`` is also the shape of a ServiceEntry's inline ``endpoints``;
:func:`check_workload_entry` is shared with the ServiceEntry rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pydantic import Field

from meshsdk.config.diagnostics import Finding, Path
from meshsdk.config.kinds.base import NETWORKING, NETWORKING_VERSIONS, KindInfo
from meshsdk.config.types import (
    IstioModel,
    check_fqdn,
    check_labels,
    check_port,
    check_unix_address,
    is_dns1123_label,
    is_ip,
)

# --- models ------------------------------------------------------------------------


class WorkloadEntrySpec(IstioModel):
    """``spec`` of a WorkloadEntry (and one ServiceEntry endpoint)."""

    address: str = ""
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str | None = None
    locality: str | None = None
    weight: int | None = None
    service_account: str | None = None


class WorkloadGroupMetadata(IstioModel):
    """Labels and annotations copied onto every generated WorkloadEntry."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class HTTPHeader(IstioModel):
    """A header sent with an HTTP readiness probe."""

    name: str = ""
    value: str | None = None


class HTTPHealthCheckConfig(IstioModel):
    """``httpGet`` readiness probe."""

    path: str | None = None
    port: int | None = None
    host: str | None = None
    scheme: str | None = None
    http_headers: list[HTTPHeader] = Field(default_factory=list)


class TCPHealthCheckConfig(IstioModel):
    """``tcpSocket`` readiness probe: healthy if a connection opens."""

    host: str | None = None
    port: int | None = None


class ExecHealthCheckConfig(IstioModel):
    """``exec`` readiness probe: healthy if the command exits 0."""

    command: list[str] = Field(default_factory=list)


class GrpcHealthCheckConfig(IstioModel):
    """``grpc`` readiness probe (grpc.health.v1)."""

    port: int | None = None
    service: str | None = None


class ReadinessProbe(IstioModel):
    """How the proxy checks the workload's readiness: exactly one method."""

    initial_delay_seconds: int | None = None
    timeout_seconds: int | None = None
    period_seconds: int | None = None
    success_threshold: int | None = None
    failure_threshold: int | None = None
    http_get: HTTPHealthCheckConfig | None = None
    tcp_socket: TCPHealthCheckConfig | None = None
    exec_: ExecHealthCheckConfig | None = Field(default=None, alias="exec")
    grpc: GrpcHealthCheckConfig | None = None


class WorkloadGroupSpec(IstioModel):
    """``spec`` of a WorkloadGroup."""

    metadata: WorkloadGroupMetadata | None = None
    template: WorkloadEntrySpec | None = None
    probe: ReadinessProbe | None = None


# --- rules -------------------------------------------------------------------------

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PROBE_HEADER = re.compile(r"^[-A-Za-z0-9]+$")


def check_port_names(ports: dict[str, int], p: Path) -> Iterator[Finding]:
    """A workload's named ports: DNS-1123 label names, numbers 1-65535."""
    for name, number in ports.items():
        if not is_dns1123_label(name):
            yield Finding((*p, name), f"port name must be a DNS-1123 label (letters, digits and "
                                      f"'-'), got {name!r}")
        yield from check_port(number, (*p, name))


def check_workload_entry(we: WorkloadEntrySpec, p: Path, *, service_ports: set[str] | None = None,
                         allow_hostname: bool = True,
                         address_required: bool = True) -> Iterator[Finding]:
    """A WorkloadEntry spec, standalone or as a ServiceEntry endpoint.

    ``service_ports``: the names of the ServiceEntry's ports (endpoint ports must be one
    of them); ``allow_hostname``: whether the address may be a DNS name (not for STATIC).
    """
    addr = we.address
    if not addr:
        if address_required and not we.network:
            yield Finding((*p, "address"), "address is required (unless network is set)")
        elif address_required:
            yield Finding((*p, "address"), f"address is unset with network {we.network!r}: "
                                           "only reachable through that network's gateway",
                          "warning")
    elif addr.startswith("unix://"):
        yield from check_unix_address(addr, (*p, "address"))
        if we.ports:
            yield Finding((*p, "ports"), f"a unix domain socket endpoint ({addr}) must not have "
                                         "ports")
        if service_ports is not None and len(service_ports) != 1:
            yield Finding((*p, "address"), "a unix domain socket endpoint needs exactly one "
                                           f"service port, the ServiceEntry has "
                                           f"{len(service_ports)}")
    elif not is_ip(addr):
        if not allow_hostname:
            yield Finding((*p, "address"), f"must be an IP address (or unix://path) with "
                                           f"resolution STATIC, got {addr!r}")
        elif list(check_fqdn(addr, (*p, "address"))):
            yield Finding((*p, "address"), f"must be an IP address, a DNS name or unix://path, "
                                           f"got {addr!r}")
    for name in we.ports:
        if service_ports is not None and name not in service_ports:
            yield Finding((*p, "ports", name), f"port {name!r} is not one of the ServiceEntry's "
                                               f"ports ({', '.join(sorted(service_ports))})")
    yield from check_port_names(we.ports, (*p, "ports"))
    yield from check_labels(we.labels, (*p, "labels"))
    if we.weight is not None and we.weight < 0:
        yield Finding((*p, "weight"), f"must be >= 0, got {we.weight}")
    sa = we.service_account
    if sa and (len(sa) > 253 or not _DNS_SUBDOMAIN.match(sa)):
        yield Finding((*p, "serviceAccount"), "must be a service account name (lowercase "
                                              f"DNS-1123 subdomain), got {sa!r}")


def validate_workload_entry(spec: WorkloadEntrySpec) -> Iterator[Finding]:
    """Istio's WorkloadEntry validation, located."""
    yield from check_workload_entry(spec, ())


def validate_workload_group(spec: WorkloadGroupSpec) -> Iterator[Finding]:
    """Istio's WorkloadGroup validation: a template, valid metadata and probe."""
    if spec.template is None:
        yield Finding(("template",), "template is required")
    else:
        yield from check_workload_entry(spec.template, ("template",), address_required=False)
        if spec.template.address:
            yield Finding(("template", "address"), "is ignored: each generated WorkloadEntry "
                                                   "takes the address of the workload that "
                                                   "registers", "warning")
    if spec.metadata is not None:
        yield from check_labels(spec.metadata.labels, ("metadata", "labels"))
    yield from _check_probe(spec.probe, ("probe",))


def _check_probe(probe: ReadinessProbe | None, p: Path) -> Iterator[Finding]:
    if probe is None:
        return
    for field, value in (("initialDelaySeconds", probe.initial_delay_seconds),
                         ("timeoutSeconds", probe.timeout_seconds),
                         ("periodSeconds", probe.period_seconds),
                         ("successThreshold", probe.success_threshold),
                         ("failureThreshold", probe.failure_threshold)):
        if value is not None and value < 0:
            yield Finding((*p, field), f"must be >= 0, got {value}")
    methods = [n for n, v in (("httpGet", probe.http_get), ("tcpSocket", probe.tcp_socket),
                              ("exec", probe.exec_), ("grpc", probe.grpc)) if v is not None]
    if len(methods) != 1:
        got = ", ".join(methods) if methods else "none"
        yield Finding(p, f"must set exactly one of httpGet, tcpSocket, exec or grpc, got {got}")
    if (h := probe.http_get) is not None:
        hp = (*p, "httpGet")
        yield from _required_port(h.port, (*hp, "port"))
        if h.scheme and h.scheme not in ("HTTP", "HTTPS"):
            yield Finding((*hp, "scheme"), f"must be 'HTTP' or 'HTTPS', got {h.scheme!r}")
        for i, header in enumerate(h.http_headers):
            if not header.name:
                yield Finding((*hp, "httpHeaders", i), "header name is required")
            elif not _PROBE_HEADER.match(header.name):
                yield Finding((*hp, "httpHeaders", i, "name"),
                              f"must be letters, digits and '-', got {header.name!r}")
    if probe.tcp_socket is not None:
        yield from _required_port(probe.tcp_socket.port, (*p, "tcpSocket", "port"))
    if probe.exec_ is not None:
        if not probe.exec_.command:
            yield Finding((*p, "exec"), "command is required")
        for i, arg in enumerate(probe.exec_.command):
            if not arg:
                yield Finding((*p, "exec", "command", i), "must not be empty")
    if probe.grpc is not None:
        yield from _required_port(probe.grpc.port, (*p, "grpc", "port"))


def _required_port(port: int | None, path: Path) -> Iterator[Finding]:
    if port is None:
        yield Finding(path[:-1], "port is required")
    else:
        yield from check_port(port, path)


KIND = KindInfo("WorkloadEntry", NETWORKING, NETWORKING_VERSIONS, WorkloadEntrySpec,
                rules=validate_workload_entry)
WORKLOAD_GROUP_KIND = KindInfo("WorkloadGroup", NETWORKING, NETWORKING_VERSIONS,
                               WorkloadGroupSpec, rules=validate_workload_group)
