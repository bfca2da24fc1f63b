"""Endpoint selection: Istio's ``loadBalancer`` settings as pure pickers.

A :class:`Balancer` is made once per cluster (destination host, subset, port) by
:func:`make_balancer` and shared by every request to it, from threads and from
asyncio alike. ``pick`` chooses among the endpoints it is handed, which are the
cluster's endpoints already narrowed by outlier detection
(:meth:`~meshsdk.resilience.outlier.OutlierDetector.healthy`) and by locality
(:func:`locality_preference`); ``started``/``finished`` bracket each attempt so the
least-request balancer knows how busy every endpoint is.

What each Istio setting becomes (Envoy's behaviour, with where we differ):

* ``simple: UNSPECIFIED`` / ``LEAST_REQUEST`` / ``LEAST_CONN`` (and no
  ``loadBalancer`` at all): least request. With equal weights, power of two
  choices: two endpoints drawn at random (with replacement, Envoy's
  ``choice_count`` 2) and the one with fewer active requests wins, the first on a
  tie. With unequal weights Envoy switches to weights biased by load,
  ``weight / (active + 1) ** 1.0`` (``active_request_bias`` 1.0); Envoy schedules
  those with an earliest-deadline-first queue, we draw at random with the same
  weights: the same shares on average, and no schedule to rebuild when endpoints
  come and go.
* ``ROUND_ROBIN``: equal weights cycle in order, starting at a random offset (as
  Envoy seeds its index) so a fleet of clients does not hit the same first host;
  unequal weights use smooth weighted round robin (each pick: every endpoint gains
  its weight, the richest is chosen and pays the total), a deterministic
  interleaving with exactly the configured shares.
* ``RANDOM``: a weighted random pick.
* ``PASSTHROUGH``: ``pick`` returns ``None``. The caller dials the address the
  application asked for (Envoy's ORIGINAL_DST cluster): no endpoint list is used.
* ``consistentHash`` with ``ringHash`` (the default, ``minimumRingSize`` 1024,
  also the deprecated top-level ``minimumRingSize``) or ``maglev`` (``tableSize``
  65537): the ring or table is built lazily from the endpoint set (order does not
  matter) and cached; weights give proportionally more ring entries or table
  slots. Envoy caps rings at 8M entries; we cap them at 2**18 so a pathological
  weight ratio cannot stall a request for seconds. When the request has no hash
  key (:func:`hash_key` returned ``None``) a random point of the ring/table is
  used, which is what Envoy does.

``avoid`` carries the endpoints a request already tried (``retryIgnorePreviousHosts``):
every balancer prefers the others and falls back to the tried ones only when
nothing else is left. Envoy re-picks up to five times and keeps the last pick;
excluding them up front never lands on a tried host while another is available.
Consistent hashing walks on from the key's point (ring) or rehashes (Maglev), as
Envoy does for retries.

Warmup (slow start) is not applied yet.

Endpoints are identified by ``(address, port)``: :class:`Endpoint` itself is not
hashable (its labels are a mapping), and two snapshots' copies of the same
workload must count as one host.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import unquote_plus

from meshsdk.config.hosts import join_host_port
from meshsdk.config.kinds.destination_rule import (
    LoadBalancerSettings,
    LocalityLoadBalancerSetting,
)
from meshsdk.config.mesh import LocalityLbSetting
from meshsdk.config.snapshot import Endpoint
from meshsdk.routing.request import RequestView

EndpointKey = tuple[str, int]

DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAGLEV_TABLE_SIZE = 65537
MAX_RING_SIZE = 1 << 18
_CACHE_LIMIT = 4
_MASK64 = (1 << 64) - 1


def endpoint_key(endpoint: Endpoint) -> EndpointKey:
    """The identity of an endpoint across snapshots: ``(address, port)``."""
    return endpoint.key


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process (unlike the salted ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class Balancer(Protocol):
    """Chooses an endpoint for one attempt. Shared across threads and event loops."""

    def pick(self, endpoints: Sequence[Endpoint], *, hash_key: int | None = None,
             avoid: Collection[Endpoint] = ()) -> Endpoint | None:
        """One endpoint of ``endpoints`` (``None`` only when empty, or PASSTHROUGH).

        ``avoid`` holds endpoints already tried by this request: they are chosen only
        when no other endpoint is left.
        """
        ...

    def started(self, endpoint: Endpoint) -> None:
        """An attempt began on ``endpoint`` (active-request accounting)."""
        ...

    def finished(self, endpoint: Endpoint) -> None:
        """The attempt on ``endpoint`` ended, whatever its outcome."""
        ...


# --- shared machinery ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a balancer needs to know about one endpoint sequence, computed once."""

    uniform: bool
    keys: tuple[EndpointKey, ...]
    weights: tuple[int, ...]
    cumulative: tuple[float, ...]                   # running sums of the weights
    signature: tuple[tuple[str, int, int], ...]     # address, port, weight


