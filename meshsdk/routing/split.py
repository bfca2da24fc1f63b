"""Traffic split arithmetic, Istio's way: weights are relative, not percentages."""

from __future__ import annotations

from collections.abc import Sequence


def weight_shares(weights: Sequence[int | None]) -> tuple[float, ...]:
    """Fraction of traffic each destination gets.

    A single destination gets everything whatever its weight. With several, an unset
    weight counts as 0, zero-weight destinations get nothing, and the rest share in
    proportion to their weights (they need not sum to 100). Validation rejects an
    all-zero split; here it yields all zeros so callers can answer "no route".
    """
    if len(weights) == 1:
        return (1.0,)
    values = [max(w or 0, 0) for w in weights]
    total = sum(values)
    if total == 0:
        return tuple(0.0 for _ in values)
    return tuple(v / total for v in values)
