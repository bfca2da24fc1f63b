"""The config service feeding an embedded mesh, all real: a watched directory, the
gRPC server, ``Mesh.connect``, and calls to real upstreams. A traffic split edited on
disk changes live traffic within a second; an invalid edit changes nothing."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsdk.controlplane.filestore import ConfigStore
from meshsdk.controlplane.server import ConfigServer
from meshsdk.mesh import Mesh
from meshsdk.testing.builders import service_entry
from meshsdk.testing.upstream import Upstream, respond
from meshsdk.workload import Workload

DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def split(v1: int, v2: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - route:
    - {{destination: {{host: reviews.default.svc.cluster.local, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews.default.svc.cluster.local, subset: v2}}, weight: {v2}}}
"""


@pytest.fixture
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    with Upstream("v1", respond(200, "v1")) as a, Upstream("v2", respond(200, "v2")) as b:
        yield a, b


def _versions(mesh: Mesh, n: int) -> Counter[str]:
    with mesh.client() as client:
        return Counter(client.get("http://reviews.default.svc.cluster.local/").text
                       for _ in range(n))


def test_an_edit_on_disk_changes_live_traffic_within_a_second(
        tmp_path: Path, upstreams: tuple[Upstream, Upstream]) -> None:
    v1, v2 = upstreams
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "services.yaml").write_text(
        service_entry("reviews", [(v1, {"version": "v1"}), (v2, {"version": "v2"})])
        + "---" + DR)
    (config_dir / "reviews.yaml").write_text(split(100, 0))
    with ConfigStore(config_dir).start() as store, \
            ConfigServer(store, port=0) as server:
        mesh = Mesh.connect(f"127.0.0.1:{server.port}",
                            Workload("productpage-v1", "default", {"app": "productpage"}),
                            cache_dir=tmp_path / "cache", wait=5.0, telemetry=False)
        try:
            status = mesh.status()
            assert status.connected and status.source == "server"
            first = status.version
            assert _versions(mesh, 20) == Counter({"v1": 20})

            (config_dir / "reviews.yaml").write_text(split(0, 100))
            edited = time.monotonic()
            while time.monotonic() - edited < 5.0 and mesh.status().version == first:
                time.sleep(0.01)
            took = time.monotonic() - edited
            assert mesh.status().version != first
            assert took < 1.0, f"the edit took {took:.2f}s to reach the mesh"
            assert _versions(mesh, 20) == Counter({"v2": 20})
            acked = {s["acked_version"] for s in server.syncz()}
            assert acked == {mesh.status().version}

            # an invalid edit is kept out: the store refuses it, traffic is unchanged
            good = mesh.status().version
            (config_dir / "reviews.yaml").write_text(split(0, 100).replace("weight: 100",
                                                                            "weight: -1"))
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and store.last_error is None:
                time.sleep(0.01)
            assert store.last_error is not None and "weight" in store.last_error.message
            assert mesh.status().version == good
            assert _versions(mesh, 10) == Counter({"v2": 10})
        finally:
            mesh.close()


def test_the_same_server_signs_workload_certificates(tmp_path: Path) -> None:
    from meshsdk.controlplane.ca_service import TokenDirectory, add_ca_service, remote_signer
    from meshsdk.security.ca import MeshCA
    from meshsdk.security.identity import WorkloadIdentity

    config_dir, tokens = tmp_path / "config", tmp_path / "tokens"
    config_dir.mkdir()
    tokens.mkdir()
    (tokens / "default.reviews.token").write_text("a-long-enough-bootstrap-token\n")
    ca = MeshCA.create()
    with ConfigStore(config_dir).start() as store, ConfigServer(
            store, port=0,
            services=[lambda s: add_ca_service(s, ca, TokenDirectory(tokens))]) as server:
        signer = remote_signer(f"127.0.0.1:{server.port}", "a-long-enough-bootstrap-token")
        with WorkloadIdentity.from_signer(
                signer, "spiffe://cluster.local/ns/default/sa/reviews") as identity:
            assert identity.spiffe_id == "spiffe://cluster.local/ns/default/sa/reviews"
            assert identity.roots_pem == ca.roots


def test_the_mesh_config_travels_and_is_cached(tmp_path: Path) -> None:
    """mesh.yaml on the server (REGISTRY_ONLY here) governs connected meshes, also when
    they restart on their disk cache with the server gone."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"
                                      "defaultVirtualServiceExportTo: ['.']\n")
    (config / "dr.yaml").write_text(DR)
    workload = Workload("productpage-v1", "default", {"app": "productpage"})
    with ConfigStore(config).start() as store, ConfigServer(store, port=0) as server:
        address = f"127.0.0.1:{server.port}"
        mesh = Mesh.connect(address, workload, cache_dir=tmp_path / "cache", telemetry=False)
        try:
            options = mesh.snapshot.config.mesh
            assert options.outbound_traffic_policy.mode == "REGISTRY_ONLY"
            assert options.default_virtual_service_export_to == ["."]
            with mesh.client() as client:  # not in the registry: refused, as Istio does
                response = client.get("http://unknown.example.com/")
            assert response.status_code == 502
        finally:
            mesh.close()
    restarted = Mesh.connect(address, workload, cache_dir=tmp_path / "cache", wait=3.0,
                             telemetry=False)
    try:
        assert restarted.status().source == "cache"
        assert restarted.snapshot.config.mesh.outbound_traffic_policy.mode == "REGISTRY_ONLY"
    finally:
        restarted.close()
