"""A gRPC channel whose calls go through the mesh: the gRPC driver of the core's call flow.

``meshsdk_grpc.channel(mesh, "reviews:9080")`` returns an object with the methods of
``grpc.Channel`` (so generated stubs take it). Each call is turned into the core's
protocol-neutral request (``POST``, the method path ``/pkg.Service/Method`` as the URI,
the metadata as headers, ``content-type: application/grpc``) and run through
:func:`~meshsdk.dataplane.flow.call_flow`, exactly as the httpx transport runs it: the
flow picks route, fault, cluster, subset and endpoint, retries and times out; this
module only performs the effects it yields, with one pooled real gRPC channel per
endpoint (:mod:`meshsdk_grpc._pool`), and reports what happened (the attempt's
``grpc-status``) back to the flow and to telemetry.

What a caller sees: the upstream's answer, or a ``grpc.RpcError`` (:class:`MeshRpcError`)
whose ``code()`` is the upstream's status, or for an answer the mesh gave itself the
status Envoy would send (``UNAVAILABLE`` for 503 ``UH``/``UF``/``UO``, ``UNIMPLEMENTED``
for 404 ``NR``, the fault's ``grpcStatus``, ``DEADLINE_EXCEEDED`` for a timeout).
Every answer and error carries ``info``, the :class:`~meshsdk.transport.CallInfo`.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]

from meshsdk.dataplane.drive import drive
from meshsdk.dataplane.flow import Attempt, AttemptResult, CallResult
from meshsdk.outcome import Failure, Outcome
from meshsdk.transport.common import CallInfo, call_info, shadow_authority
from meshsdk_grpc._pool import ChannelPool
from meshsdk_grpc._status import grpc_status_for_http, number_of, status_code

if TYPE_CHECKING:
    from meshsdk.mesh import Mesh
    from meshsdk.telemetry.recorder import OutboundCall

Metadata = Sequence[tuple[str, str | bytes]]
Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None

_NOT_FORWARDED = frozenset({"host", "content-type", "te", "user-agent", "content-length",
                            "connection", "grpc-timeout"})
"""Headers the core's request carries that gRPC sets itself on the wire."""

_MIRROR_TIMEOUT = 10.0
MIRRORS_PENDING = 64
"""Mirrors in flight per channel at most; more are dropped (never queued)."""


# --- errors and call objects the caller sees -------------------------------------------


