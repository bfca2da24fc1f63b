"""Cross-resource checks that Istio reports as analyzer warnings (``istioctl analyze``).

They never reject a config: each is a warning with Istio's analyzer code where one
exists (IST0101, IST0109) or ours (MESH01xx), located like validation errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from meshsdk.config.diagnostics import Diagnostic, Finding
from meshsdk.config.hosts import expand_host, wildcard_matches
from meshsdk.config.resource import Config, Resource
from meshsdk.config.snapshot import ClientView, Snapshot


def analyze(config: Config) -> list[Diagnostic]:
    """All analyzer warnings for a validated config."""
    snap = Snapshot(config)
    out: list[Diagnostic] = []
    out.extend(_vs_destinations(snap))
    out.extend(_conflicting_virtual_services(snap))
    out.extend(_dr_unknown_hosts(snap))
    return out


def _known_host(snap: Snapshot, host: str) -> bool:
    if host in snap.services:
        return True
    return any(wildcard_matches(h, host) for h in snap.services if h.startswith("*"))


def _vs_destinations(snap: Snapshot) -> Iterator[Diagnostic]:
    """IST0101: a route's destination host or subset that nothing defines."""
    for vs in snap.config.of_kind("VirtualService"):
        view = snap.view(vs.namespace)
        for section in ("http", "tcp", "tls"):
            for i, route in enumerate(getattr(vs.spec, section, None) or ()):
                for j, dest in enumerate(route.route or ()):
                    d = dest.destination
                    if d is None:
                        continue
                    path = ("spec", section, i, "route", j, "destination")
                    yield from _check_destination(view, vs, d.host, d.subset, path)
                if section == "http":
                    mirrors: list[tuple[tuple[str | int, ...], Any]] = (
                        [(("mirror",), route.mirror)] if route.mirror else [])
                    mirrors += [(("mirrors", k, "destination"), m.destination)
                                for k, m in enumerate(route.mirrors or ())]
                    for sub, d in mirrors:
                        yield from _check_destination(view, vs, d.host, d.subset,
                                                      ("spec", section, i, *sub))


def _check_destination(view: ClientView, vs: Resource, host: str, subset: str | None,
                       path: tuple[str | int, ...]) -> Iterator[Diagnostic]:
    snap = view.snapshot
    fqdn = expand_host(host, vs.namespace, snap.domain)
    if not _known_host(snap, fqdn):
        yield vs.diagnostic(Finding(
            (*path, "host"), f"referenced host {fqdn!r} is not defined by any ServiceEntry",
            "warning", "IST0101"))
        return
    if subset:
        dr = view.destination_rule(fqdn)
        if dr is None or subset not in dr.subsets:
            where = f"DestinationRule {dr.namespace}/{dr.resource.name}" if dr else \
                "no DestinationRule"
            yield vs.diagnostic(Finding(
                (*path, "subset"),
                f"referenced subset {fqdn}+{subset} not found ({where} for that host)",
                "warning", "IST0101"))


def _conflicting_virtual_services(snap: Snapshot) -> Iterator[Diagnostic]:
    """IST0109: several VirtualServices for one host; for sidecars only the oldest applies."""
    for host, entries in snap._vs_by_host.items():
        all_vs = [vs for vs, _h in entries]
        if len({vs.key for vs in all_vs}) < 2:
            continue
        winner = all_vs[0]
        for loser in all_vs[1:]:
            if loser.key == winner.key:
                continue
            idx = _host_index(loser, host, snap.domain)
            yield loser.diagnostic(Finding(
                ("spec", "hosts", idx) if idx is not None else ("spec", "hosts"),
                f"host {host!r} is also routed by {winner.ref} ({winner.file}:{winner.line}); "
                "only the oldest VirtualService for a host applies", "warning", "IST0109"))


def _host_index(vs: Resource, host: str, domain: str) -> int | None:
    for i, raw in enumerate(vs.spec.hosts or ()):
        if expand_host(raw, vs.namespace, domain) == host:
            return i
    return None


def _dr_unknown_hosts(snap: Snapshot) -> Iterator[Diagnostic]:
    """MESH0103: a DestinationRule whose host matches no known service."""
    for dr in snap.config.of_kind("DestinationRule"):
        fqdn = expand_host(dr.spec.host, dr.namespace, snap.domain)
        if fqdn.startswith("*"):
            if any(wildcard_matches(fqdn, h) for h in snap.services):
                continue
        elif _known_host(snap, fqdn):
            continue
        yield dr.diagnostic(Finding(
            ("spec", "host"), f"host {fqdn!r} matches no service defined by a ServiceEntry; "
                              "this rule has no effect", "warning", "MESH0103"))
