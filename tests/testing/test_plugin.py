"""The meshsdk pytest plugin: the documented example runs for real (in a fresh pytest
process, where the plugin comes from the installed entry point), a fragile app is
caught, and each fixture does what docs/testing.md says."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpcore  # noqa: F401  (see below)
import httpx
import pytest

from meshsdk.errors import ConfigError
from meshsdk.testing.clock import FakeClock
from meshsdk.testing.sandbox import FixtureMesh, MeshFaults, MeshTestConfig
from meshsdk.testing.upstream import Reply, Upstream, respond, script
from meshsdk.workload import Workload

pytest_plugins = ["pytester"]

# httpx imports httpcore lazily and caches its exception classes on first use. An
# in-process pytester run unloads modules first imported during it; were httpcore one
# of them, later calls here would meet a second copy whose exceptions httpx no longer
# maps. Importing it above keeps a single copy.

ROOT = Path(__file__).resolve().parents[2]
UpstreamFactory = Callable[..., Upstream]


def _doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _doc_files() -> dict[str, str]:
    """The ```python blocks of docs/testing.md whose first line names a file."""
    files: dict[str, str] = {}
    for block in _doc_blocks():
        m = re.fullmatch(r"# (\w+\.py)", block.splitlines()[0])
        if m:
            files[m.group(1)] = block
    return files


def _call(mesh: FixtureMesh | object, url: str = "http://reviews/") -> httpx.Response:
    assert isinstance(mesh, FixtureMesh)
    with mesh.client() as client:
        response = client.get(url)
        response.read()
        return response


def _flags(response: httpx.Response) -> str:
    return str(response.extensions["meshsdk"].response_flags)


# --- the plugin as users meet it -----------------------------------------------------------


def test_documented_example_passes_in_a_fresh_pytest(pytester: pytest.Pytester) -> None:
    files = _doc_files()
    assert set(files) == {"shop.py", "test_shop.py"}
    pytester.makepyfile(**{name[:-3]: text for name, text in files.items()})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7)


def test_documented_async_example_passes(pytester: pytest.Pytester) -> None:
    [block] = [b for b in _doc_blocks() if "async_client" in b and "def test_" in b]
    pytester.makepyfile(test_async_example=block)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_documented_script_without_pytest_runs() -> None:
    [block] = [b for b in _doc_blocks() if "MeshTestConfig()" in b]
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "503"


def test_a_fragile_app_is_caught(pytester: pytest.Pytester) -> None:
    # The same kind of test against code with no fallback: the fault makes it fail.
    pytester.makepyfile(fragile='''
import httpx

def product_page(client: httpx.Client, product_id: int) -> dict:
    reviews = client.get(f"http://reviews/reviews/{product_id}").json()
    return {"id": product_id, "reviews": reviews}
''', test_fragile='''
from meshsdk.testing.upstream import respond
from fragile import product_page

def test_survives_reset(mesh, mesh_upstream, mesh_faults):
    mesh_upstream("reviews", respond(200, "[]"))
    mesh_faults.reset("reviews")
    with mesh.client() as client:
        assert product_page(client, 1)["reviews"] == []

def test_survives_abort(mesh, mesh_upstream, mesh_faults):
    mesh_upstream("reviews", respond(200, "[]"))
    mesh_faults.abort("reviews", status=503)
    with mesh.client() as client:
        assert product_page(client, 1)["reviews"] == []

def test_fine_without_faults(mesh, mesh_upstream):
    mesh_upstream("reviews", respond(200, "[]"))
    with mesh.client() as client:
        assert product_page(client, 1)["reviews"] == []
''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*JSONDecodeError*"])


def test_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(mesh):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:meshsdk", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'mesh' not found*"])


def test_servers_are_stopped_after_the_test(pytester: pytest.Pytester, tmp_path: Path) -> None:
    ports = tmp_path / "ports.txt"
    pytester.makepyfile(test_ports=f'''
def test_register(mesh, mesh_upstream, mesh_faults):
    a = mesh_upstream("reviews")
    b = mesh_upstream("ratings", port=9080)
    mesh_faults.reset("reviews", percent=50)   # starts a fault server too
    with mesh.client() as client:
        assert client.get("http://ratings:9080/").status_code == 200
    open({str(ports)!r}, "w").write(f"{{a.port}} {{b.port}}")
''')
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    for port in map(int, ports.read_text().split()):
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect(("127.0.0.1", port))


# --- mesh_upstream and mesh ----------------------------------------------------------------


def test_mesh_follows_upstreams_registered_after_it(mesh: FixtureMesh,
                                                    mesh_upstream: UpstreamFactory) -> None:
    assert _call(mesh).status_code != 200  # nothing is registered yet
    up = mesh_upstream("reviews", respond(200, "hello"))
    response = _call(mesh)
    assert (response.status_code, response.text, _flags(response)) == (200, "hello", "-")
    assert response.extensions["meshsdk"].cluster == \
        "outbound|80||reviews.default.svc.cluster.local"
    assert up.hits == 1


def test_upstreams_of_one_service_share_it_and_labels_select_subsets(
        mesh: FixtureMesh, mesh_upstream: UpstreamFactory, mesh_config: MeshTestConfig) -> None:
    v1 = mesh_upstream("reviews", labels={"version": "v1"})
    v2 = mesh_upstream("reviews", labels={"version": "v2"})
    assert (v1.name, v2.name) == ("reviews-v1", "reviews-v2")
    mesh_config.add("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
""")
    assert {_call(mesh).headers["x-upstream"] for _ in range(5)} == {"reviews-v2"}
    assert (v1.hits, v2.hits) == (0, 5)


def test_ports_and_namespaces(mesh: FixtureMesh, mesh_upstream: UpstreamFactory) -> None:
    mesh_upstream("ratings", port=9080, namespace="shop")
    assert _call(mesh, "http://ratings.shop:9080/").status_code == 200
    assert _call(mesh, "http://ratings.shop.svc.cluster.local:9080/").status_code == 200
    with pytest.raises(ValueError, match="already has port 9080"):
        mesh_upstream("ratings", port=80, namespace="shop")
    with pytest.raises(ValueError, match="short service name"):
        mesh_upstream("ratings.shop")


def test_bad_yaml_is_refused_and_not_kept(mesh: FixtureMesh, mesh_upstream: UpstreamFactory,
                                          mesh_config: MeshTestConfig) -> None:
    mesh_upstream("reviews")
    before = mesh.snapshot
    with pytest.raises(ConfigError, match="weight"):
        mesh_config.add("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}, weight: -1}]}]
""")
    assert mesh.snapshot is before
    assert "weight: -1" not in mesh_config.yaml()
    assert _call(mesh).status_code == 200


def test_make_mesh_builds_another_workload(make_mesh: Callable[..., FixtureMesh],
                                           mesh_upstream: UpstreamFactory) -> None:
    mesh_upstream("reviews", labels={"version": "v1"})
    mesh_upstream("reviews", labels={"version": "v2"})
    jason = make_mesh("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: beta-tester}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
""", workload=Workload("beta", "default", {"app": "beta-tester"}))
    other = make_mesh()
    assert _call(jason).headers["x-upstream"] == "reviews-v2"
    assert _call(other).headers["x-upstream"] == "reviews-v1"


# --- faults ---------------------------------------------------------------------------------------


def test_abort_is_the_mesh_fault_injection(mesh: FixtureMesh, mesh_upstream: UpstreamFactory,
                                           mesh_faults: MeshFaults,
                                           mesh_config: MeshTestConfig) -> None:
    up = mesh_upstream("reviews")
    mesh_faults.abort("reviews", status=418)
    response = _call(mesh)
    assert (response.status_code, response.text, _flags(response)) == \
        (418, "fault filter abort", "FI")
    assert response.extensions["meshsdk"].local_reply
    assert up.hits == 0
    text = mesh_config.yaml()
    assert "kind: VirtualService" in text and "httpStatus: 418" in text
    mesh_faults.clear("reviews")
    assert _call(mesh).status_code == 200
    assert "kind: VirtualService" not in mesh_config.yaml()


def test_abort_percent_is_a_share_of_calls(mesh: FixtureMesh, mesh_upstream: UpstreamFactory,
                                           mesh_faults: MeshFaults) -> None:
    up = mesh_upstream("reviews")
    mesh_faults.abort("reviews", status=503, percent=30)
    with mesh.client() as client:
        statuses = Counter(client.get("http://reviews/").status_code for _ in range(400))
    # Binomial(400, 0.3): sd 9.2; 4 sd = 37
    assert abs(statuses[503] - 120) <= 37
    assert statuses[200] == up.hits == 400 - statuses[503]


def test_abort_is_written_into_the_users_virtual_service(
        mesh: FixtureMesh, mesh_upstream: UpstreamFactory, mesh_faults: MeshFaults,
        mesh_config: MeshTestConfig) -> None:
    mesh_upstream("reviews")
    mesh_config.add("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-routes}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews}}]
  - directResponse: {status: 204}
""")
    mesh_faults.abort("reviews", status=500)
    text = mesh_config.yaml()
    assert text.count("kind: VirtualService") == 1       # patched, no second one
    assert text.count("httpStatus: 500") == 1            # on the route with a destination
    assert _call(mesh, "http://reviews/api/x").status_code == 500
    assert _call(mesh, "http://reviews/other").status_code == 204  # the user's route still
    mesh_faults.delay("reviews", 0.001)
    assert _flags(_call(mesh, "http://reviews/api/x")) == "DI,FI"


def test_a_virtual_service_without_destinations_cannot_take_a_fault(
        mesh_upstream: UpstreamFactory, mesh_faults: MeshFaults,
        mesh_config: MeshTestConfig) -> None:
    mesh_upstream("reviews")
    mesh_config.add("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{directResponse: {status: 200}}]
""")
    with pytest.raises(ValueError, match="nowhere to inject"):
        mesh_faults.abort("reviews")
    assert "httpStatus" not in mesh_config.yaml()


def test_delay_with_the_fake_clock(mesh_config: MeshTestConfig, mesh_upstream: UpstreamFactory,
                                   mesh_faults: MeshFaults, mesh_clock: FakeClock) -> None:
    mesh = mesh_config.build(clock=mesh_clock)
    mesh_upstream("reviews")
    mesh_faults.delay("reviews", seconds=0.25, percent=100)
    start = mesh_clock.now()
    response = _call(mesh)
    assert (response.status_code, _flags(response)) == (200, "DI")
    assert mesh_clock.sleeps == [0.25]
    assert mesh_clock.now() - start == 0.25
    with pytest.raises(ValueError, match="whole number of milliseconds"):
        mesh_faults.delay("reviews", seconds=0.0005)


def test_reset_diverts_attempts_to_a_resetting_server(
        mesh: FixtureMesh, mesh_upstream: UpstreamFactory, mesh_faults: MeshFaults) -> None:
    up = mesh_upstream("reviews")
    mesh_faults.reset("reviews", percent=100)
    response = _call(mesh)
    assert (response.status_code, _flags(response)) == (503, "UR")
    assert b"remote reset" in response.content
    assert up.hits == 0 and mesh_faults.injected("reviews") == 1
    mesh_faults.reset("reviews", percent=50)
    with mesh.client() as client:
        statuses = [client.get("http://reviews/").status_code for _ in range(40)]
    assert statuses.count(503) == mesh_faults.injected("reviews") - 1
    assert statuses.count(200) == up.hits
    assert 8 <= statuses.count(503) <= 32  # Binomial(40, 0.5): 4 sd = 12.6


def test_reset_draws_per_attempt_so_retries_can_save_the_call(
        mesh: FixtureMesh, mesh_upstream: UpstreamFactory, mesh_faults: MeshFaults,
        mesh_config: MeshTestConfig) -> None:
    up = mesh_upstream("reviews")
    mesh_config.add("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}], retries: {attempts: 5, retryOn: reset}}]
""")
    mesh_faults.reset("reviews", percent=50)
    with mesh.client() as client:
        responses = [client.get("http://reviews/") for _ in range(30)]
    # A call fails only if all 6 of its attempts are reset: 0.5**6 = 1/64 per call.
    ok = [r for r in responses if r.status_code == 200]
    lost = [r for r in responses if r.status_code != 200]
    assert len(ok) >= 27
    assert all((r.status_code, _flags(r), r.extensions["meshsdk"].attempts)
               == (503, "URX,UR", 6) for r in lost)
    attempts = sum(r.extensions["meshsdk"].attempts for r in responses)
    assert attempts == len(ok) + mesh_faults.injected("reviews")
    assert up.hits == len(ok)
    assert any(r.extensions["meshsdk"].attempts > 1 for r in ok)


def test_refuse_is_a_connect_failure(mesh: FixtureMesh, mesh_upstream: UpstreamFactory,
                                     mesh_faults: MeshFaults) -> None:
    up = mesh_upstream("reviews")
    mesh_faults.refuse("reviews")
    response = _call(mesh)
    # the default policy retries connect failures twice, each retry refused again
    assert (response.status_code, _flags(response)) == (503, "URX,UF")
    assert response.extensions["meshsdk"].attempts == 3
    assert mesh_faults.injected("reviews") == 3 and up.hits == 0


def test_unavailable_answers_503_from_the_service_side(
        mesh: FixtureMesh, mesh_upstream: UpstreamFactory, mesh_faults: MeshFaults,
        mesh_config: MeshTestConfig) -> None:
    up = mesh_upstream("reviews")
    mesh_faults.unavailable("reviews")
    response = _call(mesh)
    assert (response.status_code, _flags(response)) == (503, "-")
    assert not response.extensions["meshsdk"].local_reply
    mesh_config.add("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, retryOn: 5xx}}]
""")
    response = _call(mesh)
    assert (response.status_code, _flags(response)) == (503, "URX")
    assert response.extensions["meshsdk"].attempts == 3
    assert up.hits == 0 and mesh_faults.injected("reviews") == 4
    mesh_faults.clear()
    assert _call(mesh).status_code == 200 and up.hits == 1


def test_a_fault_set_before_the_service_exists_applies_to_it(
        mesh: FixtureMesh, mesh_upstream: UpstreamFactory, mesh_faults: MeshFaults) -> None:
    mesh_faults.unavailable("reviews")
    mesh_faults.abort("ratings", status=500)
    mesh_upstream("reviews")
    mesh_upstream("ratings")
    assert _call(mesh).status_code == 503
    assert _call(mesh, "http://ratings/").status_code == 500


def test_faults_apply_to_async_clients(mesh: FixtureMesh, mesh_upstream: UpstreamFactory,
                                       mesh_faults: MeshFaults) -> None:
    mesh_upstream("reviews", script(Reply(200, b"one"), Reply(200, b"two")))
    mesh_faults.reset("reviews")
    mesh_faults.abort("ratings")
    mesh_upstream("ratings")

    async def go() -> list[tuple[int, str]]:
        async with mesh.async_client() as client:
            out = []
            for url in ("http://reviews/", "http://ratings/"):
                r = await client.get(url)
                out.append((r.status_code, _flags(r)))
            return out
    assert asyncio.run(go()) == [(503, "UR"), (503, "FI")]


def test_percent_is_checked(mesh_faults: MeshFaults) -> None:
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        mesh_faults.abort("reviews", percent=101)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        mesh_faults.reset("reviews", percent=-1)


# --- the fake clock -------------------------------------------------------------------------------


def test_fake_clock(mesh_clock: FakeClock) -> None:
    start = mesh_clock.now()
    mesh_clock.sleep(0.5)
    mesh_clock.advance(2)
    asyncio.run(mesh_clock.async_sleep(0.25))
    assert mesh_clock() - start == 2.75
    assert mesh_clock.sleeps == [0.5, 0.25]
    assert mesh_clock.slept == 0.75
    with pytest.raises(ValueError):
        mesh_clock.advance(-1)
    with pytest.raises(ValueError):
        mesh_clock.set(start)


def test_fake_clock_drives_outlier_ejection_in_no_time(
        mesh_config: MeshTestConfig, mesh_upstream: UpstreamFactory,
        mesh_clock: FakeClock) -> None:
    good = mesh_upstream("reviews", name="good")
    bad = mesh_upstream("reviews", respond(503), name="bad")
    mesh_config.add("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 1h, maxEjectionPercent: 50}
""")
    mesh = mesh_config.build(clock=mesh_clock)
    with mesh.client() as client:
        for _ in range(4):
            client.get("http://reviews/")
        assert bad.hits == 1
        mesh_clock.advance(3600)
        for _ in range(4):
            client.get("http://reviews/")
    assert bad.hits == 2 and good.hits == 6
