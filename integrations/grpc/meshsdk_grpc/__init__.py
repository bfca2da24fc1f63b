"""meshsdk for gRPC: a client channel routed by the mesh, and server interceptors.

    >>> import meshsdk_grpc
    >>> channel = meshsdk_grpc.channel(mesh, "reviews:9080")   # doctest: +SKIP
    >>> server = grpc.server(pool, interceptors=[               # doctest: +SKIP
    ...     meshsdk_grpc.MeshServerInterceptor(mesh, port=9080)])

Everything is decided by the meshsdk core (routing, retries, timeouts, faults,
circuit breaking, outlier detection, mTLS, authorization, telemetry); this package
drives it with gRPC. See docs/integrations/grpc.md.
"""

from meshsdk_grpc import aio
from meshsdk_grpc._status import grpc_status_for_http
from meshsdk_grpc.channel import MeshCall, MeshChannel, MeshRpcError, ResponseStream, channel
from meshsdk_grpc.credentials import server_credentials
from meshsdk_grpc.server import AsyncMeshServerInterceptor, MeshServerInterceptor

__all__ = [
           "AsyncMeshServerInterceptor",
           "MeshCall",
           "MeshChannel",
           "MeshRpcError",
           "MeshServerInterceptor",
           "ResponseStream",
           "aio",
           "channel",
           "grpc_status_for_http",
           "server_credentials",
]
