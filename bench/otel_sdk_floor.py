"""Benchmark: the floor OpenTelemetry's SDK puts under the telemetry-on column.

    python bench/otel_sdk_floor.py                  # 3,000 bare GETs, 3,000 SDK rounds
    python bench/otel_sdk_floor.py --calls 1000 --blocks 5

Why: ``sdk_overhead.py``'s telemetry column (issue 4: p50 <= 1.25x bare httpx) records
Istio's metrics through the OTel SDK. The SDK cleans and hashes every attribute of
every measurement in Python (``Measurement.__post_init__`` and ``_hash_attributes`` in
opentelemetry-sdk), and Istio's metrics carry about twenty-five labels on three
histograms per call. This script measures that work alone, in the same run as a bare
httpx call, so the part of the 1.25x budget it leaves to meshsdk is known.

What it measures, interleaved in blocks after a warm-up (``time.perf_counter_ns`` per
item; CPU by ``time.process_time`` per block):

* ``bare``: ``httpx.Client()`` GETs to nginx answering ``200 ok`` (as
  ``sdk_overhead.py``): latency per call and CPU per call;
* ``sdk``: the SDK's work for one mesh call: the measurement meshsdk's OTel sink
  queued for a real call of ``sdk_overhead.py``'s mesh (captured from one real call:
  its attributes, duration and sizes), applied as the sink's drainer applies it
  (three ``Histogram.record`` calls; the request counter is a dict increment in
  meshsdk's own code, since the counter is observable).

The floor: the drainer thread records while the caller waits on its socket with the
interpreter lock released, so at best the SDK's work hides in that wait (bare
latency minus bare CPU, both means). What does not fit lands on the caller:
``floor p50 = bare p50 + max(0, sdk - (bare mean - bare CPU))``. That assumes the
whole mesh, tracing, propagation and meshsdk's own telemetry cost nothing, and a
perfect overlap; it is a lower bound on the telemetry column, not an estimate of it.

Not a test. Needs nginx (Debian's ``nginx-light``), like ``sdk_overhead.py``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

from bench import sdk_overhead as sdk  # noqa: E402
from bench.ratios import percentile  # noqa: E402

TARGET = 1.25


def captured_measurement(port: int, provider: Any) -> tuple[Callable[[Any], None], Any, int]:
    """One real call of ``sdk_overhead.py``'s mesh with OTel metrics: the sink's
    ``_apply`` (what its drainer runs per queued measurement), the measurement queued
    for that call, and how many attributes it carries. Uses the sink's private
    ``_apply`` and queue, so a change there needs this script adapted."""
    from meshsdk.telemetry import Telemetry
    from meshsdk.telemetry.metrics import REQUEST_COUNT, OtelMetrics

    telemetry = Telemetry(sdk.WORKLOAD, meter_provider=provider)
    mesh = sdk.make_mesh(port, telemetry)
    [sink] = [s for s in telemetry._sinks if isinstance(s, OtelMetrics)]
    queued: list[Any] = []
    queue = sink._queue
    assert queue is not None, "the sink records deferred by default"
    apply = queue._handle
    queue._handle = queued.append
    with mesh.client() as client:
        response = client.get(sdk.MESH_URL)
        if response.status_code != 200:
            raise SystemExit(f"the mesh call answered {response.status_code}")
    telemetry.flush()
    queue._handle = apply
    if len(queued) != 1:
        raise SystemExit(f"expected one queued measurement, got {len(queued)}")
    item = queued[0]
    (_key, attributes), layout = item[0], item[1]
    histograms = sum(1 for m in layout.metrics if m != REQUEST_COUNT)
    print(f"captured: {len(attributes)} attributes, {histograms} histograms per call")
    mesh.close()
    return apply, item, len(attributes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000,
                        help="bare GETs, and SDK rounds, in all (default 3000)")
    parser.add_argument("--blocks", type=int, default=10, help="interleaved blocks")
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.calls < args.blocks:
        parser.error("need --blocks >= 1 and --calls >= --blocks")
    nginx = sdk.find_nginx()
    if nginx is None:
        print("nginx is not installed (Debian: apt-get install -y nginx-light)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="meshsdk-nginx-") as tmp:
        prefix = Path(tmp)
        port, tls_port = sdk.free_port(), sdk.free_port()
        sdk.write_mesh_credentials(prefix)
        conf = prefix / "nginx.conf"
        conf.write_text(sdk.nginx_conf(prefix, port, tls_port))
        proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf),
                                 "-e", str(prefix / "error.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            problem = sdk.wait_until_answering(proc, port)
            if problem is not None:
                print(problem, file=sys.stderr)
                return 2
            return measure(args, port)
        finally:
            sdk.stop(proc)


def measure(args: argparse.Namespace, port: int) -> int:
    otel = sdk.OtelSdk()
    try:
        apply, item, _ = captured_measurement(port, otel.meter_provider)
        per_block = args.calls // args.blocks
        bare_ns: list[int] = []
        sdk_ns: list[int] = []
        bare_cpu = 0.0
        clock = time.perf_counter_ns
        url = f"http://127.0.0.1:{port}/"
        with httpx.Client() as client:
            for _ in range(args.warmup):
                client.get(url)
                apply(item)
            for block in range(args.blocks):
                for kind in (("bare", "sdk") if block % 2 == 0 else ("sdk", "bare")):
                    gc.collect()
                    if kind == "bare":
                        c0 = time.process_time()
                        for _ in range(per_block):
                            t0 = clock()
                            r = client.get(url)
                            bare_ns.append(clock() - t0)
                            if r.status_code != 200:
                                raise SystemExit(f"nginx answered {r.status_code}")
                        bare_cpu += time.process_time() - c0
                    else:
                        for _ in range(per_block):
                            t0 = clock()
                            apply(item)
                            sdk_ns.append(clock() - t0)
    finally:
        otel.shutdown()
    bare_ns.sort()
    sdk_ns.sort()
    bare_p50 = percentile(bare_ns, 50)
    bare_cpu_us = bare_cpu / len(bare_ns) * 1e6
    sdk_p50 = percentile(sdk_ns, 50)
    bare_mean = sum(bare_ns) / len(bare_ns) / 1000
    wait = max(bare_mean - bare_cpu_us, 0.0)  # means: CPU per call is one
    floor = bare_p50 + max(0.0, sdk_p50 - wait)
    print(f"Python {platform.python_version()}, httpx {httpx.__version__}; "
          f"{len(bare_ns)} bare GETs and {len(sdk_ns)} SDK rounds in {args.blocks} blocks")
    print(f"bare httpx:  p50 {bare_p50:8.1f} us   mean {bare_mean:8.1f} us   "
          f"CPU {bare_cpu_us:8.1f} us/call   wait (mean - CPU) {wait:6.1f} us")
    print(f"OTel SDK:    p50 {sdk_p50:8.1f} us per call's measurements "
          f"({sdk_p50 / bare_p50:.2f}x of a bare call)")
    print(f"floor of the telemetry column: p50 >= {floor:.1f} us = {floor / bare_p50:.2f}x "
          f"bare (target <= {TARGET:.2f}x); budget left for meshsdk: "
          f"{(TARGET * bare_p50 - floor):+.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
