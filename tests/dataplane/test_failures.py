"""Failing upstreams on real sockets, through the sync and the async client.

Each test states the policy in force and checks exactly how many requests reached
each server and what the caller saw: status, response flags, attempts.
Servers refuse (a port nothing listens on), reset before answering (TCP RST after
reading the request), reset in the middle of the body, hang, or answer 503.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from meshsdk.mesh import Mesh
from meshsdk.testing.sandbox import MeshTestConfig
from meshsdk.testing.upstream import Reply, Upstream, fail_every, free_port, respond, script
from tests.dataplane.conftest import Build
from tests.dataplane.harness import AsyncCaller, Caller, SyncCaller, vs

Connect = Callable[[Mesh], Caller]
URL = "http://reviews/r"

REMOTE_RESET = b"reset reason: remote reset"
CONNECT_FAILURE = b"reset reason: connection failure"

ROUND_ROBIN = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
"""




def dr(policy: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
{policy}
"""


def hits(*ups: Upstream) -> list[int]:
    return [u.hits for u in ups]


# --- refused connections ------------------------------------------------------------------


def test_refused_endpoint_is_retried_on_another_endpoint_by_default(
        mesh_config: MeshTestConfig, mesh_upstream: Callable[..., Upstream], build: Build,
        connect: Connect) -> None:
    # Endpoints in order: dead, a, b; round robin visits them in turn. Istio's default
    # policy retries connect failures (2 retries) on another host.
    mesh_config.endpoint("reviews", free_port())
    a = mesh_upstream("reviews")
    b = mesh_upstream("reviews")
    caller = connect(build(ROUND_ROBIN))
    seen = caller.many(30, URL)
    assert [g.status for g in seen] == [200] * 30
    assert {g.flags for g in seen} == {"-"}
    # Every call reached exactly one live server, exactly once.
    assert a.hits + b.hits == 30
    # A call whose pick was the dead endpoint made a second attempt, to a live one;
    # round robin moves on at each pick (the retry's pick included), so the cycle
    # (dead -> a), b repeats and a and b split evenly. Every other call needed a retry:
    # 15 of 30, or 14 when round robin's random starting point is a.
    retried = [g for g in seen if g.attempts == 2]
    assert {g.attempts for g in seen} == {1, 2}
    assert len(retried) == (14 if seen[0].upstream == a.name and seen[0].attempts == 1
                            else 15)
    assert all(g.upstream == a.name for g in retried)
    assert a.hits == b.hits == 15


def test_only_refusing_endpoints_exhaust_the_default_retries(
        mesh_config: MeshTestConfig, build: Build, connect: Connect) -> None:
    mesh_config.endpoint("reviews", free_port())
    mesh_config.endpoint("reviews", free_port())
    got = connect(build()).get(URL)
    assert got.status == 503
    assert got.flags == "URX,UF"
    assert got.attempts == 3  # the first try and Istio's 2 default retries
    assert CONNECT_FAILURE in got.body
    assert got.info.local_reply


def test_refused_with_retries_off_is_one_attempt(
        mesh_config: MeshTestConfig, mesh_upstream: Callable[..., Upstream], build: Build,
        connect: Connect) -> None:
    mesh_config.endpoint("reviews", free_port())
    got = connect(build(vs("    retries: {attempts: 0}"))).get(URL)
    assert (got.status, got.flags, got.attempts) == (503, "UF", 1)


# --- resets -----------------------------------------------------------------------------------


def test_reset_before_response_is_not_retried_by_default(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    # The default retryOn (connect-failure, refused-stream, unavailable, cancelled) does
    # not cover a reset after the request was sent.
    up = mesh_upstream("reviews", lambda req, n: Reply(reset=True))
    caller = connect(build())
    seen = caller.many(3, URL)
    assert [(g.status, g.flags, g.attempts) for g in seen] == [(503, "UR", 1)] * 3
    assert REMOTE_RESET in seen[0].body
    assert up.hits == 3


def test_reset_is_retried_with_retry_on_reset(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    up = mesh_upstream("reviews", script(Reply(reset=True), Reply(200, b"ok"),
                                         then=respond(200, "ok")))
    caller = connect(build(vs("    retries: {attempts: 2, retryOn: reset}")))
    got = caller.get(URL)
    assert (got.status, got.flags, got.attempts, got.body) == (200, "-", 2, b"ok")
    assert up.hits == 2


def test_reset_on_every_attempt_exhausts_retries(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    up = mesh_upstream("reviews", lambda req, n: Reply(reset=True))
    caller = connect(build(vs("    retries: {attempts: 2, retryOn: 5xx}")))
    got = caller.get(URL)
    assert (got.status, got.flags, got.attempts) == (503, "URX,UR", 3)
    assert up.hits == 3


def _read_fails(caller: Caller, url: str) -> tuple[int, type[BaseException] | None]:
    """Stream ``url``: the status seen, and the error raised while reading the body."""
    if isinstance(caller, SyncCaller):
        with caller.client.stream("GET", url) as response:
            try:
                response.read()
            except httpx.TransportError as exc:
                return response.status_code, type(exc)
            return response.status_code, None
    assert isinstance(caller, AsyncCaller)

    async def go() -> tuple[int, type[BaseException] | None]:
        async with caller.client.stream("GET", url) as response:
            try:
                await response.aread()
            except httpx.TransportError as exc:
                return response.status_code, type(exc)
            return response.status_code, None
    return caller.run(go())


def test_reset_mid_body_reaches_the_caller_and_is_not_retried(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    # The head was already handed to the caller: like Envoy once it forwarded the
    # response headers, the mesh cannot retry; the caller's read fails.
    body = b"x" * 200_000
    up = mesh_upstream("reviews", script(Reply(200, body, reset_mid_body=True),
                                         Reply(200, b"whole")))
    mesh = build(vs("    retries: {attempts: 3, retryOn: '5xx,reset'}"),
                 dr("    connectionPool: {http: {http2MaxRequests: 1}}"))
    caller = connect(mesh)
    status, error = _read_fails(caller, URL)
    assert status == 200
    assert error is not None, "a body cut by a reset must fail the caller's read"
    assert up.hits == 1
    # The failed body released its admission slot: with http2MaxRequests 1, a leaked
    # slot would make the next call a local 503 UO.
    got = caller.get(URL)
    assert (got.status, got.flags, got.body) == (200, "-", b"whole")
    assert up.hits == 2


def test_reset_mid_body_through_client_get_raises(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    mesh_upstream("reviews", lambda req, n: Reply(200, b"y" * 100_000, reset_mid_body=True))
    caller = connect(build())
    with pytest.raises(httpx.TransportError):
        caller.get(URL)


# --- hanging upstreams ------------------------------------------------------------------------


def test_hanging_upstream_hits_the_route_timeout(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    up = mesh_upstream("reviews", lambda req, n: Reply(hang=True))
    caller = connect(build(vs("    timeout: 0.3s")))
    got = caller.get(URL)
    # Default retry policy: a timeout is not retried.
    assert (got.status, got.flags, got.attempts) == (504, "UT", 1)
    assert got.body == b"upstream request timeout"
    assert up.hits == 1


def test_hanging_upstream_per_try_timeout_is_retried_until_exhausted(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    up = mesh_upstream("reviews", lambda req, n: Reply(hang=True))
    caller = connect(build(vs("    retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: 5xx}")))
    got = caller.get(URL)
    assert (got.status, got.flags, got.attempts) == (504, "URX,UT", 3)
    assert up.hits == 3
    # each try told the upstream its own deadline, not a longer one
    assert [r.headers.get("x-envoy-expected-rq-timeout-ms") for r in up.requests] == ["200"] * 3


def test_hang_then_answer_is_saved_by_a_per_try_timeout(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    up = mesh_upstream("reviews", script(Reply(hang=True), Reply(200, b"late but fine")))
    caller = connect(build(vs("    retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: reset}")))
    got = caller.get(URL)
    assert (got.status, got.flags, got.attempts, got.body) == (200, "-", 2, b"late but fine")
    assert up.hits == 2


def test_hanging_upstream_with_the_default_policy_gets_one_try(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    # perTryTimeout without retryOn: the default tokens, which do not cover timeouts
    up = mesh_upstream("reviews", lambda req, n: Reply(hang=True))
    caller = connect(build(vs("    retries: {attempts: 2, perTryTimeout: 0.2s}")))
    got = caller.get(URL)
    assert (got.status, got.flags, got.attempts) == (504, "UT", 1)
    assert up.hits == 1


# --- one endpoint of three answers 503 --------------------------------------------------------


def _three(mesh_upstream: Callable[..., Upstream]) -> tuple[Upstream, Upstream, Upstream]:
    a = mesh_upstream("reviews", name="a")
    b = mesh_upstream("reviews", name="b")
    bad = mesh_upstream("reviews", respond(503, "bad"), name="bad")
    return a, b, bad


def test_503_endpoint_default_policy_passes_the_503_on(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    a, b, bad = _three(mesh_upstream)
    seen = connect(build(ROUND_ROBIN)).many(30, URL)
    # 503 is not retried by default (Istio >= 1.24); round robin gives each a third.
    assert hits(a, b, bad) == [10, 10, 10]
    assert Counter((g.status, g.flags, g.attempts) for g in seen) == {
        (200, "-", 1): 20, (503, "-", 1): 10}
    assert {g.upstream for g in seen if g.status == 503} == {"bad"}


def test_503_endpoint_retried_on_5xx_goes_elsewhere(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    a, b, bad = _three(mesh_upstream)
    mesh = build(ROUND_ROBIN, vs("    retries: {attempts: 2, retryOn: 5xx}"))
    seen = connect(mesh).many(30, URL)
    assert [g.status for g in seen] == [200] * 30
    assert {g.flags for g in seen} == {"-"}
    # Each retry goes to another host (retryIgnorePreviousHosts), so one retry is
    # always enough. Round robin advances at every pick, retries included: from bad the
    # retry goes to a, and the cycle (bad -> a), b repeats, 45 picks for 30 calls: 15
    # each (bad 14 when round robin's random starting point is a).
    retried = [g for g in seen if g.attempts == 2]
    assert {g.attempts for g in seen} <= {1, 2}
    assert all(g.upstream == "a" for g in retried)
    assert bad.hits == len(retried)
    assert a.hits == b.hits == 15
    assert bad.hits == (14 if seen[0].upstream == "a" and seen[0].attempts == 1 else 15)


def test_503_endpoint_is_ejected_by_outlier_detection(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    a, b, bad = _three(mesh_upstream)
    mesh = build(dr("""\
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 10s, baseEjectionTime: 30s,
                       maxEjectionPercent: 50}"""))
    seen = connect(mesh).many(30, URL)
    # Two consecutive 503s eject it; after that it sees no traffic (30 s ejection).
    assert bad.hits == 2
    assert a.hits + b.hits == 28
    assert Counter(g.status for g in seen) == {200: 28, 503: 2}


def test_default_max_ejection_percent_never_ejects_one_of_three(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    # maxEjectionPercent defaults to 10%: ejecting 1 of 3 hosts (33%) is over the cap,
    # so the failing host keeps its share. (A classic Istio surprise, reproduced.)
    a, b, bad = _three(mesh_upstream)
    mesh = build(dr("""\
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 30s}"""))
    connect(mesh).many(30, URL)
    assert hits(a, b, bad) == [10, 10, 10]


def test_retries_and_outlier_detection_together_hide_the_bad_endpoint(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    a, b, bad = _three(mesh_upstream)
    mesh = build(vs("    retries: {attempts: 2, retryOn: 5xx}"), dr("""\
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 30s,
                       maxEjectionPercent: 50}"""))
    seen = connect(mesh).many(30, URL)
    assert [g.status for g in seen] == [200] * 30
    assert bad.hits <= 1  # ejected at its first 503 (it may not be picked at all)
    assert a.hits + b.hits == 30
    assert sum(g.attempts for g in seen) == 30 + bad.hits


def test_every_third_request_failing_is_retried_on_the_only_endpoint(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect) -> None:
    # One endpoint answering 503 to requests 3, 6, 9...: with retries on 5xx every
    # call succeeds. Calls 1, 2 take requests 1, 2; then every odd call takes a failing
    # request and its retry (3+4, 6+7, ...) and every even call one request: 30 calls
    # are 44 requests, 14 of them failed and retried.
    up = mesh_upstream("reviews", fail_every(3))
    seen = connect(build(vs("    retries: {attempts: 2, retryOn: 5xx}"))).many(30, URL)
    assert [g.status for g in seen] == [200] * 30
    assert up.hits == 44
    assert Counter(g.attempts for g in seen) == {1: 16, 2: 14}


def test_refusing_endpoint_is_ejected_by_outlier_detection(
        mesh_config: MeshTestConfig, mesh_upstream: Callable[..., Upstream], build: Build,
        connect: Connect) -> None:
    # A refused connection counts as a 5xx for outlier detection (Envoy's default,
    # splitExternalLocalOriginErrors off): the dead endpoint is ejected at its first
    # failure, so at most one call needs a retry.
    mesh_config.endpoint("reviews", free_port())
    live = mesh_upstream("reviews")
    mesh = build(dr("""\
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 30s,
                       maxEjectionPercent: 50}"""))
    seen = connect(mesh).many(10, URL)
    assert [g.status for g in seen] == [200] * 10
    assert sum(g.attempts for g in seen) in (10, 11)
    assert all(g.attempts == 1 for g in seen[2:])
    assert live.hits == 10


# --- cancellation -------------------------------------------------------------------------------


def test_cancelled_async_call_frees_its_admission_slot(
        mesh_upstream: Callable[..., Upstream], build: Build) -> None:
    up = mesh_upstream("reviews", script(Reply(hang=True), Reply(200, b"ok")))
    caller = AsyncCaller(build(dr("    connectionPool: {http: {http2MaxRequests: 1}}")))

    async def go() -> tuple[int, str]:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(caller.client.get(URL), 0.3)
        r = await caller.client.get(URL)
        return r.status_code, r.extensions["meshsdk"].response_flags
    try:
        assert caller.run(go()) == (200, "-")
        assert up.hits == 2
    finally:
        caller.close()
