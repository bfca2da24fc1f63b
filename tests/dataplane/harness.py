"""Send calls through a mesh with its sync or its async client, the same way.

A :class:`Caller` hides which client runs: tests are written once and parametrized
over ``mode`` ("sync", "async"). The async caller keeps one event loop (an
``asyncio.Runner``) and one ``AsyncClient`` for its whole life, so connections are
reused exactly as in the sync case.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from meshsdk.mesh import Mesh
from meshsdk.transport.common import CallInfo

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Got:
    """What the caller saw of one call."""

    status: int
    flags: str            # Envoy's response flags, "-" for none
    attempts: int
    upstream: str | None  # the x-upstream header: which test server answered
    body: bytes
    info: CallInfo
    headers: dict[str, str]


def got_from(response: httpx.Response) -> Got:
    info: CallInfo = response.extensions["meshsdk"]
    return Got(response.status_code, info.response_flags, info.attempts,
               response.headers.get("x-upstream"), response.content, info,
               {k.lower(): v for k, v in response.headers.items()})


class Caller:
    """Calls through one mesh client; ``mode`` says which."""

    mode = ""

    def request(self, method: str, url: str, **kwargs: Any) -> Got:
        raise NotImplementedError

    def get(self, url: str, **kwargs: Any) -> Got:
        return self.request("GET", url, **kwargs)

    def many(self, n: int, url: str) -> list[Got]:
        """``n`` GETs one after the other."""
        return [self.get(url) for _ in range(n)]

    def close(self) -> None:
        raise NotImplementedError


class SyncCaller(Caller):
    mode = "sync"

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.client = mesh.client()

    def request(self, method: str, url: str, **kwargs: Any) -> Got:
        return got_from(self.client.request(method, url, **kwargs))

    def close(self) -> None:
        self.client.close()


class AsyncCaller(Caller):
    mode = "async"

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.runner = asyncio.Runner()
        self.client = mesh.async_client()

    def run(self, coro: Awaitable[T]) -> T:
        """Run a coroutine on this caller's loop (where its client lives)."""
        async def wrapper() -> T:
            return await coro
        return self.runner.run(wrapper())

    def request(self, method: str, url: str, **kwargs: Any) -> Got:
        async def go() -> Got:
            return got_from(await self.client.request(method, url, **kwargs))
        return self.run(go())

    def many(self, n: int, url: str) -> list[Got]:
        async def go() -> list[Got]:
            return [got_from(await self.client.get(url)) for _ in range(n)]
        return self.run(go())

    def gather(self, n: int, url: str, concurrency: int = 20) -> list[Got]:
        """``n`` GETs, ``concurrency`` at a time."""
        async def go() -> list[Got]:
            out: list[Got] = []
            for start in range(0, n, concurrency):
                batch = [self.client.get(url) for _ in range(min(concurrency, n - start))]
                out.extend(got_from(r) for r in await asyncio.gather(*batch))
            return out
        return self.run(go())

    def close(self) -> None:
        self.run(self.client.aclose())
        self.runner.close()


Connect = Callable[[Mesh], Caller]


def statuses(seen: Sequence[Got]) -> list[int]:
    return [g.status for g in seen]


def vs(route: str) -> str:
    """A VirtualService for reviews whose one route has ``route`` fields added."""
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews}}}}]
{route}
"""

