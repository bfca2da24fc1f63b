"""The config service over a real etcd (Debian's etcd-server, started per test): config
applied atomically and validated, replicas serving the same version, a shared registry,
and the failover of a steady request loop when a replica process is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshsdk.controlplane.etcd import (
    Etcd,
    EtcdConfigStore,
    EtcdRegistry,
    apply_documents,
    apply_path,
)
from meshsdk.controlplane.server import ConfigServer
from meshsdk.errors import ConfigError
from meshsdk.mesh import Mesh
from meshsdk.testing.upstream import Upstream, free_port, respond
from meshsdk.workload import Workload
from tests.controlplane.conftest import RATINGS, URL, wait_for

ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  http:
  - route:
    - destination: {host: ratings.default.svc.cluster.local}
    timeout: %s
"""



@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    (d / "ratings.yaml").write_text(RATINGS)
    (d / "route.yaml").write_text(ROUTE % "3s")
    return d


@pytest.fixture
def etcd(etcd_endpoint: str) -> Iterator[Etcd]:
    with Etcd(etcd_endpoint, prefix="/test") as conn:
        yield conn


def _timeout_of(store: EtcdConfigStore) -> Any:
    [vs] = store.current.config.of_kind("VirtualService")
    return vs.spec.http[0].timeout


def test_applied_config_is_served_by_every_store_with_one_version(
        etcd: Etcd, etcd_endpoint: str, config_dir: Path) -> None:
    apply_path(etcd, config_dir)
    with Etcd(etcd_endpoint, prefix="/test") as other_conn, \
            EtcdConfigStore(etcd, quiet=0.02) as one, \
            EtcdConfigStore(other_conn, quiet=0.02) as other:
        assert one.version == other.version
        assert one.version.startswith("etcd-")
        assert [r.name for r in one.current.config.of_kind("ServiceEntry")] == ["ratings"]
        before = one.version

        (config_dir / "route.yaml").write_text(ROUTE % "7s")
        apply_path(etcd, config_dir)
        wait_for(lambda: one.version != before and other.version == one.version,
                 "the new version on both stores")
        assert _timeout_of(one) == 7.0


def test_an_invalid_config_never_replaces_the_good_one(etcd: Etcd, config_dir: Path) -> None:
    apply_path(etcd, config_dir)
    with EtcdConfigStore(etcd, quiet=0.02) as store:
        good = store.version
        bad = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "broken", "namespace": "default"},
               "spec": {"hosts": ["x"], "http": [{"route": [{"destination": {}}]}]}}
        with pytest.raises(ConfigError):  # refused before it reaches etcd
            apply_documents(etcd, [bad])
        assert etcd.get_prefix("config/VirtualService/default/broken")[0] == {}

        # written behind our back: the store keeps serving the good config and says why
        etcd.put("config/VirtualService/default/broken", json.dumps(bad).encode())
        wait_for(lambda: store.last_error is not None, "the rejection")
        error = store.last_error
        assert error is not None and error.serving == good
        assert "destination" in error.message
        assert store.version == good

        etcd.put("config/VirtualService/default/broken", b"{not json")
        wait_for(lambda: store.last_error is not None and "not JSON" in
                 store.last_error.message, "the second rejection")
        assert store.version == good

        apply_path(etcd, config_dir)  # replaces the prefix: the broken keys go
        wait_for(lambda: store.last_error is None, "recovery")
        assert store.version == good  # the same content is the same version


def test_a_registration_on_one_replica_reaches_subscribers_of_the_other(
        etcd_endpoint: str, config_dir: Path, tmp_path: Path) -> None:
    with Etcd(etcd_endpoint, prefix="/test") as setup:
        apply_path(setup, config_dir)
    conns = [Etcd(etcd_endpoint, prefix="/test") for _ in range(2)]
    try:
        stores = [EtcdConfigStore(c, quiet=0.02).start() for c in conns]
        servers = [ConfigServer(s, port=0, grace=0.5, sweep_interval=0.05,
                                shared_registry=EtcdRegistry(c, f"replica-{i}", ttl=2))
                   for i, (s, c) in enumerate(zip(stores, conns, strict=True))]
        for server in servers:
            server.start()
        with Upstream("ratings-v1", respond(200, "ratings-v1")) as upstream:
            caller = Mesh.connect(f"127.0.0.1:{servers[1].port}",
                                  Workload("productpage-v1", "default", {"app": "pp"}),
                                  cache_dir=tmp_path / "pp", telemetry=False)
            ratings = Mesh.connect(f"127.0.0.1:{servers[0].port}",
                                   Workload("ratings-v1", "default", {"app": "ratings"}),
                                   register=True, ip="127.0.0.1",
                                   ports={"http": upstream.port},
                                   cache_dir=tmp_path / "ratings", telemetry=False)
            try:
                def answers(status: int) -> bool:
                    with caller.client() as client:
                        return client.get(URL).status_code == status

                wait_for(lambda: answers(200), "the endpoint registered on replica 0, "
                         "routed by a subscriber of replica 1")
                [entry] = servers[1].registryz()
                assert entry["replica"] == "replica-0"
                assert servers[0].registryz()[0]["state"] == "connected"
                wait_for(lambda: caller.status().version == ratings.status().version,
                         "both meshes on one version")
            finally:
                ratings.close()
            wait_for(lambda: servers[1].registryz() == [], "removal after the grace")
            wait_for(lambda: answers(503), "the caller to stop routing to it")
            caller.close()
        for server in servers:
            server.stop()
    finally:
        for conn in conns:
            conn.close()