def _shape_of(endpoints: Sequence[Endpoint]) -> _Shape:
    keys = tuple(e.key for e in endpoints)
    weights = tuple(max(e.weight, 0) for e in endpoints)
    cumulative = tuple(itertools.accumulate(float(w) for w in weights))
    signature = tuple((a, p, w) for (a, p), w in zip(keys, weights, strict=True))
    return _Shape(len(set(weights)) <= 1, keys, weights, cumulative, signature)


class _Base:
    """Active-request accounting shared by every balancer, and a per-sequence cache."""

    __slots__ = ("_active", "_lock", "_rng", "_shape")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._lock = threading.Lock()
        self._active: dict[EndpointKey, int] = {}
        self._shape: tuple[Sequence[Endpoint] | None, _Shape | None] = (None, None)

    def _shape_for(self, endpoints: Sequence[Endpoint]) -> _Shape:
        """Cached by identity: drivers pass the same tuple while nothing changes."""
        seq, shape = self._shape
        if seq is endpoints and shape is not None:
            return shape
        shape = _shape_of(endpoints)
        self._shape = (endpoints, shape)  # one atomic store
        return shape

    # started/finished run on every call: acquire/release in try/finally, as `with`
    # would, at half its cost (a lock's __exit__ parses three arguments in 3.11)

    def started(self, endpoint: Endpoint) -> None:
        key = endpoint.key
        lock = self._lock
        lock.acquire()
        try:
            self._active[key] = self._active.get(key, 0) + 1
        finally:
            lock.release()

    def finished(self, endpoint: Endpoint) -> None:
        key = endpoint.key
        lock = self._lock
        lock.acquire()
        try:
            left = self._active.get(key, 0) - 1
            if left > 0:
                self._active[key] = left
            else:
                self._active.pop(key, None)
        finally:
            lock.release()

    def active(self, endpoint: Endpoint) -> int:
        """Attempts in flight on ``endpoint`` through this balancer."""
        return self._active.get(endpoint.key, 0)


def _without(endpoints: Sequence[Endpoint], shape: _Shape, avoid: Collection[Endpoint]
             ) -> tuple[Sequence[Endpoint], Sequence[EndpointKey], Sequence[int]]:
    """``endpoints`` (with their keys and weights) minus the avoided ones; all of them
    if nothing else is left."""
    avoided = {e.key for e in avoid}
    kept = [i for i, key in enumerate(shape.keys) if key not in avoided]
    if not kept or len(kept) == len(endpoints):
        return endpoints, shape.keys, shape.weights
    return ([endpoints[i] for i in kept], [shape.keys[i] for i in kept],
            [shape.weights[i] for i in kept])


def _pick_cumulative(endpoints: Sequence[Endpoint], cumulative: Sequence[float],
                     rand: Callable[[], float]) -> Endpoint:
    """A weighted draw given the running sums of the weights."""
    total = cumulative[-1]
    if total <= 0:
        return endpoints[int(rand() * len(endpoints))]
    index = bisect.bisect_right(cumulative, rand() * total)
    return endpoints[min(index, len(endpoints) - 1)]


# --- least request ---------------------------------------------------------------------


class LeastRequestBalancer(_Base):
    """Envoy's LEAST_REQUEST: power of two choices, load-biased weights when unequal."""

    __slots__ = ()

    def pick(self, endpoints: Sequence[Endpoint], *, hash_key: int | None = None,
             avoid: Collection[Endpoint] = ()) -> Endpoint | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        shape = self._shape_for(endpoints)
        keys: Sequence[EndpointKey] = shape.keys
        weights: Sequence[int] = shape.weights
        if avoid:
            endpoints, keys, weights = _without(endpoints, shape, avoid)
            n = len(endpoints)
            if n == 1:
                return endpoints[0]
        active = self._active
        rand = self._rng.random
        if shape.uniform:
            i = int(rand() * n)
            j = int(rand() * n)
            return endpoints[j] if active.get(keys[j], 0) < active.get(keys[i], 0) \
                else endpoints[i]
        # Envoy: weight / (active + 1) ** active_request_bias, whose default is 1.0
        total = 0.0
        cumulative = []
        for key, weight in zip(keys, weights, strict=True):
            total += weight / (active.get(key, 0) + 1)
            cumulative.append(total)
        return _pick_cumulative(endpoints, cumulative, rand)


