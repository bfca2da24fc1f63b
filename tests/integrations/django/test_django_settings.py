"""meshsdk-django's settings: ``settings.MESHSDK`` into a mesh, and the mistakes it
refuses (a typo'd key, no config source, two of them, a bad workload) with a message
naming the setting; a project without ``MESHSDK`` fails at startup, not at the first
request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from meshsdk_django import conf

from meshsdk.errors import UsageError
from meshsdk.security.ca import MeshCA
from meshsdk.testing.upstream import free_port
from tests.integrations.webapp_harness import ROOT, issue_files, policies

WORKLOAD = {"name": "reviews-v1", "namespace": "default", "labels": {"app": "reviews"},
            "service_account": "reviews"}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "mesh"
    directory.mkdir()
    (directory / "policies.yaml").write_text(policies(tmp_path / "access.log"),
                                             encoding="utf-8")
    return directory


def test_settings_build_the_mesh_identity_and_metrics(tmp_path: Path, config_dir: Path
                                                      ) -> None:
    certs = issue_files(MeshCA.create(), tmp_path / "certs", "default", "reviews")
    port = free_port()
    runtime = conf.build({"CONFIG": config_dir, "WORKLOAD": WORKLOAD, "CERT_DIR": certs,
                          "METRICS_PORT": port, "INBOUND": {"trusted_proxies": ["10.0.0.1"]}})
    try:
        assert runtime.mesh.workload.name == "reviews-v1"
        assert runtime.mesh.identity is runtime.identity
        assert runtime.identity is not None
        assert runtime.identity.spiffe_id == "spiffe://cluster.local/ns/default/sa/reviews"
        assert runtime.metrics is not None and runtime.metrics.port == port
        assert runtime.inbound_options == {"trusted_proxies": ["10.0.0.1"]}
    finally:
        runtime.close()
    assert runtime.identity.closed


@pytest.mark.parametrize(("settings", "message"), [
    ({"CONFIG": "x", "CONECT": "y"}, "unknown key.*CONECT"),
    ({"WORKLOAD": WORKLOAD}, "exactly one of 'CONFIG'"),
    ({"CONFIG": "x", "CONNECT": "127.0.0.1:1"}, "exactly one of 'CONFIG'"),
    ({"CONFIG": "x", "WORKLOAD": {"nam": "typo"}}, r"MESHSDK\['WORKLOAD'\]"),
    ({"CONFIG": "x", "WORKLOAD": "reviews"}, "must be a dict or a Workload"),
])
def test_mistakes_are_named(settings: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        conf.build(settings)


def test_a_project_without_meshsdk_settings_fails_at_startup(tmp_path: Path) -> None:
    (tmp_path / "bare_settings.py").write_text(
        "SECRET_KEY = 'x'\nINSTALLED_APPS = ['meshsdk_django']\nDATABASES = {}\n",
        encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "DJANGO_SETTINGS_MODULE": "bare_settings",
             "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert "ImproperlyConfigured: meshsdk_django needs settings.MESHSDK" in proc.stderr


def test_connect_takes_the_config_from_the_config_service(tmp_path: Path, config_dir: Path
                                                          ) -> None:
    from meshsdk.controlplane.filestore import ConfigStore
    from meshsdk.controlplane.server import ConfigServer

    with ConfigStore(config_dir).start() as store, ConfigServer(store, port=0) as server:
        runtime = conf.build({"CONNECT": f"127.0.0.1:{server.port}", "WORKLOAD": WORKLOAD,
                              "CACHE_DIR": tmp_path / "cache", "CONNECT_WAIT": 5})
        try:
            status = runtime.mesh.status()
            assert status.connected and status.source == "server"
            kinds = {r.kind for r in runtime.mesh.snapshot.config.resources}
            assert {"PeerAuthentication", "AuthorizationPolicy"} <= kinds
        finally:
            runtime.close()
        assert not runtime.mesh.status().connected
