"""Fire-and-forget sending of mirrored requests, bounded so mirroring can never
exhaust threads, sockets or memory of the app it runs in.

When ``max_in_flight`` copies are already on their way, further copies are
dropped and counted, never queued: a mirror must not slow or break the answer.
A copy that fails is counted and logged at DEBUG on the ``meshsdk.mirror`` logger.
A client closed while copies it started are still on their way closes its transport
when the last of them ends (:meth:`MirrorSender.close_transport`), so closing a
client never cuts a copy off mid-request (an async copy still needs its event loop
to run).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

_log = logging.getLogger("meshsdk.mirror")


class MirrorSender:
    """Sends mirror copies in the background: a small thread pool for sync clients,
    tasks on the running loop for async ones."""

    def __init__(self, max_in_flight: int = 64, workers: int = 2) -> None:
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # transports with copies in flight, and those to close when their copies end
        self._using: dict[httpx.BaseTransport | httpx.AsyncBaseTransport, int] = {}
        self._closing: set[httpx.BaseTransport | httpx.AsyncBaseTransport] = set()
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def submit_sync(self, transport: httpx.BaseTransport, request: httpx.Request) -> None:
        if not self._slots.acquire(blocking=False):
            self.dropped += 1
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="mesh-mirror")
            pool = self._pool
        self._use(transport)
        pool.submit(self._run_sync, transport, request)

    def _run_sync(self, transport: httpx.BaseTransport, request: httpx.Request) -> None:
        try:
            response = transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
            self.sent += 1
        except Exception as exc:  # a mirror's failure is nobody's business but the counter's
            self.failed += 1
            _log.debug("mirror copy to %s failed: %r", request.url, exc)
        finally:
            self._slots.release()
            if self._unuse(transport):
                transport.close()

    def close_transport(self, transport: httpx.BaseTransport) -> None:
        """Close ``transport`` now, or, while copies sent through it are on their way,
        when the last of them ends."""
        if not self._close_later(transport):
            transport.close()

    async def aclose_transport(self, transport: httpx.AsyncBaseTransport) -> None:
        """:meth:`close_transport` for an async client's transport."""
        if not self._close_later(transport):
            await transport.aclose()

    def _use(self, transport: httpx.BaseTransport | httpx.AsyncBaseTransport) -> None:
        with self._lock:
            self._using[transport] = self._using.get(transport, 0) + 1

    def _unuse(self, transport: httpx.BaseTransport | httpx.AsyncBaseTransport) -> bool:
        """One copy through ``transport`` ended; True: it was the last one and the
        transport's client is closed, so the caller closes the transport now."""
        with self._lock:
            left = self._using[transport] - 1
            if left:
                self._using[transport] = left
                return False
            del self._using[transport]
            if transport not in self._closing:
                return False
            self._closing.discard(transport)
            return True

    def _close_later(self, transport: httpx.BaseTransport | httpx.AsyncBaseTransport) -> bool:
        """True when copies are in flight through ``transport``: the last one closes it."""
        with self._lock:
            if transport in self._using:
                self._closing.add(transport)
                return True
            return False

    def submit_async(self, transport: httpx.AsyncBaseTransport, request: httpx.Request) -> None:
        if not self._slots.acquire(blocking=False):
            self.dropped += 1
            return
        self._use(transport)
        task = asyncio.get_running_loop().create_task(self._run_async(transport, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_async(self, transport: httpx.AsyncBaseTransport,
                         request: httpx.Request) -> None:
        try:
            response = await transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
            self.sent += 1
        except Exception as exc:
            self.failed += 1
            _log.debug("mirror copy to %s failed: %r", request.url, exc)
        finally:
            self._slots.release()
            if self._unuse(transport):
                await transport.aclose()

    def close(self, wait: bool = True) -> None:
        """Stop the thread pool (waiting for copies in flight by default)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)
