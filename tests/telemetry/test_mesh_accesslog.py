"""Access logs end to end: calls through the real mesh clients (sync and async) to real
servers on 127.0.0.1, logged as Istio configures it: ``meshConfig.accessLogFile`` (TEXT
or JSON), Telemetry ``accessLogging`` (providers, filters, workload overrides) and
custom ``envoyFileAccessLog`` extension providers.

Time is fixed (a FakeClock for durations, a constant wall clock for ``START_TIME``)
and request ids come from a seeded random source, so whole lines are compared.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshsdk.config.resource import Config
from meshsdk.mesh import Mesh
from meshsdk.telemetry.record import CallRecord
from meshsdk.telemetry.recorder import Telemetry
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.clock import FakeClock
from meshsdk.testing.sandbox import MeshFaults, MeshTestConfig
from meshsdk.testing.upstream import Upstream, fail_every, respond
from meshsdk.workload import Workload
from tests.dataplane.harness import AsyncCaller, Caller, SyncCaller

WORKLOAD = Workload("productpage-v1", "default", {"app": "productpage", "version": "v1"},
                    "bookinfo-productpage")
FQDN = "reviews.default.svc.cluster.local"
CLUSTER = f"outbound|80||{FQDN}"
URL = "http://reviews/r?q=1"
START = 1764103393.123
START_TEXT = "2025-11-25T20:43:13.123Z"
UA = "test-agent/1.0"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def mesh_configmap(body: str) -> str:
    """Istio's ``istio`` ConfigMap carrying ``body`` as its MeshConfig."""
    return ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}"
            "\ndata:\n  mesh: |\n" + "".join(f"    {line}\n" for line in body.splitlines()))


def telemetry(name: str, access_logging: str, *, namespace: str = "default",
              selector: str = "") -> str:
    return f"""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{selector}  accessLogging:
{access_logging}
"""


ENVOY = "  - providers: [{name: envoy}]"


@pytest.fixture
def mesh_workload() -> Workload:
    return WORKLOAD


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_tel(clock: FakeClock) -> Callable[..., Telemetry]:
    """A Telemetry with fixed time and request ids, no metrics."""
    def make(**options: object) -> Telemetry:
        return Telemetry(WORKLOAD, otel_metrics=False, clock=clock.now,
                         wall_clock=lambda: START, rng=random.Random(11),
                         **options)  # type: ignore[arg-type]
    return make


@pytest.fixture
def build(mesh_config: MeshTestConfig, make_tel: Callable[..., Telemetry],
          clock: FakeClock) -> Callable[..., Mesh]:
    def make(**options: object) -> Mesh:
        return mesh_config.build(telemetry=make_tel(**options), clock=clock)
    return make


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(mode: str) -> Iterator[Callable[[Mesh], Caller]]:
    callers: list[Caller] = []

    def make(mesh: Mesh) -> Caller:
        caller: Caller = SyncCaller(mesh) if mode == "sync" else AsyncCaller(mesh)
        callers.append(caller)
        return caller

    yield make
    for caller in callers:
        caller.close()


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def default_line(up: Upstream, request_id: str, *, method: str = "GET", path: str = "/r?q=1",
                 code: int = 200, flags: str = "-", details: str = "via_upstream",
                 received: int = 0, sent: int = 5, host: str | None = None,
                 cluster: str = CLUSTER, route: str = "default") -> str:
    """Istio's default TEXT line for a call from this test's client."""
    upstream = host if host is not None else f"127.0.0.1:{up.port}"
    return (f'[{START_TEXT}] "{method} {path} HTTP/1.1" {code} {flags} {details} - "-" '
            f'{received} {sent} 0 - "-" "{UA}" "{request_id}" "reviews" "{upstream}" '
            f"{cluster} - reviews:80 - - {route}")


# --- off by default -------------------------------------------------------------------------