# --- replicas as processes ----------------------------------------------------------------


def _replica(etcd_endpoint: str, config_dir: Path, port: int, debug: int,
             log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "meshsdk.controlplane.server", "--etcd", etcd_endpoint,
         "--etcd-prefix", "/ha", "--config", str(config_dir), "--port", str(port),
         "--debug-port", str(debug), "--grace", "2"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())})


def _get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return json.load(r)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_killing_a_replica_fails_no_call_and_loses_no_registration(
        etcd_endpoint: str, config_dir: Path, tmp_path: Path) -> None:
    ports = [free_port() for _ in range(4)]
    procs = [_replica(etcd_endpoint, config_dir, ports[i], ports[i + 2],
                      tmp_path / f"replica-{i}.log") for i in range(2)]
    meshes: list[Mesh] = []
    try:
        for i in range(2):
            wait_for(lambda i=i: _ready(ports[i + 2]), f"replica {i} ready", 20.0)
        both = f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
        with Upstream("ratings-v1", respond(200, "ratings-v1")) as upstream:
            ratings = Mesh.connect(both, Workload("ratings-v1", "default",
                                                  {"app": "ratings"}),
                                   register=True, ip="127.0.0.1",
                                   ports={"http": upstream.port},
                                   cache_dir=tmp_path / "ratings", telemetry=False)
            meshes.append(ratings)
            caller = Mesh.connect(both, Workload("productpage-v1", "default", {"app": "pp"}),
                                  cache_dir=tmp_path / "pp", telemetry=False)
            meshes.append(caller)
            assert ratings.status().address == caller.status().address == \
                f"127.0.0.1:{ports[0]}"

            def routed() -> bool:
                with caller.client() as client:
                    return client.get(URL).status_code == 200

            wait_for(routed, "the registered endpoint", 5.0)

            failures: list[str] = []
            calls = 0
            stop = threading.Event()

            def loop() -> None:
                nonlocal calls
                with caller.client() as client:
                    deadline = time.monotonic() + 30.0  # bounded even if never stopped
                    while not stop.is_set() and time.monotonic() < deadline:
                        response = client.get(URL)
                        calls += 1
                        if response.status_code != 200:
                            failures.append(f"{response.status_code} {response.text!r}")
                        time.sleep(0.01)

            worker = threading.Thread(target=loop)
            worker.start()
            try:
                wait_for(lambda: calls >= 20, "calls before the kill", 10.0)
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
                killed_at, calls_at_kill = time.monotonic(), calls
                survivor = f"127.0.0.1:{ports[1]}"
                wait_for(lambda: ratings.status().address == survivor
                         and ratings.status().connected
                         and caller.status().address == survivor
                         and caller.status().connected, "both meshes on the survivor", 10.0)
                # well past the dead replica's lease (2 s): its registration would be gone
                wait_for(lambda: time.monotonic() - killed_at > 4.0, "the lease to lapse",
                         10.0)
                [entry] = _get_json(ports[3], "/debug/registryz")
                assert entry["name"] == "auto-ratings-v1-127-0-0-1"
                assert entry["state"] == "connected"
                assert entry["replica"].startswith(f"127.0.0.1:{ports[1]}/")
                wait_for(lambda: calls > calls_at_kill + 20, "calls after the kill", 10.0)
            finally:
                stop.set()
                worker.join(35.0)
            assert failures == []
            assert calls > 40
    finally:
        for mesh in meshes:
            mesh.close()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
