"""Statistics shared by the latency benchmarks: nearest-rank percentiles and a bootstrap
interval for the ratio of two medians measured in interleaved blocks.

Why an interval: on this shared two-core machine one run's p50 ratio moves by +-0.1
between runs. The interval, from resampling the run's own blocks, says how much of a
miss (or a pass) that noise could explain; the verdict stays the plain ratio.
"""

from __future__ import annotations

import math
import random
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
