"""The sync and async httpx drivers for the conformance table (and other tests)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from meshsdk.config.resource import Config
from meshsdk.mesh import Mesh
from meshsdk.testing.conformance import Call, Seen
from meshsdk.workload import Workload

CLIENT = Workload("productpage-v1", "default", {"app": "productpage", "version": "v1"},
                  "bookinfo-productpage")


def sync_driver(config: Config, calls: Sequence[Call]) -> list[Seen]:
    mesh = Mesh(config, CLIENT, rng=random.Random(7))
    out: list[Seen] = []
    try:
        with mesh.client() as client:
            for call in calls:
                r = client.request(call.method, call.url, headers=dict(call.headers),
                                   content=call.body or None)
                out.append(Seen(r.status_code, {k.lower(): v for k, v in r.headers.items()},
                                r.content, r.extensions["meshsdk"].response_flags))
    finally:
        mesh.close()
    return out


def async_driver(config: Config, calls: Sequence[Call]) -> list[Seen]:
    async def run() -> list[Seen]:
        mesh = Mesh(config, CLIENT, rng=random.Random(7))
        out: list[Seen] = []
        try:
            async with mesh.async_client() as client:
                for call in calls:
                    r = await client.request(call.method, call.url, headers=dict(call.headers),
                                             content=call.body or None)
                    out.append(Seen(r.status_code, {k.lower(): v for k, v in r.headers.items()},
                                    r.content, r.extensions["meshsdk"].response_flags))
                # let background mirrors finish on this loop
                await asyncio.sleep(0.05)
        finally:
            mesh.close()
        return out
    return asyncio.run(run())


DRIVERS = {"sync": sync_driver, "async": async_driver}
