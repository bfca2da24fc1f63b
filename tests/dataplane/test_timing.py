"""Time-driven behaviour with an injected clock, through the sync and the async client.

The mesh gets a :class:`FakeClock`: its sleeps (retry backoff) advance the clock and
are recorded instead of waiting, and the test moves time by hand to expire outlier
ejections and retry-budget windows. The servers are real; only the timeouts that
are network waits (per-try timeouts) use real time, and those are short.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from meshsdk.mesh import Mesh
from meshsdk.testing.clock import FakeClock
from meshsdk.testing.upstream import Reply, Upstream, respond
from tests.dataplane.conftest import Build
from tests.dataplane.harness import Caller, vs

Connect = Callable[[Mesh], Caller]
URL = "http://reviews/t"




OUTLIER = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s,
                       maxEjectionPercent: 50}
"""


# --- outlier detection ------------------------------------------------------------------------


def test_ejection_lasts_base_time_times_ejection_count(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect,
        mesh_clock: FakeClock) -> None:
    good = mesh_upstream("reviews", name="good")
    bad = mesh_upstream("reviews", respond(503, "bad"), name="bad")
    caller = connect(build(OUTLIER, clock=mesh_clock))

    def bad_hits_after(calls: int) -> int:
        before = bad.hits
        seen = caller.many(calls, URL)
        assert Counter(g.status for g in seen)[503] == bad.hits - before
        return bad.hits - before

    # Round robin over two hosts reaches bad within two calls; one 503 ejects it.
    assert bad_hits_after(6) == 1
    assert good.hits == 5
    # 1st ejection: 30 s. Time is frozen between calls, so the multiplier does not decay.
    mesh_clock.advance(29.0)
    assert bad_hits_after(6) == 0
    mesh_clock.advance(1.0)            # 30 s after the ejection: back, fails, ejected again
    assert bad_hits_after(6) == 1
    # 2nd ejection: 2 x 30 s = 60 s.
    mesh_clock.advance(59.0)
    assert bad_hits_after(6) == 0
    mesh_clock.advance(1.0)
    assert bad_hits_after(6) == 1
    # 3rd ejection: 90 s.
    mesh_clock.advance(89.0)
    assert bad_hits_after(6) == 0
    mesh_clock.advance(1.0)
    assert bad_hits_after(6) == 1
    assert good.hits == 5 * 4 + 6 * 3
    assert mesh_clock.sleeps == []     # nothing here sleeps: no retries, no backoff


def test_ejection_multiplier_decays_while_healthy(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect,
        mesh_clock: FakeClock) -> None:
    # A host that comes back and stays healthy loses one multiplier step per interval:
    # after its 30 s ejection and 1 s (one interval) healthy, a new ejection is 30 s again.
    good = mesh_upstream("reviews", name="good")
    failing = {"now": True}
    flaky = mesh_upstream("reviews", lambda req, n: Reply(503 if failing["now"] else 200),
                          name="flaky")
    caller = connect(build(OUTLIER, clock=mesh_clock))
    caller.many(4, URL)
    assert flaky.hits == 1
    failing["now"] = False
    mesh_clock.advance(30.0)
    caller.many(4, URL)                # back and healthy
    assert flaky.hits == 3
    mesh_clock.advance(1.0)            # one healthy interval: multiplier 1 -> 0
    caller.many(4, URL)
    failing["now"] = True
    before = flaky.hits
    caller.many(4, URL)                # fails once: ejected for 1 x 30 s
    assert flaky.hits == before + 1
    mesh_clock.advance(30.0)
    caller.many(4, URL)
    assert flaky.hits == before + 2    # back after 30 s, not 60 s
    assert good.hits > 0


# --- backoff ------------------------------------------------------------------------------------


def _ceiling(n: int, base: float = 0.025, cap: float | None = None) -> float:
    """Envoy's jittered exponential backoff: retry n waits U[0, min(base * 2**(n-1), 10 base))."""
    return min(base * 2.0 ** (n - 1), cap if cap is not None else 10 * base)


@pytest.mark.parametrize("backoff", [None, 0.1], ids=["default-25ms", "backoff-100ms"])
def test_backoff_sleeps_are_jittered_exponential_and_capped(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect,
        mesh_clock: FakeClock, backoff: float | None) -> None:
    up = mesh_upstream("reviews", respond(503, "down"))
    field = f", backoff: {int(backoff * 1000)}ms" if backoff else ""
    caller = connect(build(vs(f"    retries: {{attempts: 8, retryOn: 5xx{field}}}"),
                           clock=mesh_clock))
    base = backoff or 0.025
    calls = 12  # 96 retries: within the default retry budget's floor of 100 per 10 s
    by_retry: dict[int, list[float]] = {n: [] for n in range(1, 9)}
    for _ in range(calls):
        before = len(mesh_clock.sleeps)
        got = caller.get(URL)
        assert (got.status, got.flags, got.attempts) == (503, "URX", 9)
        slept = mesh_clock.sleeps[before:]
        assert len(slept) == 8, "one backoff sleep before each of the 8 retries"
        for n, seconds in enumerate(slept, start=1):
            by_retry[n].append(seconds)
    assert up.hits == calls * 9
    for n, samples in by_retry.items():
        ceiling = _ceiling(n, base)
        assert all(0 <= s < ceiling for s in samples), (n, ceiling, samples)
        # and the whole range is used: the largest of 12 uniform draws is below half the
        # ceiling with probability 2**-12
        assert max(samples) >= ceiling / 2, (n, ceiling, samples)
    # the cap (10 x base) is reached from the 5th retry on: 16 x base would exceed it
    assert _ceiling(5, base) == _ceiling(8, base) == 10 * base


