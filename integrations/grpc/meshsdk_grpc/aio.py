"""The asyncio twin of :mod:`meshsdk_grpc.channel`: ``meshsdk_grpc.aio.channel(mesh,
"reviews:9080")`` over ``grpc.aio``.

The same core flow drives it (the generator is resumed with ``await`` results instead
of blocking ones), with the same request view, metadata handling, classification and
answers (:func:`~meshsdk_grpc.channel.outcome`); only the I/O differs: pooled
``grpc.aio`` channels per endpoint, the mesh's async sleep for backoff and delays,
and the same TLS bridge for mesh mTLS. Errors are :class:`MeshRpcError` (catch
``grpc.RpcError``; they are not ``grpc.aio.AioRpcError``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]

from meshsdk.dataplane.drive import drive_async
from meshsdk.dataplane.flow import Attempt, AttemptResult, CallResult
from meshsdk.outcome import Failure, Outcome
from meshsdk.transport.tls import TlsError
from meshsdk_grpc._pool import Bridge, ChannelPool, channel_options
from meshsdk_grpc._status import number_of
from meshsdk_grpc.channel import (
    _MIRROR_TIMEOUT,
    MIRRORS_PENDING,
    Deserializer,
    MeshCall,
    MeshRpcError,
    Metadata,
    Serializer,
    _Answer,
    _counting,
    _discard,
    _headers,
    _Kind,
    _metadata,
    _recorded,
    mirror_attempt,
    outcome,
)

if TYPE_CHECKING:
    from meshsdk.mesh import Mesh
    from meshsdk.telemetry.recorder import OutboundCall

_READY = grpc.ChannelConnectivity.READY
_FAILED = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


class _AsyncConn:
    def __init__(self, channel: Any, bridge: Bridge | None) -> None:
        self.channel = channel
        self.bridge = bridge

    async def ready(self, timeout: float) -> bool:
        """Connected within ``timeout`` seconds? (False: the attempt's connect failure)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        state = self.channel.get_state(try_to_connect=True)
        while state is not _READY:
            remaining = deadline - loop.time()
            if state in _FAILED or remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.channel.wait_for_state_change(state), remaining)
            except TimeoutError:
                return False
            state = self.channel.get_state(try_to_connect=True)
        return True

    async def close(self) -> None:
        await self.channel.close()
        if self.bridge is not None:
            await asyncio.to_thread(self.bridge.close)


class _AsyncPool(ChannelPool):
    """:class:`ChannelPool` with ``grpc.aio`` channels (same keys, same TLS bridge)."""

    def __init__(self, identity: Any) -> None:
        super().__init__(identity)
        self._aconns: dict[tuple[Any, ...], _AsyncConn] = {}

    async def aconnect(self, attempt: Attempt) -> _AsyncConn | None:
        key = (attempt.address, attempt.port, attempt.authority, attempt.tls)
        conn = self._aconns.get(key)
        if conn is None:
            try:
                target, bridge = self.target(attempt)
            except TlsError:
                return None
            conn = self._aconns[key] = _AsyncConn(grpc.aio.insecure_channel(
                target, options=channel_options(attempt.authority)), bridge)
        if await conn.ready(attempt.connect_timeout):
            return conn
        if self._aconns.get(key) is conn:  # a fresh channel for the next attempt
            del self._aconns[key]
        await conn.close()
        return None

    async def aclose(self) -> None:
        conns, self._aconns = list(self._aconns.values()), {}
        for conn in conns:
            await conn.close()


