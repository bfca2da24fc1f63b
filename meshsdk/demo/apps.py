"""The bookinfo apps of the demo: tiny stdlib HTTP servers, one process each.

    python -m meshsdk.demo.apps reviews v2 --port 19083 --connect 127.0.0.1:19090
    python -m meshsdk.demo.apps reviews v2 --port 19083 --config examples/bookinfo

Each app embeds its *own* mesh as the workload ``<app>-<version>`` (labels ``app`` and
``version``), fed by the config service at ``--connect`` (``Mesh.connect``: it follows
every config version the service pushes, and caches the last one in ``--cache-dir``),
or loaded once from files with ``--config``. It makes every outbound call
through ``mesh.client()``: productpage calls details and reviews, reviews v2 and v3
call ratings, as in Istio's bookinfo. The ``end-user`` header is forwarded so
header-based routes see the original user, and the caller's remaining time
(``x-envoy-expected-rq-timeout-ms``) caps the app's own outbound calls.

Every app also answers a small admin API, used by the demo to break and heal one
instance on purpose:

* ``GET /healthz``: 200 ``ok``.
* ``GET /admin/stats``: ``{"app", "version", "name", "port", "pid", "mode", "every",
  "requests", "failures"}``; requests and failures count application calls since the last
  mode change.
* ``POST /admin/mode?m=ok|fail|flaky&every=N``: answer normally, fail every call
  with 503, or fail every N-th call with 503 (N defaults to 3). Counters restart.

The process exits by itself when its parent goes away, so a demo killed hard
never leaves a listener behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from meshsdk import ConfigError, Mesh, Workload, deadline_scope
from meshsdk.deadline import timeout_from_headers

APPS = ("productpage", "details", "reviews", "ratings")
FORWARDED = ("end-user", "x-request-id")
"""Headers an app copies from its inbound request to its outbound calls."""

SERVICE_URL = "http://{}:9080"

_DETAILS = {"type": "paperback", "pages": 200, "publisher": "PublisherA",
            "language": "English", "author": "William Shakespeare", "year": 1595,
            "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}
_REVIEWS = (("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick "
             "humour is refreshing!"),
            ("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth "
             "when compared to other plays by Shakespeare."))
_RATINGS = {"Reviewer1": 5, "Reviewer2": 4}
_STAR_COLOR = {"v2": "black", "v3": "red"}


class Counters:
    """The admin state of one app: its failure mode and what it answered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.mode = "ok"
        self.every = 3
        self.requests = 0
        self.failures = 0

    def set_mode(self, mode: str, every: int) -> None:
        with self._lock:
            self.mode, self.every = mode, max(every, 1)
            self.requests = self.failures = 0

    def next_fails(self) -> bool:
        """Count one application request; True if it must fail."""
        with self._lock:
            self.requests += 1
            fail = self.mode == "fail" or (self.mode == "flaky"
                                           and self.requests % self.every == 0)
            if fail:
                self.failures += 1
            return fail

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self.mode, "every": self.every, "requests": self.requests,
                    "failures": self.failures}