# --- round robin ------------------------------------------------------------------------


class RoundRobinBalancer(_Base):
    """Envoy's ROUND_ROBIN: in order for equal weights, smooth weighted otherwise."""

    __slots__ = ("_current", "_index", "_randomize", "_state_key")

    def __init__(self, rng: random.Random, *, randomize_start: bool = True) -> None:
        super().__init__(rng)
        self._randomize = randomize_start
        self._index = -1  # not started
        self._state_key: tuple[tuple[str, int, int], ...] = ()
        self._current: list[float] = []

    def pick(self, endpoints: Sequence[Endpoint], *, hash_key: int | None = None,
             avoid: Collection[Endpoint] = ()) -> Endpoint | None:
        n = len(endpoints)
        if n == 0:
            return None
        if n == 1:
            return endpoints[0]
        avoided = {e.key for e in avoid} if avoid else None
        shape = self._shape_for(endpoints)
        if shape.uniform:
            with self._lock:
                if self._index < 0:
                    self._index = self._rng.randrange(n) if self._randomize else 0
                first = endpoints[self._index % n]
                for _ in range(n):
                    chosen = endpoints[self._index % n]
                    self._index += 1
                    if avoided is None or chosen.key not in avoided:
                        return chosen
                return first
        key = shape.signature
        with self._lock:
            if key is not self._state_key and key != self._state_key:
                self._state_key = key
                self._current = [0.0] * n
                if self._randomize:
                    for _ in range(self._rng.randrange(n)):
                        self._smooth_step()
            tried: Endpoint | None = None
            for _ in range(n):
                chosen = endpoints[self._smooth_step()]
                if tried is None:
                    tried = chosen
                if avoided is None or chosen.key not in avoided:
                    return chosen
            return tried

    def _smooth_step(self) -> int:
        current = self._current
        total = 0
        best = 0
        for i, (_, _, weight) in enumerate(self._state_key):
            current[i] += weight
            total += weight
            if current[i] > current[best]:
                best = i
        current[best] -= total
        return best


# --- random -------------------------------------------------------------------------------


class RandomBalancer(_Base):
    """Envoy's RANDOM: weighted random."""

    __slots__ = ()

    def pick(self, endpoints: Sequence[Endpoint], *, hash_key: int | None = None,
             avoid: Collection[Endpoint] = ()) -> Endpoint | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        shape = self._shape_for(endpoints)
        cumulative: Sequence[float] = shape.cumulative
        if avoid:
            endpoints, _, weights = _without(endpoints, shape, avoid)
            if len(endpoints) < n:
                n = len(endpoints)
                cumulative = list(itertools.accumulate(float(w) for w in weights))
        rand = self._rng.random
        if shape.uniform:
            return endpoints[int(rand() * n)]
        return _pick_cumulative(endpoints, cumulative, rand)


class PassthroughBalancer(_Base):
    """PASSTHROUGH: no endpoint is chosen; the caller dials the original destination."""

    __slots__ = ()

    def pick(self, endpoints: Sequence[Endpoint], *, hash_key: int | None = None,
             avoid: Collection[Endpoint] = ()) -> Endpoint | None:
        return None


# --- consistent hashing -----------------------------------------------------------------


_HashKey = tuple[tuple[str, int, int], ...]


