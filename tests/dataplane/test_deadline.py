"""Deadline propagation: the remaining time travels with outbound calls, as Envoy's
x-envoy-expected-rq-timeout-ms and gRPC's grpc-timeout, and an inbound deadline caps
every outbound call made inside it."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from meshsdk import Mesh, Workload, current_deadline, deadline_scope
from meshsdk.deadline import format_grpc_timeout, parse_grpc_timeout, timeout_from_headers
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.upstream import Reply, Upstream, echo, script
from tests.dataplane.harness import vs

CLIENT = Workload("productpage", "default", {"app": "productpage"})
URL = "http://reviews:9080/d"


def _mesh(up: Upstream, *docs: str) -> Mesh:
    return Mesh(config_from_yaml([service_entry("reviews", [(up, {})], port=9080), *docs]),
                CLIENT, rng=random.Random(1))


def _timeout_seen(response_body: bytes) -> int:
    return int(json.loads(response_body)["headers"]["x-envoy-expected-rq-timeout-ms"])


def test_no_deadline_means_no_timeout_header() -> None:
    with Upstream("r", echo) as up, _mesh(up).client() as client:
        headers = json.loads(client.get(URL).content)["headers"]
    assert "x-envoy-expected-rq-timeout-ms" not in headers


def test_inbound_deadline_caps_outbound_calls() -> None:
    with Upstream("r", echo) as up, _mesh(up).client() as client:
        with deadline_scope(0.5):
            assert current_deadline() is not None
            seen = _timeout_seen(client.get(URL).content)
        assert current_deadline() is None
    assert 0 < seen <= 500


def test_the_tighter_of_nested_deadlines_wins() -> None:
    with (Upstream("r", echo) as up, _mesh(up).client() as client,
          deadline_scope(0.3), deadline_scope(5.0)):
        seen = _timeout_seen(client.get(URL).content)
    assert 0 < seen <= 300


def test_route_timeout_and_inbound_deadline_take_the_smaller() -> None:
    with Upstream("r", echo) as up, _mesh(up, vs("    timeout: 2s")).client() as client:
        loose = _timeout_seen(client.get(URL).content)
        with deadline_scope(0.25):
            tight = _timeout_seen(client.get(URL).content)
    assert 1000 < loose <= 2000
    assert 0 < tight <= 250


def test_a_per_try_timeout_is_told_exactly_on_every_call_and_as_grpc_timeout() -> None:
    # the header text is kept per limit: repeated calls, and a gRPC call on the same
    # limit, must each still see their own protocol's header with the right value
    route = vs("    timeout: 10s\n    retries: {attempts: 1, perTryTimeout: 1.5s}")
    with Upstream("r", echo) as up, _mesh(up, route).client() as client:
        seen = [_timeout_seen(client.get(URL).content) for _ in range(3)]
        grpc = json.loads(client.post(
            URL, content=b"\x00\x00\x00\x00\x00",
            headers={"content-type": "application/grpc", "te": "trailers"}).content)["headers"]
        with deadline_scope(0.25):  # the inbound deadline is tighter: its own value
            tight = _timeout_seen(client.get(URL).content)
    assert seen == [1500, 1500, 1500]
    assert grpc["x-envoy-expected-rq-timeout-ms"] == "1500"
    assert parse_grpc_timeout(grpc["grpc-timeout"]) == 1.5
    assert 0 < tight <= 250


def test_an_expired_inbound_deadline_stops_a_hanging_call_with_504_ut() -> None:
    with (Upstream("r", script(Reply(hang=True))) as up, _mesh(up).client() as client,
          deadline_scope(0.2)):
        r = client.get(URL)
    assert r.status_code == 504
    assert "UT" in r.extensions["meshsdk"].response_flags


def test_grpc_calls_carry_grpc_timeout() -> None:
    with Upstream("r", echo) as up, _mesh(up).client() as client, deadline_scope(1.5):
        r = client.post(URL, content=b"\x00\x00\x00\x00\x00",
                        headers={"content-type": "application/grpc", "te": "trailers"})
    seen = json.loads(r.content)["headers"]
    value = parse_grpc_timeout(seen["grpc-timeout"])
    assert value is not None and 0 < value <= 1.5


def test_deadline_follows_the_task_in_asyncio() -> None:
    async def run(up: Upstream) -> int:
        async with _mesh(up).async_client() as client:
            with deadline_scope(0.4):
                return _timeout_seen((await client.get(URL)).content)

    with Upstream("r", echo) as up:
        seen = asyncio.run(run(up))
    assert 0 < seen <= 400


@pytest.mark.parametrize(("headers", "expected"), [
    ({"x-envoy-expected-rq-timeout-ms": "1500"}, 1.5),
    ({"grpc-timeout": "250m"}, 0.25),
    ({"grpc-timeout": "2S"}, 2.0),
    ({"grpc-timeout": "1H"}, 3600.0),
    ({"grpc-timeout": "bad"}, None),
    ({}, None),
])
def test_timeout_from_headers(headers: dict[str, str], expected: float | None) -> None:
    assert timeout_from_headers(headers) == expected


def test_grpc_timeout_format_round_trips() -> None:
    for seconds in (0.001, 0.25, 7.0, 90.0):
        parsed = parse_grpc_timeout(format_grpc_timeout(seconds))
        assert parsed is not None and abs(parsed - seconds) < 0.001
