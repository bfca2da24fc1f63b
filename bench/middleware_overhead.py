"""Benchmark: what the mesh's inbound middleware adds to a hello-world endpoint.

    python bench/middleware_overhead.py                      # Flask, FastAPI, Django
    python bench/middleware_overhead.py --calls 1000 --rounds 1 --only flask
    python bench/middleware_overhead.py --runs 5    # five runs, then each ratio's median

For each framework one server process serves three copies of the same app side by
side, ``/bare/hello`` and ``/control/hello`` without the mesh and ``/mesh/hello`` behind
the framework's meshsdk integration, so the variants share the server, its settings
and the client:

* Flask: gunicorn (gthread worker, 1 process, 4 threads), ``MeshFlask``;
* FastAPI: uvicorn (1 process, h11), ``meshsdk_fastapi.MeshMiddleware``;
* Django: gunicorn as for Flask, ``meshsdk_django.middleware.MeshMiddleware``.

The meshed app's workload has an ALLOW AuthorizationPolicy (so every request runs the
authorization engine), PERMISSIVE mTLS (the benchmark speaks plaintext, as TLS would
cost both variants alike) and telemetry on as Istio's defaults have it: 1% of traces
through OpenTelemetry's SDK (a batch processor whose exporter drops everything) and
Istio's four request metrics in meshsdk's Prometheus sink (what ``mesh.serve_metrics``
exposes). No access log. Why that sink: it is what meshsdk offers for Istio's metrics
(same names and labels, aggregated in a dict, written out only when scraped). With no
OTel SDK installed the OTel metrics API is a no-op and costs about the same; with the
OTel SDK, its synchronous instruments clean and hash Istio's 25 labels on each of four
measurements per request, about 180 us more per request in process, more than this
target's whole budget (see docs/performance.md; ``bench/inbound_micro.py --metrics
otel-sdk`` measures it).

The client is one ``httpx.Client`` making sequential keep-alive GETs on 127.0.0.1.
Variants are interleaved in blocks (``calls / blocks`` per block, the order rotating)
after a warm-up, so drift on a shared machine hits all alike; each call is timed with
``time.perf_counter_ns``.

Why a control and why rounds: ``control`` is a second bare app, so its ratio to ``bare``
is what two identical variants differ by. Within one server process that was up to 8% at
p50 on this machine (why is not known; one process's memory layout and where its threads
run are candidates), as much as the target; so a run is ``--rounds`` server processes
one after another (three by default), pooled. Reported: median and p99 latency per
variant over all rounds, the ratio of the medians (target: at most 1.10x) with a 90%
bootstrap interval over all blocks (``bench/ratios.py``), the control's ratio, and each
round's two ratios on their own.

``--telemetry off`` runs the meshed app without telemetry, to separate what the
security checks cost from what recording costs.

The client runs on the first CPU and each server process on the others
(``bench/placement.py``): left to the scheduler, the two shared a CPU in some server
processes and not in others, and Django's ratio moved 1.05 - 1.17x between runs of
the same code; kept apart, 1.086 - 1.092x. ``--no-pin`` leaves them to the scheduler.

``--runs N`` repeats the whole measurement N times and ends with each framework's
pooled ratio per run, how many runs met the target and the median (the controls'
too): on this machine one run's Flask or Django ratio moved by several hundredths
between runs of the same code, so a ratio near the target needs several to be read.

Not a test (pytest only collects ``tests/``). Exit status: 0, or 1 with ``--strict``
when a target is missed, 2 when a server cannot be started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: bench.ratios and meshsdk importable
    sys.path.insert(0, str(ROOT))

from bench.placement import pin_client, server_preexec, split_cpus  # noqa: E402
from bench.ratios import percentile, ratio_interval, summarise_runs  # noqa: E402

TARGET_P50_RATIO = 1.10
FRAMEWORKS = ("flask", "fastapi", "django")
SERVERS = {"flask": "gunicorn gthread", "fastapi": "uvicorn", "django": "gunicorn gthread"}
WORKLOAD_LABELS = {"app": "hello", "version": "v1"}
MESH_YAML = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: hello-readers, namespace: default}
spec:
  selector: {matchLabels: {app: hello}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET], paths: [/mesh/*]}}]
"""


# --- the server process (python bench/middleware_overhead.py --serve FRAMEWORK) ------------