class _HashBalancer(_Base):
    """Shared cache of lazily built rings/tables, one per endpoint set.

    Structures hold endpoint keys, not :class:`Endpoint` objects, and picks map them
    back through the sequence being balanced: a new snapshot whose endpoints differ
    only in labels, locality or service account reuses the structure but returns the
    new objects.
    """

    __slots__ = ("_cache", "_last")

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._cache: dict[_HashKey, Any] = {}
        self._last: tuple[Sequence[Endpoint] | None, Any, dict[EndpointKey, Endpoint]] = (
            None, None, {})

    def _structure(self, endpoints: Sequence[Endpoint]
                   ) -> tuple[Any, dict[EndpointKey, Endpoint]]:
        seq, built, by_key = self._last
        if seq is endpoints:
            return built, by_key
        key = tuple(sorted((e.address, e.port, e.weight) for e in endpoints))
        built = self._cache.get(key)
        if built is None:
            # Built outside the lock: a large table takes a while and other threads
            # must not wait for it; two racing builds produce the same result.
            built = self._build(key)
            with self._lock:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = built
        by_key = {e.key: e for e in endpoints}
        self._last = (endpoints, built, by_key)  # one atomic store
        return built, by_key

    def prepare(self, endpoints: Sequence[Endpoint]) -> None:
        """Build (and cache) the ring or table for ``endpoints`` now, e.g. from a worker
        thread when the endpoints change, so no request pays for it (a 65537-slot
        Maglev table takes tens of milliseconds of CPU in Python)."""
        if len(endpoints) > 1:
            self._structure(endpoints)

    def _build(self, key: _HashKey) -> Any:
        raise NotImplementedError

    def _lookup(self, built: Any, h: int, avoided: Collection[EndpointKey]) -> EndpointKey:
        raise NotImplementedError

    def pick(self, endpoints: Sequence[Endpoint], *, hash_key: int | None = None,
             avoid: Collection[Endpoint] = ()) -> Endpoint | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        if hash_key is None:
            hash_key = self._rng.getrandbits(64)
        avoided = {e.key for e in avoid} if avoid else frozenset()
        built, by_key = self._structure(endpoints)
        return by_key[self._lookup(built, hash_key & _MASK64, avoided)]


class RingHashBalancer(_HashBalancer):
    """Envoy's RING_HASH (ketama-style ring; entries per host proportional to weight)."""

    __slots__ = ("min_ring_size",)

    def __init__(self, rng: random.Random, min_ring_size: int = DEFAULT_MIN_RING_SIZE) -> None:
        super().__init__(rng)
        self.min_ring_size = max(1, min(min_ring_size, MAX_RING_SIZE))

    def _build(self, key: _HashKey) -> tuple[list[int], list[EndpointKey]]:
        weights = [max(w, 1) for _, _, w in key]
        total = sum(weights)
        min_share = min(weights) / total
        # Envoy: the lightest host gets at least one entry and the ring at least
        # min_ring_size entries; every host gets entries in proportion to its weight.
        scale = min(math.ceil(min_share * self.min_ring_size) / min_share, float(MAX_RING_SIZE))
        points: list[tuple[int, EndpointKey]] = []
        current = 0.0
        target = 0.0
        for (address, port, _), w in zip(key, weights, strict=True):
            target += scale * w / total
            name = join_host_port(address, port)
            i = 0
            while current < target:
                points.append((stable_hash(f"{name}_{i}".encode()), (address, port)))
                i += 1
                current += 1
        points.sort()
        return [h for h, _ in points], [k for _, k in points]

    def _lookup(self, built: Any, h: int, avoided: Collection[EndpointKey]) -> EndpointKey:
        hashes, hosts = built
        size = len(hashes)
        index = bisect.bisect_left(hashes, h)
        if index == size:
            index = 0
        chosen: EndpointKey = hosts[index]
        if not avoided or chosen not in avoided:
            return chosen
        for step in range(1, size):  # walk on, as if the tried hosts were off the ring
            other: EndpointKey = hosts[(index + step) % size]
            if other not in avoided:
                return other
        return chosen

    def ring_size(self, endpoints: Sequence[Endpoint]) -> int:
        """Entries in the ring for ``endpoints`` (built if needed)."""
        return len(self._structure(endpoints)[0][0])


