"""meshsdk-flask end to end: examples/flask served by gunicorn over mesh mTLS.

The example service runs in its own gunicorn process (gthread worker) with the
mesh's rotating certificate (``meshsdk.inbound.servers.gunicorn_settings``); callers
are real meshes with their own certificates from the same CA. What the app recorded
is read from its Prometheus endpoint, its access log file and its span file (see
``tests/integrations/webapp_harness.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsdk.security.ca import MeshCA
from meshsdk.testing.upstream import Upstream, echo
from tests.integrations.webapp_harness import ROOT, MeshedAppContract, MeshWorld, python, running

COMMAND = [python(), "-m", "gunicorn", "-c", str(ROOT / "examples/flask/gunicorn.conf.py")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshWorld]:
    with Upstream("ratings", echo) as ratings:
        world = MeshWorld(Path(tmp_path_factory.mktemp("flask")), MeshCA.create(), ratings)
        try:
            with running(COMMAND, world):
                yield world
        finally:
            world.close()


class TestFlaskService(MeshedAppContract):
    """The contract, for Flask: the span is named after the URL rule."""

    ROUTE = "/reviews/<int:product_id>"
