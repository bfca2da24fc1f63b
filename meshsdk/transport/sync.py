"""The synchronous httpx driver of the call flow."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpcore
import httpx

from meshsdk.dataplane.drive import drive
from meshsdk.dataplane.flow import Attempt, AttemptResult, CallResult
from meshsdk.outcome import Failure, Outcome
from meshsdk.transport.common import (
    CORE_SEND_ERRORS,
    SEND_ERRORS,
    ReleasingStream,
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
from meshsdk.transport.tls import TlsConnector, TlsError

if TYPE_CHECKING:
    from meshsdk.mesh import Mesh
    from meshsdk.telemetry.recorder import OutboundCall


class MeshTransport(httpx.BaseTransport):
    """An ``httpx`` transport that routes every request through the mesh.

    It wraps an inner transport (by default a pooled ``httpx.HTTPTransport``) that
    does the actual network I/O to the endpoints the mesh picks::

        client = httpx.Client(transport=mesh.transport())
    """

    def __init__(self, mesh: Mesh, inner: httpx.BaseTransport | None = None) -> None:
        self._mesh = mesh
        self._inner = inner if inner is not None else httpx.HTTPTransport()
        # our own default transport: attempts go to its httpcore pool directly, with no
        # second httpx.Request/Response per attempt (a transport you pass is used as is)
        pool = core_pool(self._inner) if inner is None else None
        self._tls: TlsConnector | None = None
        self._pool = pool if isinstance(pool, httpcore.ConnectionPool) else None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        flow, call = self._mesh._flow(request)
        mesh = self._mesh
        result = drive(
            flow, call, lambda attempt: self._send(attempt, request), mesh._sleep,
            _close,
            lambda attempt: mesh._mirrors.submit_sync(
                self._inner, mirror_request(attempt, request)))
        return self._response(result, request, call)

    def _send(self, attempt: Attempt, request: httpx.Request) -> AttemptResult:
        try:
            address = self._mesh._dns.resolve(attempt.address, attempt.port)
        except OSError:
            return AttemptResult(Outcome(failure=Failure.CONNECT_FAILURE))
        if attempt.tls is not None:  # mesh TLS: our own pools, whatever the inner transport
            return self._send_tls(attempt, request, address)
        if self._pool is not None:
            try:
                core = self._pool.handle_request(core_request(attempt, request, address))
            except CORE_SEND_ERRORS as exc:
                return AttemptResult(classify_core_exception(exc))
            return classify_core_response(core)
        try:
            response = self._inner.handle_request(upstream_request(attempt, request, address))
        except SEND_ERRORS as exc:
            return AttemptResult(classify_exception(exc))
        return classify_response(response)

    def _send_tls(self, attempt: Attempt, request: httpx.Request, address: str | None
                  ) -> AttemptResult:
        assert attempt.tls is not None
        if self._tls is None:
            self._tls = TlsConnector(self._mesh.identity)
        try:
            pool = self._tls.pool_for(attempt.tls)
        except TlsError:
            return AttemptResult(Outcome(failure=Failure.CONNECT_FAILURE))
        try:
            core = pool.handle_request(core_request(attempt, request, address))
        except CORE_SEND_ERRORS as exc:
            return AttemptResult(classify_core_exception(exc))
        return classify_core_response(core)

    def _response(self, result: CallResult, request: httpx.Request,
                  call: OutboundCall | None) -> httpx.Response:
        return caller_response(result, request, self._mesh._observers, ReleasingStream, call)

    def close(self) -> None:
        # mirror copies still on their way through the inner transport finish first
        self._mesh._mirrors.close_transport(self._inner)
        if self._tls is not None:
            self._tls.close()


def _close(response: httpx.Response) -> None:
    """A response the flow will not use (a retried attempt's): its connection goes back."""
    response.close()