def test_access_log_is_off_by_default(
        mesh_config: MeshTestConfig, make_tel: Callable[..., Telemetry],
        connect: Callable[[Mesh], Caller], capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    mesh_config.upstream("reviews", respond(200, "hello"))
    plain = mesh_config.build()  # Mesh's own default telemetry
    mine = logging.getLogger("test.accesslog.off")
    routed = mesh_config.build(telemetry=make_tel(access_logger=mine))
    for mesh in (plain, routed):
        assert mesh.telemetry is not None
        assert not mesh.telemetry.policy.client.access_log.enabled
        assert connect(mesh).get(URL).status == 200
    assert capsys.readouterr().out == ""
    assert [r for r in caplog.records
            if r.name.startswith("meshsdk.access") or r.name == mine.name] == []


# --- meshConfig.accessLogFile -----------------------------------------------------------------


def test_access_log_file_stdout_writes_envoys_default_text_line(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        connect: Callable[[Mesh], Caller], capsys: pytest.CaptureFixture[str]) -> None:
    up = mesh_config.upstream("reviews", respond(200, "hello"))
    mesh_config.add(mesh_configmap("accessLogFile: /dev/stdout"))
    caller = connect(build())
    assert caller.get(URL, headers={"user-agent": UA}).status == 200
    assert caller.request("POST", "http://reviews/submit", content=b"abcd",
                          headers={"user-agent": UA}).status == 200

    got = lines(capsys)
    assert len(got) == 2  # one line per call
    ids = [r.headers["x-request-id"] for r in up.requests]
    assert all(UUID.match(i) for i in ids) and ids[0] != ids[1]
    assert got[0] == default_line(up, ids[0])
    assert got[1] == default_line(up, ids[1], method="POST", path="/submit", received=4)


def test_access_log_line_of_a_local_reply(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        connect: Callable[[Mesh], Caller], capsys: pytest.CaptureFixture[str]) -> None:
    up = mesh_config.upstream("reviews", respond(200, "hello"))
    mesh_config.add(mesh_configmap("accessLogFile: /dev/stdout"))
    MeshFaults(mesh_config).abort("reviews", 503)
    caller = connect(build())
    got = caller.get(URL, headers={"user-agent": UA, "x-request-id": "rid-fault"})
    assert (got.status, got.flags) == (503, "FI")
    assert up.hits == 0
    (line,) = lines(capsys)
    # the fault is a route's (the sandbox's VirtualService route has no name): no
    # upstream host, no cluster, and the body of Envoy's local reply
    assert got.body == b"fault filter abort"
    assert line == default_line(up, "rid-fault", code=503, flags="FI",
                                details="fault_filter_abort", sent=len(got.body), host="-",
                                cluster="-", route="-")


def test_access_log_json_encoding_has_typed_fields(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        connect: Callable[[Mesh], Caller], capsys: pytest.CaptureFixture[str]) -> None:
    up = mesh_config.upstream("reviews", respond(200, "hello"))
    mesh_config.add(mesh_configmap("accessLogFile: /dev/stdout\naccessLogEncoding: JSON"))
    connect(build()).get(URL, headers={"user-agent": UA})
    (line,) = lines(capsys)
    entry = json.loads(line)
    assert entry == {
        "start_time": START_TEXT, "method": "GET", "path": "/r?q=1", "protocol": "HTTP/1.1",
        "response_code": 200, "response_flags": "-", "response_code_details": "via_upstream",
        "connection_termination_details": None, "upstream_transport_failure_reason": None,
        "bytes_received": 0, "bytes_sent": 5, "duration": 0, "upstream_service_time": None,
        "x_forwarded_for": None, "user_agent": UA,
        "request_id": up.requests[0].headers["x-request-id"], "authority": "reviews",
        "upstream_host": f"127.0.0.1:{up.port}", "upstream_cluster": CLUSTER,
        "upstream_local_address": None, "downstream_local_address": "reviews:80",
        "downstream_remote_address": None, "requested_server_name": None,
        "route_name": "default",
    }
    assert type(entry["response_code"]) is int and type(entry["bytes_sent"]) is int


def test_access_log_json_with_a_custom_format(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        connect: Callable[[Mesh], Caller], capsys: pytest.CaptureFixture[str]) -> None:
    mesh_config.upstream("reviews", respond(503, "nope"))
    fmt = ('{"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", '
           '"tries": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "what": "code=%RESPONSE_CODE%"}')
    mesh_config.add(mesh_configmap(f"accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n"
                                   f"accessLogFormat: '{fmt}'"))
    connect(build()).get(URL)
    (line,) = lines(capsys)
    # a lone operator keeps its type; text around one makes a string
    assert json.loads(line) == {"code": 503, "flags": "-", "tries": 1, "what": "code=503"}


# --- Telemetry accessLogging ------------------------------------------------------------------


def test_telemetry_resource_enables_the_envoy_provider(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        connect: Callable[[Mesh], Caller], capsys: pytest.CaptureFixture[str]) -> None:
    up = mesh_config.upstream("reviews", respond(200, "hello"))
    mesh_config.add(telemetry("mesh-default", ENVOY, namespace="istio-system"))
    seen = connect(build()).many(3, URL)
    assert [g.status for g in seen] == [200] * 3
    got = lines(capsys)
    assert len(got) == 3
    assert got[0].startswith(f'[{START_TEXT}] "GET /r?q=1 HTTP/1.1" 200 - via_upstream')
    assert [re.findall(r'"([0-9a-f-]{36})"', line) for line in got] == [
        [r.headers["x-request-id"]] for r in up.requests]


def test_filter_logs_only_failing_calls(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        connect: Callable[[Mesh], Caller], capsys: pytest.CaptureFixture[str]) -> None:
    mesh_config.upstream("reviews", fail_every(2))
    mesh_config.add(telemetry("ns", ENVOY + '\n    filter: {expression: "response.code >= 500"}'))
    seen = connect(build()).many(6, URL)
    assert [g.status for g in seen] == [200, 503] * 3
    got = lines(capsys)
    assert len(got) == 3
    assert all('"GET /r?q=1 HTTP/1.1" 503 - via_upstream' in line for line in got)


def test_workload_disabled_overrides_namespace_enabled(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        connect: Callable[[Mesh], Caller], capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    mesh_config.upstream("reviews", respond(200, "hello"))
    mesh_config.add(telemetry("ns", ENVOY))
    caller = connect(build())
    caller.get(URL)
    assert len(lines(capsys)) == 1  # the namespace level turned it on

    mesh_config.add(telemetry("productpage", ENVOY + "\n    disabled: true",
                              selector="  selector: {matchLabels: {app: productpage}}\n"))
    caller.get(URL)
    assert lines(capsys) == []

    # another workload of the namespace is still logged (to its own logger here: see
    # test_two_meshes_write_one_line_per_call for why not to stdout)
    caplog.set_level(logging.INFO, logger="details")
    other = Workload("details-v1", "default", {"app": "details"})
    details = Telemetry(other, otel_metrics=False, access_logger=logging.getLogger("details"))
    with mesh_config.build(other, telemetry=details).client() as client:
        client.get(URL)
    assert lines(capsys) == []
    assert len([r for r in caplog.records if r.name == "details"]) == 1


# --- a custom envoyFileAccessLog provider ----------------------------------------------------


def _open_paths() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
    return out


def file_provider(path: Path, fmt: str = "%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_FLAGS%",
                  name: str = "file-log") -> str:
    return f"""extensionProviders:
- name: {name}
  envoyFileAccessLog:
    path: {path}
    logFormat: {{text: "{fmt}"}}"""


def test_custom_file_provider_writes_its_format_and_is_closed_with_the_mesh(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        connect: Callable[[Mesh], Caller], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "access.log"
    mesh_config.upstream("reviews", respond(200, "hello"))
    mesh_config.add(mesh_configmap(file_provider(path)),
                    telemetry("mesh-default", "  - providers: [{name: file-log}]",
                              namespace="istio-system"))
    mesh = build()
    caller = connect(mesh)
    caller.get(URL)
    caller.request("POST", URL, content=b"x")
    MeshFaults(mesh_config).abort("reviews", 503)  # a config update: same file, no repeat
    caller.get(URL)

    assert path.read_text() == "GET 200 -\nPOST 200 -\nGET 503 FI\n"
    assert capsys.readouterr().out == ""  # only the file
    if os.path.isdir("/proc/self/fd"):
        assert str(path) in _open_paths()
    mesh.close()
    assert not any(isinstance(h, logging.FileHandler)
                   for h in logging.getLogger("meshsdk.access.file-log").handlers)
    if os.path.isdir("/proc/self/fd"):
        assert str(path) not in _open_paths()
    assert path.read_text() == "GET 200 -\nPOST 200 -\nGET 503 FI\n"


# --- the application's own logger -------------------------------------------------------------


def test_access_logger_receives_every_line(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        connect: Callable[[Mesh], Caller], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mine")
    path = tmp_path / "never.log"
    up = mesh_config.upstream("reviews", respond(200, "hello"))
    # two providers: Istio's default one (stdout) and a file
    mesh_config.add(mesh_configmap(file_provider(path, "%RESPONSE_CODE% %REQ(:PATH)%")),
                    telemetry("ns", "  - providers: [{name: envoy}, {name: file-log}]"))
    mesh = build(access_logger=logging.getLogger("mine"))
    connect(mesh).get(URL, headers={"user-agent": UA})

    records = [r for r in caplog.records if r.name == "mine"]
    # providers in Istio's order (by name): envoy, file-log
    assert [r.getMessage() for r in records] == [
        default_line(up, up.requests[0].headers["x-request-id"]), "200 /r?q=1"]
    assert all(r.levelno == logging.INFO for r in records)
    call = records[0].__dict__["mesh_call"]
    assert isinstance(call, CallRecord)
    assert (call.reporter, call.status, call.upstream_cluster) == ("source", 200, CLUSTER)
    assert capsys.readouterr().out == ""
    assert not path.exists()

    # the inbound side goes there too
    assert mesh.telemetry is not None
    mesh.telemetry.inbound("GET", "http", "productpage:9080", "/p", []).finish(204)
    inbound = [r for r in caplog.records if r.name == "mine"][2:]
    assert [r.getMessage() for r in inbound][1] == "204 /p"
    assert inbound[0].__dict__["mesh_call"].reporter == "destination"


# --- bugs ------------------------------------------------------------------------------------


def test_two_meshes_write_one_line_per_call(
        mesh_config: MeshTestConfig, build: Callable[..., Mesh],
        capsys: pytest.CaptureFixture[str]) -> None:
    mesh_config.upstream("reviews", respond(200, "hello"))
    mesh_config.add(mesh_configmap("accessLogFile: /dev/stdout"))
    first, _second = build(), build()
    with first.client() as client:
        client.get(URL)
    assert len(lines(capsys)) == 1


def test_update_moving_the_access_log_file_stops_the_old_one(tmp_path: Path) -> None:
    old, new = tmp_path / "old.log", tmp_path / "new.log"
    with Upstream("reviews", respond(200, "hello")) as up:
        def config(path: Path) -> Config:
            return config_from_yaml(
                service_entry("reviews", [(up, {})]),
                mesh_configmap(f"accessLogFile: {path}\naccessLogFormat: '%REQ(:PATH)%'"))
        mesh = Mesh(config(old), WORKLOAD)
        try:
            with mesh.client() as client:
                client.get("http://reviews/first")
                mesh.update(config(new))
                client.get("http://reviews/second")
        finally:
            mesh.close()
    assert new.read_text() == "/second\n"
    assert old.read_text() == "/first\n"



def test_request_ids_are_random_uuid4_text() -> None:
    """x-request-id as Envoy makes it: a version 4 UUID in its canonical text, each
    written from the 128 bits drawn (the text is what uuid.UUID makes of them)."""
    import random
    import uuid

    from meshsdk.telemetry import Telemetry
    from meshsdk.workload import Workload

    tel = Telemetry(Workload("a", "default", {"app": "a"}), rng=random.Random(7))
    ids = [tel._new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and UUID.match(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
