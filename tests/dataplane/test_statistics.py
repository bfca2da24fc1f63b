"""Traffic shares against real servers: many calls, a fixed seed, stated tolerances.

A VirtualService splits ``reviews`` 80/20 between subsets v1 and v2, each backed by
one real upstream. Every call is an independent draw (Envoy picks a weighted cluster
per request), so the number of v1 answers in n calls is Binomial(n, 0.8):

* mean 0.8 n, standard deviation sqrt(n * 0.8 * 0.2) = 0.4 sqrt(n);
* n = 10,000: sd = 40 calls (0.4 percentage points);
* n = 2,000: sd ~ 17.9 calls (0.9 points).

The tolerance is 4 sd: a correct mesh lands outside it with probability ~6e-5 for a
random seed (and the seed is fixed, so the test is deterministic), while a real
error in the split is far outside it: 75/25 or 85/15 would be 12.5 sd off at 10,000
calls, 5.6 sd at 2,000.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable

import pytest

from meshsdk.testing.upstream import Upstream
from tests.dataplane.conftest import Build
from tests.dataplane.harness import AsyncCaller, Got, SyncCaller

URL = "http://reviews/split"

SPLIT = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
"""


def _tolerance(n: int, p: float = 0.8, sds: float = 4.0) -> float:
    return sds * math.sqrt(n * p * (1 - p))


def _check_split(seen: list[Got], v1: Upstream, v2: Upstream) -> None:
    n = len(seen)
    answered = Counter(g.upstream for g in seen)
    # What the caller saw and what the servers received agree exactly.
    assert answered == {"v1": v1.hits, "v2": v2.hits}
    assert v1.hits + v2.hits == n
    assert all(g.status == 200 and g.flags == "-" and g.attempts == 1 for g in seen)
    assert abs(v1.hits - 0.8 * n) <= _tolerance(n), (v1.hits, v2.hits)


@pytest.mark.slow
def test_80_20_split_over_10000_sync_calls(
        mesh_upstream: Callable[..., Upstream], build: Build) -> None:
    v1 = mesh_upstream("reviews", labels={"version": "v1"}, name="v1")
    v2 = mesh_upstream("reviews", labels={"version": "v2"}, name="v2")
    caller = SyncCaller(build(SPLIT, seed=20260))
    try:
        seen = caller.many(10_000, URL)  # one client: a kept-alive connection per server
    finally:
        caller.close()
    _check_split(seen, v1, v2)
    # Each call is its own draw, not a fixed interleaving (which would give the right
    # shares too): after a v1 answer the next is v1 with probability 0.8. From ~8,000
    # v1 answers that frequency has sd sqrt(0.16 / 8000) ~ 0.0045; a round-robin-like
    # pattern (v1 v1 v1 v1 v2) would give 0.75, 11 sd away. Tolerance: 4 sd = 0.018.
    after_v1 = [b.upstream for a, b in itertools.pairwise(seen) if a.upstream == "v1"]
    stay = after_v1.count("v1") / len(after_v1)
    assert abs(stay - 0.8) <= 4 * math.sqrt(0.16 / len(after_v1)), stay


def test_80_20_split_over_2000_async_calls(
        mesh_upstream: Callable[..., Upstream], build: Build) -> None:
    v1 = mesh_upstream("reviews", labels={"version": "v1"}, name="v1")
    v2 = mesh_upstream("reviews", labels={"version": "v2"}, name="v2")
    caller = AsyncCaller(build(SPLIT, seed=4242))
    try:
        seen = caller.gather(2_000, URL, concurrency=4)  # 4 in flight at a time
    finally:
        caller.close()
    _check_split(seen, v1, v2)


def test_same_seed_same_sequence(
        mesh_upstream: Callable[..., Upstream], build: Build) -> None:
    # Mesh(rng=random.Random(seed)) makes a run repeatable call for call.
    mesh_upstream("reviews", labels={"version": "v1"}, name="v1")
    mesh_upstream("reviews", labels={"version": "v2"}, name="v2")
    runs: list[list[str | None]] = []
    for _ in range(2):
        caller = SyncCaller(build(SPLIT, seed=99) if not runs else build(seed=99))
        try:
            runs.append([g.upstream for g in caller.many(200, URL)])
        finally:
            caller.close()
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"v1", "v2"}
