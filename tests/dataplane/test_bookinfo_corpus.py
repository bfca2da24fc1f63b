"""Istio's own bookinfo samples, unchanged, behave as Istio documents them.

The samples come from ../shared/istio-corpus/bookinfo (read in place); the test
adds what Kubernetes would provide: ServiceEntries whose endpoints are real
upstreams on 127.0.0.1, one per version. Delays are recorded through the mesh's
injected sleep, so the 7 s delay sample runs instantly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsdk import Mesh, Workload
from meshsdk.testing.builders import config_from_yaml, service_entry
from meshsdk.testing.upstream import Upstream

CLIENT = Workload("productpage-v1", "default", {"app": "productpage", "version": "v1"})
VERSIONS = {"reviews": ("v1", "v2", "v3"), "ratings": ("v1",), "details": ("v1",)}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    ups = {f"{svc}-{v}": Upstream(f"{svc}-{v}").start()
           for svc, versions in VERSIONS.items() for v in versions}
    yield ups
    for up in ups.values():
        up.stop()


def _mesh(corpus_dir: Path, ups: dict[str, Upstream], sample: str,
          sleeps: list[float] | None = None, seed: int = 11) -> Mesh:
    services = [service_entry(svc, [(ups[f"{svc}-{v}"], {"version": v}) for v in versions],
                              port=9080)
                for svc, versions in VERSIONS.items()]
    book = corpus_dir / "bookinfo"
    docs = [*services, (book / "destination-rule-all.yaml").read_text(),
            (book / sample).read_text()]
    for up in ups.values():
        up.reset_hits()
    return Mesh(config_from_yaml(docs), CLIENT, rng=random.Random(seed),
                sleep=(sleeps.append if sleeps is not None else lambda s: None))


def _who(mesh: Mesh, url: str, n: int, **headers: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with mesh.client() as client:
        for _ in range(n):
            r = client.get(url, headers=headers)
            assert r.status_code == 200, r.text
            who = r.headers["x-upstream"]
            counts[who] = counts.get(who, 0) + 1
    return counts


@pytest.mark.parametrize(("sample", "shares"), [
    ("virtual-service-reviews-80-20.yaml", {"reviews-v1": 0.8, "reviews-v2": 0.2}),
    ("virtual-service-reviews-90-10.yaml", {"reviews-v1": 0.9, "reviews-v2": 0.1}),
    ("virtual-service-reviews-50-v3.yaml", {"reviews-v1": 0.5, "reviews-v3": 0.5}),
    ("virtual-service-reviews-v3.yaml", {"reviews-v3": 1.0}),
    ("virtual-service-all-v1.yaml", {"reviews-v1": 1.0}),
])
def test_weighted_samples_split_as_documented(corpus_dir: Path, upstreams: dict[str, Upstream],
                                              sample: str, shares: dict[str, float]) -> None:
    n = 2000
    counts = _who(_mesh(corpus_dir, upstreams, sample), "http://reviews:9080/reviews/0", n)
    assert set(counts) == set(shares)
    for who, share in shares.items():
        # binomial sd <= sqrt(0.25/2000) = 1.1 points; 4 points is over 3.5 sd
        assert abs(counts[who] / n - share) <= 0.04, counts


def test_jason_sees_v2_everyone_else_v3(corpus_dir: Path,
                                        upstreams: dict[str, Upstream]) -> None:
    mesh = _mesh(corpus_dir, upstreams, "virtual-service-reviews-jason-v2-v3.yaml")
    assert _who(mesh, "http://reviews:9080/", 50, **{"end-user": "jason"}) == {"reviews-v2": 50}
    assert _who(mesh, "http://reviews:9080/", 50, **{"end-user": "alice"}) == {"reviews-v3": 50}
    assert _who(mesh, "http://reviews:9080/", 10) == {"reviews-v3": 10}


def test_test_delay_delays_jason_by_seven_seconds(corpus_dir: Path,
                                                  upstreams: dict[str, Upstream]) -> None:
    sleeps: list[float] = []
    mesh = _mesh(corpus_dir, upstreams, "virtual-service-ratings-test-delay.yaml", sleeps)
    with mesh.client() as client:
        r = client.get("http://ratings:9080/ratings/0", headers={"end-user": "jason"})
        assert r.status_code == 200
        assert r.extensions["meshsdk"].response_flags == "DI"
        assert sleeps == [7.0]
        r = client.get("http://ratings:9080/ratings/0", headers={"end-user": "bob"})
        assert r.status_code == 200 and r.extensions["meshsdk"].response_flags == "-"
        assert sleeps == [7.0]
    assert upstreams["ratings-v1"].hits == 2


def test_test_abort_answers_jason_with_500(corpus_dir: Path,
                                           upstreams: dict[str, Upstream]) -> None:
    mesh = _mesh(corpus_dir, upstreams, "virtual-service-ratings-test-abort.yaml")
    with mesh.client() as client:
        for _ in range(20):
            r = client.get("http://ratings:9080/ratings/0", headers={"end-user": "jason"})
            assert r.status_code == 500
            assert r.text == "fault filter abort"
            assert r.extensions["meshsdk"].response_flags == "FI"
        assert upstreams["ratings-v1"].hits == 0
        assert client.get("http://ratings:9080/ratings/0").status_code == 200
    assert upstreams["ratings-v1"].hits == 1


def test_details_fault_injection_aborts_every_call_with_555(
        corpus_dir: Path, upstreams: dict[str, Upstream]) -> None:
    mesh = _mesh(corpus_dir, upstreams, "fault-injection-details-v1.yaml")

    async def run() -> list[int]:
        async with mesh.async_client() as client:
            return [(await client.get("http://details:9080/details/0")).status_code
                    for _ in range(10)]

    assert asyncio.run(run()) == [555] * 10
    assert upstreams["details-v1"].hits == 0
