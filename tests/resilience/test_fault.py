"""Fault injection draws: percentages over 10,000 requests with a fixed seed.

Tolerances: for n draws with probability p the count is binomial, standard deviation
sqrt(n p (1 - p)) (46 for n = 10,000, p = 0.3). A fixed seed makes every run draw the
same numbers, so the bounds cannot flake; 4 standard deviations keep them honest
(a correct implementation lands outside with probability ~6e-5 for a new seed).
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from meshsdk.config.kinds.virtual_service import HTTPFaultInjection
from meshsdk.resilience.fault import (
    GRPC_STATUS_CODES,
    NO_FAULT,
    decide_fault,
    http_to_grpc_status,
)

N = 10_000


def fault(spec: dict[str, Any]) -> HTTPFaultInjection:
    return HTTPFaultInjection.model_validate(spec)


def within_4_sigma(count: int, p: float, n: int = N) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def draws(spec: dict[str, Any], *, grpc: bool = False, seed: int = 42) -> list[Any]:
    f = fault(spec)
    rng = random.Random(seed)
    return [decide_fault(f, rng, grpc=grpc) for _ in range(N)]


@pytest.mark.parametrize("percent", [0.5, 30.0, 50.0, 99.0])
def test_delay_percentage(percent: float) -> None:
    got = draws({"delay": {"fixedDelay": "2s", "percentage": {"value": percent}}})
    delayed = [d for d in got if d.delay is not None]
    assert within_4_sigma(len(delayed), percent / 100)
    assert {d.delay for d in delayed} == {2.0}
    assert not any(d.aborted for d in got)


@pytest.mark.parametrize("percent", [0.1, 10.0, 75.0])
def test_abort_percentage(percent: float) -> None:
    got = draws({"abort": {"httpStatus": 503, "percentage": {"value": percent}}})
    aborted = [d for d in got if d.aborted]
    assert within_4_sigma(len(aborted), percent / 100)
    assert {(d.abort_status, d.abort_grpc_status) for d in aborted} == {(503, None)}


def test_zero_and_hundred_percent_are_exact() -> None:
    assert all(d.delay == 1.0 for d in draws(
        {"delay": {"fixedDelay": "1s", "percentage": {"value": 100}}}))
    assert all(d == NO_FAULT for d in draws(
        {"delay": {"fixedDelay": "1s", "percentage": {"value": 0}},
         "abort": {"httpStatus": 500, "percentage": {"value": 0}}}))


def test_no_percentage_means_never() -> None:
    got = draws({"delay": {"fixedDelay": "5s"}, "abort": {"httpStatus": 500}})
    assert all(d == NO_FAULT for d in got)


def test_deprecated_integer_percent_is_honoured() -> None:
    got = draws({"delay": {"fixedDelay": "7s", "percent": 40}})
    assert within_4_sigma(sum(d.delay == 7.0 for d in got), 0.4)


def test_percentage_wins_over_deprecated_percent() -> None:
    got = draws({"delay": {"fixedDelay": "7s", "percent": 100, "percentage": {"value": 10}}})
    assert within_4_sigma(sum(d.delay is not None for d in got), 0.1)


def test_fractional_percentages() -> None:
    got = draws({"abort": {"httpStatus": 500, "percentage": {"value": 2.5}}}, seed=3)
    assert within_4_sigma(sum(d.aborted for d in got), 0.025)


def test_delay_and_abort_are_independent() -> None:
    got = draws({"delay": {"fixedDelay": "1s", "percentage": {"value": 50}},
                 "abort": {"httpStatus": 500, "percentage": {"value": 40}}})
    both = sum(d.delay is not None and d.aborted for d in got)
    delay_only = sum(d.delay is not None and not d.aborted for d in got)
    abort_only = sum(d.delay is None and d.aborted for d in got)
    assert within_4_sigma(both, 0.5 * 0.4)
    assert within_4_sigma(delay_only, 0.5 * 0.6)
    assert within_4_sigma(abort_only, 0.5 * 0.4)


def test_zero_fixed_delay_is_no_delay() -> None:
    got = draws({"delay": {"fixedDelay": "0s", "percentage": {"value": 100}}})
    assert all(d == NO_FAULT for d in got)


def test_grpc_status_abort_on_a_grpc_request() -> None:
    f = fault({"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}})
    d = decide_fault(f, random.Random(1), grpc=True)
    assert (d.abort_status, d.abort_grpc_status) == (200, 14)


def test_grpc_status_abort_on_plain_http_is_a_200_without_grpc_status() -> None:
    f = fault({"abort": {"grpcStatus": "NOT_FOUND", "percentage": {"value": 100}}})
    d = decide_fault(f, random.Random(1), grpc=False)
    assert (d.abort_status, d.abort_grpc_status) == (200, None)
    assert d.aborted


@pytest.mark.parametrize(("http", "grpc"),
                         [(503, 14), (502, 14), (504, 14), (429, 14), (404, 12), (403, 7),
                          (401, 16), (400, 13), (500, 2), (418, 2)])
def test_http_status_abort_on_a_grpc_request_maps_like_envoy(http: int, grpc: int) -> None:
    f = fault({"abort": {"httpStatus": http, "percentage": {"value": 100}}})
    d = decide_fault(f, random.Random(1), grpc=True)
    assert (d.abort_status, d.abort_grpc_status) == (200, grpc)
    assert http_to_grpc_status(http) == grpc


def test_grpc_status_names() -> None:
    assert GRPC_STATUS_CODES["CANCELLED"] == 1
    assert GRPC_STATUS_CODES["DEADLINE_EXCEEDED"] == 4
    assert GRPC_STATUS_CODES["UNAUTHENTICATED"] == 16
    assert sorted(GRPC_STATUS_CODES.values()) == list(range(17))


def test_no_fault_config() -> None:
    assert decide_fault(None, random.Random(1), grpc=False) == NO_FAULT
