"""The loader's products: one validated :class:`Resource` per document, and the
:class:`Config` that holds a whole validated set plus the mesh-wide options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meshsdk.config.diagnostics import Diagnostic, Finding, Path
from meshsdk.config.mesh import MeshConfig

_EMPTY: Mapping[Any, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, eq=False)
class Resource:
    """A validated Istio resource with where it came from.

    ``spec`` is the kind's pydantic model. ``lines`` maps wire paths
    (``("spec", "http", 0)``) to source lines so later checks (the analyzers,
    ``meshctl describe``) can point at the right line too.
    """

    kind: str
    api_version: str
    name: str
    namespace: str
    spec: Any
    file: str = "<string>"
    line: int = 1
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    creation_timestamp: str | None = None
    order: int = 0
    lines: Mapping[Path, int] = field(default_factory=lambda: _EMPTY, repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity: (kind, namespace, name)."""
        return (self.kind, self.namespace, self.name)

    @property
    def ref(self) -> str:
        """``VirtualService default/reviews``."""
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def age_key(self) -> tuple[str, int]:
        """Sort key for Istio's 'oldest wins' rules: creationTimestamp, then load order.

        Resources without a timestamp (plain files) count as created in load order,
        after any that have one.
        """
        return (self.creation_timestamp or "\uffff", self.order)

    def line_of(self, path: Path) -> int:
        """Line of ``path`` or of its nearest parent present in the source."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return self.line

    def diagnostic(self, finding: Finding) -> Diagnostic:
        """Locate a finding whose path is relative to the document root."""
        return Diagnostic(
            finding.message, finding.severity, self.file, self.line_of(finding.path),
            self.kind, self.namespace, self.name, finding.path, finding.code,
        )


@dataclass(frozen=True, slots=True)
class Config:
    """A complete, validated configuration: resources, mesh options and the warnings seen.

    Only ``load_config`` and friends build one, so holding a ``Config`` means it
    passed validation.
    """

    resources: tuple[Resource, ...]
    mesh: MeshConfig = field(default_factory=MeshConfig)
    warnings: tuple[Diagnostic, ...] = ()

    def of_kind(self, kind: str) -> tuple[Resource, ...]:
        """All resources of one kind, in load order."""
        return tuple(r for r in self.resources if r.kind == kind)
