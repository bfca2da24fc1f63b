"""pytest plugin: test your app's resilience against a real embedded mesh.

Installed with meshsdk (entry point ``pytest11``: ``meshsdk``), so these fixtures are
available in every test once meshsdk is installed; ``-p no:meshsdk`` turns them off.
See ``docs/testing.md``.

==================  ===========================================================================
fixture             what
==================  ===========================================================================
``mesh_upstream``   ``mesh_upstream("reviews", behaviour=..., labels={"version": "v1"},
                    port=80)``: start a real server on 127.0.0.1 as an endpoint of service
                    ``reviews`` (namespace ``default``); returns the
                    :class:`~meshsdk.testing.upstream.Upstream` (``.hits``,
                    ``.requests``). Stopped after the test.
``mesh_config``     the test's :class:`~meshsdk.testing.sandbox.MeshTestConfig`:
                    ``.add(yaml, ...)`` for VirtualServices, DestinationRules...;
                    ``.build(workload=..., clock=mesh_clock)`` for more meshes;
                    ``.yaml()`` to print the whole configuration.
``mesh``            a :class:`~meshsdk.mesh.Mesh` (workload ``mesh_workload``) that follows
                    ``mesh_config`` live: upstreams, YAML and faults added during the test
                    apply to it at once. Closed after the test.
``mesh_faults``     :class:`~meshsdk.testing.sandbox.MeshFaults`: ``abort``, ``delay``,
                    ``reset``, ``refuse``, ``unavailable``, ``clear``, ``injected``.
``mesh_clock``      a :class:`~meshsdk.testing.clock.FakeClock`:
                    ``Mesh(..., clock=mesh_clock.now, sleep=mesh_clock.sleep,
                    async_sleep=mesh_clock.async_sleep)`` or
                    ``mesh_config.build(clock=mesh_clock)``.
``make_mesh``       ``make_mesh(*yaml, workload=None, clock=None, **options)``: add YAML to
                    ``mesh_config`` and build another mesh on it.
``mesh_workload``   the calling workload of ``mesh`` (override it in your conftest).
``mesh_seed``       the seed of the meshes' random numbers (override to vary).
==================  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import pytest

from meshsdk.testing.clock import FakeClock
from meshsdk.testing.sandbox import (
    DEFAULT_SEED,
    DEFAULT_WORKLOAD,
    FixtureMesh,
    MeshFaults,
    MeshTestConfig,
)
from meshsdk.testing.upstream import Behaviour, Upstream
from meshsdk.workload import Workload


class UpstreamFactory(Protocol):
    """The type of the ``mesh_upstream`` fixture."""

    def __call__(self, service: str, behaviour: Behaviour | None = None, *,
                 labels: Mapping[str, str] | None = None, port: int | None = None,
                 namespace: str | None = None, name: str | None = None,
                 protocol: str | None = None) -> Upstream: ...


@pytest.fixture
def mesh_workload() -> Workload:
    """The workload the ``mesh`` fixture calls from (``test-client`` in ``default``)."""
    return DEFAULT_WORKLOAD


@pytest.fixture
def mesh_seed() -> int:
    """Seed of the random numbers of the test's meshes (splits, balancers, faults)."""
    return DEFAULT_SEED


@pytest.fixture
def mesh_config(mesh_workload: Workload, mesh_seed: int) -> Iterator[MeshTestConfig]:
    """The test's mesh configuration: registered upstreams, added YAML, faults."""
    env = MeshTestConfig(workload=mesh_workload, seed=mesh_seed)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def mesh_upstream(mesh_config: MeshTestConfig) -> UpstreamFactory:
    """``mesh_upstream(service, behaviour=None, *, labels=None, port=None, ...)``:
    a real server registered as an endpoint of ``service``; stopped after the test."""
    return mesh_config.upstream


@pytest.fixture
def mesh(mesh_config: MeshTestConfig) -> FixtureMesh:
    """A mesh following ``mesh_config`` live; closed (with its sync clients) after the test."""
    return mesh_config.build()


@pytest.fixture
def mesh_faults(mesh_config: MeshTestConfig) -> MeshFaults:
    """One-line fault injection into the test's meshes: ``abort``, ``delay``, ``reset``,
    ``refuse``, ``unavailable``, ``clear``."""
    return MeshFaults(mesh_config)


@pytest.fixture
def mesh_clock() -> FakeClock:
    """A fake monotonic clock; its ``sleep``/``async_sleep`` advance it without waiting."""
    return FakeClock()


@pytest.fixture
def make_mesh(mesh_config: MeshTestConfig) -> Callable[..., FixtureMesh]:
    """``make_mesh(*yaml_docs, workload=None, clock=None, **mesh_options)``: the YAML is
    added to ``mesh_config`` and a new mesh is built on it (closed after the test)."""
    def make(*documents: str, workload: Workload | None = None, **options: Any) -> FixtureMesh:
        if documents:
            mesh_config.add(*documents)
        return mesh_config.build(workload, **options)
    return make
