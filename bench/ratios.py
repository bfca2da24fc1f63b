"""Statistics shared by the latency benchmarks: nearest-rank percentiles and a bootstrap
interval for the ratio of two medians measured in interleaved blocks.

Why an interval: on this shared two-core machine one run's p50 ratio moves by +-0.1
between runs. The interval, from resampling the run's own blocks, says how much of a
miss (or a pass) that noise could explain; the verdict stays the plain ratio.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in microseconds."""
    k = min(len(sorted_ns) - 1, max(0, math.ceil(q / 100 * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1000


def ratio_interval(bare_blocks: Sequence[Sequence[int]], mesh_blocks: Sequence[Sequence[int]],
                   rounds: int = 400, seed: int = 1) -> tuple[float, float]:
    """90% bootstrap interval of p50(mesh) / p50(bare): blocks resampled with replacement,
    the same block indices for both variants (they ran in the same time slots)."""
    if len(bare_blocks) != len(mesh_blocks) or not bare_blocks:
        raise ValueError("need the same, non-zero number of blocks for both variants")
    rng = random.Random(seed)
    n = len(bare_blocks)
    ratios = []
    for _ in range(rounds):
        picks = [rng.randrange(n) for _ in range(n)]
        bare = sorted(x for i in picks for x in bare_blocks[i])
        mesh = sorted(x for i in picks for x in mesh_blocks[i])
        ratios.append(percentile(mesh, 50) / percentile(bare, 50))
    ratios.sort()
    return ratios[int(0.05 * rounds)], ratios[int(0.95 * rounds) - 1]


def summarise_runs(results: Sequence[dict[str, tuple[float, float | None]]]) -> None:
    """Print each comparison's p50 ratio in every run, how many runs met its target,
    and the median over the runs. ``results`` holds one dict per run, label -> (ratio,
    target or None for a noise floor). One run's ratio moves by a few hundredths here
    between runs; the median of several is the steadier figure."""
    width = max(10, *(len(label) for label in results[0]))
    print(f"\nover {len(results)} runs (p50 ratio of each run):")
    print(f"{'ratio':<{width}} {'median':>7} {'met':>6}  runs")
    for label, (_, target) in results[0].items():
        ratios = [r[label][0] for r in results]
        middle = statistics.median(ratios)
        runs = ", ".join(f"{x:.3f}" for x in ratios)
        if target is None:
            print(f"{label:<{width}} {middle:>6.3f}x {'-':>6}  {runs}")
            continue
        met = f"{sum(x <= target for x in ratios)}/{len(ratios)}"
        verdict = "met" if middle <= target else "missed"
        print(f"{label:<{width}} {middle:>6.3f}x {met:>6}  {runs}  "
              f"(target {target:.2f}x: median {verdict})")
