"""Retry budgets: how many retries a cluster may send, relative to its traffic.

Per-route ``attempts`` bound the retries of one request; a budget bounds the retries
of all requests together, so a failing backend sees a bounded extra load instead of
``1 + attempts`` times its traffic (the "retry storm" Istio users met for years
before ``retryBudget`` existed).

The driver calls, per cluster:

* :meth:`RetryBudget.on_request` when a request (its first attempt) starts and
  :meth:`RetryBudget.on_request_done` when the request is finished, retries included;
* :meth:`RetryBudget.try_withdraw` before each retry; ``False`` means do not retry
  (answer with what the last attempt got);
* :meth:`RetryBudget.on_retry_done` when a retry that was allowed has ended (also
  when it was allowed but not sent, e.g. ``maxRetries`` refused it). As a safety net
  the concurrency budget never counts more retries in flight than requests in flight.

Two budgets:

* :class:`ConcurrencyRetryBudget`: the DestinationRule's ``trafficPolicy.retryBudget``
  (Istio 1.27+), i.e. Envoy's circuit-breaker ``retry_budget``: retries in flight may
  not exceed ``max(minRetryConcurrency, percent% of requests in flight)`` (defaults
  20% and 3; the product is truncated to an integer, as Envoy does). With
  ``budgetInterval`` set, the base is the number of requests started during that
  interval instead of those in flight (Envoy's newer ``budget_interval``, counted
  in ten slots). When a budget is configured it replaces ``maxRetries``.
* :class:`RatioRetryBudget`: what meshsdk uses when no ``retryBudget`` is configured
  (Istio has none then; Finagle and Linkerd do): over a sliding window of ``ttl``
  (10s, ten slots), retries may not exceed 20% of the requests started in the window
  plus a floor of ``min_retries_per_sec * ttl`` (10/s, so 100) that lets a quiet
  client still retry. Every decision reads the injected clock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, Protocol

DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3
DEFAULT_TTL = 10.0
DEFAULT_MIN_RETRIES_PER_SEC = 10.0
DEFAULT_RETRY_RATIO = 0.2
_SLOTS = 10


class RetryBudget(Protocol):
    """A cluster-wide allowance of retries (thread-safe, never blocks)."""

    def on_request(self) -> None:
        """A request started (its first attempt; retries are not requests here)."""
        ...

    def try_withdraw(self) -> bool:
        """May one more retry go out now? ``True`` reserves it until :meth:`on_retry_done`."""
        ...

    def on_request_done(self) -> None:
        """A request finished, after all its attempts."""
        ...

    def on_retry_done(self) -> None:
        """A retry allowed by :meth:`try_withdraw` ended (concurrency budgets free it)."""
        ...


class _Window:
    """Counts over the last ``ttl`` seconds, in ``_SLOTS`` slots (not thread-safe alone).

    A running sum is kept; slots are expired only when time has moved on to a new
    slot, so adding and reading are O(1) between slot changes.
    """

    __slots__ = ("_counts", "_generation", "_slot", "_sum")

    def __init__(self, ttl: float) -> None:
        self._slot = ttl / _SLOTS
        self._counts = [0] * _SLOTS
        self._generation = 0
        self._sum = 0

    def _roll(self, now: float) -> int:
        generation = math.floor(now / self._slot)
        behind = generation - self._generation
        if behind > 0:
            if behind >= _SLOTS:
                self._counts = [0] * _SLOTS
                self._sum = 0
            else:
                for g in range(self._generation + 1, generation + 1):
                    i = g % _SLOTS
                    self._sum -= self._counts[i]
                    self._counts[i] = 0
            self._generation = generation
        return generation

    def add(self, now: float, amount: int = 1) -> None:
        generation = math.floor(now / self._slot)
        if generation != self._generation:  # a new slot (rarely): expire the old ones
            generation = self._roll(now)
            if generation < self._generation:  # the clock went back: count it as now
                generation = self._generation
        self._counts[generation % _SLOTS] += amount
        self._sum += amount

    def total(self, now: float) -> int:
        self._roll(now)
        return self._sum


class ConcurrencyRetryBudget:
    """Envoy's ``retry_budget``: concurrent retries <= max(min, percent% of requests)."""

    def __init__(self, percent: float = DEFAULT_BUDGET_PERCENT,
                 min_retry_concurrency: int = DEFAULT_MIN_RETRY_CONCURRENCY,
                 budget_interval: float | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        if budget_interval and clock is None:
            raise ValueError("a budget_interval needs a clock")
        self.percent = percent
        self.min_retry_concurrency = min_retry_concurrency
        self.budget_interval = budget_interval or None
        self._clock = clock
        self._window = _Window(budget_interval) if budget_interval else None
        self._lock = threading.Lock()
        self._active = 0
        self._retries = 0

    def on_request(self) -> None:
        with self._lock:
            self._active += 1
            if self._window is not None and self._clock is not None:
                self._window.add(self._clock())

    def on_request_done(self) -> None:
        with self._lock:
            if self._active > 0:
                self._active -= 1
            # Every retry in flight belongs to a request in flight (attempts of one
            # request are sequential), so a retry whose end was never reported cannot
            # outlive its request.
            if self._retries > self._active:
                self._retries = self._active

    def _limit(self) -> int:
        if self._window is not None and self._clock is not None:
            base = self._window.total(self._clock())
        else:
            base = self._active
        return max(int(self.percent / 100.0 * base), self.min_retry_concurrency)

    def limit(self) -> int:
        """Retries allowed in flight right now."""
        with self._lock:
            return self._limit()

    def try_withdraw(self) -> bool:
        with self._lock:
            if self._retries >= self._limit():
                return False
            self._retries += 1
            return True

    def on_retry_done(self) -> None:
        with self._lock:
            if self._retries > 0:
                self._retries -= 1

    @property
    def active_requests(self) -> int:
        return self._active

    @property
    def active_retries(self) -> int:
        return self._retries


class RatioRetryBudget:
    """Finagle/Linkerd-style budget: retries in the window <= ratio * requests + floor."""

    def __init__(self, clock: Callable[[], float], *, ttl: float = DEFAULT_TTL,
                 min_retries_per_sec: float = DEFAULT_MIN_RETRIES_PER_SEC,
                 retry_ratio: float = DEFAULT_RETRY_RATIO) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        self._clock = clock
        self.ttl = ttl
        self.retry_ratio = retry_ratio
        self.reserve = min_retries_per_sec * ttl
        self._lock = threading.Lock()
        self._requests = _Window(ttl)
        self._retries = _Window(ttl)

    def on_request(self) -> None:
        now = self._clock()
        lock = self._lock  # acquire/release: half the cost of `with` (see balancer.py)
        lock.acquire()
        try:
            self._requests.add(now)
        finally:
            lock.release()

    def on_request_done(self) -> None:
        pass

    def try_withdraw(self) -> bool:
        now = self._clock()
        with self._lock:
            allowed = self.reserve + self.retry_ratio * self._requests.total(now)
            if self._retries.total(now) + 1 > allowed + 1e-9:
                return False
            self._retries.add(now)
            return True

    def on_retry_done(self) -> None:
        pass

    def balance(self) -> float:
        """Retries still allowed in the current window."""
        now = self._clock()
        with self._lock:
            return (self.reserve + self.retry_ratio * self._requests.total(now)
                    - self._retries.total(now))


def make_retry_budget(settings: Any | None, clock: Callable[[], float]) -> RetryBudget:
    """The budget for a cluster: its DestinationRule ``retryBudget`` (``percent``,
    ``minRetryConcurrency``, ``budgetInterval``; Istio's 0 means the default 3), or the
    ratio budget when none is configured."""
    if settings is None:
        return RatioRetryBudget(clock)
    percent = getattr(settings, "percent", None)
    minimum = getattr(settings, "min_retry_concurrency", None)
    interval = getattr(settings, "budget_interval", None)
    return ConcurrencyRetryBudget(
        percent=DEFAULT_BUDGET_PERCENT if percent is None else float(percent),
        min_retry_concurrency=minimum if minimum else DEFAULT_MIN_RETRY_CONCURRENCY,
        budget_interval=interval or None, clock=clock)
