"""Measurements handed off the request path, recorded later by a drainer.

Why: OpenTelemetry's Python SDK cleans and hashes every attribute of every measurement.
With Istio's 25 labels that is 10-50 us per measurement, three histograms per call:
more than the whole mesh costs. Envoy faces the same problem and keeps its stats in
per-worker stores merged off the request path; this module is that idea for Python.
A request thread appends one small tuple to a :class:`DeferredQueue` (a
``collections.deque``: append and popleft are atomic, no lock on the hot path) and the
queue is drained into the instruments

* at collection time, by whoever collects (the OTel reader calls the sink's observable
  counter callback, which drains first): an export or a scrape never misses a call
  that finished before it;
* by one shared background thread (:class:`Drainer`), woken when a queue holds a batch
  or every ``interval`` seconds, so the queue stays short between collections;
* by the request thread itself when the queue reaches its hard ``limit``: memory stays
  bounded when the drainer cannot keep up (back-pressure, never loss).

The CPU cost is the same as recording inline; what changes is who waits for it. The
``CPU us/call`` column of ``bench/sdk_overhead.py`` shows that cost unchanged.

The drainer works in short slices (``slice_seconds`` of recording, then a ``pause``):
all of this is Python holding the interpreter lock, and a request thread whose answer
has arrived should not wait for a whole backlog. Left to the interpreter, a thread
that wants the lock waits out the switch interval (5 ms) before the holder is asked
to let go, and a drainer with hundreds of calls queued gets asked again and again:
a few calls in every batch took 5 ms longer (the p99 of the OTel column in
``bench/sdk_overhead.py``). The pause is a real sleep: ``time.sleep(0)`` hands the
lock to nobody, the sleeper takes it back before a waiter wakes.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_BATCH = 256
"""Queued items that wake the drainer before its interval is up."""

DEFAULT_LIMIT = 65_536
"""Queued items at which the request thread drains the queue itself."""

DEFAULT_INTERVAL = 0.5
"""Seconds between the drainer's rounds when nothing wakes it earlier."""

DEFAULT_SLICE = 0.001
"""Seconds the drainer records before it pauses (a request thread waits at most
about this long for the interpreter lock on the drainer's account)."""

DEFAULT_PAUSE = 0.0002
"""Seconds the drainer sleeps between slices while a backlog remains."""


class Drainer:
    """One daemon thread that drains every registered queue: woken by a queue that
    holds a batch, else every ``interval`` seconds. Queues are held weakly, so a
    forgotten queue (a mesh never closed) does not live on through the drainer."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, *,
                 slice_seconds: float = DEFAULT_SLICE, pause: float = DEFAULT_PAUSE,
                 clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        if slice_seconds <= 0 or pause < 0:
            raise ValueError(f"need slice_seconds > 0 and pause >= 0, got "
                             f"slice_seconds={slice_seconds} pause={pause}")
        self.interval = interval
        self.slice_seconds = slice_seconds
        self.pause = pause
        self._clock = clock
        self._sleep = sleep
        self._queues: weakref.WeakSet[DeferredQueue[object]] = weakref.WeakSet()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def register(self, queue: DeferredQueue[object]) -> None:
        """Drain ``queue`` from now on (starts the thread on first use)."""
        with self._lock:
            self._queues.add(queue)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="meshsdk-drainer",
                                                daemon=True)
                self._thread.start()

    def unregister(self, queue: DeferredQueue[object]) -> None:
        with self._lock:
            self._queues.discard(queue)

    def wake(self) -> None:
        """Drain soon (a queue holds a batch)."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.run_once()

    def run_once(self) -> int:
        """One round: drain every registered queue in slices of ``slice_seconds``,
        sleeping ``pause`` between slices, until all are empty; returns the pauses
        taken. The drainer thread runs this when woken; tests call it directly."""
        pauses = 0
        while True:
            with self._lock:
                queues = list(self._queues)
            backlog = False
            for queue in queues:
                if not queue.drain_for(self.slice_seconds, self._clock):
                    backlog = True
            if not backlog:
                return pauses
            self._sleep(self.pause)  # the lock goes to request threads meanwhile
            pauses += 1

    def _after_fork(self) -> None:
        """In a forked child the thread is gone (and the locks may be held): start over."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        queues = list(self._queues)
        for queue in queues:
            queue._after_fork()
        if queues:
            self.register(queues[0])


_DRAINER = Drainer()


def shared_drainer() -> Drainer:
    """The process's drainer, shared by every queue that is not given its own."""
    return _DRAINER


