"""``Mesh.update`` under traffic: a bad config is refused whole and the old one keeps
routing; calls in flight finish on the snapshot they started with; learned state
(ejections) survives a push. Sync and async clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from meshsdk.config.resource import Config
from meshsdk.errors import ConfigError
from meshsdk.mesh import Mesh
from meshsdk.testing.builders import config_from_yaml
from meshsdk.testing.sandbox import MeshTestConfig
from meshsdk.testing.upstream import Received, Reply, Upstream, respond, wait_until
from tests.dataplane.conftest import Build
from tests.dataplane.harness import AsyncCaller, Caller, Got, SyncCaller, got_from

Connect = Callable[[Mesh], Caller]
URL = "http://reviews/u"

SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def route_to(subset: str, extra: str = "", weight: int = 100) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: {subset}}}, weight: {weight}}}]
{extra}
"""


def _services(env: MeshTestConfig) -> list[str]:
    return [d for d in env.documents() if "kind: ServiceEntry" in d]


def _config(env: MeshTestConfig, *docs: str) -> Config:
    """A whole new config: the test's services plus ``docs``."""
    return config_from_yaml(*_services(env), *docs)


def _two_versions(mesh_upstream: Callable[..., Upstream],
                  v1: Callable[[Received, int], Reply] | None = None
                  ) -> tuple[Upstream, Upstream]:
    return (mesh_upstream("reviews", v1, labels={"version": "v1"}, name="v1"),
            mesh_upstream("reviews", labels={"version": "v2"}, name="v2"))


def test_bad_config_is_refused_and_the_old_one_keeps_routing(
        mesh_config: MeshTestConfig, mesh_upstream: Callable[..., Upstream], build: Build,
        connect: Connect, tmp_path: Path) -> None:
    v1, v2 = _two_versions(mesh_upstream)
    mesh = build(SUBSETS, route_to("v1"))
    caller = connect(mesh)
    assert [g.upstream for g in caller.many(3, URL)] == ["v1"] * 3
    before = mesh.snapshot
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n---\n".join([*_services(mesh_config), SUBSETS,
                                   route_to("v2", weight=-5)]), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        mesh.update(bad)
    assert "weight" in str(err.value)
    assert mesh.snapshot is before
    assert [g.upstream for g in caller.many(3, URL)] == ["v1"] * 3
    # a good update from a file switches at once
    good = tmp_path / "good.yaml"
    good.write_text("\n---\n".join([*_services(mesh_config), SUBSETS, route_to("v2")]),
                    encoding="utf-8")
    mesh.update(good)
    assert [g.upstream for g in caller.many(3, URL)] == ["v2"] * 3
    assert (v1.hits, v2.hits) == (6, 3)


def test_unreadable_config_is_refused(
        mesh_upstream: Callable[..., Upstream], build: Build, connect: Connect,
        tmp_path: Path) -> None:
    _two_versions(mesh_upstream)
    mesh = build(SUBSETS, route_to("v1"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: VirtualService\n  spec: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        mesh.update(broken)
    with pytest.raises(ConfigError):
        mesh.update(tmp_path / "missing.yaml")
    assert connect(mesh).get(URL).upstream == "v1"


def test_in_flight_call_finishes_on_its_snapshot(
        mesh_config: MeshTestConfig, mesh_upstream: Callable[..., Upstream], build: Build,
        connect: Connect) -> None:
    # The first request to v1 is held until the test lets it go, then answers 503; the
    # old route retries 5xx. Meanwhile the config moves all traffic to v2 without
    # retries. The held call retries on v1 (its own snapshot); new calls go to v2.
    release = threading.Event()

    def v1_behaviour(req: Received, n: int) -> Reply:
        if n == 1:
            release.wait(5.0)
            return Reply(503, b"held")
        return Reply(200, b"v1 retried")

    v1, v2 = _two_versions(mesh_upstream, v1_behaviour)
    mesh = build(SUBSETS, route_to("v1", "    retries: {attempts: 2, retryOn: 5xx}"))
    new = _config(mesh_config, SUBSETS, route_to("v2"))
    caller = connect(mesh)

    if isinstance(caller, SyncCaller):
        held: list[Got] = []
        worker = threading.Thread(target=lambda: held.append(caller.get(URL)))
        worker.start()
        try:
            assert wait_until(lambda: v1.hits == 1)
            mesh.update(new)
            during = caller.get(URL)
        finally:
            release.set()
            worker.join(10)
        assert not worker.is_alive()
        first = held[0]
    else:
        assert isinstance(caller, AsyncCaller)
        client = caller.client

        async def go() -> tuple[Got, Got]:
            task = asyncio.ensure_future(client.get(URL))
            try:
                for _ in range(500):  # bounded: 5 s
                    if v1.hits == 1:
                        break
                    await asyncio.sleep(0.01)
                assert v1.hits == 1
                mesh.update(new)
                during = got_from(await client.get(URL))
            finally:
                release.set()
            return got_from(await task), during
        first, during = caller.run(go())

    assert (during.status, during.upstream) == (200, "v2")
    assert (first.status, first.upstream, first.body, first.attempts) == \
        (200, "v1", b"v1 retried", 2)
    assert (v1.hits, v2.hits) == (2, 1)
    # and from now on, everything goes to v2
    assert [g.upstream for g in caller.many(3, URL)] == ["v2"] * 3


def test_ejection_survives_a_config_push(
        mesh_config: MeshTestConfig, mesh_upstream: Callable[..., Upstream], build: Build,
        connect: Connect) -> None:
    policy = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 5m,
                       maxEjectionPercent: 50}
"""
    good = mesh_upstream("reviews", name="good")
    bad = mesh_upstream("reviews", respond(503), name="bad")
    mesh = build(policy)
    caller = connect(mesh)
    caller.many(4, URL)
    assert bad.hits == 1
    # a push that changes something else (a response header) keeps the ejection
    mesh.update(_config(mesh_config, policy, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    headers: {response: {set: {x-pushed: "yes"}}}
"""))
    seen = caller.many(6, URL)
    assert bad.hits == 1
    assert good.hits == 3 + 6
    assert all(g.status == 200 and g.headers.get("x-pushed") == "yes" for g in seen)
