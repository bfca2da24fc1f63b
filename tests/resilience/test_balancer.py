"""Balancers, hash keys and locality preference, checked statistically with fixed seeds.

Tolerances: a share p observed over n independent picks is binomial with standard
deviation sqrt(n p (1 - p)); the bounds below are 4 standard deviations (a correct
balancer falls outside with probability ~6e-5 per check for an arbitrary seed, and
the fixed seeds make every run identical, so nothing flakes). Consistent-hash rings
are not binomial: with ~100 ring entries per host a host's share of the ring varies
by ~1/sqrt(100) = 10% of its mean, so ring shares get +-40% (4 such deviations).
"""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from meshsdk.config.kinds.destination_rule import (
    LoadBalancerSettings,
    LocalityLoadBalancerSetting,
)
from meshsdk.config.snapshot import Endpoint
from meshsdk.resilience.balancer import (
    Balancer,
    LeastRequestBalancer,
    MaglevBalancer,
    PassthroughBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
    hash_key,
    locality_preference,
    make_balancer,
    stable_hash,
)
from meshsdk.routing.request import RequestView

N = 10_000


def ep(name: str, weight: int = 1, locality: str = "", port: int = 8080) -> Endpoint:
    return Endpoint(name, port, weight=weight, locality=locality)


FOUR = (ep("a"), ep("b"), ep("c"), ep("d"))
TEN = tuple(ep(f"10.0.0.{i}") for i in range(10))


def lb(spec: dict[str, Any] | None) -> LoadBalancerSettings | None:
    return LoadBalancerSettings.model_validate(spec) if spec is not None else None


def shares(balancer: Balancer, endpoints: Sequence[Endpoint], n: int = N,
           **kw: Any) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        chosen = balancer.pick(endpoints, **kw)
        assert chosen is not None
        counts[chosen.address] += 1
    return counts


def within_4_sigma(count: int, p: float, n: int = N) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


# --- factory -------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "kind"), [
    (None, LeastRequestBalancer),
    ({}, LeastRequestBalancer),
    ({"simple": "UNSPECIFIED"}, LeastRequestBalancer),
    ({"simple": "LEAST_REQUEST"}, LeastRequestBalancer),
    ({"simple": "LEAST_CONN"}, LeastRequestBalancer),
    ({"simple": "ROUND_ROBIN"}, RoundRobinBalancer),
    ({"simple": "RANDOM"}, RandomBalancer),
    ({"simple": "PASSTHROUGH"}, PassthroughBalancer),
    ({"consistentHash": {"httpHeaderName": "x-user"}}, RingHashBalancer),
    ({"consistentHash": {"httpHeaderName": "x-user", "maglev": {"tableSize": 1009}}},
     MaglevBalancer),
])
def test_make_balancer(spec: dict[str, Any] | None, kind: type) -> None:
    assert isinstance(make_balancer(lb(spec), random.Random(0)), kind)


def test_hash_table_sizes() -> None:
    ring = make_balancer(lb({"consistentHash": {"useSourceIp": True}}), random.Random(0))
    assert isinstance(ring, RingHashBalancer) and ring.min_ring_size == 1024
    ring = make_balancer(lb({"consistentHash": {"useSourceIp": True,
                                                "ringHash": {"minimumRingSize": 64}}}),
                         random.Random(0))
    assert isinstance(ring, RingHashBalancer) and ring.min_ring_size == 64
    assert ring.ring_size(FOUR) == 64
    deprecated = make_balancer(lb({"consistentHash": {"useSourceIp": True,
                                                      "minimumRingSize": 128}}),
                               random.Random(0))
    assert isinstance(deprecated, RingHashBalancer) and deprecated.min_ring_size == 128
    maglev = make_balancer(lb({"consistentHash": {"useSourceIp": True, "maglev": {}}}),
                           random.Random(0))
    assert isinstance(maglev, MaglevBalancer) and maglev.table_size == 65537


