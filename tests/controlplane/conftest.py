"""What the config service tests share."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshsdk.testing.upstream import free_port

# a ServiceEntry whose endpoints are registered workloads (app: ratings)
RATINGS = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: ratings}}
"""
URL = "http://ratings.default.svc.cluster.local/"

WAIT = 3.0
"""How long a test waits for something the watcher or a stream delivers."""


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` until true; an AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


# --- a real etcd ---------------------------------------------------------------------------


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def etcd_endpoint(tmp_path: Path) -> Iterator[str]:
    """A fresh single-member etcd (Debian's etcd-server) on 127.0.0.1: ``host:port``.

    Skipped when etcd is not installed, except under CI, where ``make test`` installs
    it and its absence is a failure."""
    binary = shutil.which("etcd")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is not installed: `make test` installs Debian's etcd-server")
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    client, peer = free_port(), free_port()
    log = (tmp_path / "etcd.log").open("wb")
    proc = subprocess.Popen(
        [binary, "--name", "test", "--data-dir", str(tmp_path / "etcd-data"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"test=http://127.0.0.1:{peer}",
         "--listen-metrics-urls", "", "--log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or _accepts(client), "etcd to listen", 20.0)
        if proc.poll() is not None:
            raise AssertionError("etcd exited: "
                                 + (tmp_path / "etcd.log").read_text(errors="replace")[-2000:])
        yield f"127.0.0.1:{client}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
