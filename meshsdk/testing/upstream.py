"""Real throwaway HTTP servers on 127.0.0.1 for tests and demos.

An :class:`Upstream` is a small threaded HTTP/1.1 server whose answers follow a
*behaviour* you choose (fixed reply, delay, fail every Nth call, reset the
connection, hang) and which records every request it receives, so a test can
assert exactly how many calls reached each endpoint and with which headers.
Plain ``http.server``: no dependency, and it behaves like a real peer on a real
socket (resets are real TCP RSTs).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the upstream saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Reply:
    """What to answer: status, body and headers; or ``reset``/``hang`` instead."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False          # close the connection with a TCP RST before answering
    reset_mid_body: bool = False  # send headers and part of the body, then RST
    hang: bool = False           # never answer (until the server stops)
    stream: Iterable[bytes] | None = None
    """Send these chunks instead of ``body`` (chunked transfer encoding, flushed one by
    one), e.g. a generator that paces a large body or waits for the client."""


Behaviour = Callable[[Received, int], Reply]
"""``behaviour(request, n)`` -> Reply, where ``n`` counts requests from 1."""


def respond(status: int = 200, body: bytes | str | None = None,
            headers: dict[str, str] | None = None) -> Behaviour:
    """Always the same answer."""
    data = body.encode() if isinstance(body, str) else body

    def behaviour(req: Received, n: int) -> Reply:
        return Reply(status, data if data is not None else b"", dict(headers or {}))
    return behaviour


def fail_every(nth: int, status: int = 503, ok: Behaviour | None = None) -> Behaviour:
    """Answer ``status`` on every ``nth`` request, else ``ok`` (default 200)."""
    good = ok or respond()

    def behaviour(req: Received, n: int) -> Reply:
        return Reply(status, b"failing") if n % nth == 0 else good(req, n)
    return behaviour


def script(*replies: Reply, then: Behaviour | None = None) -> Behaviour:
    """Replies in order, then ``then`` (default: repeat the last reply)."""
    def behaviour(req: Received, n: int) -> Reply:
        if n <= len(replies):
            return replies[n - 1]
        return then(req, n) if then is not None else replies[-1]
    return behaviour


class Upstream:
    """A real HTTP server on 127.0.0.1 (port chosen by the OS unless given).

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``name`` is
    echoed in the ``x-upstream`` response header, which lets tests see who answered.
    """

    def __init__(self, name: str = "upstream", behaviour: Behaviour | None = None, *,
                 port: int = 0, host: str = "127.0.0.1") -> None:
        self.name = name
        self.behaviour: Behaviour = behaviour or respond(200, name)
        self._host, self._want_port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[Received] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Upstream:
        server = _Server((self._host, self._want_port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- facts -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "upstream not started"
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset_hits(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, req: Received) -> int:
        with self._lock:
            self.requests.append(req)
            return len(self.requests)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, reset) is routine here, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _handler_for(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Head and body are separate writes: with Nagle on, the body waits for the
        # client's delayed ACK of the head (~40 ms per request on Linux).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                body = _read_chunked(self.rfile)
            req = Received(self.command, self.path,
                           {k.lower(): v for k, v in self.headers.items()}, body)
            n = upstream._record(req)
            reply = upstream.behaviour(req, n)
            if reply.delay:
                upstream._stopping.wait(reply.delay)
            if reply.hang:
                upstream._stopping.wait(60.0)
                self.close_connection = True
                return
            if reply.reset:
                _rst(self.connection)
                self.close_connection = True
                return
            payload = reply.body
            self.send_response(reply.status)
            self.send_header("x-upstream", upstream.name)
            if reply.stream is not None:
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(len(payload)))
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if reply.stream is not None:
                _write_chunked(self.wfile, reply.stream)
                return
            if reply.reset_mid_body:
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                _rst(self.connection)
                self.close_connection = True
                return
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    return Handler


def _rst(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer sees a TCP reset, as from a crashed server."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def _write_chunked(wfile: Any, chunks: Iterable[bytes]) -> None:
    try:
        for chunk in chunks:
            if chunk:
                wfile.write(b"%x\r\n" % len(chunk))
                wfile.write(chunk)
                wfile.write(b"\r\n")
                wfile.flush()
        wfile.write(b"0\r\n\r\n")
        wfile.flush()
    except OSError:  # the client went away mid-body
        pass


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            rfile.readline()
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


def echo(req: Received, n: int) -> Reply:
    """A behaviour answering with the request as JSON (method, path, headers)."""
    data = json.dumps({"method": req.method, "path": req.path, "headers": req.headers,
                       "body": req.body.decode("utf-8", "replace"), "n": n}).encode()
    return Reply(200, data, {"content-type": "application/json"})


def free_port() -> int:
    """A TCP port that nothing listens on right now (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; for background effects (mirrors)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
