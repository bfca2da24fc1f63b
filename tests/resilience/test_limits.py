"""Connection-pool limits: admission, overflow and Istio's "unlimited" defaults."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from meshsdk.config.kinds.destination_rule import ConnectionPoolSettings
from meshsdk.resilience.limits import UNLIMITED, ConnectionLimits


def limits(spec: dict[str, Any] | None, **kw: Any) -> ConnectionLimits:
    settings = ConnectionPoolSettings.model_validate(spec) if spec is not None else None
    return ConnectionLimits(settings, **kw)


def admit(lim: ConnectionLimits, n: int) -> list[bool]:
    return [lim.try_acquire() for _ in range(n)]


def test_istio_defaults_are_effectively_unlimited() -> None:
    lim = limits(None)
    assert lim.max_connections == lim.max_pending_requests == UNLIMITED == 2**32 - 1
    assert lim.max_requests == lim.max_retries == UNLIMITED
    assert all(admit(lim, 10_000))
    assert lim.in_flight == 10_000
    assert lim.connect_timeout == 10.0
    assert lim.idle_timeout == 3600.0
    assert lim.max_requests_per_connection is None


def test_http1_connections_plus_pending_requests_bound_admission() -> None:
    lim = limits({"tcp": {"maxConnections": 2}, "http": {"http1MaxPendingRequests": 1}})
    assert admit(lim, 4) == [True, True, True, False]  # 2 on connections, 1 pending, overflow
    assert lim.in_flight == 3
    assert lim.pending == 1
    lim.release()
    assert lim.try_acquire()
    assert not lim.try_acquire()


def test_max_connections_alone_leaves_pending_unlimited() -> None:
    # Istio's classic circuit-breaker demo sets both fields for a reason: with only
    # maxConnections, requests queue as pending without limit.
    lim = limits({"tcp": {"maxConnections": 1}})
    assert all(admit(lim, 1000))


def test_http2_max_requests_bounds_requests_in_flight() -> None:
    lim = limits({"http": {"http2MaxRequests": 3}})
    assert admit(lim, 5) == [True, True, True, False, False]
    lim.release()
    assert admit(lim, 2) == [True, False]


def test_the_tighter_of_both_limits_wins() -> None:
    lim = limits({"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1,
                                                         "http2MaxRequests": 5}})
    assert lim.max_in_flight == 2
    assert admit(lim, 3) == [True, True, False]


def test_zero_means_unset() -> None:
    lim = limits({"tcp": {"maxConnections": 0},
                  "http": {"http1MaxPendingRequests": 0, "http2MaxRequests": 0,
                           "maxRetries": 0, "maxRequestsPerConnection": 0}})
    assert lim.max_in_flight >= UNLIMITED
    assert lim.max_retries == UNLIMITED
    assert lim.max_requests_per_connection is None


def test_max_retries_bounds_concurrent_retries() -> None:
    lim = limits({"http": {"maxRetries": 2}})
    assert [lim.try_acquire_retry() for _ in range(3)] == [True, True, False]
    assert lim.retries_in_flight == 2
    lim.release_retry()
    assert lim.try_acquire_retry()
    assert all(admit(lim, 100))  # retries do not limit requests


def test_release_never_goes_negative() -> None:
    lim = limits({"http": {"http2MaxRequests": 1}})
    lim.release()
    lim.release_retry()
    assert lim.in_flight == 0 and lim.retries_in_flight == 0
    assert admit(lim, 2) == [True, False]


def test_timeouts_and_per_connection_limits() -> None:
    lim = limits({"tcp": {"connectTimeout": "250ms"},
                  "http": {"idleTimeout": "30s", "maxRequestsPerConnection": 100}})
    assert lim.connect_timeout == 0.25
    assert lim.idle_timeout == 30.0
    assert lim.max_requests_per_connection == 100
    assert limits({"http": {"idleTimeout": "0s"}}).idle_timeout is None  # 0 disables
    mesh_default = limits({"http": {"maxRetries": 1}}, default_connect_timeout=2.0)
    assert mesh_default.connect_timeout == 2.0


def test_update_keeps_requests_in_flight() -> None:
    lim = limits({"http": {"http2MaxRequests": 5}})
    assert all(admit(lim, 4))
    lim.update(ConnectionPoolSettings.model_validate({"http": {"http2MaxRequests": 2}}))
    assert lim.in_flight == 4
    assert not lim.try_acquire()
    for _ in range(3):
        lim.release()
    assert lim.try_acquire()


def test_admission_is_exact_under_threads() -> None:
    lim = limits({"http": {"http2MaxRequests": 5}})
    barrier = threading.Barrier(8)
    peak = 0
    peak_lock = threading.Lock()
    refused = 0

    def worker() -> None:
        nonlocal peak, refused
        barrier.wait()
        for _ in range(2000):
            if lim.try_acquire():
                with peak_lock:
                    peak = max(peak, lim.in_flight)
                lim.release()
            else:
                with peak_lock:
                    refused += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lim.in_flight == 0
    assert peak <= 5


def test_limits_change_only_through_update_which_keeps_admission_in_step() -> None:
    # admission compares against a value derived from the limits: a limit assigned
    # directly would leave it stale, so the limits are read-only
    lim = limits({"http": {"http2MaxRequests": 1}})
    with pytest.raises(AttributeError):
        lim.max_requests = 5  # type: ignore[misc]
    assert admit(lim, 2) == [True, False]
    lim.update(ConnectionPoolSettings.model_validate({"http": {"http2MaxRequests": 3}}))
    assert (lim.max_requests, lim.max_in_flight) == (3, 3)
    assert admit(lim, 3) == [True, True, False]  # one already in flight, still counted