class MaglevBalancer(_HashBalancer):
    """Envoy's MAGLEV: a lookup table of ``table_size`` (prime) slots, weighted fill."""

    __slots__ = ("table_size",)

    def __init__(self, rng: random.Random,
                 table_size: int = DEFAULT_MAGLEV_TABLE_SIZE) -> None:
        super().__init__(rng)
        self.table_size = table_size

    def _build(self, key: _HashKey) -> list[EndpointKey]:
        m = self.table_size
        weights = [max(w, 1) for _, _, w in key]
        top = max(weights)
        offsets: list[int] = []
        skips: list[int] = []
        hosts: list[EndpointKey] = []
        for address, port, _ in key:
            name = join_host_port(address, port).encode()
            offsets.append(stable_hash(name) % m)
            skips.append(stable_hash(b"skip:" + name) % (m - 1) + 1 if m > 1 else 1)
            hosts.append((address, port))
        # Envoy's weighted fill: a host of the largest weight takes a slot every round,
        # one of a third of it every third round; each takes the next free slot of its
        # own permutation offset, offset + skip, offset + 2 * skip ... (mod m).
        normalized = [w / top for w in weights]
        targets = list(normalized)
        positions = list(offsets)  # the next slot of each host's permutation to try
        table: list[EndpointKey | None] = [None] * m
        filled = 0
        iteration = 0
        while filled < m:
            iteration += 1
            for i, host in enumerate(hosts):
                if iteration * normalized[i] < targets[i]:
                    continue
                targets[i] += 1.0
                c, skip = positions[i], skips[i]
                while table[c] is not None:
                    c += skip
                    if c >= m:
                        c -= m
                table[c] = host
                c += skip
                positions[i] = c - m if c >= m else c
                filled += 1
                if filled == m:
                    break
        return [k for k in table if k is not None]

    def _lookup(self, built: Any, h: int, avoided: Collection[EndpointKey]) -> EndpointKey:
        table: list[EndpointKey] = built
        m = len(table)
        chosen = table[h % m]
        if not avoided or chosen not in avoided:
            return chosen
        for attempt in range(1, 9):  # rehash, as Envoy's Maglev does for retries
            other = table[stable_hash(h.to_bytes(8, "little") + bytes([attempt])) % m]
            if other not in avoided:
                return other
        for step in range(1, m):
            other = table[(h + step) % m]
            if other not in avoided:
                return other
        return chosen


# --- factory -----------------------------------------------------------------------------


def make_balancer(settings: LoadBalancerSettings | None, rng: random.Random) -> Balancer:
    """The balancer for a cluster's ``trafficPolicy.loadBalancer`` (``None``: Istio's default,
    LEAST_REQUEST). A ``consistentHash`` wins over ``simple`` (validation rejects both)."""
    if settings is not None and (ch := settings.consistent_hash) is not None:
        if ch.maglev is not None:
            return MaglevBalancer(rng, ch.maglev.table_size or DEFAULT_MAGLEV_TABLE_SIZE)
        size = (ch.ring_hash.minimum_ring_size if ch.ring_hash is not None
                else ch.minimum_ring_size)
        return RingHashBalancer(rng, size or DEFAULT_MIN_RING_SIZE)
    simple = settings.simple if settings is not None else None
    if simple == "ROUND_ROBIN":
        return RoundRobinBalancer(rng)
    if simple == "RANDOM":
        return RandomBalancer(rng)
    if simple == "PASSTHROUGH":
        return PassthroughBalancer(rng)
    return LeastRequestBalancer(rng)


# --- hash keys ------------------------------------------------------------------------------


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, eq, v = part.strip().partition("=")
        if eq and k == name:
            return v.strip()
    return None


def _query_param(query: str, name: str) -> str | None:
    for part in query.split("&"):
        k, eq, v = part.partition("=")
        if unquote_plus(k) == name:
            return unquote_plus(v) if eq else ""
    return None


def hash_key(settings: LoadBalancerSettings | None, req: RequestView,
             source_ip: str | None = None) -> int | None:
    """The consistent-hash key of a request, or ``None`` (then a random endpoint is used).

    * ``httpHeaderName``: the header's value (repeated headers joined with ``,``);
    * ``httpCookie``: the named cookie's value. When it is absent and ``ttl`` is set,
      Envoy generates the cookie, hashes it and sets it on the response; meshsdk
      does not generate cookies: it hashes nothing and the pick is random;
    * ``useSourceIp``: ``source_ip``, the caller's address (no port);
    * ``httpQueryParameterName``: the parameter's first value.

    The hash is a 64-bit BLAKE2b, stable across processes and restarts.
    """
    if settings is None or (ch := settings.consistent_hash) is None:
        return None
    value: str | None = None
    if ch.http_header_name:
        value = req.headers.get(ch.http_header_name.lower())
    elif ch.http_cookie is not None:
        cookies = req.headers.get("cookie")
        value = _cookie(cookies, ch.http_cookie.name) if cookies else None
    elif ch.use_source_ip:
        value = source_ip or None
    elif ch.http_query_parameter_name:
        value = _query_param(req.query, ch.http_query_parameter_name) if req.query else None
    if value is None:
        return None
    return stable_hash(value.encode("utf-8", "surrogateescape"))


