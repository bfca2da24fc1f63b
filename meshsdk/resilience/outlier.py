"""Outlier detection: eject endpoints that keep failing, as Envoy does for Istio.

One :class:`OutlierDetector` per cluster. The driver reports every attempt's
:class:`~meshsdk.outcome.Outcome` with :meth:`OutlierDetector.record` and asks
:meth:`OutlierDetector.healthy` for the endpoints to balance over. Nothing runs in
the background: Envoy's interval timer is replayed from the injected clock whenever
the detector is used, tick by tick as Envoy would have run it.

Istio's ``outlierDetection`` as Envoy receives it (pilot's ``applyOutlierDetection``):

* ``consecutive5xxErrors`` (default 5; 0 disables): 5xx answers, and attempts that
  got no answer (connect failure, reset: counted as 503; per-try timeout: 504).
  A success (any non-5xx answer) resets the count.
* ``consecutiveGatewayErrors`` (off unless set; 0 disables): 502, 503, 504 and the
  same answerless failures.
* The deprecated ``consecutiveErrors`` keeps the meaning Istio gave it while it
  translated it (and that its API text still gives): a threshold for gateway
  errors, with ``consecutive5xxErrors`` off; either explicit field wins over it.
  Current Istio silently ignores the field; we honour it rather than do nothing.
* ``splitExternalLocalOriginErrors``: answerless failures stop counting as 5xx or
  gateway errors and count only toward ``consecutiveLocalOriginFailures`` (Envoy's
  default 5 when unset or 0); any answer from the host resets that count.
* gRPC: when the answer carries a ``grpc-status``, the HTTP status Envoy derives
  from it is counted (UNAVAILABLE 503, INTERNAL 500, DEADLINE_EXCEEDED 504 ...).
* Our own overflow (``Failure.OVERFLOW``, flag UO) is never held against a host.
* An ejection lasts ``baseEjectionTime`` (30s) times the host's ejection multiplier,
  capped at Envoy's ``max_ejection_time`` (300s, or the base time if larger). The
  multiplier grows by one per ejection and shrinks by one per ``interval`` (10s)
  tick the host spends healthy; hosts return to service at the first tick after
  their time is up.
* ``maxEjectionPercent`` (10; Istio passes 0 as "unset", so 0 also means 10): a host
  is ejected only if ejected hosts, itself included, stay within that share of the
  cluster. Envoy's ``always_eject_one_host`` is off and Istio does not set it, so
  with the default 10% a cluster needs at least 10 endpoints before any is ejected.
* ``minHealthPercent`` (0): when fewer than this share of the endpoints are healthy
  the cluster is in panic: outlier detection is ignored and every endpoint is
  returned (Envoy's ``healthy_panic_threshold``, which Istio sets from it).
  At 0 there is no panic: if every host is ejected none is returned (503 UH).

Endpoints are identified by ``(address, port)``. :meth:`OutlierDetector.healthy`
must be given the cluster's full endpoint list (before locality filtering): it is
how the detector learns the cluster's size, and hosts that left the cluster are
forgotten, as Envoy forgets removed hosts.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshsdk.config.kinds.destination_rule import OutlierDetection
from meshsdk.config.snapshot import Endpoint
from meshsdk.outcome import Failure, Outcome

EndpointKey = tuple[str, int]

DEFAULT_CONSECUTIVE_5XX = 5
DEFAULT_CONSECUTIVE_LOCAL_ORIGIN = 5
DEFAULT_INTERVAL = 10.0
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_TIME = 300.0
DEFAULT_MAX_EJECTION_PERCENT = 10
_EPS = 1e-9

# Envoy's Grpc::Utility::grpcToHttpStatus (used for outlier detection of gRPC answers).
_GRPC_TO_HTTP = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
                 9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


def grpc_to_http_status(grpc_status: int) -> int:
    """The HTTP status Envoy derives from a gRPC status (500 for unknown codes)."""
    return _GRPC_TO_HTTP.get(grpc_status, 500)


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Istio's ``outlierDetection`` with Envoy's defaults filled in (0 = check off)."""

    consecutive_5xx: int
    consecutive_gateway: int
    consecutive_local_origin: int
    split_local_origin: bool
    interval: float
    base_ejection_time: float
    max_ejection_time: float
    max_ejection_percent: int
    min_health_percent: int

    @classmethod
    def from_settings(cls, s: OutlierDetection) -> OutlierConfig:
        five, gateway = DEFAULT_CONSECUTIVE_5XX, 0
        if s.consecutive_errors:  # deprecated: gateway errors only
            five, gateway = 0, s.consecutive_errors
        if s.consecutive_5xx_errors is not None:
            five = s.consecutive_5xx_errors
        if s.consecutive_gateway_errors is not None:
            gateway = s.consecutive_gateway_errors
        split = bool(s.split_external_local_origin_errors)
        local = 0
        if split:
            local = s.consecutive_local_origin_failures or DEFAULT_CONSECUTIVE_LOCAL_ORIGIN
        base = s.base_ejection_time or DEFAULT_BASE_EJECTION_TIME
        return cls(
            consecutive_5xx=max(five, 0), consecutive_gateway=max(gateway, 0),
            consecutive_local_origin=max(local, 0), split_local_origin=split,
            interval=s.interval or DEFAULT_INTERVAL, base_ejection_time=base,
            max_ejection_time=max(DEFAULT_MAX_EJECTION_TIME, base),
            max_ejection_percent=min(s.max_ejection_percent or DEFAULT_MAX_EJECTION_PERCENT,
                                     100),
            min_health_percent=max(s.min_health_percent or 0, 0),
        )


