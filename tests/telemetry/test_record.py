"""``CallRecord.start``, the request paths' fast way to a record, must build exactly what
the dataclass constructor builds: a field added to the class but not to ``start`` is
left unset there, which this comparison turns into a failure."""

from __future__ import annotations

import dataclasses

import pytest

from meshsdk.telemetry.record import CallRecord


@pytest.mark.parametrize("reporter", ["source", "destination"])
def test_start_builds_what_the_constructor_builds(reporter: str) -> None:
    args = (reporter, 1700000000.25, 0.012, "GET", "/reviews/0?x=1", "reviews:9080")
    fast = CallRecord.start(*args)  # type: ignore[arg-type]
    slow = CallRecord(*args)  # type: ignore[arg-type]
    for f in dataclasses.fields(CallRecord):   # every field set, to the same value
        assert getattr(fast, f.name) == getattr(slow, f.name), f.name
    assert fast == slow


def test_records_from_start_do_not_share_what_callers_change() -> None:
    a = CallRecord.start("source", 0.0, 0.0, "GET", "/", "a")
    b = CallRecord.start("source", 0.0, 0.0, "GET", "/", "b")
    a.status = 503
    a.trace_id = "0" * 32
    assert (b.status, b.trace_id, b.authority) == (0, None, "b")
