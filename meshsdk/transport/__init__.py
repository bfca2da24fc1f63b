"""httpx transports that run the mesh's call flow: :class:`MeshTransport` (sync) and
:class:`AsyncMeshTransport` (asyncio)."""

from meshsdk.transport.async_ import AsyncMeshTransport
from meshsdk.transport.common import CallInfo
from meshsdk.transport.sync import MeshTransport

__all__ = ["AsyncMeshTransport", "CallInfo", "MeshTransport"]
