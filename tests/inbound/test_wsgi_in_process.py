"""The WSGI adapter driven in process (no server: the environ is built here, as gunicorn
builds it): reading headers from the environ, a generator body produced inside the
request's context, and route naming only for spans that record."""

from __future__ import annotations

import contextvars
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from meshsdk.deadline import current_deadline
from meshsdk.inbound.handler import current_request, route_wanted, set_route
from meshsdk.inbound.wsgi import MeshWSGIMiddleware, environ_facts
from meshsdk.mesh import Mesh
from meshsdk.telemetry.recorder import current_request_id
from meshsdk.testing.builders import config_from_yaml
from tests.inbound.conftest import REVIEWS, Capture

HOST = "reviews.default.svc.cluster.local:9080"


def sampling(percentage: int) -> str:
    return f"""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing: [{{randomSamplingPercentage: {percentage}}}]
"""


def environ(path: str = "/reviews/1", **extra: Any) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
            "QUERY_STRING": "", "RAW_URI": path, "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "9080", "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "50000", "wsgi.url_scheme": "http", "HTTP_HOST": HOST,
            "HTTP_ACCEPT": "*/*", "CONTENT_TYPE": "", "wsgi.input": io.BytesIO(), **extra}


def run(app: Any, env: dict[str, Any]) -> tuple[str, list[bytes]]:
    """Drive ``app`` as a WSGI server does: call, iterate, close."""
    seen: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append(status)
        return None
    body = app(env, start_response)
    try:
        chunks = list(body)
    finally:
        body.close()
    return seen[0], chunks


def assert_route_named(capture: Capture, recorded: bool, route: str) -> None:
    """A span that records is named after ``route``, which is also its ``http.route``;
    an unsampled request is recorded (metrics) with no span exported."""
    if recorded:
        [span] = capture.spans(1)
        assert span.name == route
        assert span.attributes is not None
        assert span.attributes["http.route"] == route
    else:
        capture.wait_requests(1)
        assert capture.exporter.get_finished_spans() == ()


@pytest.fixture
def capture() -> Capture:
    return Capture()


def meshed(capture: Capture, app: Callable[..., Iterable[bytes]], percentage: int = 100
           ) -> MeshWSGIMiddleware:
    mesh = Mesh(config_from_yaml(sampling(percentage)), REVIEWS,
                telemetry=capture.telemetry(REVIEWS))
    return MeshWSGIMiddleware(app, mesh)


def test_headers_are_read_from_new_long_and_empty_environ_keys() -> None:
    long_name = "x-" + "a" * 90  # too long to be remembered, still a header
    env = environ(HTTP_X_NEVER_SEEN_BEFORE_9Q="1", CONTENT_LENGTH="3",
                  **{"HTTP_" + long_name.upper().replace("-", "_"): "long"})
    expected = {("host", HOST), ("accept", "*/*"), ("x-never-seen-before-9q", "1"),
                ("content-length", "3"), (long_name, "long")}
    for _ in range(2):  # the first call learns the keys, the second reads them learnt
        headers = environ_facts(env)["headers"]
        assert set(headers) == expected  # CONTENT_TYPE is empty: no such header
        assert len(headers) == len(expected)


