"""Micro-benchmark: the core inbound path's cost per request, in one process.

    python bench/inbound_micro.py                 # WSGI and ASGI, Istio-default telemetry
    python bench/inbound_micro.py --telemetry off
    python bench/inbound_micro.py --profile wsgi  # cProfile of the WSGI loop
    python bench/inbound_micro.py --metrics otel-sdk --traces api   # other telemetry setups
    python bench/inbound_micro.py --framework flask   # the real framework stacks (also
                                                      # fastapi, django), plugin included
    python bench/inbound_micro.py --instructions --framework flask   # counted by valgrind
    python bench/inbound_micro.py --instructions --before-response --framework django
    python bench/inbound_micro.py --phases --framework django   # before vs after the response

Calls :class:`~meshsdk.inbound.wsgi.MeshWSGIMiddleware` and
:class:`~meshsdk.inbound.asgi.MeshASGIMiddleware` around a trivial app with a fake
environ/scope (as gunicorn and uvicorn build them), with the same mesh as
``bench/middleware_overhead.py`` (ALLOW policy, 1% traces through the OTel SDK,
Prometheus sink), and prints microseconds per request with and without the mesh.
No server, no sockets: what remains is the mesh's own per-request work. Not a test.

``--framework`` runs the same in-process loop through the apps of
``bench/middleware_overhead.py`` instead (Flask with ``MeshFlask``, FastAPI with
``meshsdk_fastapi.MeshMiddleware``, Django with its middleware), ``/bare/hello`` against
``/mesh/hello``: the core plus what each plugin and framework adds around it.

``--metrics`` picks where Istio's metrics go: ``prometheus`` (meshsdk's own sink, the
bench's choice), ``otel-api`` (the OpenTelemetry API with no SDK installed: no-op
instruments) or ``otel-sdk`` (the OTel SDK with an in-memory reader). ``--traces``
picks ``sdk`` (a TracerProvider with a batch processor dropping spans, the bench's
choice) or ``api`` (no SDK: the mesh still propagates a trace context).

``--instructions`` counts instead of timing: the same loops under valgrind's callgrind,
instructions per request for the bare and the meshed path (the run of ``calls + 200``
requests minus the run of 200, after the same warm-up, so start-up cancels out; what is
alive after the warm-up is frozen out of the collector's way), with telemetry's random
source, Python's and string hashing seeded. CPU time on this shared machine moves by 10%
between runs; the count repeats closely, so it tells whether a change made the mesh's
own work smaller. It weighs no cache misses and no kernel time. Two valgrind runs per
path, one to two minutes each here with the default 1,000 requests; needs Debian's
``valgrind``.

``--before-response`` (with ``--instructions``) counts only the part of each request
before its response goes out: for WSGI the app call and the body's first chunk, which
a WSGI server writes at once; for ASGI (FastAPI) everything up to the send of the last
body message. That is the part a client waits for;
``bench/work_placement.py`` shows that server work after the response (the rest of the
body and ``close()``, where the mesh records the request) adds nothing to a sequential
client's latency here, and work before it adds more than its own time. How: the loop
runs that part inside ``functools.reduce`` (which nothing else on these paths calls) and
callgrind collects only inside that function (``--toggle-collect``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import io
import itertools
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callgrind
import middleware_overhead as overhead  # the bench's mesh and policy


def make_mesh(config_dir: str, metrics: str, traces: str) -> Any:
    """The bench's mesh, or one with another metrics sink / tracer provider."""
    if (metrics, traces) == ("prometheus", "sdk") or os.environ.get(
            "MESH_BENCH_TELEMETRY") == "off":
        return overhead.make_mesh(config_dir)
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from bench.otel_noop import dropping_tracer_provider
    from meshsdk import Mesh, Workload
    from meshsdk.telemetry import PrometheusMetrics, Telemetry

    tracer_provider: Any
    if traces == "sdk":
        tracer_provider = dropping_tracer_provider()
    else:  # the API's no-op tracer: a fresh provider object nobody configured
        from opentelemetry.trace import NoOpTracerProvider
        tracer_provider = NoOpTracerProvider()
    options: dict[str, Any] = {"otel_metrics": metrics != "prometheus",
                               "metrics": [PrometheusMetrics()] if metrics == "prometheus"
                               else []}
    if metrics == "otel-sdk":
        options["meter_provider"] = MeterProvider(metric_readers=[InMemoryMetricReader()])
    elif metrics == "otel-api":
        from opentelemetry.metrics import NoOpMeterProvider
        options["meter_provider"] = NoOpMeterProvider()
    workload = Workload("hello-v1", "default", overhead.WORKLOAD_LABELS, "hello")
    telemetry = Telemetry(workload, tracer_provider=tracer_provider, **options)
    return Mesh.from_config(config_dir, workload, telemetry=telemetry)


