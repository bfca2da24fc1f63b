"""The workload registry, all real: a watched directory with a selector-only ServiceEntry,
the gRPC server, one mesh that registers itself (AUTO_REGISTER) and another that calls it.
The registered endpoint reaches the caller within a second and goes away after the grace
period once the registering mesh disconnects."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshsdk.controlplane.filestore import ConfigStore
from meshsdk.controlplane.server import ConfigServer, DebugServer
from meshsdk.controlplane.wire import TYPE_URLS, NodeIdentity, parse_request, subscribe_request
from meshsdk.errors import UsageError
from meshsdk.mesh import Mesh
from meshsdk.testing.upstream import Upstream, respond
from meshsdk.workload import Workload
from tests.controlplane.conftest import RATINGS, URL

T = TypeVar("T")


def _until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``probe`` every 20 ms until it returns a value, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    (d / "ratings.yaml").write_text(RATINGS)
    return d


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream("ratings-v1", respond(200, "ratings-v1")) as up:
        yield up


def _status_of(mesh: Mesh) -> tuple[int, str]:
    with mesh.client() as client:
        response = client.get(URL)
        return response.status_code, response.text


def test_a_registered_workload_is_routed_to_then_removed_after_the_grace(
        tmp_path: Path, config_dir: Path, upstream: Upstream) -> None:
    with ConfigStore(config_dir).start() as store, \
            ConfigServer(store, port=0, grace=0.3, sweep_interval=0.05) as server, \
            DebugServer(server, port=0) as debug:
        address = f"127.0.0.1:{server.port}"
        caller = Mesh.connect(address, Workload("productpage-v1", "default",
                                                {"app": "productpage"}),
                              cache_dir=tmp_path / "cache-pp", telemetry=False)
        try:
            assert caller.status().connected
            assert _status_of(caller) == (503, "no healthy upstream")
            assert server.registryz() == []

            registered = time.monotonic()
            ratings = Mesh.connect(address, Workload("ratings-v1", "default",
                                                     {"app": "ratings", "version": "v1"}),
                                   register=True, ip="127.0.0.1",
                                   ports={"http": upstream.port},
                                   cache_dir=tmp_path / "cache-ratings", telemetry=False)
            try:
                [entry] = server.registryz()
                assert entry["name"] == "auto-ratings-v1-127-0-0-1"
                assert entry["namespace"] == "default"
                assert entry["address"] == "127.0.0.1"
                assert entry["labels"] == {"app": "ratings", "version": "v1"}
                assert entry["ports"] == {"http": upstream.port}
                assert entry["service_account"] == "default"
                assert entry["state"] == "connected" and entry["disconnected_since"] is None
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{debug.port}/debug/registryz", timeout=5) as r:
                    assert [e["name"] for e in json.load(r)] == [entry["name"]]

                def routed() -> tuple[int, str] | None:
                    got = _status_of(caller)
                    return got if got[0] == 200 else None

                assert _until(routed, 1.0, "the registered endpoint") == (200, "ratings-v1")
                assert time.monotonic() - registered < 6.0  # connect itself waits for config
                assert caller.status().version == ratings.status().version
                assert "+r" in str(caller.status().version)
            finally:
                ratings.close()

            closed = time.monotonic()

            def unrouted() -> tuple[int, str] | None:
                got = _status_of(caller)
                return got if got[0] == 503 else None

            assert _until(unrouted, 3.0, "removal of the endpoint") \
                == (503, "no healthy upstream")
            assert time.monotonic() - closed >= 0.3 - 0.05  # not before the grace
            assert server.registryz() == []
            assert caller.status().version == server.store.version  # no entries: no "+r"
        finally:
            caller.close()


def test_a_dropped_stream_keeps_its_entry_during_the_grace_and_a_reconnect_keeps_it(
        tmp_path: Path, config_dir: Path, upstream: Upstream) -> None:
    now = [1000.0]
    with ConfigStore(config_dir).start() as store, \
            ConfigServer(store, port=0, grace=10.0, sweep_interval=0,
                         clock=lambda: now[0]) as server:
        address = f"127.0.0.1:{server.port}"
        workload = Workload("ratings-v1", "default", {"app": "ratings"})

        def connect() -> Mesh:
            return Mesh.connect(address, workload, register=True, ip="127.0.0.1",
                                ports={"http": upstream.port},
                                cache_dir=tmp_path / "cache", telemetry=False)

        first = connect()
        version = first.status().version
        first.close()

        def released() -> dict[str, Any] | None:
            [entry] = server.registryz()
            return entry if entry["state"] == "disconnected" else None

        entry = _until(released, 3.0, "the disconnect")
        assert entry["disconnected_since"] is not None
        now[0] += 5.0
        assert server.sweep() == []
        second = connect()
        try:
            [entry] = server.registryz()
            assert entry["state"] == "connected"
            assert second.status().version == version  # same entry: no new version
            now[0] += 60.0
            assert server.sweep() == []
        finally:
            second.close()
        _until(released, 3.0, "the second disconnect")
        now[0] += 10.0
        assert server.sweep() == ["default/auto-ratings-v1-127-0-0-1"]
        assert server.registryz() == []


def test_an_invalid_registration_is_refused_and_the_stream_goes_on(
        tmp_path: Path, config_dir: Path) -> None:
    with ConfigStore(config_dir).start() as store, \
            ConfigServer(store, port=0) as server:
        bad = Mesh.connect(f"127.0.0.1:{server.port}",
                           Workload("ratings-v1", "default", {"app": "ratings"}),
                           register=True, ip="127.0.0.1", ports={"Not_A_Name": 8080},
                           cache_dir=tmp_path / "cache", telemetry=False)
        try:
            assert bad.status().connected and bad.status().source == "server"
            assert server.registryz() == []
            assert "+r" not in str(bad.status().version)
        finally:
            bad.close()


def test_auto_register_travels_in_the_node_metadata() -> None:
    node = NodeIdentity("10.0.0.7", "ratings-v1", labels={"app": "ratings"},
                        ports={"http": 9080}, auto_register=True)
    url = TYPE_URLS["ServiceEntry"]
    parsed = parse_request(subscribe_request(url, node=node)).node
    assert parsed == node and parsed.auto_register
    plain = NodeIdentity("10.0.0.7", "ratings-v1")
    again = parse_request(subscribe_request(url, node=plain)).node
    assert again is not None and not again.auto_register
    grouped = NodeIdentity("10.0.0.7", "ratings-vm", group="ratings")
    parsed = parse_request(subscribe_request(url, node=grouped)).node
    assert parsed is not None and parsed.group == "ratings" and parsed.auto_register


def test_a_workload_reporting_not_ready_is_not_routed_to_until_ready_again(
        tmp_path: Path, config_dir: Path, upstream: Upstream) -> None:
    with ConfigStore(config_dir).start() as store, \
            ConfigServer(store, port=0) as server:
        address = f"127.0.0.1:{server.port}"
        caller = Mesh.connect(address, Workload("productpage-v1", "default", {"app": "pp"}),
                              cache_dir=tmp_path / "pp", telemetry=False)
        ratings = Mesh.connect(address, Workload("ratings-v1", "default", {"app": "ratings"}),
                               register=True, ip="127.0.0.1", ports={"http": upstream.port},
                               cache_dir=tmp_path / "ratings", telemetry=False)
        try:
            assert _until(lambda: _status_of(caller) if _status_of(caller)[0] == 200
                          else None, 3.0, "routing") == (200, "ratings-v1")

            ratings.report_ready(False, "draining")
            assert _until(lambda: _status_of(caller) if _status_of(caller)[0] == 503
                          else None, 3.0, "the endpoint to go") == (503, "no healthy upstream")
            [entry] = server.registryz()
            assert (entry["ready"], entry["health"], entry["state"]) == \
                (False, "draining", "connected")

            ratings.report_ready(True)
            assert _until(lambda: _status_of(caller) if _status_of(caller)[0] == 200
                          else None, 3.0, "the endpoint to come back") == (200, "ratings-v1")
            assert server.registryz()[0]["ready"] is True
        finally:
            ratings.close()
            caller.close()
    with pytest.raises(UsageError):
        Mesh(store.current.config).report_ready(False)


def test_a_workload_group_template_makes_the_entry(tmp_path: Path, config_dir: Path,
                                                   upstream: Upstream) -> None:
    (config_dir / "group.yaml").write_text(f"""
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: ratings, namespace: default}}
spec:
  metadata:
    labels: {{team: stars}}
    annotations: {{owner: ratings-team}}
  template:
    labels: {{app: ratings, version: v1}}
    ports: {{http: {upstream.port}}}
    serviceAccount: bookinfo-ratings
