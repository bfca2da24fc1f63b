"""Benchmark: the config service with many subscribers, on this machine.

    python bench/controlplane_scale.py                     # 1,000 subscribers
    python bench/controlplane_scale.py --subscribers 200 --changes 3   # quicker

The server runs as ``python -m meshsdk.controlplane.server`` (its own process, so its
memory is its own) on a copy of ``examples/bookinfo``. Subscribers are raw ADS streams
(grpc.aio), spread over a few worker processes: each subscribes to every type and to
the snapshot marker with its own node, ACKs every response at once, and notes the wall
time at which it held a complete snapshot of a new version (the marker, with every
type it names held at the named version: when ``meshsdk``'s client applies). They do
not validate the documents: that cost is the client's, not the control plane's.

Measured:

1. **Push latency**: the canary weight in ``routes.yaml`` is edited ``--changes`` times;
   for each edit, the time from the write on disk to each subscriber's complete
   snapshot, ACKed (includes the store's 100 ms debounce; only VirtualServices and
   the marker travel). p50/p99/max over all subscribers
   and edits. Target: p99 <= 1 s with 1,000 subscribers.
2. **Memory**: the server's RSS before any subscriber and with all of them connected,
   per subscriber.
3. **Endpoint churn**: ``--churn-rate`` registrations per second for ``--churn-seconds``
   (AUTO_REGISTER streams, each held ``--churn-hold`` s (1), then closed; grace 1 s) while all
   subscribers stay connected; for each registration, the time until one watching
   subscriber per worker saw its WorkloadEntry (p50/p99), and how many were seen.

Every phase is bounded in time. Not a test; exit status 0 (1 with ``--strict`` when a
target is missed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import grpc  # type: ignore[import-untyped]  # noqa: E402
from envoy.service.discovery.v3 import (  # type: ignore[import-untyped]  # noqa: E402
    ads_pb2_grpc,
    discovery_pb2,
)

from meshsdk.controlplane.wire import (  # noqa: E402
    SNAPSHOT_TYPE_URL,
    TYPE_URLS,
    NodeIdentity,
    ack_request,
    read_snapshot,
    subscribe_request,
    type_url_of,
)

LATENCY_TARGET = 1.0   # seconds, p99 from disk write to the last subscriber's ACK
PHASE_TIMEOUT = 60.0   # seconds any phase may take before the benchmark gives up
ENTRIES = type_url_of("WorkloadEntry")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (KiB)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[index]


# --- a worker process: many streams on one event loop -------------------------------------


async def _subscriber(stub: Any, node: NodeIdentity, complete: dict[str, list[float]],
                      seen: dict[str, float] | None, stop: asyncio.Event) -> None:
    call = stub.StreamAggregatedResources()
    for i, url in enumerate((*TYPE_URLS.values(), SNAPSHOT_TYPE_URL)):
        await call.write(subscribe_request(url, node=node if i == 0 else None))
    held: dict[str, str] = {}
    reading = asyncio.ensure_future(call.read())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            finished, _ = await asyncio.wait({reading, stopping},
                                             return_when=asyncio.FIRST_COMPLETED)
            if stopping in finished:
                break
            response = reading.result()
            if response is grpc.aio.EOF:
                break
            reading = asyncio.ensure_future(call.read())
            if response.type_url == SNAPSHOT_TYPE_URL:
                # as meshsdk's client: the marker's ACK stands for the whole snapshot
                await call.write(ack_request(response.type_url, response.version_info,
                                             response.nonce))
                types = read_snapshot(response)
                if all(held.get(url) == v for url, v in types.items()):
                    complete.setdefault(response.version_info, []).append(time.time())
                continue
            held[response.type_url] = response.version_info
            if seen is not None and response.type_url == ENTRIES:
                now = time.time()
                for packed in response.resources:
                    resource = discovery_pb2.Resource()
                    packed.Unpack(resource)
                    seen.setdefault(resource.name, now)
    finally:
        reading.cancel()
        stopping.cancel()
        call.cancel()


async def _worker_main(index: int, address: str, count: int, commands: Any,
                       replies: Any, watch: bool = False) -> None:
    """``count`` subscribers; with ``watch`` they note when each WorkloadEntry first
    appears (the watcher process: few streams, so its own backlog does not delay what
    it measures)."""
    complete: dict[str, list[float]] = {}
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, count // 100))]
    tasks = []
    for i in range(count):
        node = NodeIdentity(ip=f"10.{index}.{i // 250}.{i % 250 + 1}",
                            name=f"sub-{index}-{i}", namespace="default",
                            labels={"app": "subscriber"})
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channels[i % len(channels)])
        tasks.append(asyncio.ensure_future(
            _subscriber(stub, node, complete, seen if watch else None, stop)))
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, commands.get)
        if command == "stats":
            replies.put({"complete": {k: list(v) for k, v in complete.items()},
                         "seen": dict(seen)})
        elif command == "stop":
            break
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    replies.put("stopped")


def _worker(index: int, address: str, count: int, commands: Any, replies: Any,
            watch: bool = False) -> None:
    asyncio.run(_worker_main(index, address, count, commands, replies, watch))


async def _churn_main(address: str, rate: float, seconds: float, hold: float,
                      registered: Any) -> None:
    """Open AUTO_REGISTER streams at ``rate``/s for ``seconds``, each held ``hold`` s."""
    channel = grpc.aio.insecure_channel(address)
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    names: dict[str, float] = {}

    async def one(i: int) -> None:
        node = NodeIdentity(ip=f"10.200.{i // 250}.{i % 250 + 1}", name=f"churn-{i}",
                            namespace="default", labels={"app": "churn"},
                            auto_register=True)
        call = stub.StreamAggregatedResources()
        names[f"default/auto-churn-{i}-10-200-{i // 250}-{i % 250 + 1}"] = time.time()
        await call.write(subscribe_request(ENTRIES, node=node))
        await asyncio.sleep(hold)
        call.cancel()

    tasks = []
    start = time.monotonic()
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks, return_exceptions=True)
    await channel.close()
    registered.put(names)


def _churn(address: str, rate: float, seconds: float, hold: float, registered: Any) -> None:
    asyncio.run(_churn_main(address, rate, seconds, hold, registered))


# --- the driver ---------------------------------------------------------------------------


class Workers:
    """The subscriber processes and their command queues."""

    def __init__(self, address: str, subscribers: int, processes: int,
                 watchers: int = 4) -> None:
        ctx = mp.get_context("spawn")
        self.processes = processes
        self.commands = [ctx.Queue() for _ in range(processes + 1)]
        self.replies = [ctx.Queue() for _ in range(processes + 1)]
        share = [subscribers // processes + (1 if i < subscribers % processes else 0)
                 for i in range(processes)]
        self.procs = [ctx.Process(target=_worker, args=(i, address, share[i],
                                                        self.commands[i], self.replies[i]),
                                  daemon=True) for i in range(processes)]
        # the watchers: a process of their own, beside the subscribers
        self.procs.append(ctx.Process(
            target=_worker, args=(processes, address, watchers, self.commands[-1],
                                  self.replies[-1], True), daemon=True))
        for p in self.procs:
            p.start()

    def stats(self) -> list[dict[str, Any]]:
        for q in self.commands:
            q.put("stats")
        return [q.get(timeout=PHASE_TIMEOUT) for q in self.replies]

    def completed(self, base: str) -> list[float]:
        """When each subscriber (not watcher) completed version ``base``."""
        return [t for s in self.stats()[:self.processes] for t in s["complete"].get(base, [])]

    def stop(self) -> None:
        for q in self.commands:
            q.put("stop")
        for q, p in zip(self.replies, self.procs, strict=True):
            with contextlib.suppress(Exception):
                q.get(timeout=20)
            p.join(10)
            if p.is_alive():
                p.kill()


def served_version(debug_port: int) -> str:
    import json
    with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/debug/config_dump",
                                timeout=5) as r:
        return str(json.load(r)["version"])


def wait(predicate: Any, what: str, timeout: float = PHASE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="subscriber processes")
    parser.add_argument("--changes", type=int, default=5, help="config edits to time")
    parser.add_argument("--churn-rate", type=float, default=100.0)
    parser.add_argument("--churn-seconds", type=float, default=5.0)
    parser.add_argument("--churn-hold", type=float, default=1.0,
                        help="seconds each registering stream stays connected")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="meshsdk-scale-"))
    config = tmp / "config"
    shutil.copytree(REPO_ROOT / "examples" / "bookinfo", config)
    routes = config / "routes.yaml"
    port, debug = free_port(), free_port()
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "meshsdk.controlplane.server", "--config", str(config),
         "--port", str(port), "--debug-port", str(debug), "--grace", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    workers: Workers | None = None
    print(f"# meshsdk config service scale, {args.subscribers} subscribers in "
          f"{args.processes} processes; {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"# command: python bench/controlplane_scale.py "
          f"{' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    missed = False
    try:
        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{debug}/readyz",
                                            timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False
        wait(ready, "the server", 30.0)
        time.sleep(1.0)  # let the server settle before reading its memory
        rss_before = rss_kib(server.pid)
        version = served_version(debug)

        started = time.monotonic()
        workers = Workers(f"127.0.0.1:{port}", args.subscribers, args.processes)
        wait(lambda: len(workers.completed(version)) >= args.subscribers,
             "every subscriber's first snapshot")
        connect_s = time.monotonic() - started
        time.sleep(1.0)
        rss_after = rss_kib(server.pid)
        per_sub = (rss_after - rss_before) / args.subscribers
        print(f"\nall {args.subscribers} subscribed and ACKed in {connect_s:.1f} s")
        print(f"server RSS: {rss_before / 1024:.1f} MiB idle, {rss_after / 1024:.1f} MiB "
              f"connected: {per_sub:.1f} KiB per subscriber")

        latencies: list[float] = []
        text = routes.read_text()
        for change in range(args.changes):
            old = served_version(debug)
            weights = (80, 20) if change % 2 else (70 + change, 30 - change)
            text = re.sub(r"weight: \d+\n(\s+- destination:.*\n(?:.*\n)*?\s+)weight: \d+",
                          lambda m, w=weights: f"weight: {w[0]}\n{m.group(1)}weight: {w[1]}",
                          text, count=1)
            written = time.time()
            routes.write_text(text)
            wait(lambda old=old: served_version(debug) != old, "the server to reload")
            new = served_version(debug)
            wait(lambda new=new: len(workers.completed(new)) >= args.subscribers,
                 f"every subscriber's ACK of change {change + 1}")
            times = workers.completed(new)
            latencies += [t - written for t in times]
            print(f"change {change + 1}: last ACK {max(times) - written:.3f} s after the "
                  f"write, median {statistics.median(times) - written:.3f} s")
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(f"\npush latency (disk write -> subscriber ACK, {len(latencies)} samples): "
              f"p50 {p50:.3f} s, p99 {p99:.3f} s, max {max(latencies):.3f} s "
              f"(target p99 <= {LATENCY_TARGET:.1f} s)")
        missed |= p99 > LATENCY_TARGET

        if args.churn_rate > 0 and args.churn_seconds > 0:
            ctx = mp.get_context("spawn")
            registered: Any = ctx.Queue()
            churn = ctx.Process(target=_churn, args=(f"127.0.0.1:{port}", args.churn_rate,
                                                     args.churn_seconds, args.churn_hold,
                                                     registered))
            churn.start()
            names: dict[str, float] = registered.get(timeout=args.churn_seconds + 60)
            churn.join(10)
            time.sleep(1.0)  # the last entries reach the watchers
            seen: dict[str, float] = {}
            for stat in workers.stats():
                for name, t in stat["seen"].items():
                    seen[name] = min(t, seen.get(name, t))
            delays = [seen[n] - t for n, t in names.items() if n in seen]
            print(f"\nendpoint churn: {len(names)} registrations at {args.churn_rate:.0f}/s "
                  f"for {args.churn_seconds:.0f} s (each held {args.churn_hold:g} s, grace 1 s); "
                  f"{len(delays)} seen by the watchers; registration -> watcher: "
                  f"p50 {percentile(delays, 50):.3f} s, p99 {percentile(delays, 99):.3f} s")
            print(f"server RSS after churn: {rss_kib(server.pid) / 1024:.1f} MiB")
    finally:
        if workers is not None:
            workers.stop()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