def environ(path: str = "/mesh/hello") -> dict[str, Any]:
    """A gunicorn-like environ for ``GET path`` from an httpx client."""
    return {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
            "QUERY_STRING": "", "RAW_URI": path, "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "50000", "wsgi.url_scheme": "http",
            "HTTP_HOST": "127.0.0.1:8000", "HTTP_ACCEPT": "*/*",
            "HTTP_ACCEPT_ENCODING": "gzip, deflate", "HTTP_CONNECTION": "keep-alive",
            "HTTP_USER_AGENT": "python-httpx/0.28.1", "wsgi.input": io.BytesIO()}


def scope(path: str = "/mesh/hello") -> dict[str, Any]:
    """A uvicorn-like scope for the same request."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
            "scheme": "http", "method": "GET", "root_path": "", "path": path,
            "raw_path": path.encode("ascii"), "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*"),
                        (b"accept-encoding", b"gzip, deflate"),
                        (b"connection", b"keep-alive"),
                        (b"user-agent", b"python-httpx/0.28.1")]}


def wsgi_app(env: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
    """A WSGI server's ``start_response`` that writes nothing (the loops' server)."""
    return None


def wsgi_loop(app: Any, n: int, path: str = "/mesh/hello", split: bool = False) -> None:
    """``n`` requests the way a WSGI server drives an app (iterate, then close).
    ``split``: the part before the response (the call and the first chunk) runs inside
    ``functools.reduce``, for ``--before-response`` to count alone."""
    for _ in range(n):
        env = environ(path)
        if split:
            body, chunks = functools.reduce(lambda _a, _b: _before(app, env, start_response),
                                            (None, None))
        else:
            body = app(env, start_response)
            chunks = iter(body)
        for _chunk in chunks:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()


def _before(app: Any, env: dict[str, Any], start_response: Any) -> tuple[Any, Any]:
    """Call the app and take its first chunk: what a WSGI server does before it writes
    the response. Returns the body and an iterator over what is left of it."""
    body = app(env, start_response)
    chunks = iter(body)
    first = next(chunks, None)
    return body, (chunks if first is None else itertools.chain((first,), chunks))


def asgi_loop(app: Any, n: int, path: str = "/mesh/hello", split: bool = False) -> None:
    """``n`` requests on one event loop, as an ASGI server calls the app. ``split``:
    the part before the response (up to the send of the last body message) runs
    inside ``functools.reduce``, for ``--before-response`` to count alone; the app
    waits in that send until the loop is run again for the rest."""
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    if not split:
        async def send(message: Any) -> None:
            return None

        async def run() -> None:
            for _ in range(n):
                await app(scope(path), receive, send)
        asyncio.run(run())
        return
    loop = asyncio.new_event_loop()
    try:
        for _ in range(n):
            sent: asyncio.Future[None] = loop.create_future()
            resume: asyncio.Future[None] = loop.create_future()

            async def held_send(message: Any, sent: asyncio.Future[None] = sent,
                                resume: asyncio.Future[None] = resume) -> None:
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    sent.set_result(None)  # the response is out: stop counting here
                    await resume

            task = loop.create_task(app(scope(path), receive, held_send))
            functools.reduce(lambda _a, _b: loop.run_until_complete(sent), (None, None))
            resume.set_result(None)
            loop.run_until_complete(task)
    finally:
        loop.close()


def per_call(loop: Callable[[Any, int], None], app: Any, n: int, rounds: int = 5) -> float:
    """Best-of-``rounds`` CPU microseconds per request (process CPU time: on a shared
    machine less disturbed by other processes than wall time)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        loop(app, n)
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def phase_times(app: Any, path: str, n: int) -> tuple[float, float]:
    """Wall microseconds per request (``n`` of them) before the response (the app call
    and its body: what a WSGI server does before it has written the response) and
    after it (``close()``, where Django fires its request-finished signal and the
    mesh records the request)."""
    before = after = 0
    clock = time.perf_counter_ns
    for _ in range(n):
        env = environ(path)
        t0 = clock()
        body = app(env, start_response)
        for _chunk in body:
            pass
        t1 = clock()
        body.close()
        t2 = clock()
        before += t1 - t0
        after += t2 - t1
    return before / n / 1000, after / n / 1000


