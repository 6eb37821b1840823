"""The architectures a proxy check measures: K of the cost window, spread evenly over multiply-adds."""
from __future__ import annotations

from typing import Any

import numpy as np


def sample_architectures(space: Any, target: int, window: tuple[float, float] = (0.5, 1.0), k: int = 24,
                         seed: int = 0, target_resolution: int = 224, pool: int | None = None,
                         max_draws: int | None = None) -> list:
    """K distinct architectures with LO·T ≤ MACs ≤ HI·T, spread evenly over multiply-adds.

    Draws uniform random choices (`space.sample` with a generator seeded by `seed`) until
    `pool` distinct in-window architectures are found (default max(200, 40·K)), sorts
    them by MACs and keeps the ones at the K mid-quantiles (i + ½)/K, so the sample covers
    the window as the space fills it. Specs come back decoded at `target_resolution` with
    1000 classes (as the search counts cost), sorted by MACs. ValueError when fewer than
    K distinct architectures fall in the window within `max_draws` draws.
    """
    from search_space import cost

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    pool = int(pool or max(200, 40 * k))
    max_draws = int(max_draws or max(20_000, 20 * pool))
    lo, hi = float(window[0]) * target, float(window[1]) * target
    rng = np.random.default_rng(int(seed))
    found: dict[str, tuple[int, Any]] = {}
    for _ in range(max_draws):
        spec = space.decode(space.sample(rng), num_classes=1000, resolution=int(target_resolution))
        key = spec.key()
        if key in found:
            continue
        m = int(cost.macs(spec, int(target_resolution)))
        if lo <= m <= hi:
            found[key] = (m, spec)
            if len(found) >= pool:
                break
    if len(found) < k:
        raise ValueError(f"only {len(found)} distinct architectures of the space fall in the cost window "
                         f"[{lo / 1e6:g}M, {hi / 1e6:g}M] in {max_draws} random draws; need {k} "
                         "(widen --cost-window, change --target-flops or lower --k)")
    ranked = sorted(found.items(), key=lambda kv: (kv[1][0], kv[0]))
    n = len(ranked)
    return [ranked[int((i + 0.5) * n / k)][1][1] for i in range(k)]


