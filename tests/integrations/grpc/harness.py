"""Real gRPC upstreams for the mesh's gRPC channel, and the conformance table run
through it.

:class:`GrpcUpstream` is a :class:`~meshsdk.testing.upstream.Upstream` (so the table's
YAML builders take it) whose server is a real ``grpc.server`` on 127.0.0.1 serving any
method with bytes in and out. It plays the same scripted ``Behaviour`` as the HTTP one,
in gRPC's terms: a 2xx ``Reply`` is OK with the body as the response message, any
other status is the gRPC status Envoy maps it to (503 -> UNAVAILABLE), with the body
as the details; ``delay`` and ``hang`` delay the answer; the ``Reply`` headers become
initial metadata beside ``x-upstream: <name>``, and a ``grpc-status`` header among
them is the status itself. Methods ending in ``/Stream`` are unary-stream (the body,
then ``b"end"``), ``/Collect`` stream-unary (the messages joined by ``|`` play the
request) and ``/Chat`` stream-stream (the first message plays, the others echo
upper-cased).
"""

from __future__ import annotations

import asyncio
import random
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from meshsdk_grpc import MeshRpcError, channel, grpc_status_for_http
from meshsdk_grpc._status import number_of, status_code

from meshsdk.config.resource import Config
from meshsdk.mesh import Mesh
from meshsdk.testing.conformance import Call, Scenario, Seen, run
from meshsdk.testing.upstream import Behaviour, Received, Upstream
from meshsdk.workload import Workload

CLIENT = Workload("productpage-v1", "default", {"app": "productpage", "version": "v1"},
                  "bookinfo-productpage")


class GrpcUpstream(Upstream):
    """A real gRPC server playing a scripted behaviour (see the module docstring)."""

    def __init__(self, name: str = "upstream", behaviour: Behaviour | None = None, *,
                 credentials: Any = None, interceptors: Sequence[Any] = ()) -> None:
        super().__init__(name, behaviour)
        self._credentials = credentials
        self._interceptors = list(interceptors)
        self._grpc: Any = None
        self._port = 0

    def start(self) -> GrpcUpstream:
        server = grpc.server(ThreadPoolExecutor(max_workers=16),
                             interceptors=self._interceptors)
        server.add_generic_rpc_handlers((_AnyMethod(self),))
        if self._credentials is not None:
            self._port = server.add_secure_port("127.0.0.1:0", self._credentials)
        else:
            self._port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server
        return self

    def stop(self) -> None:
        self._stopping.set()
        server, self._grpc = self._grpc, None
        if server is not None:
            server.stop(0).wait(5)

    @property
    def port(self) -> int:
        assert self._grpc is not None, "upstream not started"
        return self._port

    # -- serving ----------------------------------------------------------------------

    def _answer(self, method: str, request: bytes, context: Any) -> bytes:
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        event = getattr(context, "_rpc_event", None)
        host = getattr(getattr(event, "call_details", None), "host", b"")
        headers["host"] = host.decode() if isinstance(host, bytes) else str(host)
        remaining = context.time_remaining()
        if remaining is not None and remaining < 1e6:
            headers["x-time-remaining"] = f"{remaining:.3f}"
        received = Received("POST", method, headers, request)
        reply = self.behaviour(received, self._record(received))
        if reply.delay:
            self._stopping.wait(reply.delay)
        if reply.hang:  # until the caller gives up or the server stops (bounded by both)
            while context.is_active() and not self._stopping.wait(0.02):
                pass
        meta = [("x-upstream", self.name)]
        meta += [(k.lower(), v) for k, v in reply.headers.items()
                 if k.lower() not in ("content-type", "content-length")]
        if reply.reset:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        code = reply.headers.get("grpc-status")  # a gRPC status given directly
        if code is not None or not 200 <= reply.status < 300:
            meta = [(k, v) for k, v in meta if k != "grpc-status"]
            context.set_trailing_metadata(meta)
            number = int(code) if code is not None else grpc_status_for_http(reply.status)
            context.abort(status_code(number), reply.body.decode("utf-8", "replace"))
        context.send_initial_metadata(meta)
        return reply.body


