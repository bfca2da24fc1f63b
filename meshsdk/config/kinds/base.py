"""What the loader needs to know about one Istio kind: its API group and versions,
its spec model, and its semantic rules.

Each kind module defines one :class:`KindInfo`; :mod:`meshsdk.config.kinds`
collects them into ``KINDS``. Adding a kind is adding a module and one line there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshsdk.config.diagnostics import Finding
from meshsdk.config.types import IstioModel

Rules = Callable[[Any], Iterable[Finding]]
"""A kind's semantic checks: given the validated spec model, yield findings whose
paths are relative to ``spec`` (the loader prefixes ``spec``)."""


def no_rules(spec: Any) -> Iterable[Finding]:
    """Rules for kinds whose structure says everything."""
    return ()


@dataclass(frozen=True)
class KindInfo:
    """One Istio kind: ``kind``, its API ``group``, accepted ``versions``, spec model, rules."""

    kind: str
    group: str
    versions: tuple[str, ...]
    spec_model: type[IstioModel]
    rules: Rules = no_rules

    def api_versions(self) -> tuple[str, ...]:
        return tuple(f"{self.group}/{v}" for v in self.versions)


NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"
TELEMETRY = "telemetry.istio.io"
NETWORKING_VERSIONS = ("v1alpha3", "v1beta1", "v1")
SECURITY_VERSIONS = ("v1beta1", "v1")
TELEMETRY_VERSIONS = ("v1alpha1", "v1")
