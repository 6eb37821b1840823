"""Seed statistics for the grid's rule and the scaling check: mean ± sd and Welch's test.

Pure (numbers in, numbers out; scipy for the t distribution). The words a test allows
follow stage 2's (`nas.final.stats`): "better" or "worse" only below the significance level.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

SIGNIFICANCE = 0.05  # a scaling choice other than the paper's needs p below this


def mean_sd(values: Sequence[float]) -> dict:
    """{"n", "mean", "sd"}: the sample sd (n − 1); sd 0.0 for one value, mean None for none."""
    vals = [float(v) for v in values]
    n = len(vals)
    if not n:
        return {"n": 0, "mean": None, "sd": None}
    if min(vals) == max(vals):  # exactly: float sums of equal values leave a spread of 1e-17
        return {"n": n, "mean": vals[0], "sd": 0.0}
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return {"n": n, "mean": mean, "sd": sd}


def welch_test(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Optional[dict]:
    """mean(a) − mean(b) with its `level` confidence interval and Welch's two-sided p
    (`scipy.stats.ttest_ind(equal_var=False)`); None with fewer than two values a side.
    Without any spread, equal means are no difference (p = 1) and unequal ones certain (p = 0)."""
    import warnings

    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    diff = mean_sd(a)["mean"] - mean_sd(b)["mean"]
    if mean_sd(a)["sd"] == 0 and mean_sd(b)["sd"] == 0:
        return {"diff": diff, "low": diff, "high": diff, "p": 1.0 if diff == 0 else 0.0}
    with warnings.catch_warnings():  # nearly equal values: scipy warns of precision, the answer stands
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind([float(x) for x in a], [float(x) for x in b], equal_var=False)
        ci = res.confidence_interval(level)
    return {"diff": diff, "low": float(ci.low), "high": float(ci.high), "p": float(res.pvalue)}


def verdict_words(test: Optional[dict], level: float = SIGNIFICANCE) -> str:
    """"better" / "worse" below `level`, else "no significant difference"; "no test" without one."""
    if test is None:
        return "no test (fewer than 2 runs a side)"
    if test["p"] < level:
        return "better" if test["diff"] > 0 else "worse"
    return "no significant difference"


def pm(stats: dict, digits: int = 4) -> str:
    """`0.9123 ± 0.0041` (n in its own column); empty without a mean."""
    if stats.get("mean") is None:
        return ""
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"
