"""meshsdk-fastapi end to end: examples/fastapi served by uvicorn over mesh mTLS.

The example service runs in its own process: uvicorn with the mesh's rotating
certificate (``meshsdk.inbound.servers.uvicorn_config``), the mesh made by the
lifespan hooks at startup. Callers are real meshes with their own certificates from
the same CA. What the app recorded is read from its Prometheus endpoint, its access
log file and its span file (see ``tests/integrations/webapp_harness.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsdk.security.ca import MeshCA
from meshsdk.testing.upstream import Upstream, echo
from tests.integrations.webapp_harness import ROOT, MeshedAppContract, MeshWorld, python, running

COMMAND = [python(), str(ROOT / "examples/fastapi/app.py")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshWorld]:
    with Upstream("ratings", echo) as ratings:
        world = MeshWorld(Path(tmp_path_factory.mktemp("fastapi")), MeshCA.create(), ratings)
        try:
            with running(COMMAND, world):
                yield world
        finally:
            world.close()


class TestFastAPIService(MeshedAppContract):
    """The contract, for FastAPI: the span is named after the path template."""

    ROUTE = "/reviews/{product_id}"
