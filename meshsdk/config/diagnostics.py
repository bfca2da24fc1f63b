"""Diagnostics: one finding about a config document, located to file:line and field path.

Validators produce :class:`Finding` objects with a path relative to the resource
(``("spec", "http", 0, "route", 1, "weight")``); the loader turns them into
:class:`Diagnostic` objects by adding the file, line and resource identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Path = tuple[str | int, ...]
Severity = Literal["error", "warning"]


def format_path(path: Sequence[str | int]) -> str:
    """Render a field path as users write it: ``spec.http[0].route[1].weight``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif out:
            out.append("." + part if _is_plain(part) else f"[{part!r}]")
        else:
            out.append(part)
    return "".join(out)


def _is_plain(key: str) -> bool:
    return bool(key) and all(c.isalnum() or c in "_-" for c in key)


@dataclass(frozen=True, slots=True)
class Finding:
    """What a validator reports: a path inside the resource, a message, a severity.

    ``code`` is set for analyzer-style warnings (``IST0101`` and friends) so users
    can match them with Istio's documentation.
    """

    path: Path
    message: str
    severity: Severity = "error"
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """A located finding: ``routes.yaml:14: VirtualService default/reviews: spec...: msg``."""

    message: str
    severity: Severity = "error"
    file: str | None = None
    line: int | None = None
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    path: Path = ()
    code: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def format(self) -> str:
        """One line, most specific location first, as compilers print errors."""
        parts: list[str] = []
        if self.file is not None:
            parts.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.kind is not None:
            ident = f"{self.namespace}/{self.name}" if self.name else (self.namespace or "")
            parts.append(f"{self.kind} {ident}".rstrip())
        if self.path:
            parts.append(format_path(self.path))
        prefix = ": ".join(parts)
        label = f"{self.severity} {self.code}" if self.code else self.severity
        text = f"{label}: {self.message}" if self.severity == "warning" else self.message
        return f"{prefix}: {text}" if prefix else text

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form used by ``meshctl validate --output json``."""
        return {
            "severity": self.severity,
            "code": self.code,
            "file": self.file,
            "line": self.line,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "path": format_path(self.path),
            "message": self.message,
        }
