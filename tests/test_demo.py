"""``python -m meshsdk.demo --quick`` (what ``make demo`` runs, with fewer calls): the
config service feeds every mesh, every scene passes, the output works without a
terminal, and no process or listener is left behind (also after a Ctrl-C).

Also the demo's config edits (:mod:`meshsdk.demo.edits`) on real files."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meshsdk import ConfigError, load_config
from meshsdk.demo.edits import copy_config, replace_resource, split_documents
from meshsdk.demo.scenes import SCENES, SUMMARY_HEADING, scene_heading

ROOT = Path(__file__).resolve().parents[1]
DEMO = [sys.executable, "-m", "meshsdk.demo"]
SERVICE_LINE = re.compile(r"started the config service \(pid (\d+)\) after [\d.]+s: "
                          r"ADS 127\.0\.0\.1:(\d+), debug 127\.0\.0\.1:(\d+)")
APPS = 7


def demo_ports() -> list[int]:
    """Every port the apps listen on: the WorkloadEntries of bookinfo and of the demo."""
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
    # The demo waits for its processes to exit before it does; allow the kernel a moment.
    deadline = time.monotonic() + 2.0
    left = [p for p in ports if listening(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in ports if listening(p)]
    assert not left, f"still listening after the demo: {left}"


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # reused by someone else's process: not ours any more
        return True
    return False


def started_pids(out: str) -> tuple[list[int], list[int]]:
    """(the config service's pid and ports, the apps' pids) as the demo printed them."""
    service = SERVICE_LINE.search(out)
    assert service, out[:2000]
    apps = [int(p) for p in re.findall(r"^  \S+ +127\.0\.0\.1:\d+ +pid (\d+)", out, re.M)]
    assert len(apps) == APPS, out[:2000]
    return [int(g) for g in service.groups()], apps


@pytest.fixture
def free_ports() -> list[int]:
    ports = demo_ports()
    assert ports[:6] == list(range(19080, 19086)), ports
    busy = [p for p in ports if listening(p)]
    if busy:
        pytest.skip(f"ports {busy} are in use (another demo running?)")
    return ports


def kill_leftovers(out: str) -> None:
    """Last resort after a failed run: kill, by PID, any process the demo said it started."""
    for pid in map(int, re.findall(r"\bpid (\d+)", out)):
        if not pid_gone(pid):
            os.kill(pid, signal.SIGKILL)


def run_demo(*args: str, timeout: float) -> tuple[int, str, str]:
    """Run the demo to its end; on timeout, SIGTERM it (it stops its processes), then
    kill what is left. (exit code, stdout, stderr)"""
    proc = subprocess.Popen([*DEMO, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        kill_leftovers(out)
        pytest.fail(f"the demo did not finish within {timeout:.0f}s:\n{out}\n{err}")
    if proc.returncode != 0:
        kill_leftovers(out)
    return proc.returncode, out, err


def test_demo_quick_passes_every_scene_and_cleans_up(free_ports: list[int]) -> None:
    returncode, out, err = run_demo("--quick", timeout=300)
    if returncode == 3 and "already in use" in out:
        pytest.skip("another demo took the ports while this one started:\n" + out[-400:])
    assert returncode == 0, f"exit {returncode}\n{out}\n{err}"
    assert "\x1b[" not in out, "no terminal: no colour or cursor codes"
    for number in range(1, len(SCENES) + 1):
        assert scene_heading(number) in out
    summary = out.split(f" {SUMMARY_HEADING} ", 1)[1]
    rows = re.findall(r"^  (\d+)  .*  (PASS|FAIL)$", summary, re.M)
    assert rows == [(str(n), "PASS") for n in range(1, len(SCENES) + 1)], summary
    assert "FAIL" not in out
    assert f"{len(SCENES)}/{len(SCENES)} scenes passed" in out
    # fed by the config service: every mesh connected, and the scenes edit files on disk
    (service_pid, ads, debug), app_pids = started_pids(out)
    assert f'Mesh.connect("127.0.0.1:{ads}")' in out
    assert f"/debug/syncz: {APPS + 1} meshes connected ({APPS} apps and the driver)" in out
    assert "edit routes.yaml: VirtualService reviews" in out
    assert "add  replica.yaml" in out
    assert "edit destination-rules.yaml: DestinationRule reviews" in out
    versions = re.findall(r"config service: version (v\d+-[0-9a-f]{8}); the driver's mesh "
                          rf"applied it [\d.]+s after the write; /debug/syncz: {APPS + 1} of "
                          rf"{APPS + 1} meshes ACKed it", out)
    assert len(versions) == 3 and len(set(versions)) == 3, out
    assert re.search(r"0 failed of \d+; \d+/\d+ then \d+/\d+; live in \d+\.\d\ds", summary)
    assert re.search(rf"serves version {re.escape(versions[-1])}; /debug/syncz: "
                     rf"{APPS + 1} meshes connected, {APPS + 1} on that version", out)
    assert re.search(r"\b[1-9]\d* upstream failures, 0 failed calls", out)
    assert re.search(r"ejected after 3 5xx, 0 calls to it, back in \d\.\ds", summary)
    assert f"stopped {len(free_ports)} apps and the config service" in out
    assert_nothing_listening([*free_ports, ads, debug])
    assert all(pid_gone(pid) for pid in [service_pid, *app_pids])


def test_ctrl_c_stops_the_apps_and_the_config_service(free_ports: list[int]) -> None:
    proc = subprocess.Popen([*DEMO, "--quick", "--no-color"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while scene_heading(1) not in "".join(lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        out = "".join(lines)
        if "already in use" in out:
            pytest.skip("another demo took the ports while this one started")
        assert scene_heading(1) in out, out
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the demo
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            kill_leftovers("".join(lines))
    reader.join(10)
    out = "".join(lines)
    assert "interrupted: stopping the apps and the config service" in out
    assert f"stopped {len(free_ports)} apps and the config service" in out
    (service_pid, ads, debug), app_pids = started_pids(out)
    assert_nothing_listening([*free_ports, ads, debug])
    assert all(pid_gone(pid) for pid in [service_pid, *app_pids])


def test_busy_port_is_named_and_nothing_is_started(free_ports: list[int]) -> None:
    port = free_ports[3]
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        proc = subprocess.run([*DEMO, "--quick", "--no-color"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert f"port {port} on 127.0.0.1" in proc.stdout
    assert "already in use" in proc.stdout
    assert "started the config service" not in proc.stdout
    assert_nothing_listening([p for p in free_ports if p != port])


# --- the demo's edits on disk ---------------------------------------------------------------


def test_replace_resource_swaps_one_resource_and_keeps_the_config_valid(
        tmp_path: Path) -> None:
    copy_config(ROOT / "examples" / "bookinfo", tmp_path)
    routes = tmp_path / "routes.yaml"
    before = load_config(tmp_path)
    fifty = (ROOT / "examples" / "demo" / "reviews-50-v3.yaml").read_text()
    assert replace_resource(routes, fifty, "from the test") == ("VirtualService", "reviews")
    after = load_config(tmp_path)
    assert len(after.resources) == len(before.resources)
    reviews = next(r for r in after.resources
                   if r.kind == "VirtualService" and r.name == "reviews")
    weights = [d.weight for d in reviews.spec.http[0].route]
    assert weights == [50, 50]
    assert [r.name for r in after.resources if r.kind == "VirtualService"] == [
        r.name for r in before.resources if r.kind == "VirtualService"]
    assert "# from the test" in routes.read_text()
    assert not list(tmp_path.glob("*.tmp")), "the temporary file was renamed into place"


def test_replace_resource_appends_a_new_one_and_refuses_several(tmp_path: Path) -> None:
    copy_config(ROOT / "examples" / "bookinfo", tmp_path)
    rules = tmp_path / "destination-rules.yaml"
    count = len(split_documents(rules.read_text()))
    extra = ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
             "metadata: {name: extra}\nspec: {host: extra}\n")
    replace_resource(rules, extra)
    assert len(split_documents(rules.read_text())) == count + 1
    assert any(r.name == "extra" for r in load_config(tmp_path).resources)
    with pytest.raises(ValueError, match="one resource"):
        replace_resource(rules, extra + "---\n" + extra)
    broken = extra.replace("host: extra", "host: ''")
    replace_resource(rules, broken)
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # the edit is written as given: the service would refuse it