def make_mesh(config_dir: str) -> Any:
    """The meshed app's mesh: the policy above, Istio's default telemetry (see docstring;
    none at all when ``MESH_BENCH_TELEMETRY=off``, to see what security alone costs).
    ``MESH_BENCH_SEED`` seeds telemetry's random source (sampling draws, ids), so that
    ``bench/inbound_micro.py --instructions`` counts repeat."""
    import random

    from bench.otel_noop import dropping_tracer_provider
    from meshsdk import Mesh, Workload
    from meshsdk.telemetry import PrometheusMetrics, Telemetry

    workload = Workload("hello-v1", "default", WORKLOAD_LABELS, "hello")
    if os.environ.get("MESH_BENCH_TELEMETRY") == "off":
        return Mesh.from_config(config_dir, workload, telemetry=False)
    seed = os.environ.get("MESH_BENCH_SEED")
    telemetry = Telemetry(workload, tracer_provider=dropping_tracer_provider(), otel_metrics=False,
                          metrics=[PrometheusMetrics()],
                          rng=random.Random(int(seed)) if seed else None)
    return Mesh.from_config(config_dir, workload, telemetry=telemetry)


VARIANTS = ("bare", "control", "mesh")
"""``control`` is a second bare app, built and served like ``bare``: what the two differ
by is this machine's noise, not the mesh's cost (see the module docstring)."""


def by_prefix(apps: dict[str, Any]) -> dict[str, Any]:
    """Each variant's app under the first five characters of its paths (/bare, /cont,
    /mesh): one dict lookup routes a request, the same cost for every variant."""
    return {f"/{name}/"[:5]: app for name, app in apps.items()}


def dispatch(apps: dict[str, Any]) -> Callable[..., Any]:
    """One WSGI app: ``/<variant>/...`` to that variant's app (``apps`` by name)."""
    routes = by_prefix(apps)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return routes[environ.get("PATH_INFO", "")[:5]](environ, start_response)
    return app


def flask_app(config_dir: str) -> Any:
    from flask import Flask
    from meshsdk_flask import MeshFlask

    def build(prefix: str) -> Flask:
        app = Flask(f"hello-{prefix}")

        @app.get(f"/{prefix}/hello")
        def hello() -> str:
            return "hello"
        return app

    apps = {name: build(name) for name in VARIANTS}
    MeshFlask(apps["mesh"], mesh=make_mesh(config_dir))
    return dispatch(apps)


def fastapi_app(config_dir: str) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse
    from meshsdk_fastapi import MeshMiddleware

    apps: dict[str, Any] = {}
    for name in VARIANTS:
        apps[name] = FastAPI()

        @apps[name].get(f"/{name}/hello", response_class=PlainTextResponse)
        async def hello() -> str:
            return "hello"
    apps["mesh"] = MeshMiddleware(apps["mesh"], mesh=make_mesh(config_dir))
    routes = by_prefix(apps)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await routes[str(scope.get("path", ""))[:5]](scope, receive, send)
    return app


def django_app(config_dir: str) -> Any:
    """Three Django stacks in one process: the same settings, the meshed one with the
    middleware (Django has one settings object, so the middleware is built by hand
    around a second handler instead of listed in MIDDLEWARE)."""
    import django
    from django.conf import settings
    from django.http import HttpResponse
    from django.urls import path

    def hello(request: Any, variant: str) -> HttpResponse:
        return HttpResponse("hello", content_type="text/plain")

    settings.configure(
        DEBUG=False, ALLOWED_HOSTS=["*"], SECRET_KEY="bench", ROOT_URLCONF=__name__,
        INSTALLED_APPS=["meshsdk_django"], MIDDLEWARE=[], DATABASES={},
        MESHSDK={"CONFIG": config_dir, "WORKLOAD": {
            "name": "hello-v1", "namespace": "default", "labels": WORKLOAD_LABELS,
            "service_account": "hello"}})
    # One pattern for the three variants, so that each resolves its path at the same
    # cost. With a pattern per variant, Django tries them in order, and the last one
    # listed paid for two failed matches that bare did not (about 10,000 instructions
    # per request, bench/inbound_micro.py --instructions --framework django).
    globals()["urlpatterns"] = [path("<str:variant>/hello", hello)]
    django.setup()
    import meshsdk_django
    from django.core.handlers.wsgi import WSGIHandler
    from meshsdk_django.middleware import MeshMiddleware

    meshsdk_django.get_runtime().mesh.close()  # the bench's telemetry instead
    meshsdk_django._runtime = meshsdk_django.conf.MeshRuntime(make_mesh(config_dir))

    class MeshedHandler(WSGIHandler):  # type: ignore[misc]
        def load_middleware(self, is_async: bool = False) -> None:
            super().load_middleware(is_async)
            self._middleware_chain = MeshMiddleware(self._middleware_chain)

    return dispatch({"bare": WSGIHandler(), "control": WSGIHandler(), "mesh": MeshedHandler()})