def test_a_generator_body_runs_inside_the_request_context(capture: Capture) -> None:
    seen: list[tuple[object, str | None]] = []

    def app(env: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for chunk in (b"one", b"two"):
            seen.append((current_request(), current_request_id()))
            yield chunk

    status, chunks = run(meshed(capture, app), environ())
    assert (status, chunks) == ("200 OK", [b"one", b"two"])
    assert len(seen) == 2 and all(request is not None and rid for request, rid in seen)
    assert seen[0] == seen[1]  # one request, one id, for both chunks
    assert current_request() is None  # nothing left current after close
    [(labels, count)] = capture.wait_requests(1)
    assert (labels["response_code"], count) == ("200", 1)
    sizes = capture.prometheus.registry.get_sample_value(
        "istio_response_bytes_sum", {**labels})
    assert sizes is not None and sizes >= len(b"onetwo")


def test_a_generator_failing_before_its_first_chunk_is_recorded_as_500(
        capture: Capture) -> None:
    def app(env: Any, start_response: Any) -> Iterator[bytes]:
        raise RuntimeError("broken before the first chunk")
        yield b""  # pragma: no cover - makes this a generator

    middleware = meshed(capture, app)
    with pytest.raises(RuntimeError, match="before the first chunk"):
        middleware(environ(), lambda *args: None)
    [(labels, count)] = capture.wait_requests(1)
    assert (labels["response_code"], count) == ("500", 1)


def test_an_empty_generator_body_sends_nothing_and_is_recorded(capture: Capture) -> None:
    def app(env: Any, start_response: Any) -> Iterator[bytes]:
        start_response("204 No Content", [])
        yield from ()

    assert run(meshed(capture, app), environ()) == ("204 No Content", [])
    [(labels, _)] = capture.wait_requests(1)
    assert labels["response_code"] == "204"


@pytest.mark.parametrize("percentage", [0, 100])
def test_routes_are_wanted_only_for_spans_that_record(capture: Capture,
                                                      percentage: int) -> None:
    wanted: list[bool] = []

    def app(env: Any, start_response: Any) -> list[bytes]:
        wanted.append(route_wanted())
        set_route("/reviews/{id}")
        start_response("200 OK", [])
        return [b"ok"]

    run(meshed(capture, app, percentage), environ())
    assert wanted == [percentage == 100]
    assert not route_wanted()  # outside a request
    assert_route_named(capture, percentage == 100, "/reviews/{id}")


@pytest.mark.parametrize("percentage", [0, 100])
def test_a_route_callback_runs_only_for_spans_that_record(capture: Capture,
                                                          percentage: int) -> None:
    asked: list[str] = []

    def route_of(env: dict[str, Any]) -> str | None:
        asked.append(env["PATH_INFO"])
        return "/reviews/{id}"

    def app(env: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    mesh = Mesh(config_from_yaml(sampling(percentage)), REVIEWS,
                telemetry=capture.telemetry(REVIEWS))
    run(MeshWSGIMiddleware(app, mesh, route=route_of), environ("/reviews/7"))
    assert asked == (["/reviews/7"] if percentage == 100 else [])
    if percentage == 100:
        [span] = capture.spans(1)
        assert span.name == "/reviews/{id}"
    else:
        capture.wait_requests(1)


def test_a_route_set_by_the_app_wins_over_the_callback(capture: Capture) -> None:
    def app(env: Any, start_response: Any) -> list[bytes]:
        set_route("/from/app")
        start_response("200 OK", [])
        return [b"ok"]

    mesh = Mesh(config_from_yaml(sampling(100)), REVIEWS,
                telemetry=capture.telemetry(REVIEWS))
    run(MeshWSGIMiddleware(app, mesh, route=lambda env: "/from/callback"), environ())
    [span] = capture.spans(1)
    assert span.name == "/from/app"


class _Closing:
    """A body with app code in ``close()`` (as werkzeug's ClosingIterator runs callbacks)."""

    def __init__(self, chunks: list[bytes], on_close: Callable[[], None]) -> None:
        self._chunks = iter(chunks)
        self._on_close = on_close

    def __iter__(self) -> _Closing:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        self._on_close()


def test_chunks_and_close_share_one_context_with_one_deadline(capture: Capture) -> None:
    seen: list[tuple[object, float | None, str | None]] = []
    mine: contextvars.ContextVar[str | None] = contextvars.ContextVar("mine", default=None)

    def look() -> None:
        seen.append((current_request(), current_deadline(), mine.get()))

    def app(env: Any, start_response: Any) -> _Closing:
        mine.set("set by the app")
        start_response("200 OK", [])
        look()
        return _Closing([b"a", b"b"], look)

    status, chunks = run(meshed(capture, app),
                         environ(HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS="5000"))
    assert (status, chunks) == ("200 OK", [b"a", b"b"])
    assert len(seen) == 2
    (request, deadline, var), later = seen
    assert request is not None and later[0] is request
    assert deadline is not None and later[1] == deadline  # anchored once, when called
    assert var == later[2] == "set by the app"  # close() sees what the app set
    assert current_deadline() is None and current_request() is None  # undone after


def test_ports_and_status_codes_are_parsed_once_and_the_caches_stay_bounded() -> None:
    from meshsdk.inbound import wsgi

    assert wsgi._port_number("50001") == 50001
    assert wsgi._port_numbers["50001"] == 50001          # the next request looks it up
    assert wsgi._port_number(50002) == 50002              # werkzeug gives an int
    assert wsgi._port_number("80a") is None and "80a" not in wsgi._port_numbers
    assert wsgi._port_number(None) is None
    for port in range(wsgi._PORT_NUMBERS_LIMIT + 10):     # clients' ports come and go
        wsgi._port_number(str(port))
    assert len(wsgi._port_numbers) <= wsgi._PORT_NUMBERS_LIMIT

    assert wsgi._status_code("201 Created") == 201
    assert wsgi._status_codes["201 Created"] == 201
    assert wsgi._status_code("bogus") == 0
    for n in range(wsgi._STATUS_CODES_LIMIT + 10):        # apps inventing reason phrases
        wsgi._status_code(f"200 OK {n}")
    assert len(wsgi._status_codes) <= wsgi._STATUS_CODES_LIMIT


def test_a_status_line_is_recorded_with_its_code(capture: Capture) -> None:
    def app(env: Any, start_response: Any) -> list[bytes]:
        start_response("418 I'm a teapot", [])
        return [b"short and stout"]

    assert run(meshed(capture, app), environ())[0] == "418 I'm a teapot"
    [(labels, _)] = capture.wait_requests(1)
    assert labels["response_code"] == "418"
