"""The conformance table through both httpx transports: same scenarios, same outcomes."""

from __future__ import annotations

import logging

import pytest

from meshsdk.testing.conformance import SCENARIOS, Driver, Scenario, connection_scenarios, run
from tests.dataplane.drivers import DRIVERS

ALL = [*SCENARIOS, *connection_scenarios()]


@pytest.mark.parametrize("driver", sorted(DRIVERS))
@pytest.mark.parametrize("scenario", ALL, ids=[s.name for s in ALL])
def test_conformance(scenario: Scenario, driver: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshsdk.mirror")  # a failed copy says why
    chosen: Driver = DRIVERS[driver]
    run(scenario, chosen)
