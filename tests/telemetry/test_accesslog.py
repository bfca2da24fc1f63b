"""Envoy-format access logs: exact lines for Istio's default formats, every operator,
``-``/null for missing values, and loud errors for bad formats."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from meshsdk.errors import ConfigError
from meshsdk.telemetry.accesslog import (
    ACCESS_LOGGER,
    DEFAULT_JSON_LABELS,
    DEFAULT_TEXT_FORMAT,
    AccessLogger,
    compile_format,
    compile_json,
    file_handler,
)
from meshsdk.telemetry.record import CallRecord

START = 1764103393.123  # 2025-11-25T20:43:13.123Z
REQUEST_ID = "6d67d674-2122-4a2d-b172-0be70c674371"


def full_record(**changes: Any) -> CallRecord:
    """An outbound call with every field the formats read filled in."""
    record = CallRecord(
        reporter="source", start_time=START, duration=0.29, method="GET",
        path="/productpage?u=normal", authority="productpage:9080", scheme="http",
        protocol="HTTP/1.1", status=200, grpc_status=None, response_flags="-",
        bytes_received=12, bytes_sent=5293, response_duration=0.0119,
        request_headers=(("user-agent", "curl/8.4.0"), ("x-forwarded-for", "10.0.0.9"),
                         ("x-request-id", REQUEST_ID), ("accept", "*/*")),
        response_headers=(("x-envoy-upstream-service-time", "11"),
                          ("content-type", "text/html")),
        request_id=REQUEST_ID, route_name="default",
        upstream_cluster="outbound|9080||productpage.default.svc.cluster.local",
        upstream_host="10.1.2.3:9080", upstream_local_address="10.1.0.7:40512",
        upstream_transport_failure_reason=None,
        downstream_local_address="10.96.0.12:9080",
        downstream_remote_address="10.1.0.7:51234",
        requested_server_name="outbound_.9080_._.productpage.default.svc.cluster.local",
        response_code_details="via_upstream", attempts=1,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    return dataclasses.replace(record, **changes)


def bare_record(**changes: Any) -> CallRecord:
    """A record with only the required fields: everything optional is missing."""
    record = CallRecord(reporter="destination", start_time=START, duration=0.0,
                        method="POST", path="/", authority="svc")
    return dataclasses.replace(record, **changes)


# --- Istio's default text format -----------------------------------------------------------

def test_default_text_format_full_record() -> None:
    line = compile_format(DEFAULT_TEXT_FORMAT)(full_record())
    assert line == (
        '[2025-11-25T20:43:13.123Z] "GET /productpage?u=normal HTTP/1.1" 200 - via_upstream'
        ' - "-" 12 5293 290 11 "10.0.0.9" "curl/8.4.0" '
        f'"{REQUEST_ID}" "productpage:9080" "10.1.2.3:9080" '
        "outbound|9080||productpage.default.svc.cluster.local 10.1.0.7:40512 "
        "10.96.0.12:9080 10.1.0.7:51234 "
        "outbound_.9080_._.productpage.default.svc.cluster.local default")


def test_default_text_format_prints_dash_for_everything_missing() -> None:
    line = compile_format(DEFAULT_TEXT_FORMAT)(bare_record())
    assert line == ('[2025-11-25T20:43:13.123Z] "POST / HTTP/1.1" 0 - - - "-" 0 0 0 - "-" "-"'
                    ' "-" "svc" "-" - - - - - -')


def test_default_text_format_no_healthy_upstream() -> None:
    record = full_record(status=503, response_flags="UH", upstream_host=None,
                         response_code_details="no_healthy_upstream", bytes_sent=19,
                         response_headers=(), duration=0.0004)
    line = compile_format(DEFAULT_TEXT_FORMAT)(record)
    assert ' 503 UH no_healthy_upstream - "-" 12 19 0 - "10.0.0.9"' in line
    assert '"productpage:9080" "-" outbound|9080||' in line


def test_default_format_has_no_trailing_newline_and_one_is_dropped() -> None:
    assert not DEFAULT_TEXT_FORMAT.endswith("\n")
    assert compile_format("%PROTOCOL%\n")(full_record()) == "HTTP/1.1"
    assert compile_format("%PROTOCOL%\n\n")(full_record()) == "HTTP/1.1\n"


# --- every operator -----------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "expected"), [
    ("%REQ(:METHOD)%", "GET"),
    ("%REQ(:PATH)%", "/productpage?u=normal"),
    ("%REQ(:AUTHORITY)%", "productpage:9080"),
    ("%REQ(:SCHEME)%", "http"),
    ("%REQ(USER-AGENT)%", "curl/8.4.0"),
    ("%REQ(user-agent)%", "curl/8.4.0"),
    ("%REQUEST_HEADER(ACCEPT)%", "*/*"),
    ("%REQ(X-MISSING)%", "-"),
    ("%RESP(CONTENT-TYPE)%", "text/html"),
    ("%RESPONSE_HEADER(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "11"),
    ("%RESP(:STATUS)%", "200"),
    ("%PROTOCOL%", "HTTP/1.1"),
    ("%RESPONSE_CODE%", "200"),
    ("%RESPONSE_FLAGS%", "-"),
    ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
    ("%CONNECTION_TERMINATION_DETAILS%", "-"),
    ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "-"),
    ("%BYTES_RECEIVED%", "12"),
    ("%BYTES_SENT%", "5293"),
    ("%DURATION%", "290"),
    ("%REQUEST_DURATION%", "-"),
    ("%RESPONSE_DURATION%", "11"),
    ("%UPSTREAM_HOST%", "10.1.2.3:9080"),
    ("%UPSTREAM_REMOTE_ADDRESS%", "10.1.2.3:9080"),
    ("%UPSTREAM_CLUSTER%", "outbound|9080||productpage.default.svc.cluster.local"),
    ("%UPSTREAM_CLUSTER_RAW%", "outbound|9080||productpage.default.svc.cluster.local"),
    ("%UPSTREAM_LOCAL_ADDRESS%", "10.1.0.7:40512"),
    ("%DOWNSTREAM_LOCAL_ADDRESS%", "10.96.0.12:9080"),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.1.0.7:51234"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.1.0.7"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(16)%", "10.1.0.0/16"),
    ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "10.96.0.12"),
    ("%REQUESTED_SERVER_NAME%", "outbound_.9080_._.productpage.default.svc.cluster.local"),
    ("%ROUTE_NAME%", "default"),
    ("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "1"),
    ("%TRACE_ID%", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("%GRPC_STATUS%", "-"),
    ("%GRPC_STATUS_NUMBER%", "-"),
    ("%START_TIME%", "2025-11-25T20:43:13.123Z"),
])
def test_operator(fmt: str, expected: str) -> None:
    assert compile_format(fmt)(full_record()) == expected


@pytest.mark.parametrize("fmt", [
    "%PROTOCOL%", "%UPSTREAM_HOST%", "%UPSTREAM_CLUSTER%", "%UPSTREAM_LOCAL_ADDRESS%",
    "%DOWNSTREAM_LOCAL_ADDRESS%", "%DOWNSTREAM_REMOTE_ADDRESS%",
    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "%REQUESTED_SERVER_NAME%", "%ROUTE_NAME%",
    "%TRACE_ID%", "%RESPONSE_CODE_DETAILS%", "%RESPONSE_DURATION%", "%GRPC_STATUS%",
    "%RESP(:STATUS)%", "%REQ(X-FORWARDED-FOR)%", "%REQ(X-REQUEST-ID)%",
])
def test_missing_values_print_a_dash(fmt: str) -> None:
    assert compile_format(fmt)(bare_record(protocol="")) == "-"


def test_alternative_header_after_question_mark() -> None:
    formatter = compile_format("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%")
    assert formatter(full_record()) == "/productpage?u=normal"
    rewritten = full_record(request_headers=(("x-envoy-original-path", "/old/page"),))
    assert formatter(rewritten) == "/old/page"
    assert compile_format("%REQ(X-A?X-B)%")(bare_record()) == "-"
    assert compile_format("%REQ(X-A?X-B)%")(
        bare_record(request_headers=(("x-b", "second"),))) == "second"


def test_truncation_to_max_length() -> None:
    record = full_record()
    assert compile_format("%REQ(USER-AGENT):4%")(record) == "curl"
    assert compile_format("%REQ(USER-AGENT):100%")(record) == "curl/8.4.0"
    assert compile_format("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):5%")(record) == "/prod"
    assert compile_format("%REQ(X-MISSING):3%")(record) == "-"
    assert compile_format("%UPSTREAM_HOST:4%")(record) == "10.1"


def test_request_id_falls_back_to_the_generated_one() -> None:
    record = bare_record(request_id="generated-id")
    assert compile_format("%REQ(X-REQUEST-ID)%")(record) == "generated-id"


def test_response_code_zero_when_no_response() -> None:
    assert compile_format("%RESPONSE_CODE% %RESPONSE_FLAGS%")(
        bare_record(response_flags="DC")) == "0 DC"


def test_durations_are_whole_milliseconds() -> None:
    formatter = compile_format("%DURATION% %RESPONSE_DURATION%")
    assert formatter(bare_record(duration=0.29, response_duration=0.0009)) == "290 0"
    # 1.001 * 1000 is 1000.9999999999999 in floats: still 1001 ms
    assert formatter(bare_record(duration=1.001, response_duration=1.0019)) == "1001 1001"
    assert formatter(bare_record(duration=1.2345678, response_duration=0.07)) == "1234 70"


def test_response_code_details_whitespace() -> None:
    record = full_record(response_code_details="upstream reset\tbefore headers")
    assert compile_format("%RESPONSE_CODE_DETAILS%")(record) == "upstream_reset_before_headers"
    assert compile_format("%RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)%")(record) == \
        "upstream reset\tbefore headers"


@pytest.mark.parametrize(("fmt", "status", "expected"), [
    ("%GRPC_STATUS%", 0, "OK"),
    ("%GRPC_STATUS%", 14, "Unavailable"),
    ("%GRPC_STATUS(CAMEL_STRING)%", 3, "InvalidArgument"),
    ("%GRPC_STATUS(SNAKE_STRING)%", 1, "CANCELLED"),
    ("%GRPC_STATUS(NUMBER)%", 14, "14"),
    ("%GRPC_STATUS%", 42, "42"),
    ("%GRPC_STATUS_NUMBER%", 4, "4"),
])
def test_grpc_status(fmt: str, status: int, expected: str) -> None:
    assert compile_format(fmt)(full_record(grpc_status=status)) == expected


@pytest.mark.parametrize(("address", "fmt", "expected"), [
    ("[2001:db8::5]:443", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "2001:db8::5"),
    ("[2001:db8:1234:5678:9abc::1]:80", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(64)%",
     "2001:db8:1234:5678::/64"),
    ("10.1.10.23", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.1.10.23"),
    ("10.1.10.23:8080", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(64)%", "10.1.10.23/32"),
    ("/var/run/app.sock", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(8)%", "/var/run/app.sock"),
])
def test_address_without_port(address: str, fmt: str, expected: str) -> None:
    assert compile_format(fmt)(full_record(downstream_remote_address=address)) == expected


def test_literal_text_and_percent_escape() -> None:
    formatter = compile_format('100%% "%REQ(:METHOD)%"%%%RESPONSE_CODE%%% done')
    assert formatter(full_record()) == '100% "GET"%200% done'
    assert compile_format("no operators at all")(full_record()) == "no operators at all"
    assert compile_format("")(full_record()) == ""


# --- START_TIME ---------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "expected"), [
    ("%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%", "2025-11-25T20:43:13.123Z"),
    ("%START_TIME(%s)%", "1764103393"),
    ("%START_TIME(%s.%3f)%", "1764103393.123"),
    ("%START_TIME(%s.%6f)%", "1764103393.123000"),
    ("%START_TIME(%s.%9f)%", "1764103393.123000000"),
    ("%START_TIME(%f)%", "123000000"),
    ("%START_TIME(%1f)%", "1"),
    ("%START_TIME(%Y/%m/%d %H:%M:%S%z)%", "2025/11/25 20:43:13+0000"),
    ("%START_TIME(%%s is literal)%", "%s is literal"),
    ("[%START_TIME(%H:%M)%] [%START_TIME%]", "[20:43] [2025-11-25T20:43:13.123Z]"),
])
def test_start_time_format(fmt: str, expected: str) -> None:
    assert compile_format(fmt)(full_record()) == expected


def test_start_time_rounds_float_noise_not_truncates() -> None:
    formatter = compile_format("%START_TIME%")
    # 0.29 is 0.28999999... as a float: still .290
    assert formatter(bare_record(start_time=1700000000.29)) == "2023-11-14T22:13:20.290Z"
    # within half a microsecond of the next second: the next second
    assert formatter(bare_record(start_time=1700000000.9999996)) == "2023-11-14T22:13:21.000Z"


def test_start_time_cache_follows_the_second() -> None:
    formatter = compile_format("%START_TIME%")
    assert formatter(bare_record(start_time=1700000000.5)) == "2023-11-14T22:13:20.500Z"
    assert formatter(bare_record(start_time=1700000001.25)) == "2023-11-14T22:13:21.250Z"
    assert formatter(bare_record(start_time=1700000000.75)) == "2023-11-14T22:13:20.750Z"


# --- bad formats ----------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "fragment"), [
    ("[%START_TIME%] %FOO_BAR%", "unknown operator %FOO_BAR% at column 16"),
    ("%REQ(:METHOD)% 100% done", "'%' does not start an operator"),
    ("%REQ(:METHOD)% 100% done", "at column 19"),
    ("%REQ%", "%REQ% needs an argument"),
    ("%REQ()%", "%REQ()% needs an argument"),
    ("%PROTOCOL(X)%", "%PROTOCOL(X)% takes no argument"),
    ("%REQ(A?B?C)%", "expected HEADER or HEADER?ALTERNATIVE"),
    ("%GRPC_STATUS(LOUD)%", "expected CAMEL_STRING, SNAKE_STRING or NUMBER"),
    ("%REQ(USER-AGENT):x%", "expects a length after ':'"),
    ("%REQ(USER-AGENT", "has no closing ')'"),
    ("x %PROTOCOL", "operator %PROTOCOL is not closed with '%' at column 3"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(abc)%", "mask prefix length"),
    ("%RESPONSE_CODE_DETAILS(SPACES)%", "ALLOW_WHITESPACES"),
])
def test_bad_format_is_a_config_error(fmt: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_format(fmt)
    message = str(info.value)
    assert fragment in message
    assert repr(fmt) in message


def test_bad_json_label_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"key 'oops'.*unknown operator %NOPE% at column 1"):
        compile_json({"method": "%REQ(:METHOD)%", "oops": "%NOPE%"})


# --- JSON ---------------------------------------------------------------------------------

def test_default_json_types_values_and_nulls() -> None:
    line = compile_json(DEFAULT_JSON_LABELS)(full_record(upstream_local_address=None))
    entry = json.loads(line)
    assert list(entry) == list(DEFAULT_JSON_LABELS)
    assert entry["start_time"] == "2025-11-25T20:43:13.123Z"
    assert entry["method"] == "GET"
    assert entry["path"] == "/productpage?u=normal"
    assert entry["protocol"] == "HTTP/1.1"
    assert entry["response_code"] == 200
    assert entry["bytes_received"] == 12
    assert entry["bytes_sent"] == 5293
    assert entry["duration"] == 290
    for key in ("response_code", "bytes_received", "bytes_sent", "duration"):
        assert type(entry[key]) is int, key
    assert entry["upstream_service_time"] == "11"  # a header: stays a string
    assert entry["response_flags"] == "-"
    assert entry["connection_termination_details"] is None
    assert entry["upstream_transport_failure_reason"] is None
    assert entry["upstream_local_address"] is None
    assert entry["request_id"] == REQUEST_ID
    assert entry["upstream_cluster"] == "outbound|9080||productpage.default.svc.cluster.local"
    assert entry["route_name"] == "default"
    assert line.startswith('{"start_time":"2025-11-25T20:43:13.123Z","method":"GET",')
    assert "\n" not in line


def test_json_missing_values_are_null_and_codes_zero() -> None:
    entry = json.loads(compile_json(DEFAULT_JSON_LABELS)(bare_record()))
    assert entry["response_code"] == 0
    assert entry["upstream_host"] is None
    assert entry["user_agent"] is None
    assert entry["upstream_service_time"] is None
    assert entry["route_name"] is None
    assert entry["authority"] == "svc"


def test_json_is_compact() -> None:
    line = compile_json({"a": "%RESPONSE_CODE%", "b": "%PROTOCOL%"})(full_record())
    assert line == '{"a":200,"b":"HTTP/1.1"}'


def test_json_mixed_text_is_a_string_and_escapes_are_valid() -> None:
    labels = {"request": "%REQ(:METHOD)% %REQ(:PATH)%", "code": "code=%RESPONSE_CODE%",
              "grpc": "%GRPC_STATUS(NUMBER)%", "rd": "%RESPONSE_DURATION%",
              "agent": "%REQ(USER-AGENT)%", "constant": "mesh"}
    record = full_record(request_headers=(("user-agent", 'say "hi"\\ ünï\n'),),
                         grpc_status=14, response_duration=None)
    entry = json.loads(compile_json(labels)(record))
    assert entry == {"request": "GET /productpage?u=normal", "code": "code=200",
                     "grpc": 14, "rd": None, "agent": 'say "hi"\\ ünï\n', "constant": "mesh"}


def test_json_truncation() -> None:
    entry = json.loads(compile_json({"ua": "%REQ(USER-AGENT):4%"})(full_record()))
    assert entry == {"ua": "curl"}


def test_formatter_exposes_operators() -> None:
    formatter = compile_format("x %REQ(:PATH):3% %DURATION%")
    assert [(op.name, op.source, op.column, op.numeric) for op in formatter.operators] == [
        ("REQ", "%REQ(:PATH):3%", 3, False), ("DURATION", "%DURATION%", 18, True)]


# --- AccessLogger -----------------------------------------------------------------------

def test_logger_writes_line_at_info_with_the_record(caplog: pytest.LogCaptureFixture) -> None:
    record = full_record()
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    AccessLogger(compile_format(DEFAULT_TEXT_FORMAT)).log(record)
    [entry] = caplog.records
    assert entry.name == "meshsdk.access"
    assert entry.levelno == logging.INFO
    assert entry.getMessage() == compile_format(DEFAULT_TEXT_FORMAT)(record)
    assert entry.mesh_call is record  # type: ignore[attr-defined]


def test_logger_percent_in_line_is_not_reformatted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    record = full_record(path="/search?q=100%25&x=%s")
    AccessLogger(compile_format("%REQ(:PATH)%")).log(record)
    assert caplog.records[0].getMessage() == "/search?q=100%25&x=%s"


def test_logger_filter(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    logger = AccessLogger(compile_format("%RESPONSE_CODE%"), filter=lambda r: r.status >= 400)
    logger.log(full_record(status=200))
    logger.log(full_record(status=503))
    assert [r.getMessage() for r in caplog.records] == ["503"]


def test_logger_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    def broken(record: CallRecord) -> bool:
        raise RuntimeError("boom")

    AccessLogger(compile_format("%RESPONSE_CODE%"), filter=broken).log(full_record())
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert any("dropped" in r.getMessage() for r in caplog.records)


def test_logger_skips_formatting_when_disabled() -> None:
    calls: list[CallRecord] = []

    def formatter(record: CallRecord) -> str:
        calls.append(record)
        return "line"

    quiet = logging.getLogger("meshsdk.access.test-quiet")
    quiet.setLevel(logging.WARNING)
    AccessLogger(formatter, logger=quiet).log(full_record())
    assert calls == []
    quiet.setLevel(logging.INFO)
    AccessLogger(formatter, logger=quiet).log(full_record())
    assert len(calls) == 1


def test_logger_custom_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshsdk.access.custom")
    AccessLogger(compile_format("%REQ(:METHOD)%"),
                 logger=logging.getLogger("meshsdk.access.custom")).log(full_record())
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("meshsdk.access.custom", "GET")]


# --- handlers -------------------------------------------------------------------------------

def _isolated_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_stdout_handler_follows_the_current_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    handler = file_handler("/dev/stdout")
    logger = _isolated_logger("meshsdk.access.test-stdout", handler)
    AccessLogger(compile_format("%REQ(:METHOD)% %RESPONSE_CODE%"), logger=logger).log(
        full_record())
    assert capsys.readouterr().out == "GET 200\n"


def test_stderr_handler(capsys: pytest.CaptureFixture[str]) -> None:
    logger = _isolated_logger("meshsdk.access.test-stderr", file_handler("/dev/stderr"))
    AccessLogger(compile_format("%RESPONSE_CODE%"), logger=logger).log(full_record())
    assert capsys.readouterr().err == "200\n"


def test_file_handler_writes_bare_lines(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    handler = file_handler(str(path))
    try:
        logger = _isolated_logger("meshsdk.access.test-file", handler)
        access = AccessLogger(compile_json({"code": "%RESPONSE_CODE%"}), logger=logger)
        access.log(full_record(status=200))
        access.log(full_record(status=404))
    finally:
        handler.close()
    assert path.read_text(encoding="utf-8") == '{"code":200}\n{"code":404}\n'


def test_file_handler_bad_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"access log path .*cannot be opened"):
        file_handler(str(tmp_path / "missing-dir" / "access.log"))