def phases(name: str, calls: int, rounds: int = 15) -> int:
    """The ``--phases`` run: where each request's time falls, bare and meshed, the two
    interleaved over ``rounds`` (medians). Why: behind gunicorn's gthread worker the
    work after the response is not free (the connection waits for ``close()``), and
    Django does far more of its own there than Flask (see docs/performance.md)."""
    with tempfile.TemporaryDirectory(prefix="mesh-micro-") as tmp:
        (Path(tmp) / "policy.yaml").write_text(overhead.MESH_YAML, encoding="utf-8")
        app = {"flask": overhead.flask_app, "django": overhead.django_app}[name](tmp)
        paths = ("/bare/hello", "/mesh/hello")
        for path in paths:
            phase_times(app, path, 500)
        seen: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
        for _ in range(rounds):
            for path in paths:
                seen[path].append(phase_times(app, path, calls))
    print(f"in-process {name} hello world, wall microseconds per request before the "
          f"response and in close(), medians of {rounds} rounds x {calls}")
    print(f"{'path':<12} {'before':>8} {'after':>8}")
    for path, runs in seen.items():
        print(f"{path:<12} {statistics.median(r[0] for r in runs):>8.1f} "
              f"{statistics.median(r[1] for r in runs):>8.1f}")
    return 0


def frameworks(name: str, calls: int, profile: bool) -> int:
    """The ``--framework`` run: middleware_overhead's app in process, bare vs mesh."""
    with tempfile.TemporaryDirectory(prefix="mesh-micro-") as tmp:
        (Path(tmp) / "policy.yaml").write_text(overhead.MESH_YAML, encoding="utf-8")
        build = {"flask": overhead.flask_app, "fastapi": overhead.fastapi_app,
                 "django": overhead.django_app}[name]
        app = build(tmp)
        loop = asgi_loop if name == "fastapi" else wsgi_loop

        def bare(app: Any, n: int) -> None:
            loop(app, n, "/bare/hello")

        def meshed(app: Any, n: int) -> None:
            loop(app, n, "/mesh/hello")

        bare(app, 500)
        meshed(app, 500)
        if profile:
            profiler = cProfile.Profile()
            profiler.runcall(meshed, app, calls)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(60)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            return 0
        bare_us, mesh_us = per_call(bare, app, calls), per_call(meshed, app, calls)
    print(f"in-process {name} hello world, bench/middleware_overhead.py's mesh, "
          f"CPU per request, best of 5 x {calls}")
    print(f"{'path':<8} {'bare us':>8} {'mesh us':>8} {'added us':>9}")
    print(f"{name:<8} {bare_us:>8.1f} {mesh_us:>8.1f} {mesh_us - bare_us:>9.1f}")
    return 0


INSTRUCTION_BASE = 200
"""Requests in the shorter of the two counted runs (see ``--instructions``)."""


def run_loop(framework: str, path: str, calls: int, split: bool = False) -> None:
    """The counted part of ``--instructions``: one process, warm-up then ``calls`` requests
    (``split``: see :func:`wsgi_loop`)."""
    random.seed(0)
    with tempfile.TemporaryDirectory(prefix="mesh-micro-") as tmp:
        (Path(tmp) / "policy.yaml").write_text(overhead.MESH_YAML, encoding="utf-8")
        if framework in ("wsgi", "asgi"):
            from meshsdk.inbound.asgi import MeshASGIMiddleware
            from meshsdk.inbound.wsgi import MeshWSGIMiddleware
            mesh = overhead.make_mesh(tmp)
            wrap = MeshWSGIMiddleware if framework == "wsgi" else MeshASGIMiddleware
            plain: Any = wsgi_app if framework == "wsgi" else asgi_app
            app: Any = wrap(plain, mesh) if path.startswith("/mesh/") else plain
        else:
            build = {"flask": overhead.flask_app, "fastapi": overhead.fastapi_app,
                     "django": overhead.django_app}[framework]
            app = build(tmp)
        if framework in ("asgi", "fastapi"):
            def loop(app: Any, n: int, path: str) -> None:
                asgi_loop(app, n, path, split)
        else:
            def loop(app: Any, n: int, path: str) -> None:
                wsgi_loop(app, n, path, split)
        loop(app, 300, path)
        # what exists now is never garbage: frozen, a full collection falling inside
        # one run and not the other (tens of millions of instructions over the
        # frameworks' modules) cannot swing the count; young collections still count
        gc.collect()
        gc.freeze()
        loop(app, calls, path)