@pytest.mark.parametrize("make", [LeastRequestBalancer, RandomBalancer, RoundRobinBalancer,
                                  RingHashBalancer, MaglevBalancer])
def test_empty_and_single(make: Any) -> None:
    balancer = make(random.Random(0))
    assert balancer.pick(()) is None
    assert balancer.pick((FOUR[2],)) is FOUR[2]
    assert balancer.pick((FOUR[2],), avoid=(FOUR[2],)) is FOUR[2]  # nothing else left


def test_passthrough_picks_nothing() -> None:
    assert PassthroughBalancer(random.Random(0)).pick(FOUR) is None


# --- least request ------------------------------------------------------------------------


def test_least_request_equal_weights_spread_evenly() -> None:
    counts = shares(LeastRequestBalancer(random.Random(1)), FOUR)
    assert all(within_4_sigma(counts[e.address], 0.25) for e in FOUR)


def test_power_of_two_choices_prefers_less_loaded_endpoints() -> None:
    balancer = LeastRequestBalancer(random.Random(2))
    for e, load in zip(FOUR, (3, 2, 1, 0), strict=True):
        for _ in range(load):
            balancer.started(e)
    counts = shares(balancer, FOUR)
    # Two draws with replacement, the less loaded wins: the endpoint ranked r-th by
    # load (0 = least loaded) of n wins with probability (2 (n - r) - 1) / n**2.
    expected = {"d": 7 / 16, "c": 5 / 16, "b": 3 / 16, "a": 1 / 16}
    for name, p in expected.items():
        assert within_4_sigma(counts[name], p), (name, counts)


def test_finished_releases_load() -> None:
    balancer = LeastRequestBalancer(random.Random(3))
    for _ in range(5):
        balancer.started(FOUR[0])
    for _ in range(5):
        balancer.finished(FOUR[0])
    balancer.finished(FOUR[0])  # extra finish: never negative
    assert balancer.active(FOUR[0]) == 0
    counts = shares(balancer, FOUR)
    assert within_4_sigma(counts["a"], 0.25)


@pytest.mark.parametrize("make", [LeastRequestBalancer, RandomBalancer])
def test_weights_are_honoured(make: Any) -> None:
    endpoints = (ep("a", 1), ep("b", 2), ep("c", 3), ep("d", 4))
    counts = shares(make(random.Random(4)), endpoints)
    for e in endpoints:
        assert within_4_sigma(counts[e.address], e.weight / 10), counts


def test_weighted_least_request_biases_by_active_requests() -> None:
    # Envoy: effective weight = weight / (active + 1); 3 / (2 + 1) == 1 / (0 + 1)
    endpoints = (ep("a", 1), ep("b", 3))
    balancer = LeastRequestBalancer(random.Random(5))
    balancer.started(endpoints[1])
    balancer.started(endpoints[1])
    counts = shares(balancer, endpoints)
    assert within_4_sigma(counts["a"], 0.5)


def test_active_counts_are_exact_under_threads() -> None:
    balancer = LeastRequestBalancer(random.Random(6))
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        for _ in range(1000):
            balancer.started(FOUR[0])
            balancer.finished(FOUR[0])
            balancer.started(FOUR[1])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert balancer.active(FOUR[0]) == 0
    assert balancer.active(FOUR[1]) == 4000


# --- round robin ---------------------------------------------------------------------------


def test_round_robin_exact_sequence() -> None:
    balancer = RoundRobinBalancer(random.Random(7), randomize_start=False)
    got = [balancer.pick(FOUR) for _ in range(9)]
    assert [e.address for e in got if e] == list("abcdabcda")


def test_round_robin_random_start_is_a_rotation() -> None:
    balancer = RoundRobinBalancer(random.Random(8))
    got = "".join(e.address for e in (balancer.pick(FOUR) for _ in range(8)) if e)
    assert got[:4] in ("abcd", "bcda", "cdab", "dabc")
    assert got[4:] == got[:4]


