"""The asyncio httpx driver of the call flow: the sync driver's twin, awaiting I/O."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import httpcore
import httpx

from meshsdk.dataplane.drive import drive_async
from meshsdk.dataplane.flow import Attempt, AttemptResult, CallResult
from meshsdk.outcome import Failure, Outcome
from meshsdk.transport.common import (
    CORE_SEND_ERRORS,
    SEND_ERRORS,
    AsyncReleasingStream,
    caller_response,
    classify_core_exception,
    classify_core_response,
    classify_exception,
    classify_response,
    core_pool,
    core_request,
    mirror_request,
    upstream_request,
)
from meshsdk.transport.dns import is_address
from meshsdk.transport.tls import AsyncTlsConnector, TlsError

if TYPE_CHECKING:
    from meshsdk.mesh import Mesh
    from meshsdk.telemetry.recorder import OutboundCall


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """An async ``httpx`` transport that routes every request through the mesh::

        client = httpx.AsyncClient(transport=mesh.async_transport())
    """

    def __init__(self, mesh: Mesh, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._mesh = mesh
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        # our own default transport: attempts go to its httpcore pool directly, with no
        # second httpx.Request/Response per attempt (a transport you pass is used as is)
        pool = core_pool(self._inner) if inner is None else None
        self._tls: AsyncTlsConnector | None = None
        self._pool = pool if isinstance(pool, httpcore.AsyncConnectionPool) else None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        flow, call = self._mesh._flow(request)
        mesh = self._mesh
        result = await drive_async(
            flow, call, lambda attempt: self._send(attempt, request), mesh._async_sleep,
            _aclose,
            lambda attempt: mesh._mirrors.submit_async(
                self._inner, mirror_request(attempt, request)))
        return self._response(result, request, call)

    async def _send(self, attempt: Attempt, request: httpx.Request) -> AttemptResult:
        try:  # an IP literal (the common case) needs no coroutine
            address = (attempt.address if is_address(attempt.address)
                       else await self._mesh._dns.aresolve(attempt.address, attempt.port))
        except OSError:
            return AttemptResult(Outcome(failure=Failure.CONNECT_FAILURE))
        if attempt.tls is not None:  # mesh TLS: our own pools, whatever the inner transport
            return await self._send_tls(attempt, request, address)
        if self._pool is not None:
            try:
                core = await self._pool.handle_async_request(
                    core_request(attempt, request, address))
            except CORE_SEND_ERRORS as exc:
                return AttemptResult(classify_core_exception(exc))
            return classify_core_response(core)
        try:
            response = await self._inner.handle_async_request(
                upstream_request(attempt, request, address))
        except SEND_ERRORS as exc:
            return AttemptResult(classify_exception(exc))
        return classify_response(response)

    async def _send_tls(self, attempt: Attempt, request: httpx.Request, address: str | None
                  ) -> AttemptResult:
        assert attempt.tls is not None
        if self._tls is None:
            self._tls = AsyncTlsConnector(self._mesh.identity)
        try:
            pool = await self._tls.pool_for(attempt.tls)
        except TlsError:
            return AttemptResult(Outcome(failure=Failure.CONNECT_FAILURE))
        try:
            core = await pool.handle_async_request(core_request(attempt, request, address))
        except CORE_SEND_ERRORS as exc:
            return AttemptResult(classify_core_exception(exc))
        return classify_core_response(core)

    def _response(self, result: CallResult, request: httpx.Request,
                  call: OutboundCall | None) -> httpx.Response:
        return caller_response(result, request, self._mesh._observers, AsyncReleasingStream,
                               call)

    async def aclose(self) -> None:
        # mirror copies still on their way through the inner transport finish first
        await self._mesh._mirrors.aclose_transport(self._inner)
        if self._tls is not None:
            await self._tls.aclose()


def _aclose(response: httpx.Response) -> Awaitable[None]:
    """A response the flow will not use (a retried attempt's): its connection goes back."""
    return response.aclose()