# --- locality -----------------------------------------------------------------------------------


def _split_locality(locality: str) -> tuple[str, str, str]:
    parts = locality.split("/", 2)
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def _locality_matches(locality: str, rule: str) -> bool:
    """Istio's LocalityMatch: ``*`` and omitted zone/subzone are wildcards."""
    region, zone, subzone = _split_locality(locality)
    r_region, r_zone, r_subzone = _split_locality(rule)
    return ((r_region == "*" or r_region == region)
            and (r_zone in ("*", "") or r_zone == zone)
            and (r_subzone in ("*", "") or r_subzone == subzone))


def _priority(client: tuple[str, str, str], endpoint: str,
              failover: Sequence[Any]) -> int:
    """Istio's LbPriority, then failover: 0 same subzone ... 3 other region, 4 not the
    failover region of the client's region."""
    region, zone, subzone = _split_locality(endpoint)
    if region == client[0]:
        if zone == client[1]:
            return 0 if subzone == client[2] else 1
        return 2
    for rule in failover:
        if rule.from_ == client[0]:
            return 3 if region == rule.to else 4
    return 3


def locality_preference(endpoints: Sequence[Endpoint], client_locality: str,
                        settings: LocalityLoadBalancerSetting | LocalityLbSetting | None, *,
                        failover_enabled: bool = True) -> tuple[Endpoint, ...]:
    """The endpoints Istio's locality load balancing would send this client to.

    Applied only when ``client_locality`` (``region/zone/subzone``) is known and
    locality load balancing is not disabled (``settings.enabled: false``). ``settings``
    is the DestinationRule's ``localityLbSetting``, or the mesh-wide one when the rule
    has none (``None`` means Istio's mesh default: enabled, no rules).

    * ``distribute``: the first rule whose ``from`` matches the client gives each
      destination locality (wildcards allowed) a share in percent. Endpoints keep a
      weight of ``share * weight / (weight of their locality)`` (scaled to integers);
      endpoints in localities the rule does not name are dropped.
    * otherwise, failover: endpoints are ranked like Istio's priorities (same
      region+zone+subzone, same region+zone, same region, the ``failover`` target
      region, the rest) and only the best non-empty level is kept. Pass the endpoints
      already filtered by outlier detection so that a level whose hosts are all
      ejected is skipped. Istio applies failover only when the cluster has outlier
      detection (``failover_enabled``); Envoy also spills part of the traffic to the
      next level when under 72% of a level is healthy (overprovisioning 1.4), which
      is not modelled: the best level takes everything while it has a healthy host.

    ``failoverPriority`` (label-based failover) is not applied.
    """
    if not endpoints or not client_locality:
        return tuple(endpoints)
    if settings is not None and settings.enabled is False:
        return tuple(endpoints)
    distribute = settings.distribute if settings is not None else ()
    if distribute:
        for rule in distribute:
            if _locality_matches(client_locality, rule.from_):
                return _distribute(endpoints, rule.to)
        return tuple(endpoints)
    if not failover_enabled:
        return tuple(endpoints)
    client = _split_locality(client_locality)
    failover = settings.failover if settings is not None else ()
    best = 5
    kept: list[Endpoint] = []
    for e in endpoints:
        p = _priority(client, e.locality, failover)
        if p < best:
            best, kept = p, [e]
        elif p == best:
            kept.append(e)
    return tuple(kept)


def _distribute(endpoints: Sequence[Endpoint], to: dict[str, int]) -> tuple[Endpoint, ...]:
    left = set(range(len(endpoints)))
    share: dict[int, float] = {}
    for rule, percent in to.items():
        matched = [i for i in sorted(left) if _locality_matches(endpoints[i].locality, rule)]
        if not matched:
            continue
        left.difference_update(matched)
        total = sum(max(endpoints[i].weight, 1) for i in matched)
        for i in matched:
            share[i] = percent * max(endpoints[i].weight, 1) / total
    return tuple(replace(endpoints[i], weight=max(1, round(share[i] * 1000)))
                 for i in range(len(endpoints)) if share.get(i, 0) > 0)