class MeshRpcError(grpc.RpcError):  # type: ignore[misc]
    """A failed call: the upstream's status or the mesh's own answer, with ``info``."""

    def __init__(self, code: Any, details: str, info: CallInfo,
                 initial: Metadata = (), trailing: Metadata = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details
        self._initial, self._trailing = tuple(initial), tuple(trailing)
        self.info = info

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._initial

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def debug_error_string(self) -> str:
        return f"meshsdk: {self._code.name} ({self.info.response_flags}): {self._details}"


@dataclass(frozen=True, slots=True)
class MeshCall:
    """What ``with_call`` returns beside the response (grpc.Call's reading methods)."""

    info: CallInfo
    _initial: tuple[tuple[str, str | bytes], ...]
    _trailing: tuple[tuple[str, str | bytes], ...]
    _details: str = ""

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._initial

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def code(self) -> Any:
        return grpc.StatusCode.OK

    def details(self) -> str:
        return self._details


@dataclass(slots=True)
class _Answer:
    """One attempt's answer as the driver keeps it for the flow (opaque to the flow)."""

    code: int
    details: str = ""
    initial: tuple[tuple[str, str | bytes], ...] = ()
    trailing: tuple[tuple[str, str | bytes], ...] = ()
    response: Any = None
    stream: Any = None          # the live response stream of a streaming call
    pending: list[Any] = field(default_factory=list)  # messages read ahead
    received: list[int] = field(default_factory=lambda: [0])  # response bytes

    def discard(self) -> None:
        if self.stream is not None:
            self.stream.cancel()


# --- the channel -------------------------------------------------------------------------


class MeshChannel(grpc.Channel):  # type: ignore[misc]
    """``grpc.Channel`` over the mesh for one logical target (``host:port``).

    ``target`` is the service as the app names it (``reviews:9080``, or its FQDN): it
    is the request's authority for routing, and ``:authority`` on the wire.
    """

    def __init__(self, mesh: Mesh, target: str) -> None:
        self._mesh = mesh
        self._authority = target
        self._pool = ChannelPool(mesh.identity)
        self._mirrors = ThreadPoolExecutor(max_workers=2,
                                           thread_name_prefix="meshsdk-grpc-mirror")
        self._mirror_slots = threading.BoundedSemaphore(MIRRORS_PENDING)
        self._mirrors_pending: set[Future[None]] = set()
        self._mirrors_lock = threading.Lock()

    # grpc.Channel's multi-callables

    def unary_unary(self, method: str, request_serializer: Serializer = None,
                    response_deserializer: Deserializer = None, **_: Any) -> UnaryUnary:
        return UnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, **_: Any) -> UnaryStream:
        return UnaryStream(self, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, **_: Any) -> StreamUnary:
        return StreamUnary(self, method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Serializer = None,
                      response_deserializer: Deserializer = None, **_: Any) -> StreamStream:
        return StreamStream(self, method, request_serializer, response_deserializer)

    def subscribe(self, callback: Callable[[Any], None], try_to_connect: bool = False
                  ) -> None:
        """A mesh channel has no single connection: reported READY once."""
        callback(grpc.ChannelConnectivity.READY)

    def unsubscribe(self, callback: Callable[[Any], None]) -> None:
        """Nothing to undo (see :meth:`subscribe`)."""

    def close(self) -> None:
        """Close every pooled endpoint channel and the mirror sender."""
        with self._mirrors_lock:
            pending = list(self._mirrors_pending)
        wait(pending, timeout=1.0)  # copies already on their way
        self._mirrors.shutdown(wait=False, cancel_futures=True)
        self._pool.close()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the driver

    def _run(self, kind: _Kind, method: str, request: Any, timeout: float | None,
             metadata: Metadata | None) -> tuple[CallResult, OutboundCall | None]:
        """Run the core's flow for one call, performing its effects."""
        headers = _headers(metadata)
        flow, call = self._mesh.start_call("POST", "http", self._authority, method, headers,
                                           replayable=not kind.client_streaming,
                                           timeout=timeout)
        result = drive(
            flow, call, lambda attempt: self._send(kind, request, attempt), self._mesh._sleep,
            _discard,
            None if kind.client_streaming
            else lambda attempt: self._mirror(kind, request, attempt))
        return result, call

    def _send(self, kind: _Kind, request: Any, attempt: Attempt
              ) -> AttemptResult:
        conn = self._pool.connect(attempt)
        if conn is None:
            return AttemptResult(Outcome(failure=Failure.CONNECT_FAILURE))
        answer = _Answer(code=0)
        callable_ = getattr(conn.channel, kind.name)(  # the path after the route's rewrite
            attempt.path, request_serializer=kind.serializer,
            response_deserializer=_counting(kind.deserializer, answer.received))
        metadata = _metadata(attempt.headers)
        started = time.monotonic()
        try:
            if kind.server_streaming:
                stream = callable_(request, timeout=attempt.timeout, metadata=metadata)
                # Wait for the first message or the end: a gRPC error usually comes as a
                # trailers-only answer, told from a stream only once the status arrived.
                with contextlib.suppress(StopIteration):
                    answer.pending.append(next(stream))
                answer.initial = tuple(stream.initial_metadata() or ())
                answer.stream = stream
                return AttemptResult(Outcome(status=200), answer)
            response, done = callable_.with_call(request, timeout=attempt.timeout,
                                                 metadata=metadata)
        except grpc.RpcError as err:
            code = err.code()
            if (code is grpc.StatusCode.DEADLINE_EXCEEDED and attempt.timeout is not None
                    and time.monotonic() - started >= attempt.timeout - 0.001):
                # the time this try was given ran out (whichever end noticed first: the
                # server counts from the grpc-timeout we sent): the flow's timeout
                return AttemptResult(Outcome(failure=Failure.TIMEOUT))
            answer.code = number_of(code)
            answer.details = err.details() or ""
            answer.initial = tuple(err.initial_metadata() or ())
            answer.trailing = tuple(err.trailing_metadata() or ())
            return AttemptResult(Outcome(status=200, grpc_status=answer.code), answer)
        answer.response = response
        answer.initial = tuple(done.initial_metadata() or ())
        answer.trailing = tuple(done.trailing_metadata() or ())
        answer.details = done.details() or ""
        return AttemptResult(Outcome(status=200, grpc_status=0), answer)

    def _mirror(self, kind: _Kind, request: Any, attempt: Attempt) -> None:
        """Send a copy in the background (bounded; dropped when too many are pending)."""
        if not self._mirror_slots.acquire(blocking=False):
            return
        shadow = mirror_attempt(attempt)

        def send() -> None:
            try:
                conn = self._pool.connect(shadow)
                if conn is None:
                    return
                callable_ = getattr(conn.channel, kind.name)(
                    shadow.path, request_serializer=kind.serializer,
                    response_deserializer=kind.deserializer)
                reply = callable_(request, timeout=_MIRROR_TIMEOUT,
                                  metadata=_metadata(shadow.headers))
                if kind.server_streaming:
                    reply.cancel()
            except grpc.RpcError:
                pass
            finally:
                self._mirror_slots.release()

        try:
            pending = self._mirrors.submit(send)
        except RuntimeError:  # closed
            self._mirror_slots.release()
            return
        with self._mirrors_lock:
            self._mirrors_pending.add(pending)
        pending.add_done_callback(self._mirror_done)

    def _mirror_done(self, done: Future[None]) -> None:
        with self._mirrors_lock:
            self._mirrors_pending.discard(done)

