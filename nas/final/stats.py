"""Stage 2's statistics: the choice of B0 on search-validation, then the verdict on test.

`summarize` strips every test score before `choose` sees the records, so the choice cannot
depend on test data; only then are test scores read for the table and the verdict.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from nas.search.objective import Objective

from scaling.stats import SIGNIFICANCE as ALPHA  # the significance level of the verdict's words
POWER = 0.8   # "seeds to tell": the chance of detecting a difference the size of the one seen
SEEDS_CAP = 64  # ... searched up to this many seeds per architecture


def _stats(values: Sequence[float]) -> dict:
    n = len(values)
    mean = sum(values) / n if n else None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else (0.0 if n else None)
    return {"n": n, "mean": mean, "sd": sd}


def choose(candidates: Sequence[Any], val_rows: Sequence[Sequence[dict]], objective: Objective) -> int:
    """Index of B0: the non-reference candidate with the best mean reward on search-validation.

    `val_rows[i]` holds candidate i's stage-2 records *without* test scores (the caller
    strips them): the choice cannot depend on test data. Ties: fewer multiply-adds.
    """
    best, best_key = -1, None
    for i, (c, rows) in enumerate(zip(candidates, val_rows)):
        if c.is_reference:
            continue
        assert all("test_accuracy" not in r for r in rows), "the choice must not see test scores"
        accs = [r["accuracy"] for r in rows if r.get("status") == "ok" and r.get("accuracy") is not None]
        if not accs:
            continue
        macs = rows[0]["macs"]
        key = (objective.reward(sum(accs) / len(accs), macs, rows[0].get("latency_ms")), -macs)
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """mean(a) − mean(b), its `level` confidence interval and Welch's two-sided p-value: the
    one Welch test of the project (`scaling.stats.welch_test`, which scaling's grid and
    verify use too); at least two values a side."""
    from scaling.stats import welch_test
    return welch_test(a, b, level)


def seeds_to_tell(diff: float, sd_a: float, sd_b: float, power: float = POWER, alpha: float = ALPHA,
                  cap: int = SEEDS_CAP) -> Optional[int]:
    """Seeds per architecture at which Welch's test would call a true difference of `diff`
    significant with probability `power`, given these seed sds (noncentral t, equal seeds
    per side); None beyond `cap` or with no difference. Why: with 3 seeds a gap of two
    seed sds is found about half the time, so "no significant difference" needs to say
    how many seeds would have been enough to see this gap, were it real."""
    from scipy import stats

    var = sd_a ** 2 + sd_b ** 2
    if diff == 0 or not math.isfinite(diff) or var <= 0:
        return None
    for n in range(2, cap + 1):
        se = math.sqrt(var / n)
        df = (n - 1) * var ** 2 / (sd_a ** 4 + sd_b ** 4)  # Welch's df at equal n
        crit = float(stats.t.ppf(1 - alpha / 2, df))
        nc = abs(diff) / se
        if float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)) >= power:
            return n
    return None


def words(test: dict, threshold: float = ALPHA) -> str:
    """The words a test allows: "better"/"worse" when its p-value is below `threshold`."""
    from scaling.stats import verdict_words
    return verdict_words(test, threshold)


def summarize(candidates: Sequence[Any], seeds: Sequence[int], records: Sequence[Optional[dict]],
              objective: Objective, more: Optional[dict[int, list]] = None, threshold: float = ALPHA) -> dict:
    """Per candidate mean ± sd on validation and test, the choice, and the verdict.

    `records` holds one record per (candidate, seed of `seeds`), in that order (None:
    missing); B0 is chosen from those alone (the first look). `more` maps a candidate's
    index to its records on further seeds (sequential looks: B0 and the reference), which
    count in its table row and in the verdict. The verdict's words use `threshold`: the
    significance level, or a sequential design's boundary (`nas.final.sequential`).
    """
    per = [records[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(candidates))]
    per = [[r for r in rows if r is not None] for rows in per]
    stripped = [[{k: v for k, v in r.items() if k != "test_accuracy"} for r in rows] for rows in per]
    chosen = choose(candidates, stripped, objective)   # before any test score is read
    per = [rows + [r for r in (more or {}).get(i, []) if r is not None] for i, rows in enumerate(per)]
    table = []
    for c, rows in zip(candidates, per):
        ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
        val = _stats([r["accuracy"] for r in ok])
        test = _stats([r["test_accuracy"] for r in ok if r.get("test_accuracy") is not None])
        macs = rows[0]["macs"] if rows else None
        lat = rows[0].get("latency_ms") if rows else None  # predicted
        table.append({"label": c.label, "trial": c.trial, "reference": c.is_reference, "key": c.spec.key(),
                      "macs": macs, "params": rows[0]["params"] if rows else None, "runs": len(rows),
                      "ok": len(ok), "val": val, "test": test, "latency_ms": lat, "measured_latency_ms": None,
                      "val_reward": objective.reward(val["mean"], macs, lat) if val["mean"] is not None else None,
                      "test_reward": objective.reward(test["mean"], macs, lat) if test["mean"] is not None else None,
                      "test_values": [r["test_accuracy"] for r in ok if r.get("test_accuracy") is not None]})
    verdict = None
    ref = next((i for i, c in enumerate(candidates) if c.is_reference), None)
    if chosen >= 0 and ref is not None:
        a, b = table[chosen]["test_values"], table[ref]["test_values"]
        if len(a) >= 2 and len(b) >= 2:
            test = welch(a, b)
            verdict = {**test, "words": words(test, threshold), "threshold": threshold, "b0": table[chosen]["label"],
                       "reference": table[ref]["label"], "macs_ratio": table[chosen]["macs"] / table[ref]["macs"],
                       "seeds_to_tell": seeds_to_tell(test["diff"], table[chosen]["test"]["sd"],
                                                      table[ref]["test"]["sd"])}
    return {"seeds": list(seeds), "candidates": table, "chosen": chosen, "verdict": verdict, "reference": ref,
            "records": [r for rows in per for r in rows]}
