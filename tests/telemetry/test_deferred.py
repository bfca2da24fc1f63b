"""Metrics recorded off the request path: the queue's policy (batch, back-pressure,
order, once), the real drainer thread, fork handling, and the OTel sink built on it:
every collection sees every finished call, inline and deferred recording agree, and
exemplars still point at the span that was current when the call finished."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from meshsdk.telemetry.deferred import DeferredQueue, Drainer
from meshsdk.telemetry.metrics import OtelMetrics
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.workload import Workload
from tests.telemetry.test_metrics import CASES, OK, URX

# --- the queue ------------------------------------------------------------------------


class IdleDrainer(Drainer):
    """A drainer whose thread never runs: what the queue itself does, deterministically.
    (The real thread is tested below; here it would race the assertions.)"""

    def __init__(self) -> None:
        super().__init__(interval=3600.0)
        self.registered: list[object] = []
        self.wakes = 0

    def register(self, queue: Any) -> None:
        self.registered.append(queue)

    def unregister(self, queue: Any) -> None:
        self.registered.remove(queue)

    def wake(self) -> None:
        self.wakes += 1


def test_items_wait_for_a_drain_then_pass_in_order_once() -> None:
    seen: list[int] = []
    drainer = IdleDrainer()
    queue = DeferredQueue(seen.append, batch=10, limit=100, drainer=drainer)
    for i in range(5):
        queue.put(i)
    assert seen == [] and len(queue) == 5
    assert drainer.registered == [queue]          # registered on first put, once
    assert queue.drain() == 5
    assert seen == [0, 1, 2, 3, 4]
    assert queue.drain() == 0 and seen == [0, 1, 2, 3, 4]


def test_a_full_batch_wakes_the_drainer_and_the_limit_drains_inline() -> None:
    seen: list[int] = []
    drainer = IdleDrainer()
    queue = DeferredQueue(seen.append, batch=4, limit=8, drainer=drainer)
    for i in range(7):
        queue.put(i)
    assert drainer.wakes == 1 and seen == []      # woken once, at the 4th item
    queue.put(7)                                  # the 8th: the drainer is behind
    assert seen == list(range(8)) and len(queue) == 0


def test_close_drains_and_leaves_the_drainer() -> None:
    seen: list[int] = []
    drainer = IdleDrainer()
    queue = DeferredQueue(seen.append, drainer=drainer)
    queue.put(1)
    queue.close()
    assert seen == [1] and drainer.registered == []


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="batch"):
        DeferredQueue(print, batch=0)
    with pytest.raises(ValueError, match="limit"):
        DeferredQueue(print, batch=10, limit=5)


class Collector:
    """A queue's handler that keeps what it is given and says when it has ``n`` items."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen: list[object] = []
        self.done = threading.Event()

    def __call__(self, item: object) -> None:
        self.seen.append(item)
        if len(self.seen) == self.n:
            self.done.set()


def test_the_drainer_thread_drains_a_batch_by_itself() -> None:
    handle = Collector(8)
    done, seen = handle.done, handle.seen
    drainer = Drainer(interval=3600.0)   # only the batch wake can make it drain
    queue = DeferredQueue(handle, batch=8, limit=64, drainer=drainer)
    for i in range(8):
        queue.put(i)
    assert done.wait(10.0), "the drainer thread did not drain a full batch"
    assert seen == list(range(8))
    queue.close()


class SlicedDrainer(Drainer):
    """A drainer on a fake clock that advances one second per item handled, and a fake
    sleep that only records: :meth:`Drainer.run_once` deterministically, no thread."""

    def __init__(self, slice_seconds: float) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        super().__init__(interval=3600.0, slice_seconds=slice_seconds, pause=0.25,
                         clock=lambda: self.now, sleep=self.sleeps.append)

    def register(self, queue: Any) -> None:  # no thread: the test runs the rounds
        self._queues.add(queue)

    def handler(self, seen: list[Any]) -> Any:
        def handle(item: Any) -> None:
            seen.append(item)
            self.now += 1.0
        return handle


def test_the_drainer_records_in_slices_and_pauses_between_them() -> None:
    drainer = SlicedDrainer(slice_seconds=3.0)
    seen: list[int] = []
    queue = DeferredQueue(drainer.handler(seen), batch=4, limit=100, drainer=drainer)
    for i in range(10):
        queue.put(i)
    # slices of three items (3 s of the fake clock), a pause after each one that leaves
    # a backlog: 3 + 3 + 3 + 1, three pauses
    assert drainer.run_once() == 3
    assert drainer.sleeps == [0.25, 0.25, 0.25]
    assert seen == list(range(10)) and len(queue) == 0
    assert drainer.run_once() == 0          # nothing queued: no pause