class App:
    """One bookinfo workload: its handler logic and its embedded mesh."""

    def __init__(self, app: str, version: str, name: str, port: int, mesh: Mesh) -> None:
        self.app, self.version, self.name, self.port = app, version, name, port
        self.mesh = mesh
        self.client = mesh.client()
        self.counters = Counters()

    def close(self) -> None:
        self.client.close()
        self.mesh.close()

    # -- outbound --------------------------------------------------------------------

    def fetch(self, service: str, path: str, inbound: dict[str, str]) -> tuple[int, Any]:
        """GET a bookinfo service through this app's mesh: (status, JSON body or text)."""
        headers = {k: inbound[k] for k in FORWARDED if k in inbound}
        try:
            with deadline_scope(timeout_from_headers(inbound)):
                response = self.client.get(SERVICE_URL.format(service) + path, headers=headers)
        except httpx.HTTPError as exc:
            return 503, f"{service} unreachable: {exc}"
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    # -- application routes --------------------------------------------------------------

    def handle(self, path: str, inbound: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The application answer for ``path`` (admin paths are handled before)."""
        parts = [p for p in path.split("/") if p]
        item = parts[1] if len(parts) > 1 else "0"
        if self.app == "productpage":
            if parts and parts[0] not in ("productpage", ""):
                return 404, {"error": f"no such page: {path}"}
            d_status, details = self.fetch("details", f"/details/{item}", inbound)
            r_status, reviews = self.fetch("reviews", f"/reviews/{item}", inbound)
            return 200, {"productpage": self.version, "user": inbound.get("end-user"),
                         "details": details if d_status == 200
                         else {"error": f"details answered {d_status}"},
                         "reviews": reviews if r_status == 200
                         else {"error": f"reviews answered {r_status}"}}
        if not parts or parts[0] != self.app:
            return 404, {"error": f"no such resource: {path}"}
        if self.app == "details":
            return 200, {"id": item, "version": self.version, **_DETAILS}
        if self.app == "ratings":
            return 200, {"id": item, "version": self.version, "ratings": _RATINGS}
        return self._reviews(item, inbound)

    def _reviews(self, item: str, inbound: dict[str, str]) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"id": item, "version": self.version, "name": self.name}
        reviews: list[dict[str, Any]] = [{"reviewer": who, "text": text}
                                         for who, text in _REVIEWS]
        color = _STAR_COLOR.get(self.version)
        if color is not None:
            status, ratings = self.fetch("ratings", f"/ratings/{item}", inbound)
            if status == 200 and isinstance(ratings, dict):
                stars = ratings.get("ratings", {})
                for review in reviews:
                    review["rating"] = {"stars": stars.get(review["reviewer"]), "color": color}
                body["stars"] = [r["rating"]["stars"] for r in reviews]
            else:
                body["ratings_error"] = f"ratings answered {status}"
        body["reviews"] = reviews
        return 200, body


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Head and body go out in one write, without Nagle's delay: with two small
        # writes the body waits for the client's delayed ACK (~40 ms per call).
        disable_nagle_algorithm = True
        wbufsize = 64 * 1024
        server_version = f"bookinfo-{app.app}/{app.version}"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _reply(self, status: int, body: Any, extra: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json" if not isinstance(body, bytes)
                             else "text/plain")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-served-by", f"{app.name}@{app.port}")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _dispatch(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/healthz":
                self._reply(200, b"ok")
                return
            if url.path == "/admin/stats":
                self._reply(200, {"app": app.app, "version": app.version, "name": app.name,
                                  "port": app.port, "pid": os.getpid(),
                                  **app.counters.stats()})
                return
            if url.path == "/admin/mode" and self.command == "POST":
                mode = query.get("m", ["ok"])[0]
                if mode not in ("ok", "fail", "flaky"):
                    self._reply(400, {"error": f"unknown mode {mode!r}: ok, fail or flaky"})
                    return
                every = query.get("every", ["3"])[0]
                app.counters.set_mode(mode, int(every) if every.isdigit() else 3)
                self._reply(200, app.counters.stats())
                return
            inbound = {k.lower(): v for k, v in self.headers.items()}
            if app.counters.next_fails():
                self._reply(503, f"{app.name} failing on purpose\n".encode(),
                            {"x-demo-failure": "1"})
                return
            status, body = app.handle(url.path, inbound)
            self._reply(status, body)

        do_GET = do_POST = do_HEAD = _dispatch

    return Handler


def _watch_parent(parent: int, stop: Callable[[], None]) -> None:
    """Exit when the process that started us is gone (we were re-parented)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            stop()
            os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshsdk.demo.apps",
                                     description="One bookinfo app with its own embedded mesh.")
    parser.add_argument("app", choices=APPS)
    parser.add_argument("version", help="the workload's version label, e.g. v1")
    parser.add_argument("--port", type=int, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--connect", metavar="HOST:PORT",
                        help="the config service feeding this app's mesh (Mesh.connect)")
    source.add_argument("--config", help="the mesh config (file or directory), loaded once")
    parser.add_argument("--cache-dir", help="with --connect: where the mesh caches its config")
    parser.add_argument("--wait", type=float, default=20.0,
                        help="with --connect: seconds to wait for a first config")
    parser.add_argument("--name", help="workload name (default: <app>-<version>)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    name = args.name or f"{args.app}-{args.version}"
    workload = Workload(name, "default", {"app": args.app, "version": args.version},
                        service_account=f"bookinfo-{args.app}")
    if args.connect:
        mesh = Mesh.connect(args.connect, workload, cache_dir=args.cache_dir, wait=args.wait)
        status = mesh.status()
        if status.source is None:
            print(f"{name}: no config from the config service at {args.connect} within "
                  f"{args.wait:.0f}s: {status.last_error}", file=sys.stderr)
            mesh.close()
            return 2
    else:
        try:
            mesh = Mesh.from_config(args.config, workload=workload)
        except ConfigError as exc:
            print(f"{name}: mesh config {args.config}: {exc}", file=sys.stderr)
            return 2
    app = App(args.app, args.version, name, args.port, mesh)
    try:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(app))
    except OSError as exc:
        print(f"{name}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        app.close()
        return 3
    server.daemon_threads = True
    threading.Thread(target=_watch_parent, args=(os.getppid(), server.server_close),
                     name="watch-parent", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
