"""Benchmark: instructions per outbound call, counted by valgrind (callgrind).

    python bench/instructions.py                    # bare httpx, mesh, mesh + telemetry
    python bench/instructions.py --calls 400 --variants bare,mesh
    python bench/instructions.py --variants bare,mesh --cache   # plus simulated L1 misses

Why: the latency benchmarks (``sdk_overhead.py``) cannot resolve a 10% target on a
shared two-core machine (the same code measured 1.06 - 1.34x in one day). An
instruction count repeats (see below) whatever else the machine does, so it tells whether
a change made the mesh's own work smaller. It is not latency: no network, no kernel
time outside this process, no cache misses weighed.

Each variant makes sequential GETs through an httpx client whose connection pool is
replaced by one that answers ``200 ok`` from memory (so bare httpx and the mesh take
their real code paths down to httpcore, and no socket is involved); the mesh is
``sdk_overhead.py``'s (80/20 split, header match, retries, timeout, LEAST_REQUEST,
outlier detection). Variants:

* ``bare``: ``httpx.Client()``;
* ``mesh``: ``mesh.client()``, telemetry off;
* ``mesh+tel``: telemetry on as Istio's defaults (1% of traces, trace context and
  ``x-request-id`` on every call) with no metrics sink: what telemetry itself costs;
* ``mesh+prom``: the same plus meshsdk's Prometheus sink;
* ``mesh+otel``: the same with Istio's metrics recorded through OpenTelemetry's SDK
  (``sdk_overhead.py``'s dropping meter provider; tracing as ``mesh+tel``). The SDK's
  work happens in the deferred drainer thread; callgrind counts every thread, and each
  run ends with ``telemetry.flush()``, so the count carries all of it;
* ``tel-only``: telemetry's own work for one call and nothing else (no httpx, no
  routing): ``Telemetry.outbound``, ``responded`` and ``finish`` with the Prometheus
  sink, on the head and verdict of a real ``mesh+prom`` call. The yardstick for
  trimming telemetry; its ratio to bare is meaningless and not printed.

Per call = (Ir of a run with ``calls + 50`` calls - Ir of a run with 50) / ``calls``,
after 100 warm-up calls in both, so start-up and imports cancel out. Random sources
and string hashing are seeded, so counts repeat closely: two runs a minute apart agreed
to a few hundred instructions per call, but runs hours apart on the same code moved by
up to about 10,000 (bare httpx: 756,927 - 766,273), and a run on a loaded machine can be
plainly wrong (what follows the clock: retry-budget windows and outlier-detection
intervals roll with time, and valgrind runs slowly). Compare variants from one run, or
differences well above 10,000; rerun anything surprising on a quiet machine. Needs valgrind
(Debian's ``valgrind``); one and a half to two minutes per variant. Not a test.

``--cache`` adds callgrind's cache simulation: first-level instruction (``I1``) and
data (``D1``, reads plus writes) misses per call, for the cache sizes valgrind reads
from this CPU. Why: the mesh's instructions take about three times as long each as
bare httpx's (see ``cache_pressure.py``), and these misses are where the difference
goes; a change that cuts instructions but touches more code or more objects can come
out slower. A simulation, not the CPU's own counters (this virtual machine exposes
none); compare variants from one run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callgrind

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("bare", "mesh", "mesh+tel", "mesh+prom", "mesh+otel", "tel-only")
BASE_CALLS = 50


def client_for(variant: str) -> tuple[Any, str]:
    """The httpx client of ``variant`` (its pool answering from memory) and its URL.
    For the mesh variants, ``client.mesh`` is the mesh (to flush its telemetry)."""
    import httpcore
    import httpx

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from bench import sdk_overhead as sdk
    from meshsdk.mesh import Mesh
    from meshsdk.telemetry import PrometheusMetrics, Telemetry
    from meshsdk.testing.builders import config_from_yaml

    class MemoryPool:
        """An httpcore pool that answers every request with nginx's ``200 ok``."""

        def handle_request(self, request: httpcore.Request) -> httpcore.Response:
            return httpcore.Response(200, headers=[(b"Server", b"nginx"),
                                                   (b"Content-Type", b"text/plain"),
                                                   (b"Content-Length", b"3")],
                                     content=sdk.BODY)

        def close(self) -> None:
            pass

    if variant == "bare":
        transport = httpx.HTTPTransport()
        transport._pool = MemoryPool()  # type: ignore[assignment]
        return httpx.Client(transport=transport), "http://127.0.0.1:8080/"
    # seeded random sources (and PYTHONHASHSEED, set by instructions()): the same
    # subsets picked and the same 1% of calls sampled in every run, so counts repeat
    telemetry: Any = False
    tel_rng = random.Random(2)
    if variant == "mesh+tel":
        telemetry = Telemetry(sdk.WORKLOAD, otel_metrics=False, rng=tel_rng)
    elif variant == "mesh+prom":
        telemetry = Telemetry(sdk.WORKLOAD, otel_metrics=False, metrics=[PrometheusMetrics()],
                              rng=tel_rng)
    elif variant == "mesh+otel":
        from bench.otel_noop import dropping_meter_provider
        telemetry = Telemetry(sdk.WORKLOAD, meter_provider=dropping_meter_provider(),
                              rng=tel_rng)
    mesh = Mesh(config_from_yaml(*sdk.mesh_config_yaml(8080)), sdk.WORKLOAD,
                telemetry=telemetry, rng=random.Random(1))
    client = mesh.client()
    client._transport._pool = MemoryPool()  # the mesh transport's own direct pool
    client.mesh = mesh
    return client, sdk.MESH_URL


