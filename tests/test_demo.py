"""``python -m meshsdk.demo --quick`` (what ``make demo`` runs, with fewer calls): every
scene passes, the output works without a terminal, and no app is left listening."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshsdk import load_config
from meshsdk.demo.scenes import SCENES, SUMMARY_HEADING, scene_heading

ROOT = Path(__file__).resolve().parents[1]
DEMO = [sys.executable, "-m", "meshsdk.demo"]


def demo_ports() -> list[int]:
    """Every port the demo listens on: the WorkloadEntries of bookinfo and of the demo."""
    config = load_config(ROOT / "examples" / "bookinfo", ROOT / "examples" / "demo" /
                         "replica.yaml")
    return sorted(r.spec.ports["http"] for r in config.resources if r.kind == "WorkloadEntry")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except ConnectionRefusedError:
        return False


def assert_nothing_listening(ports: list[int]) -> None:
    # The demo waits for its apps to exit before it does; allow the kernel a moment.
    deadline = time.monotonic() + 2.0
    left = [p for p in ports if listening(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in ports if listening(p)]
    assert not left, f"still listening after the demo: {left}"


@pytest.fixture
def free_ports() -> list[int]:
    ports = demo_ports()
    assert ports[:6] == list(range(19080, 19086)), ports
    busy = [p for p in ports if listening(p)]
    if busy:
        pytest.skip(f"ports {busy} are in use (another demo running?)")
    return ports


def test_demo_quick_passes_every_scene_and_cleans_up(free_ports: list[int]) -> None:
    proc = subprocess.run([*DEMO, "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=55)
    out = proc.stdout
    if proc.returncode == 3 and "already in use" in out:
        pytest.skip("another demo took the ports while this one started:\n" + out[-400:])
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    assert "\x1b[" not in out, "no terminal: no colour or cursor codes"
    for number in range(1, len(SCENES) + 1):
        assert scene_heading(number) in out
    summary = out.split(f" {SUMMARY_HEADING} ", 1)[1]
    rows = re.findall(r"^  (\d+)  .*  (PASS|FAIL)$", summary, re.M)
    assert rows == [(str(n), "PASS") for n in range(1, len(SCENES) + 1)], summary
    assert "FAIL" not in out
    assert f"{len(SCENES)}/{len(SCENES)} scenes passed" in out
    assert re.search(r"\b[1-9]\d* upstream failures, 0 failed calls", out)
    assert re.search(r"ejected after 3 5xx, 0 calls to it, back in \d\.\ds", summary)
    assert f"stopped {len(free_ports)} processes" in out
    assert_nothing_listening(free_ports)


def test_busy_port_is_named_and_nothing_is_started(free_ports: list[int]) -> None:
    port = free_ports[3]
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        proc = subprocess.run([*DEMO, "--quick", "--no-color"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert f"port {port} on 127.0.0.1" in proc.stdout
    assert "already in use" in proc.stdout
    assert_nothing_listening([p for p in free_ports if p != port])
