"""The ASGI adapter driven in process (no server: the scope is built here, as uvicorn
builds it): route naming through the adapter's ``route`` callback, only for spans that
record, with the scope as it was before the app's router changed it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshsdk.inbound.asgi import MeshASGIMiddleware, Scope
from meshsdk.mesh import Mesh
from meshsdk.testing.builders import config_from_yaml
from tests.inbound.conftest import REVIEWS, Capture
from tests.inbound.test_wsgi_in_process import HOST, assert_route_named, sampling


def scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "server": ("127.0.0.1", 9080), "client": ("127.0.0.1", 50000),
            "scheme": "http", "method": "GET", "root_path": "", "path": path,
            "raw_path": path.encode("ascii"), "query_string": b"",
            "headers": [(b"host", HOST.encode("ascii")), (b"accept", b"*/*")]}


async def routing_app(scope: Scope, receive: Any, send: Any) -> None:
    """An app whose router rewrites the scope in place, as Starlette's mounts do."""
    scope["root_path"] = "/mounted"
    scope["path"] = "/rewritten"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def drive(app: Any, request_scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(request_scope, receive, send))
    return sent


@pytest.mark.parametrize("percentage", [0, 100])
def test_the_route_callback_runs_only_for_spans_that_record(percentage: int) -> None:
    capture = Capture()
    asked: list[tuple[str, str]] = []

    def route_of(after: Scope, before: Scope) -> str | None:
        asked.append((after["path"], before["path"]))
        return "/reviews/{id}"

    mesh = Mesh(config_from_yaml(sampling(percentage)), REVIEWS,
                telemetry=capture.telemetry(REVIEWS))
    sent = drive(MeshASGIMiddleware(routing_app, mesh, route=route_of), scope("/reviews/7"))
    assert sent[0]["status"] == 200
    # the callback sees the scope the app changed and a copy from before the app ran
    assert asked == ([("/rewritten", "/reviews/7")] if percentage == 100 else [])
    assert_route_named(capture, percentage == 100, "/reviews/{id}")


def test_a_route_the_app_put_in_the_scope_wins_over_the_callback() -> None:
    capture = Capture()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        scope["meshsdk.route"] = "/from/app"
        await routing_app(scope, receive, send)

    mesh = Mesh(config_from_yaml(sampling(100)), REVIEWS,
                telemetry=capture.telemetry(REVIEWS))
    drive(MeshASGIMiddleware(app, mesh, route=lambda after, before: "/from/callback"),
          scope("/reviews/7"))
    [span] = capture.spans(1)
    assert span.name == "/from/app"