class AsyncMeshChannel:
    """A ``grpc.aio.Channel`` look-alike over the mesh for one target (``host:port``)."""

    def __init__(self, mesh: Mesh, target: str) -> None:
        self._mesh = mesh
        self._authority = target
        self._pool = _AsyncPool(mesh.identity)
        self._mirrors: set[asyncio.Task[None]] = set()

    def unary_unary(self, method: str, request_serializer: Serializer = None,
                    response_deserializer: Deserializer = None, **_: Any) -> AsyncUnaryUnary:
        return AsyncUnaryUnary(self, _Kind("unary_unary", False, False, request_serializer,
                                           response_deserializer), method)

    def unary_stream(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, **_: Any
                     ) -> AsyncUnaryStream:
        return AsyncUnaryStream(self, _Kind("unary_stream", False, True, request_serializer,
                                            response_deserializer), method)

    def stream_unary(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, **_: Any
                     ) -> AsyncUnaryUnary:
        return AsyncUnaryUnary(self, _Kind("stream_unary", True, False, request_serializer,
                                           response_deserializer), method)

    def stream_stream(self, method: str, request_serializer: Serializer = None,
                      response_deserializer: Deserializer = None, **_: Any
                      ) -> AsyncUnaryStream:
        return AsyncUnaryStream(self, _Kind("stream_stream", True, True, request_serializer,
                                            response_deserializer), method)

    async def close(self, grace: float | None = None) -> None:
        """Let copies already on their way finish (up to 1 s, as the sync channel),
        cancel the rest, and close every pooled endpoint channel."""
        pending = list(self._mirrors)
        if pending:
            _, late = await asyncio.wait(pending, timeout=1.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._pool.aclose()
        self._pool.close()

    async def __aenter__(self) -> AsyncMeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # the driver

    async def _run(self, kind: _Kind, method: str, request: Any, timeout: float | None,
                   metadata: Metadata | None) -> tuple[CallResult, OutboundCall | None]:
        """Run the core's flow for one call, awaiting its effects."""
        flow, call = self._mesh.start_call("POST", "http", self._authority, method,
                                           _headers(metadata),
                                           replayable=not kind.client_streaming,
                                           timeout=timeout)
        result = await drive_async(
            flow, call, lambda attempt: self._send(kind, request, attempt),
            self._mesh._async_sleep, _discard,
            None if kind.client_streaming
            else lambda attempt: self._mirror(kind, request, attempt))
        return result, call

    def _mirror(self, kind: _Kind, request: Any, attempt: Attempt) -> None:
        """Send a copy as a task of the running loop (bounded: dropped when too many are
        pending); its answer is ignored, as Envoy ignores a shadow's."""
        if len(self._mirrors) >= MIRRORS_PENDING:
            return
        shadow = mirror_attempt(attempt)

        async def send() -> None:
            try:
                conn = await self._pool.aconnect(shadow)
                if conn is None:
                    return
                callable_ = getattr(conn.channel, kind.name)(
                    shadow.path, request_serializer=kind.serializer,
                    response_deserializer=kind.deserializer)
                reply = callable_(request, timeout=_MIRROR_TIMEOUT,
                                  metadata=_metadata(shadow.headers))
                if kind.server_streaming:
                    reply.cancel()
                else:
                    await reply
            except (grpc.RpcError, OSError, TlsError):
                pass

        task = asyncio.get_running_loop().create_task(send())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _send(self, kind: _Kind, request: Any, attempt: Attempt) -> AttemptResult:
        conn = await self._pool.aconnect(attempt)
        if conn is None:
            return AttemptResult(Outcome(failure=Failure.CONNECT_FAILURE))
        answer = _Answer(code=0)
        callable_ = getattr(conn.channel, kind.name)(
            attempt.path, request_serializer=kind.serializer,
            response_deserializer=_counting(kind.deserializer, answer.received))
        started = time.monotonic()
        try:
            rpc = callable_(request, timeout=attempt.timeout,
                            metadata=_metadata(attempt.headers))
            if kind.server_streaming:
                first = await rpc.read()  # the first message, or the end (see channel.py)
                if first is not grpc.aio.EOF:
                    answer.pending.append(first)
                elif await rpc.code() is not grpc.StatusCode.OK:
                    raise _as_error(rpc, await rpc.code(), await rpc.details())
                answer.initial = _pairs(await rpc.initial_metadata())
                answer.stream = rpc
                return AttemptResult(Outcome(status=200), answer)
            answer.response = await rpc
            answer.initial = _pairs(await rpc.initial_metadata())
            answer.trailing = _pairs(await rpc.trailing_metadata())
            answer.details = await rpc.details() or ""
            return AttemptResult(Outcome(status=200, grpc_status=0), answer)
        except grpc.RpcError as err:
            code = err.code()
            if (code is grpc.StatusCode.DEADLINE_EXCEEDED and attempt.timeout is not None
                    and time.monotonic() - started >= attempt.timeout - 0.001):
                return AttemptResult(Outcome(failure=Failure.TIMEOUT))
            answer.code = number_of(code)
            answer.details = err.details() or ""
            answer.initial = _pairs(err.initial_metadata())
            answer.trailing = _pairs(err.trailing_metadata())
            return AttemptResult(Outcome(status=200, grpc_status=answer.code), answer)


def channel(mesh: Mesh, target: str) -> AsyncMeshChannel:
    """The asyncio mesh channel to ``target`` (see :func:`meshsdk_grpc.channel`)."""
    return AsyncMeshChannel(mesh, target)


class _Error(grpc.RpcError):  # type: ignore[misc]
    """A finished aio stream's status, raised to the classification above."""

    def __init__(self, code: Any, details: str, initial: Any, trailing: Any) -> None:
        super().__init__(details)
        self._code, self._details = code, details
        self._initial, self._trailing = initial, trailing

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return self._initial

    def trailing_metadata(self) -> Any:
        return self._trailing


def _as_error(rpc: Any, code: Any, details: str | None) -> _Error:
    return _Error(code, details or "", None, None)


def _pairs(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    """``grpc.aio.Metadata`` (or a pair sequence, or None) as a tuple of pairs."""
    if metadata is None:
        return ()
    return tuple((str(k), v) for k, v in metadata)


class _AsyncMultiCallable:
    def __init__(self, owner: AsyncMeshChannel, kind: _Kind, method: str) -> None:
        self._owner, self._kind, self._method = owner, kind, method


class AsyncUnaryUnary(_AsyncMultiCallable):
    """A unary answer (unary or stream request): ``await multicallable(request)``;
    ``with_call`` also returns the :class:`~meshsdk_grpc.channel.MeshCall`."""

    async def with_call(self, request: Any, timeout: float | None = None,
                        metadata: Metadata | None = None, **_: Any) -> tuple[Any, MeshCall]:
        result, call = await self._owner._run(self._kind, self._method, request, timeout,
                                              metadata)
        answer, info, error = outcome(result, call)
        if error is not None:
            raise error
        assert answer is not None
        result.release()
        if call is not None:
            call.finish(answer.received[0])
        return answer.response, MeshCall(info, answer.initial, answer.trailing,
                                         answer.details)

    async def __call__(self, request: Any, timeout: float | None = None,
                       metadata: Metadata | None = None, **kwargs: Any) -> Any:
        return (await self.with_call(request, timeout, metadata))[0]


class AsyncUnaryStream(_AsyncMultiCallable):
    """A streaming answer: ``async for message in multicallable(request)``."""

    def __call__(self, request: Any, timeout: float | None = None,
                 metadata: Metadata | None = None, **_: Any) -> AsyncResponseStream:
        return AsyncResponseStream(self, request, timeout, metadata)


class AsyncResponseStream:
    """The messages of a streaming answer; the call starts at the first read. Errors
    are raised by the first read; telemetry and the slot end with the stream."""

    def __init__(self, owner: AsyncUnaryStream, request: Any, timeout: float | None,
                 metadata: Metadata | None) -> None:
        self._owner = owner
        self._args = (request, timeout, metadata)
        self._started = False
        self._answer: _Answer | None = None
        self._error: MeshRpcError | None = None
        self._result: CallResult | None = None
        self._call: OutboundCall | None = None
        self._done = False
        self.info: Any = None

    async def _start(self) -> None:
        self._started = True
        request, timeout, metadata = self._args
        owner = self._owner
        result, call = await owner._owner._run(owner._kind, owner._method, request, timeout,
                                               metadata)
        self._result, self._call = result, call
        self._answer, self.info, self._error = outcome(result, call)
        self._done = self._error is not None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if not self._started:
            await self._start()
        if self._error is not None:
            raise self._error
        answer = self._answer
        if answer is None or answer.stream is None or self._done:
            raise StopAsyncIteration
        if answer.pending:
            return answer.pending.pop(0)
        try:
            message = await answer.stream.read()
        except grpc.RpcError as err:
            await self._end(err.code())
            raise
        if message is grpc.aio.EOF:
            await self._end(await answer.stream.code())
            raise StopAsyncIteration
        return message

    async def _end(self, code: Any) -> None:
        if self._done:
            return
        self._done = True
        answer, result = self._answer, self._result
        if answer is not None and answer.stream is not None:
            answer.code = number_of(code) if code is not None else 2
            answer.trailing = _pairs(await answer.stream.trailing_metadata())
        if result is not None:
            result.release()
        if self._call is not None and answer is not None and result is not None:
            self._call.responded(result, _recorded(answer), "HTTP/2")
            self._call.finish(answer.received[0])

    def __del__(self) -> None:
        # a stream dropped unread must still give back its slot and be recorded
        if self._started and not self._done and self._result is not None:
            self._done = True
            if self._answer is not None and self._answer.stream is not None:
                self._answer.stream.cancel()
            self._result.release()
            if self._call is not None and self._answer is not None:
                self._answer.code = 1  # CANCELLED
                self._call.responded(self._result, _recorded(self._answer), "HTTP/2")
                self._call.finish(self._answer.received[0])

    async def cancel(self) -> bool:
        """Cancel the upstream stream (recorded as ``CANCELLED``)."""
        answer = self._answer
        if answer is not None and answer.stream is not None and not self._done:
            answer.stream.cancel()
            await self._end(grpc.StatusCode.CANCELLED)
            return True
        return False

    async def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        if not self._started:
            await self._start()
        if self._error is not None:
            return self._error.initial_metadata()
        return self._answer.initial if self._answer is not None else ()

    async def code(self) -> Any:
        if self._error is not None:
            return self._error.code()
        answer = self._answer
        if answer is not None and answer.stream is not None:
            return await answer.stream.code()
        return grpc.StatusCode.OK


__all__ = ["AsyncMeshChannel", "AsyncResponseStream", "AsyncUnaryStream", "AsyncUnaryUnary",
           "channel"]