def test_smooth_weighted_round_robin_sequence() -> None:
    endpoints = (ep("a", 5), ep("b", 1), ep("c", 1))
    balancer = RoundRobinBalancer(random.Random(9), randomize_start=False)
    got = "".join(e.address for e in (balancer.pick(endpoints) for _ in range(14)) if e)
    assert got == "aabacaa" * 2  # interleaved, exactly 5:1:1 per cycle of 7


def test_round_robin_skips_tried_hosts() -> None:
    balancer = RoundRobinBalancer(random.Random(10), randomize_start=False)
    assert balancer.pick(FOUR, avoid=(FOUR[0], FOUR[1])) is FOUR[2]
    assert balancer.pick(FOUR, avoid=(FOUR[3],)) is FOUR[0]
    assert balancer.pick(FOUR, avoid=FOUR) in FOUR  # all tried: fall back to them


# --- avoiding tried hosts ---------------------------------------------------------------------


@pytest.mark.parametrize("make", [LeastRequestBalancer, RandomBalancer, RingHashBalancer,
                                  MaglevBalancer])
def test_tried_hosts_are_avoided_while_others_remain(make: Any) -> None:
    balancer = make(random.Random(11))
    tried = (FOUR[0], FOUR[2])
    for i in range(2000):
        chosen = balancer.pick(FOUR, avoid=tried, hash_key=stable_hash(str(i).encode()))
        assert chosen in (FOUR[1], FOUR[3])
    # avoid is matched by (address, port), not by object identity or labels
    copy = Endpoint("b", 8080, labels={"v": "2"})
    for i in range(200):
        assert balancer.pick(FOUR[:2], avoid=(copy,), hash_key=i) is FOUR[0]


# --- consistent hashing ----------------------------------------------------------------------


KEYS = [stable_hash(f"user-{i}".encode()) for i in range(N)]


@pytest.mark.parametrize("make", [RingHashBalancer, MaglevBalancer])
def test_same_key_same_endpoint(make: Any) -> None:
    balancer = make(random.Random(12))
    first = [balancer.pick(TEN, hash_key=k) for k in KEYS[:1000]]
    again = [balancer.pick(TEN, hash_key=k) for k in KEYS[:1000]]
    assert first == again
    shuffled = list(TEN)
    random.Random(0).shuffle(shuffled)
    assert [balancer.pick(tuple(shuffled), hash_key=k) for k in KEYS[:1000]] == first
    other = make(random.Random(99))  # the mapping does not depend on the random source
    assert [other.pick(TEN, hash_key=k) for k in KEYS[:1000]] == first


def test_maglev_spreads_keys_evenly() -> None:
    balancer = MaglevBalancer(random.Random(13))
    counts = Counter(e.address for e in (balancer.pick(TEN, hash_key=k) for k in KEYS) if e)
    # every host owns 1/10 of the table (+-1 slot): shares are binomial
    assert all(within_4_sigma(counts[e.address], 0.1) for e in TEN), counts


def test_ring_hash_spreads_keys() -> None:
    balancer = RingHashBalancer(random.Random(14))
    counts = Counter(e.address for e in (balancer.pick(TEN, hash_key=k) for k in KEYS) if e)
    assert all(0.06 * N <= counts[e.address] <= 0.14 * N for e in TEN), counts


def test_maglev_removing_one_endpoint_remaps_about_one_nth() -> None:
    balancer = MaglevBalancer(random.Random(15))
    before = [balancer.pick(TEN, hash_key=k) for k in KEYS]
    after = [balancer.pick(TEN[1:], hash_key=k) for k in KEYS]
    moved = sum(b is not a for b, a in zip(before, after, strict=True))
    on_removed = sum(b is TEN[0] for b in before)
    assert moved >= on_removed  # all of the removed host's keys had to move
    # ... and hardly any other (Maglev's disruption is a small fraction of 1/n)
    assert moved - on_removed <= 0.01 * N
    assert moved <= (1 / 10 + 0.02) * N


