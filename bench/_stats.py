"""Summary statistics the benchmarks print: one definition for all of them."""
from __future__ import annotations

import statistics


def spread(xs: list) -> dict:
    """mean, sd, median and IQR (the 25th and 75th percentiles, inclusive method) of the defined values."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "mean": None, "sd": None, "median": None, "q1": None, "q3": None}
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0], xs[0], xs[0]]
    return {"n": len(xs), "mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else None,
            "median": statistics.median(xs), "q1": q[0], "q3": q[2]}
