"""The error tree of meshsdk: everything the project raises on purpose is a MeshError.

Callers catch ``MeshError`` to handle any mesh failure, or a subclass for one kind.
Config errors carry every diagnostic found, not just the first, so a user fixes a
file in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshsdk.config.diagnostics import Diagnostic


class MeshError(Exception):
    """Base of every error meshsdk raises deliberately."""


class ConfigError(MeshError):
    """Configuration that cannot be loaded or is invalid.

    ``diagnostics`` holds every error found (and the warnings seen alongside them),
    each with file, line, resource and field path.
    """

    def __init__(self, message: str, diagnostics: Sequence[Diagnostic] = ()) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        errors = [d for d in self.diagnostics if d.is_error]
        if errors:
            detail = "\n".join("  " + d.format() for d in errors)
            message = f"{message}\n{detail}"
        super().__init__(message)


class UsageError(MeshError):
    """A command line or API call used wrongly (bad flag, missing argument)."""