def mirror_attempt(attempt: Attempt) -> Attempt:
    """The attempt a mirror sends: Envoy's ``-shadow`` authority, a bounded timeout
    (shared by the sync and asyncio channels)."""
    return replace(attempt, authority=shadow_authority(attempt.authority),
                   timeout=_MIRROR_TIMEOUT)


def channel(mesh: Mesh, target: str) -> MeshChannel:
    """A gRPC channel to ``target`` (``host:port`` as the app names the service) whose
    calls are routed, retried, timed out, secured and recorded by ``mesh``."""
    return MeshChannel(mesh, target)


def outcome(result: CallResult, call: OutboundCall | None
            ) -> tuple[_Answer | None, CallInfo, MeshRpcError | None]:
    """The answer to give the caller, or the error to raise, for the flow's verdict.
    Telemetry of a local reply is finished here; an answer's when it is consumed."""
    info = call_info(result)
    reply = result.local_reply
    if reply is not None:
        result.release()
        number = (reply.grpc_status if reply.grpc_status is not None
                  else grpc_status_for_http(reply.status, result.flags))
        details = next((v for k, v in reply.headers if k == "grpc-message"), None)
        if details is None:
            details = reply.body.decode("utf-8", "replace")
        if call is not None:
            head = [(k, v) for k, v in reply.headers if k != "grpc-status"]
            call.responded(result, [*head, ("grpc-status", str(number))], "HTTP/2")
            call.finish(0)
        return None, info, MeshRpcError(status_code(number), details, info)
    answer: _Answer = result.response
    if result.response_headers is not None:  # the route's response header operations
        answer.initial = tuple(result.response_headers(
            [(k, v) for k, v in answer.initial if isinstance(v, str)]))
    if call is not None:
        call.responded(result, _recorded(answer), "HTTP/2")
    if answer.stream is None and answer.code != 0:
        result.release()
        if call is not None:
            call.finish(answer.received[0])
        return None, info, MeshRpcError(status_code(answer.code), answer.details, info,
                                        answer.initial, answer.trailing)
    return answer, info, None


def _recorded(answer: _Answer) -> list[tuple[str, str]]:
    """The response head and trailers as telemetry records them (with ``grpc-status``)."""
    pairs = [(k, v) for k, v in (*answer.initial, *answer.trailing) if isinstance(v, str)]
    return [*pairs, ("grpc-status", str(answer.code))]


# --- the four kinds of call ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str                 # the grpc.Channel method that makes this kind of call
    client_streaming: bool
    server_streaming: bool
    serializer: Serializer
    deserializer: Deserializer


class _MultiCallable:
    _name = ""
    _client_streaming = False
    _server_streaming = False

    def __init__(self, owner: MeshChannel, method: str, serializer: Serializer,
                 deserializer: Deserializer) -> None:
        self._owner = owner
        self._method = method
        self._kind = _Kind(self._name, self._client_streaming, self._server_streaming,
                           serializer, deserializer)


class _UnaryResponse(_MultiCallable):
    """Unary answers: ``__call__``, ``with_call`` and ``future``-less (see the docs)."""

    def _invoke(self, request: Any, timeout: float | None, metadata: Metadata | None
                ) -> tuple[Any, MeshCall]:
        owner = self._owner
        result, call = owner._run(self._kind, self._method, request, timeout, metadata)
        answer, info, error = outcome(result, call)
        if error is not None:
            raise error
        assert answer is not None
        result.release()
        if call is not None:
            call.finish(answer.received[0])
        return answer.response, MeshCall(info, answer.initial, answer.trailing,
                                         answer.details)

    def __call__(self, request: Any, timeout: float | None = None,
                 metadata: Metadata | None = None, **_: Any) -> Any:
        return self._invoke(request, timeout, metadata)[0]

    def with_call(self, request: Any, timeout: float | None = None,
                  metadata: Metadata | None = None, **_: Any) -> tuple[Any, MeshCall]:
        return self._invoke(request, timeout, metadata)


class _StreamResponse(_MultiCallable):
    def __call__(self, request: Any, timeout: float | None = None,
                 metadata: Metadata | None = None, **_: Any) -> ResponseStream:
        owner = self._owner
        result, call = owner._run(self._kind, self._method, request, timeout, metadata)
        answer, info, error = outcome(result, call)
        return ResponseStream(answer, info, error, result, call)