def count_instructions(framework: str, calls: int, before_response: bool = False) -> int:
    """``--instructions``: bare and meshed instructions per request, printed
    (``before_response``: only the part before the response goes out)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (Debian: apt-get install -y valgrind)",
              file=sys.stderr)
        return 2
    # Python's own allocator, as in production (callgrind needs no PYTHONMALLOC=malloc,
    # which would weigh every small allocation as a glibc malloc)
    env = {**os.environ, "PYTHONHASHSEED": "0", "MESH_BENCH_SEED": "1"}
    name = "wsgi" if framework == "core" else framework  # core: the WSGI adapter

    def total(path: str, n: int, workdir: str) -> int:
        script = [__file__, "--run-loop", name, path, str(n)]
        if before_response:
            script.append("--split")
        return callgrind.total(valgrind, script, env, Path(workdir) / f"callgrind.{n}",
                               f"{name} {path}", options=toggle)

    toggle = ["--toggle-collect=functools_reduce"] if before_response else []

    counts = {}
    with tempfile.TemporaryDirectory(prefix="mesh-micro-ir-") as tmp:
        for path in ("/bare/hello", "/mesh/hello"):
            more = total(path, INSTRUCTION_BASE + calls, tmp)
            counts[path] = (more - total(path, INSTRUCTION_BASE, tmp)) / calls
    bare, meshed = counts["/bare/hello"], counts["/mesh/hello"]
    part = " before the response" if before_response else ""
    print(f"in-process {name}, bench/middleware_overhead.py's mesh, instructions per request"
          f"{part} (callgrind, {calls} requests), Python {sys.version.split()[0]}")
    print(f"{'path':<8} {'bare':>10} {'mesh':>10} {'added':>10} {'ratio':>6}")
    print(f"{name:<8} {bare:>10,.0f} {meshed:>10,.0f} {meshed - bare:>+10,.0f} "
          f"{meshed / bare:>5.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=None,
                        help="requests per measurement (default 5000; 1000 counted)")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under valgrind instead of timing")
    parser.add_argument("--before-response", action="store_true",
                        help="with --instructions: count only the part of each request "
                             "before its response goes out")
    parser.add_argument("--run-loop", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--telemetry", choices=("istio", "off"), default="istio")
    parser.add_argument("--profile", choices=("wsgi", "asgi", "framework"),
                        help="cProfile the WSGI or ASGI loop, or the --framework app")
    parser.add_argument("--metrics", choices=("prometheus", "otel-api", "otel-sdk"),
                        default="prometheus")
    parser.add_argument("--traces", choices=("sdk", "api"), default="sdk")
    parser.add_argument("--framework", choices=("core", "flask", "fastapi", "django"),
                        default="core")
    parser.add_argument("--phases", action="store_true",
                        help="with --framework flask or django: time before the response "
                             "and in close(), bare and meshed")
    args = parser.parse_args()
    if args.run_loop:
        framework, path, calls = args.run_loop
        run_loop(framework, path, int(calls), args.split)
        return 0
    if args.before_response and not args.instructions:
        parser.error("--before-response counts instructions: give --instructions too")
    os.environ["MESH_BENCH_TELEMETRY"] = args.telemetry
    if args.instructions:
        return count_instructions(args.framework, args.calls or 1000, args.before_response)
    if args.phases:
        if args.framework not in ("flask", "django"):
            parser.error("--phases times the WSGI frameworks: --framework flask or django")
        return phases(args.framework, args.calls or 1000)
    args.calls = args.calls or 5000
    if args.framework != "core":
        return frameworks(args.framework, args.calls, args.profile is not None)
    from meshsdk.inbound.asgi import MeshASGIMiddleware
    from meshsdk.inbound.wsgi import MeshWSGIMiddleware

    with tempfile.TemporaryDirectory(prefix="mesh-micro-") as tmp:
        (Path(tmp) / "policy.yaml").write_text(overhead.MESH_YAML, encoding="utf-8")
        mesh = make_mesh(tmp, args.metrics, args.traces)
        try:
            wsgi = MeshWSGIMiddleware(wsgi_app, mesh)
            asgi = MeshASGIMiddleware(asgi_app, mesh)
            wsgi_loop(wsgi, 500)
            asgi_loop(asgi, 500)
            if args.profile:
                loop, app = ((wsgi_loop, wsgi) if args.profile == "wsgi"
                             else (asgi_loop, asgi))
                profiler = cProfile.Profile()
                profiler.runcall(loop, app, args.calls)
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
                return 0
            rows = [("wsgi", per_call(wsgi_loop, wsgi_app, args.calls),
                     per_call(wsgi_loop, wsgi, args.calls)),
                    ("asgi", per_call(asgi_loop, asgi_app, args.calls),
                     per_call(asgi_loop, asgi, args.calls))]
        finally:
            mesh.close()
    setup = (f"metrics {args.metrics}, traces {args.traces}" if args.telemetry == "istio"
             else "telemetry off")
    print(f"in-process inbound path, {setup}, CPU per request, best of 5 x {args.calls}")
    print(f"{'path':<5} {'bare us':>8} {'mesh us':>8} {'added us':>9}")
    for name, bare, meshed in rows:
        print(f"{name:<5} {bare:>8.1f} {meshed:>8.1f} {meshed - bare:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
