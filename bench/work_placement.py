"""Benchmark: what server CPU costs in client latency, before the response and after it.

    python bench/work_placement.py                 # 100 us of busy-wait, 10 blocks
    python bench/work_placement.py --busy-us 50 --blocks 16

Why: the inbound middleware's target is latency (``middleware_overhead.py``), and work
the mesh does before the app's response is sent and work it does after (recording the
request in ``close()``) do not weigh the same. This measures the exchange rate on this
machine with no mesh at all: one gunicorn process (gthread, 4 threads, as
``middleware_overhead.py`` runs Flask) serves a Flask hello world three ways,

* ``/bare/hello``: as is;
* ``/pre/hello``: after ``--busy-us`` of busy-waiting before the app is called;
* ``/post/hello``: with the same busy-wait in the body's ``close()``, which the server
  calls after the response was written;

and one keep-alive ``httpx.Client`` times sequential GETs, the variants interleaved in
blocks. Printed: p50 per variant and the p50 added per microsecond of busy-wait, before
and after. Not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.middleware_overhead import free_port, stop, timed_calls  # noqa: E402
from bench.ratios import percentile  # noqa: E402

VARIANTS = ("bare", "pre", "post")


def spin(seconds: float) -> None:
    """Busy-wait (CPU, holding the interpreter lock, as Python work does)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _SpinOnClose:
    """A response body whose ``close()`` busy-waits after closing the app's body."""

    def __init__(self, body: Iterable[bytes], seconds: float) -> None:
        self.body = body
        self.seconds = seconds

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
        spin(self.seconds)


def build(seconds: float) -> Callable[..., Any]:
    from flask import Flask

    app = Flask("placement")

    @app.get("/<variant>/hello")
    def hello(variant: str) -> str:
        return "hello"

    inner = app.wsgi_app

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/pre/"):
            spin(seconds)
        body = inner(environ, start_response)
        return _SpinOnClose(body, seconds) if path.startswith("/post/") else body
    return wsgi


def serve(port: int, seconds: float) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {"bind": f"127.0.0.1:{port}", "workers": 1, "threads": 4,
                               "worker_class": "gthread", "loglevel": "warning",
                               "keepalive": 60, "control_socket_disable": True}.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return build(seconds)

    Server().run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy-us", type=float, default=100.0)
    parser.add_argument("--calls", type=int, default=300, help="calls per variant and block")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seconds = args.busy_us / 1e6
    if args.serve:
        serve(args.serve, seconds)
        return 0
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--busy-us",
                             str(args.busy_us)], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/bare/hello", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    print("the server did not start", file=sys.stderr)
                    return 2
                time.sleep(0.1)
        samples: dict[str, list[int]] = {v: [] for v in VARIANTS}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for variant in VARIANTS:
                timed_calls(client, f"/{variant}/hello", args.calls, [])
            for block in range(args.blocks):
                order = VARIANTS if block % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    timed_calls(client, f"/{variant}/hello", args.calls, samples[variant])
    finally:
        stop(proc)
    p50 = {v: percentile(sorted(s), 50) for v, s in samples.items()}
    print(f"$ python bench/work_placement.py --busy-us {args.busy_us:g} --calls {args.calls} "
          f"--blocks {args.blocks}")
    print(f"Flask hello world under gunicorn gthread, {args.calls * args.blocks} sequential "
          f"keep-alive GETs per variant, {os.cpu_count()} CPUs")
    for variant in VARIANTS:
        print(f"  {variant:<5} p50 {p50[variant]:8.1f} us")
    for variant in ("pre", "post"):
        added = p50[variant] - p50["bare"]
        print(f"  busy-wait {variant + ' response':<14} adds {added:+7.1f} us p50: "
              f"{added / args.busy_us:.2f} us per us of server CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
