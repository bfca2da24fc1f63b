"""The data-path conformance table through the gRPC channel, on real gRPC servers.

Every scenario of ``meshsdk.testing.conformance`` runs unless it cannot mean the same
thing for gRPC (skipped, with the reason); where Istio's defaults make a gRPC call
behave differently from an HTTP one, the expectation is adjusted and says why.
"""

from __future__ import annotations

import dataclasses

import pytest

from meshsdk.testing.conformance import SCENARIOS, Scenario, connection_scenarios
from tests.integrations.grpc.harness import aio_grpc_driver, grpc_driver, run_grpc

ALL = [*SCENARIOS, *connection_scenarios()]

SKIP = {
    "redirect": "a redirect has no meaning to a gRPC client (Envoy sends it as HTTP and the "
                "client fails the call as UNKNOWN); nothing to compare",
    "retry on 5xx saves the call": "retryOn 5xx judges the HTTP status; a gRPC error travels "
                                   "with HTTP 200 and grpc-status, as through Envoy: see "
                                   "test_grpc_data_path.py, retry on unavailable",
    "retries exhausted is URX": "same as retry on 5xx: covered with retryOn unavailable in "
                                "test_grpc_data_path.py",
}

# Istio's default retry policy retries gRPC UNAVAILABLE (retryOn connect-failure,
# refused-stream, unavailable, cancelled; 2 attempts), which a plain HTTP 503 is not.
ADJUST = {
    "default retry policy does not retry 503": {"hits": {"v1": 3}, "flags": "URX"},
    "outlier detection ejects a failing endpoint": {"hits": {"bad": 1, "good": 6}},
}


def _applicable(scenario: Scenario) -> Scenario:
    if not scenario.grpc:
        pytest.skip("the table marks it HTTP-only (httpStatus abort); gRPC's abort with "
                    "grpcStatus is in test_grpc_data_path.py")
    if scenario.name in SKIP:
        pytest.skip(SKIP[scenario.name])
    return dataclasses.replace(scenario, **ADJUST.get(scenario.name, {}))


@pytest.mark.parametrize("driver", ["sync", "aio"])
@pytest.mark.parametrize("scenario", ALL, ids=[s.name for s in ALL])
def test_conformance_grpc(scenario: Scenario, driver: str) -> None:
    run_grpc(_applicable(scenario), grpc_driver if driver == "sync" else aio_grpc_driver)
