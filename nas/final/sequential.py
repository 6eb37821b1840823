"""Sequential seeds for stage 2's verdict: more seeds only while it is undecided.

Why: with a gap of about two seed sds, Welch's test on 3 against 3 seeds says "better"
about half the time, so a fixed small design gives words that do not repeat, and a fixed
large one costs every run its worst case. Here B0 and the reference (only those two) get
further seeds at planned looks — `looks(initial, cap)`: 3, 5, 8 by default, each about
1.6 times the last — and the test stops at the first look whose Welch p-value is below a
group-sequential boundary.

The boundary is Pocock's (one nominal p-value threshold for every look), calibrated for
the Welch t-test itself rather than a normal approximation, which is poor at 3 seeds:
`boundary(looks)` simulates studies with no true difference (normal seed noise, equal sds)
and takes the 5 % quantile of their smallest p-value over the looks, so the chance of a
false "better" or "worse" over all looks is 5 % (`simulate` measures it, and the power;
the tests check both on studies the calibration never saw). Deterministic: a fixed seed.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from .stats import ALPHA

INITIAL = 3              # seeds of every candidate at the first look
DEFAULT_MAX_SEEDS = 8    # B0's and the reference's cap (the default run stays within 10 min on 2 cores)
GROWTH = 1.6             # each look about this many times the seeds of the last
STUDIES = 50_000         # simulated null studies that calibrate a boundary
CALIBRATION_SEED = 1905  # fixed: the same boundary on every machine and run


def looks(initial: int = INITIAL, cap: int = DEFAULT_MAX_SEEDS) -> tuple[int, ...]:
    """Seeds per architecture at each look: `initial`, then about GROWTH times more each time, `cap` last."""
    if initial < 2 or cap < initial:
        raise ValueError(f"need 2 <= initial <= cap, got initial {initial}, cap {cap}")
    out = [int(initial)]
    while out[-1] < cap:
        out.append(min(int(cap), max(out[-1] + 1, math.ceil(out[-1] * GROWTH))))
    return tuple(out)


def welch_p(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Welch's two-sided p-value and the sign of mean(a) − mean(b), row by row of (studies, n) arrays."""
    from scipy import stats

    na, nb = a.shape[1], b.shape[1]
    va, vb = a.var(1, ddof=1) / na, b.var(1, ddof=1) / nb
    diff = a.mean(1) - b.mean(1)
    se = np.sqrt(va + vb)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = diff / se
        df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    p = np.where(se > 0, 2 * stats.t.sf(np.abs(t), df), np.where(diff == 0, 1.0, 0.0))
    return p, np.sign(diff)


def _min_p(plan: Sequence[int], gap: float, studies: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per simulated study: each look's p-value and sign (studies × looks), seed noise sd 1."""
    rng = np.random.default_rng(seed)
    a = rng.normal(gap, 1.0, (studies, plan[-1]))
    b = rng.normal(0.0, 1.0, (studies, plan[-1]))
    ps, signs = zip(*(welch_p(a[:, :n], b[:, :n]) for n in plan))
    return np.stack(ps, 1), np.stack(signs, 1), np.asarray(plan)


@functools.lru_cache(maxsize=32)
def boundary(plan: tuple[int, ...], alpha: float = ALPHA, studies: int = STUDIES, seed: int = CALIBRATION_SEED) -> float:
    """The nominal p-value below which a look decides, so that over all looks of `plan`
    a study with no true difference decides (either way) with probability `alpha`."""
    if len(plan) == 1:
        return float(alpha)
    p, _, _ = _min_p(plan, 0.0, studies, seed)
    return float(np.quantile(p.min(1), alpha))


def simulate(plan: Sequence[int], gap: float, threshold: float, studies: int = 2000, seed: int = 0) -> dict:
    """Simulated studies with a true gap of `gap` seed sds between B0 and the reference: the
    share decided "better", "worse", undecided at the cap, and the mean seeds used."""
    p, sign, n = _min_p(tuple(plan), gap, studies, seed)
    hit = p < threshold
    first = np.where(hit.any(1), hit.argmax(1), -1)
    rows = np.arange(len(first))
    decided = first >= 0
    s = np.where(decided, sign[rows, np.maximum(first, 0)], 0)
    used = np.where(decided, n[np.maximum(first, 0)], n[-1])
    return {"better": float((s > 0).mean()), "worse": float((s < 0).mean()), "undecided": float((~decided).mean()),
            "mean_seeds": float(used.mean()), "studies": int(studies)}
