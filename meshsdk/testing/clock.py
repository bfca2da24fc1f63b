"""A fake monotonic clock for tests: time moves only when the test (or a sleep) moves it.

    >>> from meshsdk.testing.clock import FakeClock
    >>> clock = FakeClock()
    >>> start = clock.now()
    >>> clock.sleep(0.25)              # returns at once, the clock moved
    >>> clock.advance(30)
    >>> clock.now() - start, clock.sleeps
    (30.25, [0.25])

Give it to a mesh as ``Mesh(config, workload, clock=clock.now, sleep=clock.sleep,
async_sleep=clock.async_sleep)`` (or ``mesh_config.build(clock=clock)`` in the pytest
plugin): route deadlines, retry backoff, outlier-detection intervals and ejection
times, retry-budget windows and DNS lifetimes then follow the fake time, so tests of
them run instantly and give the same answer every time.

Network I/O is not faked: a per-try timeout still waits for the real socket.
"""

from __future__ import annotations

import asyncio
import threading


class FakeClock:
    """Monotonic time advanced by hand; ``sleep`` advances it instead of blocking.

    Every requested sleep is recorded in :attr:`sleeps` (in seconds, in order), so a
    test can check the backoff a retry policy asked for. Thread-safe.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        """The current fake time, in seconds."""
        with self._lock:
            return self._now

    __call__ = now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back: advance({seconds})")
        with self._lock:
            self._now += seconds

    def set(self, when: float) -> None:
        """Move time forward to ``when`` (never back)."""
        with self._lock:
            if when < self._now:
                raise ValueError(f"a monotonic clock cannot go back: {when} < {self._now}")
            self._now = float(when)

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance the clock by it, without blocking."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(seconds, 0.0)

    async def async_sleep(self, seconds: float) -> None:
        """:meth:`sleep` for asyncio: records, advances, and yields to the loop once."""
        self.sleep(seconds)
        await asyncio.sleep(0)

    @property
    def slept(self) -> float:
        """Total seconds slept so far."""
        with self._lock:
            return sum(max(s, 0.0) for s in self.sleeps)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleeps={len(self.sleeps)})"
