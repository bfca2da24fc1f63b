"""W3C and B3 trace headers: extraction of either, injection of both, sampling."""

from __future__ import annotations

import random

import pytest
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from meshsdk.telemetry.propagation import extract, inject, strip
from meshsdk.telemetry.tracing import decide_sampling

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_w3c_traceparent_is_extracted_with_its_decision() -> None:
    parent = extract([("traceparent", f"00-{TRACE}-{SPAN}-01"), ("tracestate", "k=v")])
    assert parent is not None
    assert f"{parent.context.trace_id:032x}" == TRACE
    assert f"{parent.context.span_id:016x}" == SPAN
    assert parent.decided and parent.sampled
    assert parent.context.trace_state.get("k") == "v"


def test_w3c_not_sampled_flag_is_a_decision() -> None:
    parent = extract([("traceparent", f"00-{TRACE}-{SPAN}-00")])
    assert parent is not None and parent.decided and not parent.sampled


@pytest.mark.parametrize("headers, sampled, decided", [
    ([("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-sampled", "1")], True, True),
    ([("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-sampled", "0")], False, True),
    ([("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-flags", "1")], True, True),
    ([("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)], False, False),
    ([("b3", f"{TRACE}-{SPAN}-1")], True, True),
    ([("b3", f"{TRACE}-{SPAN}-0-{SPAN}")], False, True),
    ([("b3", f"{TRACE}-{SPAN}")], True, False),
])
def test_b3_multi_and_single_are_extracted(headers: list[tuple[str, str]], sampled: bool,
                                           decided: bool) -> None:
    parent = extract(headers)
    assert parent is not None
    assert f"{parent.context.trace_id:032x}" == TRACE
    assert parent.decided is decided
    if decided:
        assert parent.sampled is sampled


def test_b3_64_bit_trace_id_is_accepted() -> None:
    parent = extract([("x-b3-traceid", TRACE[16:]), ("x-b3-spanid", SPAN),
                      ("x-b3-sampled", "1")])
    assert parent is not None and parent.context.trace_id == int(TRACE[16:], 16)


def test_w3c_wins_over_b3_and_garbage_falls_back() -> None:
    other = "1" * 32
    both = extract([("traceparent", f"00-{TRACE}-{SPAN}-01"), ("x-b3-traceid", other),
                    ("x-b3-spanid", SPAN)])
    assert both is not None and f"{both.context.trace_id:032x}" == TRACE
    bad_w3c = extract([("traceparent", "00-zz-yy-01"), ("x-b3-traceid", other),
                       ("x-b3-spanid", SPAN), ("x-b3-sampled", "1")])
    assert bad_w3c is not None and f"{bad_w3c.context.trace_id:032x}" == other
    assert extract([("traceparent", "garbage")]) is None
    assert extract([("user-agent", "x")]) is None


def test_inject_writes_w3c_and_b3_for_the_same_span() -> None:
    ctx = SpanContext(int(TRACE, 16), int(SPAN, 16), is_remote=False,
                      trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")]))
    headers = dict(inject(ctx, parent_span_id=0xABC))
    assert headers == {
        "traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "k=v",
        "x-b3-traceid": TRACE, "x-b3-spanid": SPAN,
        "x-b3-parentspanid": "0000000000000abc", "x-b3-sampled": "1"}
    # and what we write, we read back identically in both formats
    for fmt in ({"traceparent", "tracestate"}, {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}):
        parent = extract([(k, v) for k, v in headers.items() if k in fmt])
        assert parent is not None and parent.context.span_id == ctx.span_id and parent.sampled


def test_strip_removes_every_trace_header_only() -> None:
    headers = [("Traceparent", "x"), ("b3", "y"), ("X-B3-Sampled", "1"), ("accept", "*/*")]
    assert strip(headers) == [("accept", "*/*")]


def test_sampling_honours_the_callers_decision_and_draws_otherwise() -> None:
    rng = random.Random(7)
    yes = extract([("traceparent", f"00-{TRACE}-{SPAN}-01")])
    no = extract([("traceparent", f"00-{TRACE}-{SPAN}-00")])
    undecided = extract([("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)])
    assert all(decide_sampling(yes, 0.0, rng) for _ in range(100))
    assert not any(decide_sampling(no, 100.0, rng) for _ in range(100))
    assert all(decide_sampling(undecided, 100.0, rng) for _ in range(100))
    # 1% of 100,000 draws: binomial sd ~31.5, so +-5 sd is 842..1158
    hits = sum(decide_sampling(None, 1.0, rng) for _ in range(100_000))
    assert 842 <= hits <= 1158
    assert not any(decide_sampling(None, 0.0, rng) for _ in range(1000))
