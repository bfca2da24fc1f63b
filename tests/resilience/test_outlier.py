"""Outlier detection with a fake clock: Envoy's consecutive-error ejection as Istio sets it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from meshsdk.config.kinds.destination_rule import OutlierDetection
from meshsdk.config.snapshot import Endpoint
from meshsdk.outcome import Failure, Outcome
from meshsdk.resilience.outlier import OutlierDetector, grpc_to_http_status


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def set(self, when: float) -> None:
        self.now = when


OK = Outcome(status=200)
E500 = Outcome(status=500)
E502 = Outcome(status=502)
E503 = Outcome(status=503)
E504 = Outcome(status=504)
CONNECT = Outcome(failure=Failure.CONNECT_FAILURE)
RESET = Outcome(failure=Failure.RESET)
TIMEOUT = Outcome(failure=Failure.TIMEOUT)
OVERFLOW = Outcome(failure=Failure.OVERFLOW)

TEN = tuple(Endpoint(f"10.0.0.{i}", 8080) for i in range(10))


def detector(spec: dict[str, Any], clock: FakeClock,
             endpoints: tuple[Endpoint, ...] = TEN) -> OutlierDetector:
    d = OutlierDetector(OutlierDetection.model_validate(spec), clock)
    d.healthy(endpoints)  # tells the detector the cluster's size
    return d


def fail(d: OutlierDetector, endpoint: Endpoint, outcome: Outcome, times: int) -> None:
    for _ in range(times):
        d.record(endpoint, outcome)


def test_ejects_at_the_threshold_and_not_before() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 5}, clock)
    fail(d, TEN[0], E500, 4)
    assert not d.is_ejected(TEN[0])
    d.record(TEN[0], E500)
    assert d.is_ejected(TEN[0])
    assert d.ejection_count(TEN[0]) == 1
    assert TEN[0] not in d.healthy(TEN)
    assert len(d.healthy(TEN)) == 9


def test_default_threshold_is_five_and_counts_answerless_failures() -> None:
    clock = FakeClock()
    d = detector({}, clock)  # outlierDetection: {} -> consecutive5xxErrors 5
    for outcome in (E503, CONNECT, RESET, TIMEOUT):
        d.record(TEN[1], outcome)
    assert not d.is_ejected(TEN[1])
    d.record(TEN[1], E500)
    assert d.is_ejected(TEN[1])


def test_a_success_resets_the_consecutive_counts() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 3, "consecutiveGatewayErrors": 3}, clock)
    fail(d, TEN[0], E503, 2)
    d.record(TEN[0], OK)
    fail(d, TEN[0], E503, 2)
    d.record(TEN[0], Outcome(status=404))  # any non-5xx answer is a success here
    fail(d, TEN[0], E503, 2)
    assert not d.is_ejected(TEN[0])
    d.record(TEN[0], E503)
    assert d.is_ejected(TEN[0])


def test_zero_disables_consecutive_5xx() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 0}, clock)
    fail(d, TEN[0], E500, 100)
    fail(d, TEN[0], CONNECT, 100)
    assert not d.is_ejected(TEN[0])


def test_overflow_is_never_held_against_a_host() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1}, clock)
    fail(d, TEN[0], OVERFLOW, 10)
    assert not d.is_ejected(TEN[0])


def test_gateway_errors_count_separately_from_5xx() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 3}, clock)
    fail(d, TEN[0], E500, 50)  # 500 is not a gateway error
    assert not d.is_ejected(TEN[0])
    d.record(TEN[0], E502)
    d.record(TEN[0], E504)
    d.record(TEN[0], E500)  # a non-gateway 5xx breaks the gateway streak (Envoy)
    d.record(TEN[0], E503)
    d.record(TEN[0], CONNECT)  # answerless failures are gateway errors (unsplit mode)
    assert not d.is_ejected(TEN[0])
    d.record(TEN[0], TIMEOUT)
    assert d.is_ejected(TEN[0])


def test_gateway_errors_off_unless_set() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 0}, clock)
    fail(d, TEN[0], E503, 50)
    assert not d.is_ejected(TEN[0])


def test_deprecated_consecutive_errors_means_gateway_errors() -> None:
    clock = FakeClock()
    d = detector({"consecutiveErrors": 2}, clock)
    fail(d, TEN[0], E500, 20)  # 5xx detection is off with the deprecated field
    assert not d.is_ejected(TEN[0])
    fail(d, TEN[0], E503, 2)
    assert d.is_ejected(TEN[0])
    # an explicit consecutive5xxErrors still wins
    d2 = detector({"consecutiveErrors": 2, "consecutive5xxErrors": 3}, clock)
    fail(d2, TEN[1], E500, 3)
    assert d2.is_ejected(TEN[1])


def test_split_local_origin_errors() -> None:
    clock = FakeClock()
    spec = {"consecutive5xxErrors": 2, "consecutiveGatewayErrors": 2,
            "splitExternalLocalOriginErrors": True, "consecutiveLocalOriginFailures": 3}
    d = detector(spec, clock)
    # local failures no longer count as 5xx/gateway errors, only as local-origin failures
    fail(d, TEN[0], CONNECT, 2)
    assert not d.is_ejected(TEN[0])
    d.record(TEN[0], E500)  # an answer: the connection worked, local streak reset
    fail(d, TEN[0], RESET, 2)
    assert not d.is_ejected(TEN[0])
    d.record(TEN[0], TIMEOUT)
    assert d.is_ejected(TEN[0])
    # 5xx answers still count as 5xx in split mode
    fail(d, TEN[1], E500, 2)
    assert not d.is_ejected(TEN[1])  # capped by maxEjectionPercent (1 of 10 ejected)


def test_split_local_origin_default_threshold_is_five() -> None:
    clock = FakeClock()
    d = detector({"splitExternalLocalOriginErrors": True}, clock)
    fail(d, TEN[0], CONNECT, 4)
    assert not d.is_ejected(TEN[0])
    d.record(TEN[0], CONNECT)
    assert d.is_ejected(TEN[0])


def test_local_origin_failures_ignored_without_split() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 0, "consecutiveLocalOriginFailures": 1}, clock)
    fail(d, TEN[0], CONNECT, 10)
    assert not d.is_ejected(TEN[0])


def test_grpc_status_is_judged_as_envoys_http_status() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 3}, clock)
    unavailable = Outcome(status=200, grpc_status=14)
    fail(d, TEN[0], unavailable, 2)
    d.record(TEN[0], Outcome(status=200, grpc_status=0))  # OK resets
    fail(d, TEN[0], unavailable, 2)
    d.record(TEN[0], Outcome(status=200, grpc_status=5))  # NOT_FOUND -> 404: success
    fail(d, TEN[0], unavailable, 2)
    assert not d.is_ejected(TEN[0])
    d.record(TEN[0], Outcome(status=200, grpc_status=13))  # INTERNAL -> 500
    assert d.is_ejected(TEN[0])
    assert [grpc_to_http_status(c) for c in (0, 1, 4, 8, 12, 14, 16, 99)] == \
        [200, 499, 504, 429, 501, 503, 401, 500]


def test_max_ejection_percent_caps_ejections() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1}, clock)  # default maxEjectionPercent 10
    d.record(TEN[0], E500)
    d.record(TEN[1], E500)
    assert d.ejected() == {(TEN[0].address, TEN[0].port)}
    # the cap is re-checked at each new streak
    d2 = detector({"consecutive5xxErrors": 1, "maxEjectionPercent": 30}, clock)
    for e in TEN[:5]:
        d2.record(e, E500)
    assert len(d2.ejected()) == 3
    assert len(d2.healthy(TEN)) == 7


def test_small_clusters_eject_nothing_with_the_default_cap() -> None:
    # Envoy ejects only if (ejected + 1) / hosts <= maxEjectionPercent; it does not
    # always eject one host (always_eject_one_host is off and Istio does not set it).
    clock = FakeClock()
    five = TEN[:5]
    d = detector({"consecutive5xxErrors": 1}, clock, five)
    fail(d, five[0], E500, 10)
    assert not d.is_ejected(five[0])
    d2 = detector({"consecutive5xxErrors": 1, "maxEjectionPercent": 0}, clock, five)
    fail(d2, five[0], E500, 10)  # Istio passes 0 as unset: the default 10% applies
    assert not d2.is_ejected(five[0])
    d3 = detector({"consecutive5xxErrors": 1, "maxEjectionPercent": 20}, clock, five)
    d3.record(five[0], E500)
    assert d3.is_ejected(five[0])


def test_unejection_happens_at_interval_ticks() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
                 clock)
    clock.set(1.0)
    fail(d, TEN[0], E500, 5)  # ejected at t=1 for 30s: due at 31, checked at the tick of 40
    for t in (10.0, 31.0, 35.0, 39.999):
        clock.set(t)
        assert d.is_ejected(TEN[0]), t
    clock.set(40.0)
    assert not d.is_ejected(TEN[0])
    assert TEN[0] in d.healthy(TEN)


def test_ejection_time_is_multiplied_by_the_number_of_ejections() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
                 clock)
    clock.set(1.0)
    fail(d, TEN[0], E500, 5)
    clock.set(40.0)
    assert not d.is_ejected(TEN[0])
    assert d.ejection_multiplier(TEN[0]) == 1
    fail(d, TEN[0], E500, 5)  # ejected again right away: 2 x 30s = 60s, due at 100
    assert d.ejection_count(TEN[0]) == 2
    assert d.ejection_multiplier(TEN[0]) == 2
    clock.set(99.0)
    assert d.is_ejected(TEN[0])
    clock.set(100.0)
    assert not d.is_ejected(TEN[0])
    fail(d, TEN[0], E500, 5)  # third ejection at t=100: 90s, due at 190
    clock.set(189.0)
    assert d.is_ejected(TEN[0])
    clock.set(190.0)
    assert not d.is_ejected(TEN[0])


def test_multiplier_decays_while_the_host_stays_healthy() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
                 clock)
    clock.set(1.0)
    fail(d, TEN[0], E500, 5)
    clock.set(40.0)
    fail(d, TEN[0], E500, 5)
    clock.set(100.0)  # back at 100 with multiplier 2
    assert not d.is_ejected(TEN[0])
    clock.set(109.0)
    assert d.ejection_multiplier(TEN[0]) == 2  # decays only a full interval after return
    clock.set(110.0)
    assert d.ejection_multiplier(TEN[0]) == 1
    clock.set(120.0)
    assert d.ejection_multiplier(TEN[0]) == 0
    clock.set(125.0)
    fail(d, TEN[0], E500, 5)  # multiplier back to 1: 30s, due at 155, back at the 160 tick
    clock.set(159.0)
    assert d.is_ejected(TEN[0])
    clock.set(160.0)
    assert not d.is_ejected(TEN[0])


def test_ejection_time_is_capped_at_envoys_max_ejection_time() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1, "interval": "10s", "baseEjectionTime": "100s"},
                 clock)
    for _ in range(6):  # multiplier would reach 6 (600s) but ejections stop at 300s
        fail(d, TEN[0], E500, 1)
        assert d.is_ejected(TEN[0])
        clock.set(clock.now + 300.0)
        clock.set(-(-clock.now // 10) * 10)  # on a tick
        assert not d.is_ejected(TEN[0])
    assert d.ejection_multiplier(TEN[0]) <= 4  # Envoy stops growing past max + base


def test_a_long_quiet_period_is_replayed_in_closed_form() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1, "interval": "10s", "baseEjectionTime": "30s"},
                 clock)
    for t in (1.0, 40.0, 100.0):
        clock.set(t)
        d.record(TEN[0], E500)
    clock.set(86_400.0)  # a day later
    assert not d.is_ejected(TEN[0])
    assert d.ejection_multiplier(TEN[0]) == 0
    assert d.ejection_count(TEN[0]) == 3


def test_min_health_percent_panic_returns_every_endpoint() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1, "maxEjectionPercent": 100,
                  "minHealthPercent": 50}, clock)
    for e in TEN[:5]:
        d.record(e, E500)
    assert len(d.healthy(TEN)) == 5  # 50% healthy is not below 50%
    d.record(TEN[5], E500)
    assert d.healthy(TEN) == TEN      # 40% < 50%: panic, balance over everything
    assert d.is_ejected(TEN[5])       # ejection state itself is unchanged


def test_without_min_health_every_host_can_be_ejected() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1, "maxEjectionPercent": 100}, clock)
    for e in TEN:
        d.record(e, E500)
    assert d.healthy(TEN) == ()  # no healthy upstream: the caller answers 503 UH


def test_healthy_returns_the_same_tuple_while_nothing_changes() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1}, clock)
    assert d.healthy(TEN) is TEN
    d.record(TEN[3], E500)
    first = d.healthy(TEN)
    assert d.healthy(TEN) is first
    assert TEN[3] not in first


def test_endpoint_identity_is_address_and_port() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1}, clock)
    d.record(TEN[0], E500)
    same = Endpoint(TEN[0].address, TEN[0].port, labels={"version": "v2"}, weight=7)
    assert d.is_ejected(same)
    assert not d.is_ejected(Endpoint(TEN[0].address, 9090))


def test_removed_hosts_are_forgotten() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1}, clock)
    d.record(TEN[0], E500)
    assert d.is_ejected(TEN[0])
    d.healthy(TEN[1:])  # the host left the cluster
    assert not d.is_ejected(TEN[0])
    assert d.ejection_count(TEN[0]) == 0
    d.record(TEN[1], E500)  # its ejection no longer counts against the cap
    assert d.is_ejected(TEN[1]) is False  # 1 of 9 is 11% > 10%: still capped
    d.healthy((*TEN, Endpoint("10.0.1.1", 8080)))
    d.record(TEN[1], E500)
    assert d.is_ejected(TEN[1])


def test_update_keeps_ejections_and_applies_new_thresholds() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 2, "interval": "10s"}, clock)
    clock.set(1.0)
    fail(d, TEN[0], E500, 2)
    fail(d, TEN[1], E500, 1)
    d.update(OutlierDetection.model_validate({"consecutive5xxErrors": 2,
                                              "maxEjectionPercent": 50, "interval": "10s"}))
    assert d.is_ejected(TEN[0])
    d.record(TEN[1], E500)  # its count survived the update
    assert d.is_ejected(TEN[1])
    clock.set(40.0)
    assert not d.is_ejected(TEN[0])


def test_concurrent_records_are_consistent() -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1000, "maxEjectionPercent": 100}, clock)
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        for _ in range(250):
            d.record(TEN[0], E500)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert d.is_ejected(TEN[0])  # exactly the 1000th error ejected it
    assert d.ejection_count(TEN[0]) == 1


@pytest.mark.parametrize("outcome", [OK, Outcome(status=404), Outcome()])
def test_non_failures_never_eject(outcome: Outcome) -> None:
    clock = FakeClock()
    d = detector({"consecutive5xxErrors": 1}, clock)
    fail(d, TEN[0], outcome, 20)
    assert not d.is_ejected(TEN[0])
