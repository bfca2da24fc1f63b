"""Random sources after fork(): a server that builds the app and then forks workers
(gunicorn --preload) must not have its workers draw the same ids in step."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from meshsdk.randomness import fresh_random
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.workload import Workload

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def in_child(draw: Callable[[], str]) -> str:
    """``draw()`` in a forked child, its result sent back through a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's exit hooks
        try:
            os.write(write, draw().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    return out


def test_a_fresh_source_draws_apart_in_a_forked_child() -> None:
    source = fresh_random()
    child = in_child(lambda: f"{source.getrandbits(128):x}")
    assert child and child != f"{source.getrandbits(128):x}"


def test_a_source_the_caller_gives_is_left_as_given() -> None:
    source = random.Random(7)  # a test's seeded source: its sequence is the point
    child = in_child(lambda: f"{source.getrandbits(128):x}")
    assert child == f"{source.getrandbits(128):x}"


def test_workers_forked_after_telemetry_make_their_own_ids() -> None:
    telemetry = Telemetry(Workload("a-v1", "default", {"app": "a"}, "a"), otel_metrics=False)

    def ids() -> str:
        call = telemetry.inbound("GET", "http", "a:80", "/", [])
        assert call.span is not None
        context = call.span.get_span_context()
        return f"{call.request_id} {context.trace_id:x} {context.span_id:x}"

    child = in_child(ids).split()
    parent = ids().split()
    assert len(child) == 3
    assert all(c != p for c, p in zip(child, parent, strict=True))