def test_ring_hash_removing_one_endpoint_keeps_most_keys() -> None:
    balancer = RingHashBalancer(random.Random(16))
    before = [balancer.pick(TEN, hash_key=k) for k in KEYS]
    after = [balancer.pick(TEN[1:], hash_key=k) for k in KEYS]
    stayed = [b is a for b, a in zip(before, after, strict=True) if b is not TEN[0]]
    # Envoy sizes the ring from the host count, so the 9 survivors each get a few more
    # entries (114 instead of 103) and take some keys from each other as well.
    assert sum(stayed) >= 0.85 * len(stayed)


@pytest.mark.parametrize("make", [RingHashBalancer, MaglevBalancer])
def test_hash_weights(make: Any) -> None:
    endpoints = (ep("a", 3), ep("b", 1))
    balancer = make(random.Random(17))
    counts = Counter(e.address for e in (balancer.pick(endpoints, hash_key=k)
                                         for k in KEYS) if e)
    assert 0.65 * N <= counts["a"] <= 0.85 * N, counts


@pytest.mark.parametrize("make", [RingHashBalancer, MaglevBalancer])
def test_no_hash_key_picks_at_random(make: Any) -> None:
    counts = shares(make(random.Random(18)), TEN)
    assert all(0.06 * N <= counts[e.address] <= 0.14 * N for e in TEN), counts


# --- hash keys ---------------------------------------------------------------------------------


def request(headers: dict[str, str] | None = None, query: str = "") -> RequestView:
    return RequestView.build("GET", "http", "reviews:9080", "/r", query,
                             list((headers or {}).items()))


def test_hash_key_from_header() -> None:
    settings = lb({"consistentHash": {"httpHeaderName": "X-User"}})
    key = hash_key(settings, request({"x-user": "jason"}))
    assert key == stable_hash(b"jason")
    assert key == int.from_bytes(__import__("hashlib").blake2b(
        b"jason", digest_size=8).digest(), "little")  # not Python's salted hash()
    assert hash_key(settings, request({"x-user": "jason"})) == key
    assert hash_key(settings, request({"x-user": "other"})) != key
    assert hash_key(settings, request()) is None


def test_hash_key_from_cookie() -> None:
    settings = lb({"consistentHash": {"httpCookie": {"name": "session", "ttl": "0s"}}})
    req = request({"cookie": "theme=dark; session=abc123; x=y"})
    assert hash_key(settings, req) == stable_hash(b"abc123")
    assert hash_key(settings, request({"cookie": "theme=dark"})) is None
    assert hash_key(settings, request()) is None  # no cookie generated: random pick


def test_hash_key_from_source_ip() -> None:
    settings = lb({"consistentHash": {"useSourceIp": True}})
    assert hash_key(settings, request(), "10.1.2.3") == stable_hash(b"10.1.2.3")
    assert hash_key(settings, request()) is None


def test_hash_key_from_query_parameter() -> None:
    settings = lb({"consistentHash": {"httpQueryParameterName": "user"}})
    assert hash_key(settings, request(query="a=1&user=j%20son&user=x")) == \
        stable_hash(b"j son")
    assert hash_key(settings, request(query="a=1")) is None


def test_no_consistent_hash_no_key() -> None:
    assert hash_key(None, request({"x-user": "a"})) is None
    assert hash_key(lb({"simple": "RANDOM"}), request({"x-user": "a"})) is None


# --- locality ---------------------------------------------------------------------------------