def serve(framework: str, port: int, config_dir: str) -> None:
    """Run the framework's server in this process until terminated."""
    if framework == "fastapi":
        import uvicorn
        uvicorn.run(fastapi_app(config_dir), host="127.0.0.1", port=port,
                    log_level="warning", access_log=False, lifespan="off", http="h11")
        return
    from gunicorn.app.base import BaseApplication

    build = flask_app if framework == "flask" else django_app

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {"bind": f"127.0.0.1:{port}", "workers": 1, "threads": 4,
                               "worker_class": "gthread", "loglevel": "warning",
                               "keepalive": 60, "control_socket_disable": True}.items():
                if key in self.cfg.settings:  # older gunicorns lack some
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return build(config_dir)

    Server().run()


# --- the driver ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(framework: str, config_dir: str, log: Path, telemetry: str,
                 split: tuple[set[int], set[int]] | None = None
                 ) -> tuple[subprocess.Popen[bytes], int] | None:
    """Start the server process and wait (bounded) until every variant answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")]),
           "MESH_BENCH_TELEMETRY": telemetry}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--serve", framework,
                                 "--port", str(port), "--config", config_dir],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True,
                                preexec_fn=server_preexec(split))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ok = all(httpx.get(f"http://127.0.0.1:{port}/{v}/hello", timeout=1).status_code
                     == 200 for v in ("bare", "mesh"))
        except httpx.HTTPError:
            ok = False
        if ok:
            return proc, port
        time.sleep(0.1)
    stop(proc)
    return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's process group (gunicorn's workers too), kill if needed."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def timed_calls(client: httpx.Client, url: str, n: int, out: list[int]) -> int:
    """``n`` sequential GETs, each timed into ``out``; returns how many did not answer 200."""
    get, clock, errors = client.get, time.perf_counter_ns, 0
    for _ in range(n):
        start = clock()
        r = get(url)
        out.append(clock() - start)
        if r.status_code != 200:
            errors += 1
    return errors


Blocks = dict[str, list[list[int]]]
"""Each variant's blocks of per-call latencies (nanoseconds), in the order they ran."""


def measure(port: int, calls: int, blocks: int, warmup: int) -> tuple[Blocks, int]:
    """One round on one server process: interleaved blocks of every variant on one
    keep-alive client, the order rotating so that each variant goes first, second and
    last equally often. Returns the blocks and how many calls did not answer 200."""
    blocks_of: Blocks = {variant: [] for variant in VARIANTS}
    errors = 0
    per_block = max(1, calls // blocks)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for variant in VARIANTS:
            timed_calls(client, f"/{variant}/hello", warmup, [])
        for block in range(blocks):
            k = block % len(VARIANTS)
            for variant in VARIANTS[k:] + VARIANTS[:k]:
                out: list[int] = []
                errors += timed_calls(client, f"/{variant}/hello", per_block, out)
                blocks_of[variant].append(out)
    return blocks_of, errors


def p50_ratio(blocks_of: Blocks, variant: str) -> float:
    """p50(variant) / p50(bare) over all the given blocks."""
    def p50(name: str) -> float:
        return percentile(sorted(x for block in blocks_of[name] for x in block), 50)
    return p50(variant) / p50("bare")


def summarize(framework: str, rounds: Sequence[Blocks], errors: int) -> dict[str, Any]:
    """Pool the rounds: p50/p99 per variant over every call, the mesh's and the
    control's p50 ratio to bare, the ratio's bootstrap interval over all blocks, and
    each round's ratios on their own."""
    pooled: Blocks = {v: [b for r in rounds for b in r[v]] for v in VARIANTS}
    result: dict[str, Any] = {"framework": framework, "errors": errors}
    for variant, blocks in pooled.items():
        values = sorted(x for block in blocks for x in block)
        result[variant] = (percentile(values, 50), percentile(values, 99), len(values))
    result["ratio"] = result["mesh"][0] / result["bare"][0]
    result["control"] = result["control"][0] / result["bare"][0]
    result["interval"] = ratio_interval(pooled["bare"], pooled["mesh"])
    result["rounds"] = [(p50_ratio(r, "mesh"), p50_ratio(r, "control")) for r in rounds]
    return result


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for name in ("flask", "fastapi", "starlette", "django", "gunicorn", "uvicorn"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{name} {version(name)}")
    return ", ".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2400,
                        help="timed calls per variant, framework and round (default 2400)")
    parser.add_argument("--blocks", type=int, default=12, help="blocks per round (default 12)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="server processes per framework, one after another (default 3)")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--only", action="append", choices=FRAMEWORKS, default=[])
    parser.add_argument("--telemetry", choices=("istio", "off"), default="istio",
                        help="the meshed app's telemetry: Istio's defaults (default) or "
                             "none (what the security checks alone cost)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a ratio misses the target (in any run)")
    parser.add_argument("--no-pin", action="store_true",
                        help="leave client and servers to the scheduler (default: the "
                             "client on the first CPU, the servers on the others)")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole measurement N times (default 1) and end "
                             "with each framework's median ratio over the runs")
    parser.add_argument("--serve", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.config)
        return 0
    if min(args.calls, args.blocks, args.rounds) < 1:
        parser.error("--calls, --blocks and --rounds must be at least 1")
    if not 1 <= args.runs <= 20:
        parser.error("need 1 <= --runs <= 20")
    args.split = None if args.no_pin else split_cpus()
    args.placement = pin_client(args.split)
    frameworks = args.only or list(FRAMEWORKS)
    command = " ".join(["python", "bench/middleware_overhead.py",
                        *(argv if argv is not None else sys.argv[1:])])
    print(f"$ {command}")
    runs: list[dict[str, tuple[float, float | None]]] = []
    missed = False
    for run in range(args.runs):
        if args.runs > 1:
            print(f"\n=== run {run + 1} of {args.runs}", flush=True)
        results = measure_all(frameworks, args)
        if results is None:
            return 2
        missed |= report(results, args)
        runs.append({label: pair for r in results for label, pair in (
            (r["framework"], (r["ratio"], TARGET_P50_RATIO)),
            (f"{r['framework']} ctl", (r["control"], None)))})
    if args.runs > 1:
        summarise_runs(runs)
    return 1 if args.strict and missed else 0


