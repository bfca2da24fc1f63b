"""Retry budgets with a fake clock: Envoy's concurrency budget and the default ratio budget."""

from __future__ import annotations

import pytest

from meshsdk.config.kinds.destination_rule import RetryBudget as RetryBudgetSpec
from meshsdk.resilience.budget import (
    ConcurrencyRetryBudget,
    RatioRetryBudget,
    make_retry_budget,
)


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def withdraw(budget: ConcurrencyRetryBudget | RatioRetryBudget, n: int) -> int:
    return sum(budget.try_withdraw() for _ in range(n))


# --- concurrency budget (DestinationRule retryBudget = Envoy retry_budget) ----------------


def test_min_retry_concurrency_allows_retries_when_idle() -> None:
    budget = ConcurrencyRetryBudget()  # 20%, minimum 3
    assert withdraw(budget, 10) == 3
    budget.on_retry_done()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_percent_of_requests_in_flight() -> None:
    budget = ConcurrencyRetryBudget(percent=20.0, min_retry_concurrency=3)
    for _ in range(100):
        budget.on_request()
    assert budget.limit() == 20
    assert withdraw(budget, 50) == 20
    for _ in range(50):
        budget.on_request_done()
    assert budget.limit() == 10
    assert not budget.try_withdraw()  # 20 retries still in flight
    for _ in range(11):
        budget.on_retry_done()
    assert budget.try_withdraw()


def test_budget_truncates_like_envoy() -> None:
    budget = ConcurrencyRetryBudget(percent=20.0, min_retry_concurrency=1)
    for _ in range(29):
        budget.on_request()
    assert budget.limit() == 5  # 5.8 -> 5
    budget2 = ConcurrencyRetryBudget(percent=20.0, min_retry_concurrency=3)
    for _ in range(14):
        budget2.on_request()
    assert budget2.limit() == 3  # 2.8 -> 2, raised to the minimum


def test_budget_interval_counts_requests_started_in_the_window() -> None:
    clock = FakeClock()
    budget = ConcurrencyRetryBudget(percent=50.0, min_retry_concurrency=1,
                                    budget_interval=10.0, clock=clock)
    for _ in range(20):
        budget.on_request()
        budget.on_request_done()  # finished, but still inside the interval
    assert budget.limit() == 10
    clock.advance(5.0)
    assert budget.limit() == 10
    clock.advance(5.0)  # the window has moved past them
    assert budget.limit() == 1


def test_budget_interval_needs_a_clock() -> None:
    with pytest.raises(ValueError, match="clock"):
        ConcurrencyRetryBudget(budget_interval=1.0)


# --- ratio budget (default when none is configured) ------------------------------------


def test_ratio_budget_floor_lets_a_quiet_client_retry() -> None:
    clock = FakeClock()
    budget = RatioRetryBudget(clock)  # 20%, 10/s over 10s -> floor of 100
    assert withdraw(budget, 150) == 100
    assert budget.balance() == 0


def test_ratio_budget_allows_a_share_of_requests_over_the_window() -> None:
    clock = FakeClock()
    budget = RatioRetryBudget(clock, ttl=10.0, min_retries_per_sec=0.0, retry_ratio=0.2)
    for _ in range(1000):
        budget.on_request()
    assert withdraw(budget, 500) == 200
    clock.advance(5.0)
    assert not budget.try_withdraw()
    for _ in range(100):
        budget.on_request()  # 1100 requests in the window -> 220 retries
    assert withdraw(budget, 50) == 20


def test_ratio_budget_window_slides() -> None:
    clock = FakeClock()
    budget = RatioRetryBudget(clock, ttl=10.0, min_retries_per_sec=1.0, retry_ratio=0.1)
    for _ in range(100):
        budget.on_request()
    assert withdraw(budget, 100) == 20  # floor 10 + 10% of 100
    clock.advance(9.0)
    assert not budget.try_withdraw()  # still inside the window
    clock.advance(1.0)  # the slot of those requests and retries expired
    assert withdraw(budget, 100) == 10  # just the floor again


def test_ratio_budget_rejects_nonpositive_ttl() -> None:
    with pytest.raises(ValueError):
        RatioRetryBudget(FakeClock(), ttl=0)


# --- factory ------------------------------------------------------------------------------


def test_make_retry_budget() -> None:
    clock = FakeClock()
    assert isinstance(make_retry_budget(None, clock), RatioRetryBudget)
    default = make_retry_budget(RetryBudgetSpec(), clock)
    assert isinstance(default, ConcurrencyRetryBudget)
    assert (default.percent, default.min_retry_concurrency) == (20.0, 3)
    zero_min = make_retry_budget(RetryBudgetSpec(min_retry_concurrency=0, percent=50), clock)
    assert isinstance(zero_min, ConcurrencyRetryBudget)
    assert (zero_min.percent, zero_min.min_retry_concurrency) == (50.0, 3)  # 0 is unset
    windowed = make_retry_budget(RetryBudgetSpec.model_validate({"budgetInterval": "5s"}),
                                 clock)
    assert isinstance(windowed, ConcurrencyRetryBudget)
    assert windowed.budget_interval == 5.0


def test_retries_cannot_outlive_their_requests() -> None:
    budget = ConcurrencyRetryBudget(percent=20.0, min_retry_concurrency=2)
    budget.on_request()
    budget.on_request()
    assert withdraw(budget, 5) == 2
    budget.on_request_done()  # a retry whose end was never reported is dropped with it
    assert budget.active_retries == 1
    budget.on_request_done()
    assert budget.active_retries == 0
    assert withdraw(budget, 5) == 2