LOCAL = ep("local", locality="us-east/zone-a/rack-1")
SAME_ZONE = ep("same-zone", locality="us-east/zone-a/rack-2")
SAME_REGION = ep("same-region", locality="us-east/zone-b/rack-1")
EU = ep("eu", locality="eu-west/zone-a/rack-1")
AP = ep("ap", locality="ap-south/zone-a")
ALL = (EU, SAME_REGION, LOCAL, SAME_ZONE, AP)
CLIENT = "us-east/zone-a/rack-1"


def locality(spec: dict[str, Any]) -> LocalityLoadBalancerSetting:
    return LocalityLoadBalancerSetting.model_validate(spec)


def test_locality_failover_levels() -> None:
    assert locality_preference(ALL, CLIENT, None) == (LOCAL,)
    assert locality_preference((EU, SAME_REGION, SAME_ZONE), CLIENT, None) == (SAME_ZONE,)
    assert locality_preference((EU, SAME_REGION, AP), CLIENT, None) == (SAME_REGION,)
    assert locality_preference((EU, AP), CLIENT, None) == (EU, AP)


def test_locality_failover_target_region() -> None:
    settings = locality({"failover": [{"from": "us-east", "to": "eu-west"}]})
    assert locality_preference((AP, EU), CLIENT, settings) == (EU,)
    assert locality_preference((AP,), CLIENT, settings) == (AP,)


def test_locality_not_applied_without_client_locality_or_when_disabled() -> None:
    assert locality_preference(ALL, "", None) == ALL
    assert locality_preference(ALL, CLIENT, locality({"enabled": False})) == ALL
    assert locality_preference(ALL, CLIENT, None, failover_enabled=False) == ALL


def test_locality_distribute_weights() -> None:
    settings = locality({"distribute": [
        {"from": "us-east/*", "to": {"us-east/zone-a/*": 80, "eu-west/*": 20}}]})
    got = locality_preference(ALL, CLIENT, settings)
    assert {e.address for e in got} == {"local", "same-zone", "eu"}  # others dropped
    counts = shares(RandomBalancer(random.Random(19)), got)
    # zone-a's 80% is split over its two endpoints
    assert within_4_sigma(counts["local"], 0.4)
    assert within_4_sigma(counts["same-zone"], 0.4)
    assert within_4_sigma(counts["eu"], 0.2)


def test_locality_distribute_respects_endpoint_weights() -> None:
    heavy = ep("heavy", weight=3, locality="us-east/zone-a/rack-1")
    light = ep("light", weight=1, locality="us-east/zone-a/rack-2")
    settings = locality({"distribute": [{"from": "*", "to": {"us-east/zone-a": 100}}]})
    got = locality_preference((heavy, light), CLIENT, settings)
    counts = shares(RandomBalancer(random.Random(20)), got)
    assert within_4_sigma(counts["heavy"], 0.75)


def test_locality_distribute_from_must_match_the_client() -> None:
    settings = locality({"distribute": [{"from": "eu-west/*", "to": {"eu-west/*": 100}}]})
    assert locality_preference(ALL, CLIENT, settings) == ALL


@pytest.mark.parametrize("make", [RingHashBalancer, MaglevBalancer])
def test_hash_picks_return_the_current_endpoint_objects(make: Any) -> None:
    balancer = make(random.Random(21))
    balancer.prepare(FOUR)
    relabelled = tuple(Endpoint(e.address, e.port, labels={"version": "v2"},
                                service_account="new") for e in FOUR)
    for k in KEYS[:200]:
        chosen = balancer.pick(relabelled, hash_key=k)
        assert chosen is not None and chosen.service_account == "new"
        assert chosen in relabelled
        same = balancer.pick(FOUR, hash_key=k)
        assert same is not None and (same.address, same.port) == (chosen.address, chosen.port)


def test_mesh_wide_locality_setting_is_accepted() -> None:
    from meshsdk.config.mesh import MeshConfig

    mesh = MeshConfig()  # localityLbSetting: {enabled: true}
    assert locality_preference(ALL, CLIENT, mesh.locality_lb_setting) == (LOCAL,)
