"""Errors of the security layer (CA, workload identity, TLS).

One class, :class:`SecurityError`, so callers can tell a certificate, key or peer
identity problem from the rest of the mesh's failures. Messages name the file and
field (or the peer) involved.
"""

from __future__ import annotations

from meshsdk.errors import MeshError


class SecurityError(MeshError):
    """A certificate, key, trust bundle or peer identity is missing or not acceptable."""


__all__ = ["SecurityError"]