def test_every_queue_gets_a_slice_per_round_and_a_slow_item_still_progresses() -> None:
    drainer = SlicedDrainer(slice_seconds=0.5)   # every item outlasts the slice
    first: list[str] = []
    second: list[str] = []
    a = DeferredQueue(drainer.handler(first), batch=4, limit=100, drainer=drainer)
    b = DeferredQueue(drainer.handler(second), batch=4, limit=100, drainer=drainer)
    for i in range(3):
        a.put(f"a{i}")
    b.put("b0")
    # one item per queue per slice: round 1 takes a0 and b0, then a1, then a2
    assert drainer.run_once() == 2
    assert first == ["a0", "a1", "a2"] and second == ["b0"]


def test_a_drainer_needs_a_positive_slice() -> None:
    with pytest.raises(ValueError, match="slice_seconds"):
        Drainer(slice_seconds=0)
    with pytest.raises(ValueError, match="pause"):
        Drainer(pause=-1.0)


def test_after_fork_the_child_starts_empty_with_a_new_thread() -> None:
    drainer = Drainer(interval=3600.0)
    queue: DeferredQueue[object] = DeferredQueue(lambda item: None, batch=100, drainer=drainer)
    queue.put("parent's")
    parent_thread = drainer._thread
    drainer._after_fork()     # what os.register_at_fork runs in a child process
    assert len(queue) == 0    # the parent records what it queued, not the child
    assert drainer._thread is not None and drainer._thread is not parent_thread
    assert drainer._thread.is_alive()
    queue.close()


# --- the OTel sink ----------------------------------------------------------------------


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {m.name: list(m.data.data_points) for rm in data.resource_metrics
            for sm in rm.scope_metrics for m in sm.metrics}


def comparable(found: dict[str, list[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, pts in found.items():
        out[name] = sorted(
            (tuple(sorted(p.attributes.items())),
             getattr(p, "value", None), getattr(p, "count", None), getattr(p, "sum", None),
             tuple(getattr(p, "bucket_counts", ()))) for p in pts)
    return out


def test_a_collection_sees_every_queued_call() -> None:
    reader = InMemoryMetricReader()
    sink = OtelMetrics(MeterProvider(metric_readers=[reader]), drainer=IdleDrainer())
    for _ in range(3):
        sink.record(OK)
    sink.record(URX)
    found = points(reader)               # nothing drained the queue but the collection
    counts = {p.attributes["response_code"]: p.value for p in found["istio_requests_total"]}
    assert counts == {"200": 3, "503": 1}
    (duration_ok,) = [p for p in found["istio_request_duration_milliseconds"]
                      if p.attributes["response_code"] == "200"]
    assert duration_ok.count == 3 and duration_ok.sum == pytest.approx(36.0)
    sink.record(OK)                      # cumulative across collections
    again = points(reader)
    assert {p.attributes["response_code"]: p.value
            for p in again["istio_requests_total"]} == {"200": 4, "503": 1}


def test_deferred_and_inline_recording_export_the_same() -> None:
    results = []
    for deferred in (True, False):
        reader = InMemoryMetricReader()
        sink = OtelMetrics(MeterProvider(metric_readers=[reader]), deferred=deferred,
                           drainer=IdleDrainer())
        for record in CASES.values():
            sink.record(record)
            sink.record(record)
        results.append(comparable(points(reader)))
    assert results[0] == results[1]
    assert len(results[0]["istio_requests_total"]) == len(CASES)


def test_exemplars_keep_the_span_current_at_the_call() -> None:
    reader = InMemoryMetricReader()
    sink = OtelMetrics(MeterProvider(metric_readers=[reader]), drainer=IdleDrainer())
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("handler") as span:
        sink.record(OK)
    trace_id = span.get_span_context().trace_id
    (duration,) = points(reader)["istio_request_duration_milliseconds"]
    assert [e.trace_id for e in duration.exemplars] == [trace_id]


def test_telemetry_flush_and_close_record_what_is_queued() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(Workload(name="a", namespace="default"),
                          meter_provider=MeterProvider(metric_readers=[reader]))
    (sink,) = [s for s in telemetry._sinks if isinstance(s, OtelMetrics)]
    sink._queue = DeferredQueue(sink._apply, drainer=IdleDrainer())
    sink.record(OK)
    assert len(sink._queue) == 1    # one item per call: the counter and three histograms
    telemetry.flush()
    assert len(sink._queue) == 0
    sink.record(OK)
    telemetry.close()
    assert len(sink._queue) == 0
    assert [p.value for p in points(reader)["istio_requests_total"]] == [2]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_drains_with_its_own_thread() -> None:
    """gunicorn forks workers after import: the shared drainer's thread does not survive
    a fork, so the at-fork hook must start a new one in the child."""
    handle = Collector(4)
    done, seen = handle.done, handle.seen
    queue = DeferredQueue(handle, batch=4, limit=64)     # the process-wide drainer
    queue.put("before the fork")
    queue.drain()
    pid = os.fork()
    if pid == 0:  # the child: exit status says whether its drainer drained a batch
        code = 1
        try:
            seen.clear()
            for i in range(4):
                queue.put(f"child {i}")
            code = 0 if done.wait(10.0) and len(seen) == 4 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert seen == ["before the fork"]                   # the parent's list is its own
    queue.close()