""")
    with ConfigStore(config_dir).start() as store, ConfigServer(store, port=0) as server:
        address = f"127.0.0.1:{server.port}"
        caller = Mesh.connect(address, Workload("productpage-v1", "default", {"app": "pp"}),
                              cache_dir=tmp_path / "pp", telemetry=False)
        # the node says little: the group's template supplies ports and service account
        vm = Mesh.connect(address, Workload("ratings-vm", "default", {"zone": "lab"}),
                          group="ratings", ip="127.0.0.1", cache_dir=tmp_path / "vm",
                          telemetry=False)
        missing = Mesh.connect(address, Workload("other", "default", {}), group="nope",
                               ip="127.0.0.2", cache_dir=tmp_path / "other", telemetry=False)
        try:
            assert _until(lambda: _status_of(caller) if _status_of(caller)[0] == 200
                          else None, 3.0, "routing") == (200, "ratings-v1")
            [entry] = server.registryz()  # the group "nope" does not exist: refused
            assert entry["name"] == "ratings-127-0-0-1"
            assert entry["labels"] == {"app": "ratings", "version": "v1", "zone": "lab"}
            assert entry["ports"] == {"http": upstream.port}
            assert entry["service_account"] == "bookinfo-ratings"
            [we] = [r for r in caller.snapshot.config.of_kind("WorkloadEntry")]
            assert we.labels == {"team": "stars"}
            assert we.annotations["istio.io/autoRegistrationGroup"] == "ratings"
            assert we.annotations["owner"] == "ratings-team"
        finally:
            for mesh in (vm, missing, caller):
                mesh.close()