if hasattr(os, "register_at_fork"):  # gunicorn and friends fork after import
    os.register_at_fork(after_in_child=lambda: _DRAINER._after_fork())


class DeferredQueue(Generic[T]):
    """Items put by request threads, each passed to ``handle`` later, in order, once.

    ``handle`` runs under this queue's drain lock, one item at a time, on whichever
    thread drains: the drainer, a collector calling :meth:`drain`, or a request thread
    that found the queue full. An exception from ``handle`` is not caught here: the
    handler decides what a bad item means (the metrics sink never raises).
    """

    def __init__(self, handle: Callable[[T], None], *, batch: int = DEFAULT_BATCH,
                 limit: int = DEFAULT_LIMIT, drainer: Drainer | None = None) -> None:
        if batch < 1 or limit < batch:
            raise ValueError(f"need 1 <= batch <= limit, got batch={batch} limit={limit}")
        self._handle = handle
        self._batch = batch
        self._limit = limit
        self._items: deque[T] = deque()
        self._drain_lock = threading.Lock()
        self._drainer = drainer if drainer is not None else _DRAINER
        self._registered = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def lock(self) -> threading.Lock:
        """The lock ``handle`` runs under: hold it to read what ``handle`` writes."""
        return self._drain_lock

    def put(self, item: T) -> None:
        """Queue ``item`` (cheap: this is the request path)."""
        items = self._items
        items.append(item)
        if not self._registered:
            self._registered = True
            self._drainer.register(self)  # type: ignore[arg-type]
        size = len(items)
        if size >= self._batch:
            if size >= self._limit:
                self.drain()  # the drainer is behind: this caller pays, memory stays bounded
            elif size == self._batch:
                self._drainer.wake()

    def drain(self) -> int:
        """Hand every queued item to ``handle``; returns how many (collection time, a
        full queue, :meth:`close`: whoever calls this waits for all of it)."""
        return self._handle_until(None, None)[0]

    def drain_for(self, seconds: float, clock: Callable[[], float]) -> bool:
        """Hand queued items to ``handle`` until the queue is empty (True) or ``seconds``
        of ``clock`` have passed (False: items remain). At least one item is handled
        when there is one, so a slow handler still makes progress."""
        return self._handle_until(clock() + seconds, clock)[1]

    def _handle_until(self, deadline: float | None, clock: Callable[[], float] | None
                      ) -> tuple[int, bool]:
        """The one drain loop: items handled, and whether the queue was emptied (no
        ``deadline``: until it is)."""
        items = self._items
        handle = self._handle
        done = 0
        with self._drain_lock:
            while True:
                try:
                    item = items.popleft()
                except IndexError:
                    return done, True
                handle(item)
                done += 1
                if clock is not None and deadline is not None and clock() >= deadline:
                    return done, not items

    def close(self) -> None:
        """Drain what is queued and leave the drainer (items put later still queue and
        are drained by the next :meth:`drain`)."""
        self.drain()
        if self._registered:
            self._drainer.unregister(self)  # type: ignore[arg-type]
            self._registered = False

    def _after_fork(self) -> None:
        # what was queued belongs to the parent, which records it: the child starts empty
        self._drain_lock = threading.Lock()
        self._items.clear()


__all__ = ["DEFAULT_BATCH", "DEFAULT_INTERVAL", "DEFAULT_LIMIT", "DEFAULT_PAUSE",
           "DEFAULT_SLICE", "DeferredQueue", "Drainer", "shared_drainer"]
