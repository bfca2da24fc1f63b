"""meshsdk-django end to end: examples/django under WSGI (gunicorn) and ASGI (uvicorn),
both over mesh mTLS.

The same Django project, configured by ``settings.MESHSDK`` and the
``meshsdk_django`` middleware, runs in its own server process, once per server
family; callers are real meshes with their own certificates from the same CA. What
the app recorded is read from its Prometheus endpoint, its access log file and its
span file (see ``tests/integrations/webapp_harness.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsdk.security.ca import MeshCA
from meshsdk.testing.upstream import Upstream, echo
from tests.integrations.webapp_harness import ROOT, MeshedAppContract, MeshWorld, python, running

EXAMPLE = ROOT / "examples" / "django"
COMMANDS = {
    "wsgi": [python(), "-m", "gunicorn", "-c", str(EXAMPLE / "gunicorn.conf.py")],
    "asgi": [python(), str(EXAMPLE / "serve_asgi.py")],
}


@pytest.fixture(scope="module", params=sorted(COMMANDS))
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[MeshWorld]:
    with Upstream("ratings", echo) as ratings:
        world = MeshWorld(Path(tmp_path_factory.mktemp(f"django-{request.param}")),
                          MeshCA.create(), ratings)
        try:
            with running(COMMANDS[request.param], world):
                yield world
        finally:
            world.close()


class TestDjangoService(MeshedAppContract):
    """The contract, for Django: the span is named after the URL pattern."""

    ROUTE = "/reviews/<int:product_id>"