class UnaryUnary(_UnaryResponse):
    _name = "unary_unary"


class StreamUnary(_UnaryResponse):
    """Request streams cannot be replayed: routed, faulted and timed out, never retried
    (Envoy also stops retrying once a body outgrew its buffer)."""

    _name = "stream_unary"
    _client_streaming = True


class UnaryStream(_StreamResponse):
    """Retried until the upstream's response head arrives, then streamed."""

    _name = "unary_stream"
    _server_streaming = True


class StreamStream(_StreamResponse):
    _name = "stream_stream"
    _client_streaming = True
    _server_streaming = True


class ResponseStream(Iterator[Any]):
    """The messages of a streaming answer; also answers ``grpc.Call``'s questions.

    An error (the mesh's or the upstream's) is raised by the first ``next``, as gRPC's
    own streams do. Telemetry is recorded and the call's slot given back when the
    stream ends, fails or is cancelled.
    """

    def __init__(self, answer: _Answer | None, info: CallInfo, error: MeshRpcError | None,
                 result: CallResult, call: OutboundCall | None) -> None:
        self.info = info
        self._answer = answer
        self._error = error
        self._result = result
        self._call = call
        self._done = error is not None

    def __iter__(self) -> ResponseStream:
        return self

    def __next__(self) -> Any:
        if self._error is not None:
            raise self._error
        answer = self._answer
        if answer is None or answer.stream is None or self._done:
            raise StopIteration
        if answer.pending:
            return answer.pending.pop(0)
        try:
            return next(answer.stream)
        except StopIteration:
            self._end(answer.stream.code())
            raise
        except grpc.RpcError as err:
            self._end(err.code())
            raise

    def _end(self, code: Any) -> None:
        if self._done:
            return
        self._done = True
        answer = self._answer
        if answer is not None and answer.stream is not None:
            answer.code = number_of(code) if code is not None else 2
            answer.trailing = tuple(answer.stream.trailing_metadata() or ())
        self._result.release()
        if self._call is not None and answer is not None:
            self._call.responded(self._result, _recorded(answer), "HTTP/2")
            self._call.finish(answer.received[0])

    def __del__(self) -> None:
        # a stream dropped unread must still give back its slot and be recorded
        if not self._done:
            self.cancel()

    def cancel(self) -> bool:
        """Cancel the upstream stream (recorded as ``CANCELLED``)."""
        answer = self._answer
        if answer is not None and answer.stream is not None and not self._done:
            answer.stream.cancel()
            self._end(grpc.StatusCode.CANCELLED)
            return True
        return False

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        if self._error is not None:
            return self._error.initial_metadata()
        return self._answer.initial if self._answer is not None else ()

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        if self._error is not None:
            return self._error.trailing_metadata()
        stream = self._answer.stream if self._answer is not None else None
        return tuple(stream.trailing_metadata() or ()) if stream is not None else ()

    def code(self) -> Any:
        if self._error is not None:
            return self._error.code()
        stream = self._answer.stream if self._answer is not None else None
        return stream.code() if stream is not None else grpc.StatusCode.OK

    def details(self) -> str:
        if self._error is not None:
            return self._error.details()
        stream = self._answer.stream if self._answer is not None else None
        return str(stream.details() or "") if stream is not None else ""


# --- metadata <-> headers ------------------------------------------------------------------


def _headers(metadata: Metadata | None) -> list[tuple[str, str]]:
    """The request's headers as the core reads them: lower-case names, binary values
    base64 (as on the wire), and the gRPC content type."""
    out: list[tuple[str, str]] = [("content-type", "application/grpc"), ("te", "trailers")]
    for name, value in metadata or ():
        key = name.lower()
        if isinstance(value, bytes):
            out.append((key, base64.b64encode(value).decode("ascii")))
        else:
            out.append((key, value))
    return out


def _metadata(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str | bytes]]:
    """An attempt's headers as gRPC metadata (what gRPC writes itself left out)."""
    out: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name in _NOT_FORWARDED or name.startswith((":", "grpc-")):
            continue
        if name.endswith("-bin"):
            out.append((name, base64.b64decode(value + "=" * (-len(value) % 4))))
        else:
            out.append((name, value))
    return out


def _counting(deserializer: Deserializer, received: list[int]) -> Callable[[bytes], Any]:
    """The response deserializer, counting the bytes it sees (for telemetry)."""
    def read(data: bytes) -> Any:
        received[0] += len(data)
        return deserializer(data) if deserializer is not None else data
    return read


__all__ = ["MeshCall", "MeshChannel", "MeshRpcError", "ResponseStream", "channel"]


def _discard(answer: Any) -> None:
    """An answer the flow will not use (a retried attempt's)."""
    answer.discard()
