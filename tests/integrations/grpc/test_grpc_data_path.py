"""gRPC-specific data path through the mesh channel, on real gRPC servers: weighted
split, metadata and method-path matches, fault abort with grpcStatus, retries on gRPC
status tokens, timeouts and deadlines, circuit breaking, streaming calls, telemetry."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator, Sequence

import grpc
import pytest
from meshsdk_grpc import MeshRpcError, channel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest

from meshsdk.mesh import Mesh
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.upstream import Behaviour, Received, Reply, respond, script
from tests.integrations.grpc.harness import CLIENT, GrpcUpstream

DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def vs(http: str) -> str:
    return ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: "
            f"reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{http}\n")


class Env:
    """Started gRPC upstreams for ``reviews`` and a mesh built from the given rules."""

    def __init__(self, behaviours: dict[str, Behaviour], rules: Sequence[str], *,
                 telemetry: Telemetry | bool = False, seed: int = 7) -> None:
        self.ups: dict[str, GrpcUpstream] = {}
        self.mesh: Mesh | None = None
        try:
            for version, behaviour in behaviours.items():
                self.ups[version] = GrpcUpstream(version, behaviour).start()
            se = service_entry("reviews", [(u, {"version": v}) for v, u in self.ups.items()],
                               port=9080, protocol="GRPC")
            self.mesh = Mesh(config_from_yaml(se, *rules), CLIENT, rng=random.Random(seed),
                             telemetry=telemetry)
            self.channel = channel(self.mesh, "reviews:9080")
        except BaseException:
            self.close()
            raise

    def hits(self) -> dict[str, int]:
        return {v: u.hits for v, u in self.ups.items()}

    def close(self) -> None:
        if self.mesh is not None:
            self.channel.close()
            self.mesh.close()
        for up in self.ups.values():
            up.stop()


@pytest.fixture
def env() -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(behaviours: dict[str, Behaviour], rules: Sequence[str] = (),
             **kwargs: object) -> Env:
        e = Env(behaviours, rules, **kwargs)  # type: ignore[arg-type]
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def call(e: Env, method: str = "/reviews.Reviews/Get", request: bytes = b"hi",
         **kwargs: object) -> tuple[bytes, object]:
    return e.channel.unary_unary(method).with_call(request, **kwargs)  # type: ignore[no-any-return]


def error(e: Env, method: str = "/reviews.Reviews/Get", **kwargs: object) -> MeshRpcError:
    with pytest.raises(MeshRpcError) as caught:
        call(e, method, **kwargs)
    return caught.value


# --- routing -----------------------------------------------------------------------------


def test_weighted_split_with_fixed_seed(env: Callable[..., Env]) -> None:
    e = env({"v1": respond(200, "v1"), "v2": respond(200, "v2")}, [DR, vs("""\
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}""")])
    answers = [call(e)[0] for _ in range(400)]
    share = answers.count(b"v1") / len(answers)
    assert 0.74 <= share <= 0.86, share  # 80% +- 6 (3 sigma of 400 draws is 6%)
    assert e.hits() == {"v1": answers.count(b"v1"), "v2": answers.count(b"v2")}


def test_metadata_and_method_path_matches(env: Callable[..., Env]) -> None:
    e = env({"v1": respond(200, "v1"), "v2": respond(200, "v2")}, [DR, vs("""\
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /reviews.Admin/}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]""")])
    assert call(e, metadata=[("end-user", "jason")])[0] == b"v2"
    assert call(e, "/reviews.Admin/Purge")[0] == b"v2"
    assert call(e)[0] == b"v1"
    assert e.hits() == {"v1": 1, "v2": 2}
    assert e.ups["v2"].requests[0].headers["end-user"] == "jason"  # forwarded as metadata


# --- faults and retries -----------------------------------------------------------------


def test_fault_abort_with_grpc_status(env: Callable[..., Env]) -> None:
    e = env({"v1": respond(200)}, [vs("""\
  - fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]""")])
    err = error(e)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "fault filter abort"
    assert err.info.response_flags == "FI"
    assert e.hits() == {"v1": 0}


def test_retry_on_unavailable_saves_the_call(env: Callable[..., Env]) -> None:
    e = env({"v1": script(Reply(503, b"down"), Reply(200, b"ok"))}, [vs("""\
  - retries: {attempts: 2, retryOn: unavailable}
    route: [{destination: {host: reviews}}]""")])
    response, done = call(e)
    assert response == b"ok"
    assert done.info.attempts == 2  # type: ignore[attr-defined]
    assert e.hits() == {"v1": 2}


def test_retries_exhausted_is_urx(env: Callable[..., Env]) -> None:
    e = env({"v1": respond(503, "down")}, [vs("""\
  - retries: {attempts: 2, retryOn: unavailable}
    route: [{destination: {host: reviews}}]""")])
    err = error(e)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert err.details() == "down"  # the upstream's own details
    assert err.info.response_flags == "URX"
    assert e.hits() == {"v1": 3}


def status(code: int) -> Reply:
    return Reply(200, b"", {"grpc-status": str(code)})


@pytest.mark.parametrize(("token", "code", "retried"), [
    ("internal", 13, True), ("resource-exhausted", 8, True), ("cancelled", 1, True),
    ("deadline-exceeded", 4, True), ("unavailable", 13, False), ("internal", 14, False)])
def test_grpc_retry_on_tokens(env: Callable[..., Env], token: str, code: int,
                              retried: bool) -> None:
    e = env({"v1": script(status(code), Reply(200, b"ok"))}, [vs(f"""\
  - retries: {{attempts: 1, retryOn: {token}}}
    route: [{{destination: {{host: reviews}}}}]""")])
    if retried:
        assert call(e)[0] == b"ok"
        assert e.hits() == {"v1": 2}
    else:
        assert error(e).code().value[0] == code
        assert e.hits() == {"v1": 1}


# --- timeouts and deadlines ------------------------------------------------------------------


def hang() -> Behaviour:
    return respond(200, "late") if False else (lambda req, n: Reply(hang=True))


def test_route_timeout_is_deadline_exceeded(env: Callable[..., Env]) -> None:
    e = env({"v1": hang()}, [vs("""\
  - timeout: 0.2s
    route: [{destination: {host: reviews}}]""")])
    err = error(e, timeout=30)
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.info.response_flags == "UT"
    got = float(e.ups["v1"].requests[0].headers["x-time-remaining"])
    # the route's 200 ms, not the caller's 30 s, reached the server; plus the millisecond
    # gRPC's core may round grpc-timeout up by (a fresh-clone run saw 0.201, as below)
    assert 0 < got <= 0.201


def test_caller_deadline_wins_when_smaller(env: Callable[..., Env]) -> None:
    e = env({"v1": hang()}, [vs("""\
  - timeout: 30s
    route: [{destination: {host: reviews}}]""")])
    err = error(e, timeout=0.2)
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    got = float(e.ups["v1"].requests[0].headers["x-time-remaining"])
    # the caller's 200 ms, not the route's 30 s; gRPC's core writes grpc-timeout from the
    # call's deadline rounded up (a fresh-clone run saw 0.201), hence the millisecond
    assert 0 < got <= 0.201


def test_per_try_timeout_retries_on_another_try(env: Callable[..., Env]) -> None:
    e = env({"v1": script(Reply(hang=True), Reply(200, b"second"))}, [vs("""\
  - retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: reset}
    route: [{destination: {host: reviews}}]""")])
    assert call(e, timeout=30)[0] == b"second"
    assert e.hits() == {"v1": 2}


# --- circuit breaking ------------------------------------------------------------------------


def test_connection_pool_limit_overflows_with_uo(env: Callable[..., Env]) -> None:
    release = threading.Event()
    entered = threading.Event()

    def held(req: Received, n: int) -> Reply:
        if n == 1:
            entered.set()
            release.wait(10)  # bounded: the test releases it
        return Reply(200, b"done")

    e = env({"v1": held}, [DR.replace("  subsets:", """\
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1, http1MaxPendingRequests: 1}}
  subsets:"""), vs("  - route: [{destination: {host: reviews}}]")])
    first: list[bytes] = []
    worker = threading.Thread(target=lambda: first.append(call(e, timeout=20)[0]))
    worker.start()
    try:
        assert entered.wait(10)
        err = error(e)
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert "UO" in err.info.response_flags
    finally:
        release.set()
        worker.join(10)
    assert first == [b"done"]
    assert e.hits() == {"v1": 1}


# --- streaming -------------------------------------------------------------------------------


def test_unary_stream_is_routed_and_retried(env: Callable[..., Env]) -> None:
    e = env({"v1": respond(200, "v1"), "v2": script(Reply(503, b"no"), Reply(200, b"v2"))},
            [DR, vs("""\
  - match: [{headers: {end-user: {exact: jason}}}]
    retries: {attempts: 2, retryOn: unavailable}
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]""")])
    stream = e.channel.unary_stream("/reviews.Reviews/Stream")(
        b"hi", metadata=[("end-user", "jason")])
    assert list(stream) == [b"v2", b"end"]
    assert stream.code() is grpc.StatusCode.OK
    assert stream.info.attempts == 2
    assert e.hits() == {"v1": 0, "v2": 2}


def test_unary_stream_error_raises_on_iteration(env: Callable[..., Env]) -> None:
    e = env({"v1": respond(503, "down")}, [vs("""\
  - retries: {attempts: 1, retryOn: unavailable}
    route: [{destination: {host: reviews}}]""")])
    stream = e.channel.unary_stream("/reviews.Reviews/Stream")(b"hi")
    with pytest.raises(MeshRpcError) as caught:
        next(stream)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert caught.value.info.response_flags == "URX"
    assert e.hits() == {"v1": 2}


def test_client_streaming_calls_are_routed_and_never_retried(env: Callable[..., Env]) -> None:
    e = env({"v1": respond(503, "down"), "v2": echo_body()}, [DR, vs("""\
  - match: [{uri: {exact: /reviews.Reviews/Collect}}]
    retries: {attempts: 2, retryOn: unavailable}
    route: [{destination: {host: reviews, subset: v2}}]
  - retries: {attempts: 2, retryOn: unavailable}
    route: [{destination: {host: reviews, subset: v1}}]""")])
    assert e.channel.stream_unary("/reviews.Reviews/Collect")(iter([b"a", b"b"])) == b"a|b"
    chat = e.channel.stream_stream("/reviews.Reviews/Chat")(iter([b"x", b"y"]))
    with pytest.raises(MeshRpcError) as caught:
        list(chat)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert e.hits() == {"v1": 1, "v2": 1}  # a request stream cannot be sent twice


def echo_body() -> Behaviour:
    return lambda req, n: Reply(200, req.body)


# --- telemetry -------------------------------------------------------------------------------


def test_client_span_trace_headers_and_istio_metrics(env: Callable[..., Env]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(CLIENT, tracer_provider=provider, otel_metrics=False,
                          rng=random.Random(1))
    sampled = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 100}]
"""
    e = env({"v1": script(Reply(200, b"ok"), then=respond(503, "down"))},
            [sampled, vs("  - route: [{destination: {host: reviews}}]")],
            telemetry=telemetry)
    prometheus = telemetry.prometheus()
    call(e)
    error(e)
    text = generate_latest(prometheus.registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("istio_requests_total{")]
    assert len(lines) == 2, text
    assert all('request_protocol="grpc"' in line and 'reporter="source"' in line
               for line in lines)
    assert any('grpc_response_status="0"' in line for line in lines)
    assert any('grpc_response_status="14"' in line for line in lines)
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(spans) == 2
    assert [s.attributes["rpc.grpc.status_code"] for s in spans] == [0, 14]
    seen = e.ups["v1"].requests[0].headers
    trace_id = f"{spans[0].context.trace_id:032x}"
    assert seen["traceparent"].split("-")[1] == trace_id
    assert seen["x-b3-traceid"] == trace_id
