"""Retry policy resolution (Istio's ConvertPolicy) and retryOn tokens (Envoy's router)."""

from __future__ import annotations

import random

import pytest

from meshsdk.config.kinds.virtual_service import HTTPRetry
from meshsdk.config.mesh import MeshConfig
from meshsdk.outcome import Failure, Outcome
from meshsdk.resilience.retry import (
    ISTIO_DEFAULT_RETRY_ON,
    RetryPolicy,
    backoff_delay,
    parse_retry_on,
    retry_policy,
    should_retry,
)

# --- the token x outcome table -------------------------------------------------------------

OUTCOMES: dict[str, Outcome] = {
    "200": Outcome(status=200),
    "404": Outcome(status=404),
    "409": Outcome(status=409),
    "429": Outcome(status=429),
    "500": Outcome(status=500),
    "501": Outcome(status=501),
    "502": Outcome(status=502),
    "503": Outcome(status=503),
    "504": Outcome(status=504),
    "connect-failure": Outcome(failure=Failure.CONNECT_FAILURE),
    "refused-stream": Outcome(failure=Failure.REFUSED_STREAM),
    "reset": Outcome(failure=Failure.RESET),
    "per-try-timeout": Outcome(failure=Failure.TIMEOUT),
    "overflow": Outcome(failure=Failure.OVERFLOW),
    "grpc-ok": Outcome(status=200, grpc_status=0),
    "grpc-cancelled": Outcome(status=200, grpc_status=1),
    "grpc-deadline": Outcome(status=200, grpc_status=4),
    "grpc-not-found": Outcome(status=200, grpc_status=5),
    "grpc-exhausted": Outcome(status=200, grpc_status=8),
    "grpc-internal": Outcome(status=200, grpc_status=13),
    "grpc-unavailable": Outcome(status=200, grpc_status=14),
}
ANSWERLESS = {"connect-failure", "refused-stream", "reset", "per-try-timeout"}

# retryOn -> the outcomes it retries (for a gRPC request; every other outcome is not retried)
TABLE: list[tuple[str, set[str]]] = [
    ("5xx", {"500", "501", "502", "503", "504"} | ANSWERLESS),
    ("gateway-error", {"502", "503", "504"} | ANSWERLESS),
    ("reset", set(ANSWERLESS)),
    ("reset-before-request", {"connect-failure"}),
    ("connect-failure", {"connect-failure"}),
    ("refused-stream", {"refused-stream"}),
    ("retriable-4xx", {"409"}),
    ("404,429", {"404", "429"}),                       # bare numbers: retriable-status-codes
    ("retriable-status-codes", set()),                 # the token alone lists no code
    ("cancelled", {"grpc-cancelled"}),
    ("deadline-exceeded", {"grpc-deadline"}),
    ("internal", {"grpc-internal"}),
    ("resource-exhausted", {"grpc-exhausted"}),
    ("unavailable", {"grpc-unavailable"}),
    ("envoy-ratelimited", set()),                      # needs x-envoy-ratelimited: never
    ("retriable-headers", set()),                      # Istio cannot configure the headers
    ("connect-failure,refused-stream,unavailable,cancelled",
     {"connect-failure", "refused-stream", "grpc-unavailable", "grpc-cancelled"}),
    ("5xx,retriable-4xx,internal",
     {"500", "501", "502", "503", "504", "409", "grpc-internal"} | ANSWERLESS),
]


def _policy(retry_on: str, attempts: int = 2) -> RetryPolicy:
    return retry_policy(HTTPRetry(attempts=attempts, retry_on=retry_on), MeshConfig())


@pytest.mark.parametrize(("retry_on", "retried"), TABLE, ids=[t[0] for t in TABLE])
def test_retry_on_tokens(retry_on: str, retried: set[str]) -> None:
    policy = _policy(retry_on)
    got = {name for name, outcome in OUTCOMES.items()
           if should_retry(policy, outcome, grpc=True)}
    assert got == retried


def test_istio_default_policy_retries_only_connect_refused_and_grpc_unavailable() -> None:
    policy = retry_policy(None, MeshConfig())
    got = {name for name, outcome in OUTCOMES.items()
           if should_retry(policy, outcome, grpc=True)}
    assert got == {"connect-failure", "refused-stream", "grpc-unavailable", "grpc-cancelled"}
    assert not should_retry(policy, OUTCOMES["503"], grpc=False)  # not since Istio 1.24


def test_overflow_is_never_retried() -> None:
    everything = ",".join(["5xx", "gateway-error", "reset", "reset-before-request",
                           "connect-failure", "refused-stream", "retriable-4xx"])
    policy = _policy(everything)
    assert not should_retry(policy, OUTCOMES["overflow"], grpc=False)
    assert not should_retry(policy, OUTCOMES["overflow"], grpc=False, request_started=False)


def test_grpc_tokens_read_only_for_grpc_requests() -> None:
    policy = _policy("unavailable,cancelled")
    assert should_retry(policy, OUTCOMES["grpc-unavailable"], grpc=True)
    assert not should_retry(policy, OUTCOMES["grpc-unavailable"], grpc=False)
    # an HTTP 503 without grpc-status is not "unavailable" (Envoy reads grpc-status only)
    assert not should_retry(policy, OUTCOMES["503"], grpc=True)


def test_reset_before_request_depends_on_what_was_sent() -> None:
    policy = _policy("reset-before-request")
    assert should_retry(policy, OUTCOMES["reset"], grpc=False, request_started=False)
    assert not should_retry(policy, OUTCOMES["reset"], grpc=False, request_started=True)
    assert not should_retry(policy, OUTCOMES["reset"], grpc=False)  # inferred: sent
    assert should_retry(policy, OUTCOMES["connect-failure"], grpc=False)  # inferred: not sent


