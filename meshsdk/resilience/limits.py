"""Connection-pool limits: Istio's ``connectionPool`` as Envoy's circuit breakers.

One :class:`ConnectionLimits` per cluster. A request is admitted with
:meth:`ConnectionLimits.try_acquire` before it is sent and released with
:meth:`ConnectionLimits.release` when its attempt ends; a refusal is an immediate
local ``503`` with flag ``UO`` (``outcome.UPSTREAM_OVERFLOW``), never a wait.

How Istio's fields map (pilot's ``applyConnectionPool``; a value of 0 means unset,
and unset means Istio's "effectively unlimited" 2**32-1, not Envoy's 1024):

* ``tcp.maxConnections``: connections to the cluster. Over HTTP/1.1 each request
  in flight holds a connection, and requests beyond it wait as pending, up to
  ``http.http1MaxPendingRequests``; so at most ``maxConnections +
  http1MaxPendingRequests`` requests are admitted at once.
* ``http.http2MaxRequests``: requests in flight to the cluster, whatever the
  protocol (Envoy's ``max_requests``).
* ``http.maxRetries``: retries in flight to the cluster at once
  (:meth:`ConnectionLimits.try_acquire_retry`). A DestinationRule ``retryBudget``
  replaces this limit in Envoy (see :mod:`meshsdk.resilience.budget`).
* ``tcp.connectTimeout`` (the mesh's ``connectTimeout``, 10s, when unset),
  ``http.idleTimeout`` (1h; ``0s`` disables it), ``http.maxRequestsPerConnection``
  (0 = unlimited): exposed for the transport that owns the connections.

Limits are per cluster and per process (Envoy's are per cluster and per proxy).
"""

from __future__ import annotations

import threading

from meshsdk.config.kinds.destination_rule import ConnectionPoolSettings

UNLIMITED = 2**32 - 1
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 3600.0


def _limit(value: int | None) -> int:
    return value if value is not None and value > 0 else UNLIMITED


class ConnectionLimits:
    """Admission against one cluster's circuit-breaker limits (thread-safe, never blocks)."""

    def __init__(self, settings: ConnectionPoolSettings | None, *,
                 default_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retries = 0
        self._default_connect_timeout = default_connect_timeout
        # the limits are set only through update(), which derives _admit from them
        self._max_connections = UNLIMITED
        self._max_pending_requests = UNLIMITED
        self._max_requests = UNLIMITED
        self._max_retries = UNLIMITED
        self.connect_timeout = default_connect_timeout
        self.idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
        self.max_requests_per_connection: int | None = None
        self._admit = UNLIMITED
        self.update(settings)

    def update(self, settings: ConnectionPoolSettings | None) -> None:
        """Apply new settings; requests and retries in flight stay counted."""
        tcp = settings.tcp if settings is not None else None
        http = settings.http if settings is not None else None
        with self._lock:
            self._max_connections = _limit(tcp.max_connections if tcp else None)
            self._max_pending_requests = _limit(http.http1_max_pending_requests
                                                if http else None)
            self._max_requests = _limit(http.http2_max_requests if http else None)
            self._max_retries = _limit(http.max_retries if http else None)
            self.connect_timeout = (tcp.connect_timeout if tcp and tcp.connect_timeout
                                    else self._default_connect_timeout)
            idle = http.idle_timeout if http else None
            self.idle_timeout = DEFAULT_IDLE_TIMEOUT if idle is None else (idle or None)
            per_conn = http.max_requests_per_connection if http else None
            self.max_requests_per_connection = per_conn if per_conn else None
            self._admit = min(self._max_connections + self._max_pending_requests,
                              self._max_requests)  # try_acquire's one comparison

    @property
    def max_connections(self) -> int:
        """``tcp.maxConnections`` (:data:`UNLIMITED` when unset)."""
        return self._max_connections

    @property
    def max_pending_requests(self) -> int:
        """``http.http1MaxPendingRequests`` (:data:`UNLIMITED` when unset)."""
        return self._max_pending_requests

    @property
    def max_requests(self) -> int:
        """``http.http2MaxRequests`` (:data:`UNLIMITED` when unset)."""
        return self._max_requests

    @property
    def max_retries(self) -> int:
        """``http.maxRetries`` (:data:`UNLIMITED` when unset)."""
        return self._max_retries

    @property
    def max_in_flight(self) -> int:
        """Requests admitted at once: ``min(maxConnections + pending, http2MaxRequests)``."""
        return self._admit

    def try_acquire(self) -> bool:
        """Admit one request, or refuse it (overflow: answer 503 UO without sending)."""
        lock = self._lock  # acquire/release: half the cost of `with` (see balancer.py)
        lock.acquire()
        try:
            if self._in_flight >= self._admit:
                return False
            self._in_flight += 1
            return True
        finally:
            lock.release()

    def release(self) -> None:
        """The admitted request ended (success, failure or cancellation)."""
        lock = self._lock
        lock.acquire()
        try:
            if self._in_flight > 0:
                self._in_flight -= 1
        finally:
            lock.release()

    def try_acquire_retry(self) -> bool:
        """Admit one retry under ``maxRetries`` concurrent retries; refusal = no retry."""
        with self._lock:
            if self._retries >= self._max_retries:
                return False
            self._retries += 1
            return True

    def release_retry(self) -> None:
        """The admitted retry attempt ended."""
        with self._lock:
            if self._retries > 0:
                self._retries -= 1

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._in_flight

    @property
    def retries_in_flight(self) -> int:
        """Retries admitted and not yet released."""
        return self._retries

    @property
    def pending(self) -> int:
        """Of the requests in flight, how many an HTTP/1.1 pool would hold waiting for a
        connection (beyond ``maxConnections``)."""
        return max(0, self._in_flight - self._max_connections)