def measure_all(frameworks: Sequence[str], args: argparse.Namespace
                ) -> list[dict[str, Any]] | None:
    """One run: every framework's rounds, each in a fresh server process; None when a
    server did not start (its log is printed)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        (Path(tmp) / "policy.yaml").write_text(MESH_YAML, encoding="utf-8")
        for framework in frameworks:
            rounds: list[Blocks] = []
            errors = 0
            for _ in range(args.rounds):
                log = Path(tmp) / f"{framework}.log"
                started = start_server(framework, tmp, log, args.telemetry, args.split)
                if started is None:
                    print(f"{framework}: the server did not start:\n"
                          f"{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
                    return None
                proc, port = started
                try:
                    blocks_of, failed = measure(port, args.calls, args.blocks, args.warmup)
                finally:
                    stop(proc)
                rounds.append(blocks_of)
                errors += failed
            results.append(summarize(framework, rounds, errors))
    return results


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> bool:
    """Print one run's table; whether a framework missed the target."""
    print(f"meshsdk inbound middleware overhead: {args.rounds} rounds (a fresh server "
          f"process each) of {args.calls} sequential keep-alive GETs per variant in "
          f"{args.blocks} interleaved blocks, after {args.warmup} warm-up calls")
    print(f"  Python {platform.python_version()}, {versions()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}; {args.placement}")
    print("  meshed: ALLOW policy checked, PERMISSIVE, " + (
        "metrics (Prometheus sink), 1% traces (OTel SDK)" if args.telemetry == "istio"
        else "telemetry off"))
    print("  control: a second bare app; its ratio to bare is this run's noise floor\n")
    print(f"{'framework':<9} {'server':<17} {'bare p50':>9} {'mesh p50':>9} {'bare p99':>9} "
          f"{'mesh p99':>9} {'+p50 us':>8} {'ratio':>6} {'90% interval':>13} {'control':>8}  "
          f"{'target':<10} result")
    missed = False
    for r in results:
        bare, mesh = r["bare"], r["mesh"]
        ok = r["ratio"] <= TARGET_P50_RATIO
        missed |= not ok
        print(f"{r['framework']:<9} {SERVERS[r['framework']]:<17} {bare[0]:>9.1f} "
              f"{mesh[0]:>9.1f} {bare[1]:>9.1f} {mesh[1]:>9.1f} {mesh[0] - bare[0]:>+8.1f} "
              f"{r['ratio']:>5.2f}x {r['interval'][0]:>6.2f}-{r['interval'][1]:.2f} "
              f"{r['control']:>7.2f}x  <= {TARGET_P50_RATIO:.2f}x    {'PASS' if ok else 'MISS'}")
    print("(latencies in microseconds, client-side, per call, pooled over the rounds)")
    print("each round's mesh / bare (control / bare) p50 ratio:")
    for r in results:
        print(f"  {r['framework']:<9} " + ", ".join(
            f"{mesh:.2f}x ({control:.2f}x)" for mesh, control in r["rounds"]))
    if any(r["errors"] for r in results):
        print("\nERRORS: some calls did not answer 200; the numbers above are suspect.")
    return missed

if __name__ == "__main__":
    raise SystemExit(main())
