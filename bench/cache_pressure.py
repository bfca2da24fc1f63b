"""Benchmark: what the mesh adds to a call when the CPU caches are cold, in memory.

    python bench/cache_pressure.py                  # evicting 0 and 8 MB between calls
    python bench/cache_pressure.py --evict-mb 0,4,8,32 --rounds 400

Why: ``instructions.py`` counts the mesh's work and ``sdk_overhead.py`` times it over a
real network, and the two disagree: the mesh adds about 8% of a bare call's
instructions, but 9 - 11% of its latency over loopback, and more than 20% in memory:
its work (some sixty-five calls of small Python functions over the route, cluster,
balancer and endpoint objects of the configuration) takes longer per instruction than
httpx's own. This benchmark measures that in memory, hot and with cold caches (as they
are after a network round trip): each call of a bare
``httpx.Client()`` and of ``mesh.client()`` (``instructions.py``'s clients, their
connection pool answering from memory, so no network and no kernel time) is made after
copying a buffer of N MB (not timed), which pushes most of what the previous call
left in the caches out. Each call is timed alone (``perf_counter_ns``); rounds
alternate which client goes first; the medians are printed.

A diagnostic, not a target: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import instructions  # the in-memory bare and mesh clients


def measure(evict_mb: int, rounds: int) -> tuple[float, float]:
    """Median microseconds per call of the bare and the mesh client, evicting
    ``evict_mb`` MB before every call."""
    buffer = bytearray(evict_mb * 1024 * 1024)
    bare, bare_url = instructions.client_for("bare")
    mesh, mesh_url = instructions.client_for("mesh")
    pairs = ((bare, bare_url), (mesh, mesh_url))
    for client, url in pairs:
        for _ in range(300):
            client.get(url)
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(rounds):
        order = (0, 1) if r % 2 else (1, 0)
        for i in order:
            client, url = pairs[i]
            if evict_mb:
                bytes(buffer)  # read and write evict_mb MB: the caches now hold that
            start = time.perf_counter_ns()
            client.get(url)
            times[i].append((time.perf_counter_ns() - start) / 1000)
    bare.close()
    mesh.close()
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evict-mb", default="0,8",
                        help="comma-separated buffer sizes in MB to copy before each call")
    parser.add_argument("--rounds", type=int, default=400,
                        help="calls per client and size (default 400)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.evict_mb.split(",") if s]
    except ValueError:
        parser.error(f"--evict-mb: whole numbers of MB, got {args.evict_mb!r}")
    if args.rounds < 1 or not sizes or min(sizes) < 0 or max(sizes) > 256:
        parser.error("need --rounds >= 1 and --evict-mb sizes from 0 to 256")
    print(f"in-memory calls, median of {args.rounds} per client and size "
          f"(Python {sys.version.split()[0]})")
    print(f"{'evicted':>8} {'bare us':>9} {'mesh us':>9} {'added us':>9} {'ratio':>7}")
    for size in sizes:
        bare_us, mesh_us = measure(size, args.rounds)
        print(f"{size:>5} MB {bare_us:>9.1f} {mesh_us:>9.1f} {mesh_us - bare_us:>+9.1f} "
              f"{mesh_us / bare_us:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
