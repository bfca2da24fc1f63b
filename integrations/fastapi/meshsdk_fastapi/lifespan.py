"""Lifespan hooks: make the mesh when the app starts, close it when the app stops.

    lifespan = MeshLifespan(lambda: Mesh.connect("127.0.0.1:15010", workload))
    app = FastAPI(lifespan=lifespan)
    app.add_middleware(MeshMiddleware, mesh=lifespan)

``Mesh.connect`` waits for the config service's first answer (bounded by its ``wait``),
so it runs in a worker thread and the event loop stays free; so does ``close``. The
factory may build anything that returns a :class:`~meshsdk.Mesh` (``Mesh.from_config``,
or a mesh with a workload identity and a metrics endpoint); ``on_close`` callbacks
(e.g. a metrics server's ``close``) run after the mesh is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from meshsdk.errors import UsageError
from meshsdk.mesh import Mesh

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


class MeshLifespan:
    """A lifespan context for Starlette/FastAPI that owns the app's mesh.

    Call it with the app (what ``FastAPI(lifespan=...)`` does); ``wrap`` runs another
    lifespan inside it (the mesh is up before that one starts and closed after it ends).
    """

    def __init__(self, factory: Callable[[], Mesh], *, wrap: Lifespan | None = None,
                 state_key: str = "mesh") -> None:
        self.factory = factory
        self.wrap = wrap
        self.state_key = state_key
        self.on_close: list[Callable[[], object]] = []
        self._mesh: Mesh | None = None

    @property
    def mesh(self) -> Mesh:
        """The mesh while the app runs (UsageError before startup and after shutdown)."""
        if self._mesh is None:
            raise UsageError("the mesh is made at application startup: this app has not "
                             "started (or has stopped); is its lifespan run by the server?")
        return self._mesh

    @property
    def started(self) -> bool:
        """Whether the app is between startup and shutdown."""
        return self._mesh is not None

    def __call__(self, app: Any) -> AbstractAsyncContextManager[Any]:
        return self._run(app)

    @asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[Any]:
        mesh = await asyncio.to_thread(self.factory)
        self._mesh = mesh
        state = getattr(app, "state", None)
        if state is not None:  # handlers find it as request.app.state.mesh
            setattr(state, self.state_key, mesh)
        try:
            if self.wrap is None:
                yield None
            else:
                async with self.wrap(app) as inner:
                    yield inner
        finally:
            self._mesh = None
            await asyncio.to_thread(self._close, mesh)

    def _close(self, mesh: Mesh) -> None:
        try:
            mesh.close()
        finally:
            for callback in reversed(self.on_close):
                callback()


__all__ = ["MeshLifespan"]