@dataclass(slots=True)
class _Host:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    consecutive_local: int = 0
    ejected: bool = False
    ejected_at: float = 0.0
    unejected_at: float | None = None
    multiplier: int = 0
    ejections: int = 0

    def reset_counts(self) -> None:
        self.consecutive_5xx = self.consecutive_gateway = self.consecutive_local = 0


class OutlierDetector:
    """Envoy's consecutive-error outlier detection for one cluster (thread-safe)."""

    def __init__(self, settings: OutlierDetection, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._config = OutlierConfig.from_settings(settings)
        self._hosts: dict[EndpointKey, _Host] = {}
        self._ejected: set[EndpointKey] = set()
        self._changing: set[EndpointKey] = set()  # ejected, or multiplier above 0
        self._members: frozenset[EndpointKey] = frozenset()
        self._members_of: Sequence[Endpoint] | None = None
        self._version = 0
        self._healthy_cache: tuple[Sequence[Endpoint] | None, int, tuple[Endpoint, ...]] = (
            None, -1, ())
        now = clock()
        self._anchor = now          # ticks fall at anchor + k * interval, k >= 1
        self._processed = now       # every tick up to here has been applied
        self._next_tick = now + self._config.interval

    @property
    def config(self) -> OutlierConfig:
        return self._config

    # --- configuration -------------------------------------------------------------------

    def update(self, settings: OutlierDetection) -> None:
        """Apply a new ``outlierDetection``; ejections, multipliers and counts are kept."""
        now = self._clock()
        with self._lock:
            self._advance(now)
            old = self._config
            self._config = OutlierConfig.from_settings(settings)
            if self._config.interval != old.interval:
                self._anchor = self._processed = now
                self._next_tick = now + self._config.interval

    # --- reporting ---------------------------------------------------------------------

    def record(self, endpoint: Endpoint, outcome: Outcome) -> None:
        """Account one attempt's outcome on ``endpoint`` (may eject it)."""
        failure = outcome.failure
        if failure is Failure.OVERFLOW:
            return
        key = endpoint.key
        status = outcome.status
        if (failure is None and outcome.grpc_status is None and status is not None
                and (status < 500 or status > 599)):
            # The common case, without the lock: a success on a host in service whose
            # counts are all zero changes nothing (a count raced in by another thread
            # just orders before this success, as the lock could have ordered it).
            known = self._hosts.get(key)
            if (known is not None and not known.ejected and not known.consecutive_5xx
                    and not known.consecutive_gateway and not known.consecutive_local):
                return
        now = self._clock()
        with self._lock:
            if now >= self._next_tick:
                self._advance(now)
            host = self._hosts.get(key)
            if host is None:
                host = self._hosts[key] = _Host()
            elif host.ejected:
                return  # counts restart when it returns to service
            cfg = self._config
            if failure is not None:
                if cfg.split_local_origin:
                    host.consecutive_local += 1
                    if (cfg.consecutive_local_origin
                            and host.consecutive_local >= cfg.consecutive_local_origin):
                        host.consecutive_local = 0
                        self._try_eject(key, host, now)
                    return
                code = 504 if failure is Failure.TIMEOUT else 503
            else:
                if outcome.grpc_status is not None:
                    code = _GRPC_TO_HTTP.get(outcome.grpc_status, 500)
                elif outcome.status is not None:
                    code = outcome.status
                else:
                    return
                host.consecutive_local = 0  # the host answered: the connection is fine
            if code < 500 or code > 599:
                host.consecutive_5xx = host.consecutive_gateway = 0
                return
            if code in (502, 503, 504):
                host.consecutive_gateway += 1
                if cfg.consecutive_gateway and host.consecutive_gateway >= cfg.consecutive_gateway:
                    host.consecutive_gateway = 0
                    self._try_eject(key, host, now)
                    if host.ejected:
                        return
            else:
                host.consecutive_gateway = 0
            host.consecutive_5xx += 1
            if cfg.consecutive_5xx and host.consecutive_5xx >= cfg.consecutive_5xx:
                host.consecutive_5xx = 0
                self._try_eject(key, host, now)

    def _try_eject(self, key: EndpointKey, host: _Host, now: float) -> None:
        cfg = self._config
        total = len(self._members) or len(self._hosts)
        if 100.0 * (len(self._ejected) + 1) / total > cfg.max_ejection_percent:
            return  # Envoy's ejections_overflow: the cap holds
        host.ejected = True
        host.ejected_at = now
        host.ejections += 1
        base = cfg.base_ejection_time
        if host.multiplier * base < cfg.max_ejection_time + base:  # Envoy's growth cap
            host.multiplier += 1
        self._ejected.add(key)
        self._changing.add(key)
        self._version += 1

    # --- the interval timer, replayed ------------------------------------------------------

    def _tick_at_or_after(self, t: float) -> float:
        iv = self._config.interval
        k = max(1, math.ceil((t - self._anchor) / iv - _EPS))
        return self._anchor + k * iv

    def _tick_after(self, t: float) -> float:
        iv = self._config.interval
        k = max(1, math.floor((t - self._anchor) / iv + _EPS) + 1)
        return self._anchor + k * iv

    def _advance(self, now: float) -> None:
        """Apply every interval tick in (processed, now], in closed form per host."""
        if now <= self._processed:
            return
        cfg = self._config
        iv = cfg.interval
        first_tick = self._tick_after(self._processed)
        for key in list(self._changing):
            host = self._hosts.get(key)
            if host is None:
                self._changing.discard(key)
                continue
            if host.ejected:
                duration = min(cfg.base_ejection_time * host.multiplier, cfg.max_ejection_time)
                back = max(self._tick_at_or_after(host.ejected_at + duration), first_tick)
                if back > now + _EPS:
                    continue
                host.ejected = False
                host.unejected_at = back
                host.reset_counts()
                self._ejected.discard(key)
                self._version += 1
                # Every later tick finds it healthy a full interval after its return.
                decay = math.floor((now - back) / iv + _EPS)
            elif host.unejected_at is not None:
                start = max(self._tick_at_or_after(host.unejected_at + iv), first_tick)
                decay = math.floor((now - start) / iv + _EPS) + 1 if start <= now + _EPS else 0
            else:
                decay = 0
            host.multiplier = max(0, host.multiplier - decay)
            if host.multiplier == 0:
                self._changing.discard(key)
        self._processed = now
        self._next_tick = self._tick_after(now)

    # --- queries -------------------------------------------------------------------------

    def healthy(self, endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
        """``endpoints`` without the ejected ones (all of them in panic, see the module
        docs). Returns the same tuple object while nothing changes, so callers can cache
        by identity."""
        now = self._clock()
        if (endpoints is self._members_of and not self._ejected and now < self._next_tick
                and isinstance(endpoints, tuple)):
            # Nothing ejected, nothing due, the same endpoints: nothing to read under the
            # lock (an ejection racing in orders after this call, as the lock could have).
            return endpoints
        with self._lock:
            if now >= self._next_tick:
                self._advance(now)
            if endpoints is not self._members_of:
                members = frozenset(e.key for e in endpoints)
                if members != self._members:
                    self._forget_others(members)
                    self._members = members
                self._members_of = endpoints
            if not self._ejected:
                return endpoints if isinstance(endpoints, tuple) else tuple(endpoints)
            seq, version, cached = self._healthy_cache
            if seq is endpoints and version == self._version:
                return cached
            ejected = self._ejected
            kept = tuple(e for e in endpoints if e.key not in ejected)
            floor = self._config.min_health_percent
            if endpoints and floor and 100.0 * len(kept) / len(endpoints) < floor:
                kept = tuple(endpoints)  # panic: balance over every endpoint
            self._healthy_cache = (endpoints, self._version, kept)
            return kept

    def _forget_others(self, members: frozenset[EndpointKey]) -> None:
        for key in [k for k in self._hosts if k not in members]:
            del self._hosts[key]
            self._changing.discard(key)
            if key in self._ejected:
                self._ejected.discard(key)
                self._version += 1

    def is_ejected(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is ejected now (whatever the panic threshold says)."""
        now = self._clock()
        with self._lock:
            if now >= self._next_tick:
                self._advance(now)
            return endpoint.key in self._ejected

    def ejection_count(self, endpoint: Endpoint) -> int:
        """How many times ``endpoint`` has been ejected (Envoy's ``num_ejections``)."""
        with self._lock:
            host = self._hosts.get(endpoint.key)
            return host.ejections if host is not None else 0

    def ejection_multiplier(self, endpoint: Endpoint) -> int:
        """Envoy's ejection-time multiplier: an ejection lasts ``baseEjectionTime`` times
        this (capped); it grows by one per ejection and shrinks by one per interval the
        host spends in service."""
        now = self._clock()
        with self._lock:
            if now >= self._next_tick:
                self._advance(now)
            host = self._hosts.get(endpoint.key)
            return host.multiplier if host is not None else 0

    def ejected(self) -> frozenset[EndpointKey]:
        """``(address, port)`` of the hosts ejected now."""
        now = self._clock()
        with self._lock:
            if now >= self._next_tick:
                self._advance(now)
            return frozenset(self._ejected)