def test_backoff_is_cut_by_the_route_deadline(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect,
        mesh_clock: FakeClock) -> None:
    # 1 s route timeout, fast 503s, long backoff: the backoff sleeps (fake time) use the
    # whole second and the call ends 504 UT when it is gone, never sleeping past it.
    up = mesh_upstream("reviews", respond(503, "down"))
    caller = connect(build(vs("""\
    timeout: 1s
    retries: {attempts: 50, retryOn: 5xx, backoff: 200ms}"""), clock=mesh_clock))
    start = mesh_clock.now()
    got = caller.get(URL)
    assert (got.status, got.flags) == (504, "UT")
    assert got.attempts == up.hits              # the attempts sent; the last retry never was
    assert 2 <= up.hits < 51
    assert sum(mesh_clock.sleeps) == pytest.approx(1.0)
    assert mesh_clock.now() - start == pytest.approx(1.0)


# --- retry budget -------------------------------------------------------------------------------


def test_budget_refused_retry_is_flagged_uo(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect,
        mesh_clock: FakeClock) -> None:
    mesh_upstream("reviews", respond(503, "down"))
    caller = connect(build(vs("    retries: {attempts: 2, retryOn: 5xx}"), clock=mesh_clock))
    seen = caller.many(200, URL)
    refused = [g for g in seen if g.attempts < 3]
    assert refused
    assert {g.flags for g in refused} == {"UO"}


def test_retry_budget_stops_retries_and_refills(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect,
        mesh_clock: FakeClock) -> None:
    # No DestinationRule retryBudget: meshsdk's default budget allows, over a 10 s
    # window, 100 retries plus 20% of the requests started. Every answer is a 503 and
    # the route allows 2 retries, i.e. 400 wanted for 200 calls. The first calls get
    # both retries until 2k > 100 + 0.2k (k ~ 55); after that the allowance grows by
    # 0.2 per call, so by the end exactly 100 + 0.2 * 200 = 140 retries went out.
    up = mesh_upstream("reviews", respond(503, "down"))
    caller = connect(build(vs("    retries: {attempts: 2, retryOn: 5xx}"), clock=mesh_clock))
    seen = caller.many(200, URL)
    retries = sum(g.attempts - 1 for g in seen)
    assert retries == 140
    assert up.hits == 200 + 140
    assert all(g.status == 503 for g in seen)
    assert [g.attempts for g in seen[:50]] == [3] * 50     # budget not yet binding
    assert Counter(g.attempts for g in seen[-50:]) == {1: 40, 2: 10}  # 0.2 per call
    assert mesh_clock.slept < 10.0  # the window never rolled during the burst
    # The window empties 10 s later: retries are allowed again.
    mesh_clock.advance(10.0)
    before = up.hits
    again = caller.many(5, URL)
    assert [g.attempts for g in again] == [3] * 5
    assert up.hits - before == 15


# --- route timeout vs per-try timeout (real time: the network waits) -------------------------


def test_route_timeout_bounds_the_retries_of_a_hanging_upstream(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    # 0.2 s per try, 5 retries allowed, 0.5 s in all: the route timeout ends the call
    # during the 3rd try at the latest (0.2 + 0.2 + backoff < 0.5), so at most 3 of the
    # 6 tries happen, and the last one is told only the time left.
    up = mesh_upstream("reviews", lambda req, n: Reply(hang=True))
    caller = connect(build(vs("""\
    timeout: 0.5s
    retries: {attempts: 5, perTryTimeout: 0.2s, retryOn: 5xx}""")))
    got = caller.get(URL)
    assert (got.status, got.flags) == (504, "UT")
    assert got.attempts == up.hits
    assert 2 <= up.hits <= 3
    budgets = [int(r.headers["x-envoy-expected-rq-timeout-ms"]) for r in up.requests]
    assert budgets[:2] == [200, 200]
    assert all(b < 200 for b in budgets[2:])


def test_per_try_timeout_longer_than_the_route_timeout_is_capped(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    up = mesh_upstream("reviews", lambda req, n: Reply(hang=True))
    caller = connect(build(vs("""\
    timeout: 0.3s
    retries: {attempts: 2, perTryTimeout: 5s, retryOn: 5xx}""")))
    got = caller.get(URL)
    assert (got.status, got.flags, got.attempts) == (504, "UT", 1)
    assert up.hits == 1
    assert 250 <= int(up.requests[0].headers["x-envoy-expected-rq-timeout-ms"]) <= 300


def test_fake_clock_route_timeout_still_bounds_a_hanging_try(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect,
        mesh_clock: FakeClock) -> None:
    # With a fake clock the route deadline does not pass by itself, but each try's
    # network timeout is the time left (0.3 s here): a hang still ends in 504 UT.
    up = mesh_upstream("reviews", lambda req, n: Reply(hang=True))
    caller = connect(build(vs("    timeout: 0.3s"), clock=mesh_clock))
    got = caller.get(URL)
    assert (got.status, got.flags, got.attempts) == (504, "UT", 1)
    assert up.hits == 1


def test_a_timeout_given_to_httpx_still_applies(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    # No mesh timeout at all; the caller's own httpx timeout caps each attempt (before
    # the fix in transport/common.py the mesh dropped it and this call hung).
    up = mesh_upstream("reviews", lambda req, n: Reply(hang=True))
    caller = connect(build())
    got = caller.get(URL, timeout=0.3)
    assert (got.status, got.flags, got.attempts) == (504, "UT", 1)
    assert up.hits == 1