def test_unreplayable_body_is_retried_only_when_nothing_was_sent() -> None:
    policy = _policy("5xx")
    assert should_retry(policy, OUTCOMES["connect-failure"], grpc=False,
                        request_replayable=False)
    for name in ("reset", "refused-stream", "per-try-timeout", "503"):
        assert not should_retry(policy, OUTCOMES[name], grpc=False, request_replayable=False)
    assert should_retry(policy, OUTCOMES["reset"], grpc=False, request_replayable=False,
                        request_started=False)


def test_disabled_policy_never_retries() -> None:
    policy = retry_policy(HTTPRetry(attempts=0), MeshConfig())
    assert policy.attempts == 0 and not policy.enabled
    assert not any(should_retry(policy, o, grpc=True) for o in OUTCOMES.values())


# --- policy resolution (Istio's retry.ConvertPolicy) -------------------------------------


def test_default_policy_without_route_retries() -> None:
    policy = retry_policy(None, MeshConfig())
    assert policy == RetryPolicy(attempts=2, per_try_timeout=None,
                                 retry_on=ISTIO_DEFAULT_RETRY_ON, status_codes=frozenset(),
                                 backoff_base=0.025, backoff_max=0.25,
                                 ignore_previous_hosts=True)
    expected = {"connect-failure", "refused-stream", "unavailable", "cancelled"}
    assert expected == ISTIO_DEFAULT_RETRY_ON


def test_consistent_hash_keeps_retries_on_the_same_host_unless_asked() -> None:
    assert not retry_policy(None, MeshConfig(), consistent_hash=True).ignore_previous_hosts
    explicit = HTTPRetry(attempts=2, retry_ignore_previous_hosts=True)
    assert retry_policy(explicit, MeshConfig(), consistent_hash=True).ignore_previous_hosts


def test_mesh_default_policy_is_used_and_converted_the_same_way() -> None:
    mesh = MeshConfig.model_validate({"defaultHttpRetryPolicy": {
        "attempts": 4, "retryOn": "gateway-error", "perTryTimeout": "2s", "backoff": "50ms"}})
    policy = retry_policy(None, mesh)
    assert policy.attempts == 4
    assert policy.retry_on == {"gateway-error"}
    assert policy.per_try_timeout is None  # ignored mesh-wide
    assert policy.backoff_base == pytest.approx(0.05)
    assert policy.backoff_max == pytest.approx(0.5)
    # a route's own retries win over the mesh default
    assert retry_policy(HTTPRetry(attempts=1), mesh).attempts == 1


def test_mesh_default_without_attempts_disables_retries_mesh_wide() -> None:
    mesh = MeshConfig.model_validate({"defaultHttpRetryPolicy": {"retryOn": "5xx"}})
    assert not retry_policy(None, mesh).enabled


def test_route_retries_override_default_fields() -> None:
    retries = HTTPRetry.model_validate({
        "attempts": 3, "perTryTimeout": "1.5s", "retryOn": "5xx, 503,409",
        "retryIgnorePreviousHosts": False, "retryRemoteLocalities": True, "backoff": "100ms"})
    policy = retry_policy(retries, MeshConfig())
    assert policy.attempts == 3
    assert policy.per_try_timeout == pytest.approx(1.5)
    assert policy.retry_on == {"5xx", "retriable-status-codes"}
    assert policy.status_codes == {503, 409}
    assert not policy.ignore_previous_hosts
    assert policy.retry_remote_localities
    assert (policy.backoff_base, policy.backoff_max) == pytest.approx((0.1, 1.0))


def test_empty_retry_on_keeps_istio_default_tokens() -> None:
    policy = retry_policy(HTTPRetry(attempts=5, retry_on=""), MeshConfig())
    assert policy.attempts == 5
    assert policy.retry_on == ISTIO_DEFAULT_RETRY_ON


def test_parse_retry_on() -> None:
    assert parse_retry_on("503") == (frozenset({"retriable-status-codes"}),
                                     frozenset({503}))
    assert parse_retry_on(" 5xx ,,reset") == (frozenset({"5xx", "reset"}), frozenset())


# --- backoff -------------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_number", "ceiling"),
                         [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (9, 0.25),
                          (200, 0.25)])
def test_backoff_is_fully_jittered_exponential_capped_at_ten_times_base(
        retry_number: int, ceiling: float) -> None:
    policy = retry_policy(None, MeshConfig())
    rng = random.Random(7)
    draws = [backoff_delay(policy, retry_number, rng) for _ in range(2000)]
    assert all(0 <= d < ceiling for d in draws)
    # uniform on [0, ceiling): the largest of 2000 draws is within 1% of the top
    # (P(all below 0.99 * ceiling) = 0.99**2000 ~ 2e-9), the mean within 4 standard errors
    assert max(draws) > 0.99 * ceiling
    mean_error = ceiling / (12 ** 0.5) / (2000 ** 0.5)
    assert abs(sum(draws) / len(draws) - ceiling / 2) < 4 * mean_error


def test_backoff_uses_the_configured_base() -> None:
    policy = retry_policy(HTTPRetry.model_validate({"attempts": 3, "backoff": "1s"}),
                          MeshConfig())
    rng = random.Random(1)
    assert all(backoff_delay(policy, 1, rng) < 1.0 for _ in range(100))
    assert all(backoff_delay(policy, 10, rng) < 10.0 for _ in range(100))
    assert max(backoff_delay(policy, 10, rng) for _ in range(200)) > 5.0