class _AnyMethod(grpc.GenericRpcHandler):
    def __init__(self, upstream: GrpcUpstream) -> None:
        self._up = upstream

    def service(self, details: Any) -> Any:
        method = details.method
        up = self._up
        if method.endswith("/Collect"):  # stream-unary: the messages joined
            def collect(requests: Iterator[bytes], context: Any) -> bytes:
                return up._answer(method, b"|".join(requests), context)
            return grpc.stream_unary_rpc_method_handler(collect)
        if method.endswith("/Chat"):  # stream-stream: each message answered
            def chat(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
                first = True
                for message in requests:
                    if first:
                        first = False
                        yield up._answer(method, message, context)
                    else:
                        yield message.upper()
            return grpc.stream_stream_rpc_method_handler(chat)
        if method.endswith("/Stream"):
            def stream(request: bytes, context: Any) -> Iterator[bytes]:
                yield up._answer(method, request, context)
                yield b"end"
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: up._answer(method, request, context))


# --- the driver ---------------------------------------------------------------------------


def seen_of_error(err: MeshRpcError) -> Seen:
    head = {k: v for k, v in (*err.initial_metadata(), *err.trailing_metadata())
            if isinstance(v, str)}
    return Seen(number_of(err.code()), head, err.details().encode(), err.info.response_flags)


def grpc_driver(config: Config, calls: Sequence[Call], *, seed: int = 7,
                timeout: float | None = None) -> list[Seen]:
    """Send each call (``http://authority/path``) as a unary gRPC call (a unary-stream
    one for paths ending in ``/Stream``) through :func:`meshsdk_grpc.channel`; the
    status in :class:`Seen` is the gRPC status number."""
    mesh = Mesh(config, CLIENT, rng=random.Random(seed))
    channels: dict[str, Any] = {}
    out: list[Seen] = []
    try:
        for call in calls:
            url = urllib.parse.urlsplit(call.url)
            ch = channels.get(url.netloc)
            if ch is None:
                ch = channels[url.netloc] = channel(mesh, url.netloc)
            metadata = list(call.headers.items())
            try:
                if url.path.endswith("/Stream"):
                    stream = ch.unary_stream(url.path)(call.body, timeout=timeout,
                                                       metadata=metadata)
                    body = b"|".join(stream)
                    out.append(Seen(0, dict(stream.initial_metadata()), body,
                                    stream.info.response_flags))
                else:
                    response, info = ch.unary_unary(url.path).with_call(
                        call.body, timeout=timeout, metadata=metadata)
                    out.append(Seen(0, dict(info.initial_metadata()), response,
                                    info.info.response_flags))
            except MeshRpcError as err:
                out.append(seen_of_error(err))
    finally:
        for ch in channels.values():
            ch.close()
        mesh.close()
    return out


def aio_grpc_driver(config: Config, calls: Sequence[Call], *, seed: int = 7,
                    timeout: float | None = None) -> list[Seen]:
    """:func:`grpc_driver` through :func:`meshsdk_grpc.aio.channel` on an event loop."""
    from meshsdk_grpc import aio

    async def run() -> list[Seen]:
        mesh = Mesh(config, CLIENT, rng=random.Random(seed))
        channels: dict[str, aio.AsyncMeshChannel] = {}
        out: list[Seen] = []
        try:
            for call in calls:
                url = urllib.parse.urlsplit(call.url)
                ch = channels.get(url.netloc)
                if ch is None:
                    ch = channels[url.netloc] = aio.channel(mesh, url.netloc)
                metadata = list(call.headers.items())
                try:
                    if url.path.endswith("/Stream"):
                        stream = ch.unary_stream(url.path)(call.body, timeout=timeout,
                                                           metadata=metadata)
                        body = b"|".join([m async for m in stream])
                        out.append(Seen(0, dict(await stream.initial_metadata()), body,
                                        stream.info.response_flags))
                    else:
                        response, info = await ch.unary_unary(url.path).with_call(
                            call.body, timeout=timeout, metadata=metadata)
                        out.append(Seen(0, dict(info.initial_metadata()), response,
                                        info.info.response_flags))
                except MeshRpcError as err:
                    out.append(seen_of_error(err))
        finally:
            for ch in channels.values():
                await ch.close()
            mesh.close()
        return out

    return asyncio.run(run())


def expected_code(status: int, flags: str | None) -> int:
    """The gRPC status a caller sees where the table expects an HTTP status."""
    from meshsdk.outcome import Flag
    parsed = tuple(Flag(f) for f in flags.split(",")) if flags and flags != "-" else ()
    return grpc_status_for_http(status, parsed)


def run_grpc(scenario: Scenario,
             driver: Callable[[Config, Sequence[Call]], list[Seen]] = grpc_driver) -> None:
    """:func:`meshsdk.testing.conformance.run` with gRPC upstreams and gRPC statuses."""
    run(scenario, driver, upstream=GrpcUpstream, protocol="GRPC", status_of=expected_code)
