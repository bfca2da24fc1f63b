"""Attribute expressions (CEL) over a CallRecord: Envoy's attribute vocabulary, filter and
value semantics, and config errors that name the expression, the column and where."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from meshsdk.errors import ConfigError
from meshsdk.telemetry.expr import (
    ATTRIBUTES,
    RESPONSE_FLAG_BITS,
    ExpressionError,
    compile_expression,
    compile_filter,
    compile_value,
    response_flag_bits,
)
from meshsdk.telemetry.record import CallRecord, Peer, Service

START = 1764103393.123  # 2025-11-25T20:43:13.123Z


def record(**changes: Any) -> CallRecord:
    """A client-side (reporter=source) call to reviews that got a 503."""
    base = CallRecord(
        reporter="source", start_time=START, duration=0.0425, method="GET",
        path="/api/v1/reviews?limit=5&sort=new", authority="reviews:9080", scheme="http",
        protocol="HTTP/2", status=503, grpc_status=None, response_flags="UH,URX",
        bytes_received=17, bytes_sent=19, response_duration=0.04,
        request_headers=(("user-agent", "curl/8.4.0"), ("x-foo", "a"), ("x-foo", "b"),
                         ("referer", "http://productpage/"), ("x-request-id", "rid-1")),
        response_headers=(("content-type", "text/plain"), ("x-envoy-overloaded", "true")),
        request_id="rid-1", route_name="reviews-route",
        upstream_cluster="outbound|9080|v2|reviews.default.svc.cluster.local",
        upstream_host="10.1.2.3:9080", upstream_local_address="10.1.0.7:40512",
        upstream_transport_failure_reason="tls handshake failed",
        downstream_local_address="10.96.0.12:9080",
        downstream_remote_address="[2001:db8::7]:51234",
        requested_server_name="reviews.default.svc.cluster.local",
        response_code_details="no_healthy_upstream", attempts=3,
        source=Peer(workload="productpage-v1", namespace="default",
                    canonical_service="productpage", canonical_revision="v1",
                    app="productpage", version="v1"),
        destination=Peer(workload="reviews-v2", namespace="default",
                         canonical_service="reviews", canonical_revision="v2",
                         app="reviews", version="v2", cluster="Kubernetes",
                         principal="spiffe://cluster.local/ns/default/sa/reviews"),
        service=Service("reviews.default.svc.cluster.local", "reviews", "default"),
        connection_security_policy="mutual_tls")
    return dataclasses.replace(base, **changes)


# --- the attribute vocabulary ----------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("request.method", "GET"),
    ("request.path", "/api/v1/reviews?limit=5&sort=new"),
    ("request.url_path", "/api/v1/reviews"),
    ("request.query", "limit=5&sort=new"),
    ("request.host", "reviews:9080"),
    ("request.scheme", "http"),
    ("request.protocol", "HTTP/2"),
    ("request.referer", "http://productpage/"),
    ("request.useragent", "curl/8.4.0"),
    ("request.id", "rid-1"),
    ("request.size", 17),
    ("request.headers['x-foo']", "a,b"),
    ("request.headers['user-agent']", "curl/8.4.0"),
    ("request.duration", dt.timedelta(milliseconds=42.5)),
    ("request.time", dt.datetime(2025, 11, 25, 20, 43, 13, 123000, tzinfo=dt.UTC)),
    ("response.code", 503),
    ("response.code_details", "no_healthy_upstream"),
    ("response.flags", 0x2 | 0x8000),
    ("response.size", 19),
    ("response.headers['content-type']", "text/plain"),
    ("source.address", "[2001:db8::7]:51234"),
    ("source.port", 51234),
    ("destination.address", "10.96.0.12:9080"),
    ("destination.port", 9080),
    ("upstream.address", "10.1.2.3:9080"),
    ("upstream.port", 9080),
    ("upstream.local_address", "10.1.0.7:40512"),
    ("upstream.transport_failure_reason", "tls handshake failed"),
    ("upstream.request_attempt_count", 3),
    ("connection.requested_server_name", "reviews.default.svc.cluster.local"),
    ("connection.mtls", True),
    ("xds.cluster_name", "outbound|9080|v2|reviews.default.svc.cluster.local"),
    ("xds.route_name", "reviews-route"),
    ("cluster_name", "outbound|9080|v2|reviews.default.svc.cluster.local"),
    ("route_name", "reviews-route"),
    ("listener_direction", 2),
    ("upstream_peer.app", "reviews"),
    ("upstream_peer.version", "v2"),
    ("upstream_peer.service", "reviews"),
    ("upstream_peer.revision", "v2"),
    ("upstream_peer.workload", "reviews-v2"),
    ("upstream_peer.namespace", "default"),
    ("upstream_peer.cluster", "Kubernetes"),
    ("upstream_peer.identity", "spiffe://cluster.local/ns/default/sa/reviews"),
    ("has(downstream_peer.app)", False),
])
def test_attribute(text: str, expected: object) -> None:
    value = compile_expression(text)(record())
    assert value == expected
    assert type(value) is type(expected)


def test_server_side_peer_and_direction() -> None:
    inbound = record(reporter="destination")
    assert compile_expression("downstream_peer.workload")(inbound) == "productpage-v1"
    assert compile_expression("has(upstream_peer.app)")(inbound) is False
    assert compile_expression("listener_direction")(inbound) == 1


def test_every_attribute_name_compiles() -> None:
    for name in sorted(ATTRIBUTES):
        text = f"request.headers['{name}']" if name.endswith(".headers") else name
        compile_expression(text, where="test")


def test_absent_attributes_are_absent_not_empty() -> None:
    bare = CallRecord(reporter="source", start_time=START, duration=0.0, method="GET",
                      path="/", authority="svc")
    assert compile_expression("has(response.code)")(bare) is False  # no response sent
    assert compile_expression("has(response.grpc_status)")(bare) is False
    assert compile_expression("has(upstream.address)")(bare) is False
    assert compile_expression("has(xds.route_name)")(bare) is False
    assert compile_expression("has(connection.mtls)")(bare) is False  # unknown at source
    assert compile_expression("has(request.query)")(bare) is True
    assert compile_expression("request.query")(bare) == ""
    with pytest.raises(ExpressionError, match="grpc_status"):
        compile_expression("response.grpc_status == 0")(bare)


@pytest.mark.parametrize(("flags", "bits"), [
    ("-", 0), ("", 0), ("UH", 0x2), ("UH,URX", 0x8002), ("UO", 0x80), ("NR", 0x100),
    ("DC", 0x4000), ("FI,DI", 0x600), ("UT", 0x4), ("NC", 0x1000000),
])
def test_response_flags_are_envoys_bitmask(flags: str, bits: int) -> None:
    assert response_flag_bits(flags) == bits
    assert compile_expression("response.flags")(record(response_flags=flags)) == bits


def test_response_flag_bits_match_envoy() -> None:
    assert RESPONSE_FLAG_BITS["LH"] == 0x1
    assert RESPONSE_FLAG_BITS["UF"] == 0x20
    assert RESPONSE_FLAG_BITS["RL"] == 0x800
    assert RESPONSE_FLAG_BITS["DPE"] == 0x40000


# --- filters -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "status", "expected"), [
    ("response.code >= 400", 503, True),
    ("response.code >= 400", 200, False),
    ("response.code >= 400", 0, False),  # no response: response.code is absent
    ("response.code == 503 && request.method == 'GET'", 503, True),
    ("response.code == 503 && request.method == 'POST'", 503, False),
    ("response.code == 200 || request.method == 'GET'", 503, True),
    ("response.code == 200 || request.method == 'PUT'", 503, False),
    ("!(response.code < 500)", 503, True),
    ("response.code in [500, 503]", 503, True),
    ("(response.code >= 500 && response.code < 600) || response.flags != 0u", 200, True),
    ("response.flags == 0u", 200, False),
    ("response.code >= 500 ? request.method == 'GET' : false", 503, True),
])
def test_filter_status_and_logic(text: str, status: int, expected: bool) -> None:
    assert compile_filter(text)(record(status=status)) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("'x-foo' in request.headers", True),
    ("'x-bar' in request.headers", False),
    ("has(request.headers.referer)", True),
    ("has(request.headers.cookie)", False),
    ("request.headers['x-foo'] == 'a,b'", True),
    ("request.headers['x-missing'] == 'a'", False),  # an error: no match, no exception
    ("'x-' + 'foo' in request.headers", True),
    ("size(request.headers) == 4", True),
    ("request.headers.exists(k, k.startsWith('x-'))", True),
    ("'x-envoy-overloaded' in response.headers", True),
    ("response.headers['x-envoy-overloaded'] == 'true' && 'x-foo' in request.headers", True),
])
def test_filter_headers(text: str, expected: bool) -> None:
    assert compile_filter(text)(record()) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("request.path.startsWith('/api/')", True),
    ("request.path.startsWith('/web/')", False),
    ("request.url_path.endsWith('/reviews')", True),
    ("request.path.endsWith('/reviews')", False),
    ("request.host.contains('reviews')", True),
    ("request.path.matches('^/api/v[0-9]+/')", True),
    ("request.path.matches('^/api/v[a-z]+/')", False),
    ("size(request.url_path) == 15", True),
    ("request.size > 10 && response.size < 20", True),
    ("int(request.headers['content-length']) > 0", False),  # header missing: no match
    ("string(response.code).startsWith('5')", True),
    ("request.duration > duration('40ms')", True),
    ("request.duration > duration('1s')", False),
    ("request.time > timestamp('2025-01-01T00:00:00Z')", True),
    ("connection.mtls && upstream_peer.app == 'reviews'", True),
    ("xds.cluster_name.startsWith('outbound|9080|v2|')", True),
])
def test_filter_functions(text: str, expected: bool) -> None:
    assert compile_filter(text)(record()) is expected


def test_filter_runtime_type_error_is_no_match() -> None:
    flt = compile_filter("request.headers['user-agent'] > 3")
    assert flt(record()) is False
    assert compile_filter("response.code / 0 == 1")(record()) is False


def test_filter_non_bool_dyn_result_is_no_match() -> None:
    # request.path is dyn at compile time: accepted, but a string is not `true`
    assert compile_filter("request.path")(record()) is False


def test_expression_error_on_evaluation() -> None:
    with pytest.raises(ExpressionError, match="x-missing"):
        compile_expression("request.headers['x-missing']")(record())


# --- values -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("'prod'", "prod"),
    ('"prod"', "prod"),
    ("request.host", "reviews:9080"),
    ("request.url_path", "/api/v1/reviews"),
    ("string(response.code)", "503"),
    ("response.code", "503"),
    ("response.code >= 500", "true"),
    ("response.code < 500", "false"),
    ("response.code >= 500 ? 'server-error' : 'ok'", "server-error"),
    ("'x-missing' in request.headers ? request.headers['x-missing'] : 'none'", "none"),
    ("request.headers['x-missing']", "unknown"),
    ("upstream_peer.app", "reviews"),
    ("downstream_peer.app", "unknown"),  # client side: no downstream peer
    ("string(destination.port)", "9080"),
    ("request.duration", "0.0425s"),
    ("request.time", "2025-11-25T20:43:13.123000Z"),
    ("1.5", "1.5"),
])
def test_value(text: str, expected: str) -> None:
    assert compile_value(text, where="tagOverrides.x")(record()) == expected


# --- what an expression reads ------------------------------------------------------------

def test_attributes_read() -> None:
    expr = compile_expression(
        "response.code >= 400 && 'x-foo' in request.headers && request.duration > "
        "duration('1s') || listener_direction == 1")
    assert expr.attributes == {"response.code", "request.headers", "request.duration",
                               "listener_direction"}
    assert compile_expression("request.path.startsWith('/a')").attributes == {"request.path"}
    assert compile_expression("size(request) > 0").attributes == {"request"}
    assert compile_expression("'a' == 'a'").attributes == frozenset()


def test_activation_holds_only_what_is_read() -> None:
    many = (*((f"x-h{i}", "v") for i in range(20)), ("x-foo", "1"), ("x-foo", "2"))
    rec = record(request_headers=many)
    expr = compile_expression("request.headers['x-foo'] == '1' && response.code >= 400")
    assert expr.activation(rec) == {"request": {"headers": {"x-foo": "1,2"}},
                                    "response": {"code": 503}}
    every = compile_expression("size(request.headers) > 0").activation(rec)
    assert len(every["request"]["headers"]) == 21  # type: ignore[index]
    assert compile_expression("request.duration > duration('1s')").activation(rec) == {
        "request.duration": dt.timedelta(milliseconds=42.5)}


def test_header_lookup_does_not_depend_on_other_headers() -> None:
    many = (*((f"x-h{i}", "v") for i in range(20)), ("x-foo", "1"))
    flt = compile_filter("request.headers['x-foo'] == '1' && !('x-h3' in request.headers)")
    assert flt(record(request_headers=many)) is False
    assert flt(record(request_headers=(("x-foo", "1"),))) is True


# --- config errors ------------------------------------------------------------------------

WHERE = "Telemetry default/logs accessLogging[0].filter.expression"


@pytest.mark.parametrize(("text", "fragments"), [
    ("response.code >=", ["at column 17", "Syntax error"]),
    ("response.code >= 400 &&", ["at column 24", "Syntax error"]),
    ("request.pth == '/'", ["at column 9", "unknown attribute request.pth", "url_path"]),
    ("response.status >= 400", ["at column 10", "unknown attribute response.status"]),
    ("reqest.path == '/'", ["at column 7", "undeclared reference to 'reqest.path'"]),
    ("request.path.size == 1", ["at column 14", "request.path has no field 'size'"]),
    ("request.headers.foo.bar == 'x'", ["at column 21", "no field 'bar'"]),
    ("has(request.duration)", ["at column 5", "has() cannot test request.duration"]),
    ("request.size > 1 + 'a'", ["at column 18", "no matching overload for '_+_'"]),
    ("request.path.lowerAscii() == 'x'", ["column", "undeclared reference to 'lowerAscii'"]),
    ("", ["the expression is empty"]),
    ("   ", ["the expression is empty"]),
])
def test_bad_expression_is_a_config_error(text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        compile_expression(text, where=WHERE)
    message = str(info.value)
    assert message.startswith(f"{WHERE}: invalid expression {text!r} at ")
    for fragment in fragments:
        assert fragment in message


def test_error_location_on_a_later_line() -> None:
    text = "response.code >= 400 &&\n  request.pth == '/'"
    with pytest.raises(ConfigError, match=r"at line 2, column 11: unknown attribute"):
        compile_filter(text)


def test_error_without_where_has_no_prefix() -> None:
    with pytest.raises(ConfigError) as info:
        compile_value("1 +")
    assert str(info.value).startswith("invalid expression '1 +' at column 4: ")


def test_filter_must_be_boolean() -> None:
    with pytest.raises(ConfigError, match=r"tagx: .*a filter must be a boolean expression, "
                                          r"this one is int"):
        compile_filter("size(request.path)", where="tagx")
    with pytest.raises(ConfigError, match="this one is string"):
        compile_filter("'always'")


def test_strings_and_comments_are_not_attributes() -> None:
    # an attribute-looking word inside a string or a comment is not read or checked
    flt = compile_filter("request.method == 'request.pth' // response.nope\n || true")
    assert flt(record()) is True