def telemetry_only(calls: int) -> None:
    """``tel-only``: one real call through ``mesh+prom`` for a realistic verdict, then
    ``calls`` rounds of what telemetry does for a call, on a fresh copy of its head."""
    import httpx

    client, url = client_for("mesh+prom")
    mesh = client.mesh
    verdicts: list[Any] = []
    mesh.add_observer(lambda request, result, info: verdicts.append(result))
    client.get(url)
    result, telemetry = verdicts[0], mesh.telemetry
    head = [("host", "svc:8080"), ("accept", "*/*"), ("accept-encoding", "gzip, deflate"),
            ("connection", "keep-alive"), ("user-agent", f"python-httpx/{httpx.__version__}")]
    answer = httpx.Headers([(b"server", b"nginx"), (b"content-type", b"text/plain"),
                            (b"content-length", b"3")])
    for _ in range(100 + calls):
        call = telemetry.outbound("GET", "http", "svc:8080", "/", list(head))
        call.responded(result, answer, "HTTP/1.1")
        call.finish(3)  # the body, nginx's "ok\n"
    os._exit(0)


def run_calls(variant: str, calls: int) -> None:
    """The measured program: warm up, then ``calls`` GETs, then exit at once."""
    if variant == "tel-only":
        telemetry_only(calls)
    client, url = client_for(variant)
    for _ in range(100):
        client.get(url)
    for _ in range(calls):
        response = client.get(url)
        if response.status_code != 200:
            raise SystemExit(f"{variant}: answered {response.status_code}")
    mesh = getattr(client, "mesh", None)
    if mesh is not None and mesh.telemetry is not None:
        mesh.telemetry.flush()  # what the drainer has not recorded yet is counted too
    os._exit(0)  # no interpreter teardown in the count


def instructions(valgrind: str, variant: str, calls: int, workdir: Path,
                 cache: bool = False) -> dict[str, int]:
    """Event totals of one run: ``Ir`` and, with ``cache``, the simulated misses.
    Counting alone uses the C library's allocator (``PYTHONMALLOC=malloc``), as every
    count in docs/performance.md did; the cache simulation keeps Python's own, whose
    reuse of freed blocks is what a real process's caches see."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if not cache:
        env["PYTHONMALLOC"] = "malloc"
    return callgrind.totals(valgrind, [__file__, "--run", variant, "--calls", str(calls)],
                            env, workdir / f"callgrind.{variant}.{calls}", variant,
                            ["--cache-sim=yes"] if cache else ())


def l1_misses(events: dict[str, int]) -> tuple[int, int]:
    """(instruction, data) first-level cache misses among ``events``."""
    return events.get("I1mr", 0), events.get("D1mr", 0) + events.get("D1mw", 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200,
                        help="measured calls per variant (default 200)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--cache", action="store_true",
                        help="also simulate the caches: first-level instruction and data "
                             "misses per call (slower, about twice as long)")
    parser.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run_calls(args.run, args.calls)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or args.calls < 1:
        parser.error(f"unknown variants {unknown}" if unknown else "need --calls >= 1")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (Debian: apt-get install -y valgrind)",
              file=sys.stderr)
        return 2
    per_call: dict[str, float] = {}
    misses: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="meshsdk-ir-") as tmp:
        for variant in variants:
            base = instructions(valgrind, variant, BASE_CALLS, Path(tmp), args.cache)
            more = instructions(valgrind, variant, BASE_CALLS + args.calls, Path(tmp),
                                args.cache)
            per_call[variant] = (more["Ir"] - base["Ir"]) / args.calls
            (i0, d0), (i1, d1) = l1_misses(base), l1_misses(more)
            misses[variant] = ((i1 - i0) / args.calls, (d1 - d0) / args.calls)
    print(f"instructions per outbound call (callgrind; {args.calls} calls, pool answering "
          f"from memory), Python {sys.version.split()[0]}")
    bare = per_call.get("bare")
    header = f"{'variant':<10} {'instructions':>13} {'vs bare':>8} {'added':>10}"
    if args.cache:
        header += f" {'I1 misses':>10} {'D1 misses':>10}"
    print(header)
    for variant, count in per_call.items():
        ratio = added = "-"
        if bare and variant != "tel-only":
            ratio, added = f"{count / bare:.2f}x", f"{count - bare:+,.0f}"
        line = f"{variant:<10} {count:>13,.0f} {ratio:>8} {added:>10}"
        if args.cache:
            line += f" {misses[variant][0]:>10,.0f} {misses[variant][1]:>10,.0f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
