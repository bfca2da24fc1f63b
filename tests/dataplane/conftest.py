"""Fixtures for data-path tests against real servers.

Upstreams and YAML come from the meshsdk pytest plugin (``mesh_upstream``,
``mesh_config``); the mesh under test is a plain production :class:`Mesh` built from
that configuration (``build``), so nothing of the plugin sits in the call path.
``mode`` runs a test once with the sync client and once with the async one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshsdk.mesh import Mesh
from meshsdk.testing.clock import FakeClock
from meshsdk.testing.sandbox import MeshTestConfig
from meshsdk.workload import Workload
from tests.dataplane.harness import AsyncCaller, Caller, SyncCaller

CLIENT = Workload("productpage-v1", "default", {"app": "productpage", "version": "v1"},
                  "bookinfo-productpage")

Build = Callable[..., Mesh]


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def build(mesh_config: MeshTestConfig) -> Iterator[Build]:
    """``build(*yaml, clock=None, seed=7, **mesh_options)``: add the YAML to the test's
    config and return a plain Mesh on it (workload productpage-v1), closed afterwards."""
    meshes: list[Mesh] = []

    def make(*documents: str, clock: FakeClock | None = None, seed: int = 7,
             **options: Any) -> Mesh:
        if documents:
            mesh_config.add(*documents)
        if clock is not None:
            options.update(clock=clock.now, sleep=clock.sleep, async_sleep=clock.async_sleep)
        mesh = Mesh(mesh_config.config(), CLIENT, rng=random.Random(seed), **options)
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        mesh.close()


@pytest.fixture
def connect(mode: str) -> Iterator[Callable[[Mesh], Caller]]:
    """``connect(mesh)``: a Caller using the sync or async client (per ``mode``)."""
    callers: list[Caller] = []

    def make(mesh: Mesh) -> Caller:
        caller: Caller = SyncCaller(mesh) if mode == "sync" else AsyncCaller(mesh)
        callers.append(caller)
        return caller

    yield make
    for caller in callers:
        caller.close()
