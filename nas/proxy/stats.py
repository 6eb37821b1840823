"""Rank statistics of a proxy check: Kendall τ, Spearman ρ, paired bootstrap intervals, seed noise."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

LEVEL = 0.90                      # of every bootstrap interval
TOP = 5                           # top-k overlap


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b (`scipy.stats.kendalltau`); NaN when undefined (a constant input)."""
    from scipy import stats
    if len(x) < 2:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ (`scipy.stats.spearmanr`); NaN when undefined."""
    from scipy import stats
    if len(x) < 2 or np.ptp(np.asarray(x, float)) == 0 or np.ptp(np.asarray(y, float)) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def _tau_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """τ-b of every row pair of (B, n) arrays at once (what scipy computes, vectorized):
    Σ sign(Δx)·sign(Δy) / sqrt(Σ sign(Δx)² · Σ sign(Δy)²) over pairs i < j; in chunks
    of rows, so memory stays near 16 MB whatever the number of architectures."""
    step = max(1, 2_000_000 // max(1, x.shape[1] ** 2))
    if x.shape[0] > step:
        return np.concatenate([_tau_rows(x[i:i + step], y[i:i + step]) for i in range(0, x.shape[0], step)])
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    num = (sx * sy).sum((1, 2))
    den = np.sqrt((sx * sx).sum((1, 2)) * (sy * sy).sum((1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _rho_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of every row pair: Pearson correlation of average ranks."""
    from scipy import stats
    rx, ry = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(1) / np.where(den > 0, den, 1), np.nan)


def resamples(n: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """(n_boot, n) indices of architectures drawn with replacement (one seeded generator,
    shared by every statistic, so differences between proxies are paired)."""
    return np.random.default_rng(int(seed)).integers(0, n, size=(int(n_boot), int(n)))


def bootstrap(x: Sequence[float], y: Sequence[float], stat: str = "kendall", n_boot: int = 2000, seed: int = 0,
              index: np.ndarray | None = None) -> np.ndarray:
    """The statistic ('kendall' or 'spearman') on each bootstrap resample of the architectures."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    idx = resamples(len(x), n_boot, seed) if index is None else index
    fn = _tau_rows if stat == "kendall" else _rho_rows
    return fn(x[idx], y[idx])


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap `samples` (NaN resamples left out)."""
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if not len(s):
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


def seed_noise(acc: Sequence[Sequence[Optional[float]]]) -> dict:
    """Seed noise of a (architectures × seeds) accuracy table (None: a failed run).

    within_sd: pooled within-architecture sd, sqrt(mean of the per-architecture sample
    variances over seeds), from architectures with ≥ 2 runs; between_sd: sd over
    architectures of their mean accuracy; ratio = within / between (small: a ranking
    by one seed is mostly the architectures, not the seed).
    """
    rows = [[float(v) for v in r if v is not None] for r in acc]
    variances = [float(np.var(r, ddof=1)) for r in rows if len(r) >= 2]
    means = [float(np.mean(r)) for r in rows if r]
    within = math.sqrt(float(np.mean(variances))) if variances else float("nan")
    between = float(np.std(means, ddof=1)) if len(means) >= 2 else float("nan")
    ratio = within / between if between and math.isfinite(between) and math.isfinite(within) else float("nan")
    return {"within_sd": within, "between_sd": between, "ratio": ratio, "architectures": len(variances)}


def top_overlap(x: Sequence[float], y: Sequence[float], k: int = TOP) -> int:
    """How many of the k best by `x` are among the k best by `y` (ties: earlier index)."""
    k = min(k, len(x))
    bx = set(np.argsort(-np.asarray(x, float), kind="stable")[:k].tolist())
    by = set(np.argsort(-np.asarray(y, float), kind="stable")[:k].tolist())
    return len(bx & by)


def interpret(tau: float, low: float, high: float) -> str:
    """τ and its interval in the words they allow."""
    if not all(math.isfinite(v) for v in (tau, low, high)):
        return "undefined (too few architectures, or a constant column)"
    if low > 0 and tau >= 0.5:
        return "ranks architectures usefully"
    if low > 0:
        return "ranks better than chance, but weakly"
    if high < 0:
        return "ranks them in reverse"
    return "no evidence that it ranks better than chance (the interval includes 0)"


def noise_words(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "undefined"
    if ratio < 0.35:
        return "small against the differences between architectures"
    if ratio < 0.75:
        return "a substantial part of the differences between architectures: one seed blurs the ranking"
    return "as large as the differences between architectures: one seed cannot rank them"


def analyze(rows: Sequence[dict], seeds: Sequence[int], scores: Sequence[str], n_boot: int = 2000,
            seed: int = 0) -> dict:
    """Every statistic of the report from the per-architecture rows (`collect`)."""
    from nas.evaluate.zero_cost import TRIVIAL

    valid = [r for r in rows if r["proxy_mean"] is not None and r["reference"] is not None]
    ref = np.array([r["reference"] for r in valid], float)
    n = len(valid)
    idx = resamples(n, n_boot, seed) if n >= 2 else None
    columns: list[tuple[str, str, list[dict]]] = [("proxy", f"proxy, mean of {len(seeds)} seeds", valid)]
    if len(seeds) > 1:
        for s in seeds:
            have = [r for r in valid if r["proxy"].get(s) is not None]
            columns.append((f"proxy_seed_{s}", f"proxy, seed {s} alone", have))
    for name in scores:
        have = [r for r in valid if r["scores"].get(name) is not None and math.isfinite(r["scores"][name])]
        columns.append((name, name + (" (floor)" if name in TRIVIAL else ""), have))
    table, boot = [], {}
    for name, label, have in columns:
        x = np.array([value_of(r, name) for r in have], float)
        y = np.array([r["reference"] for r in have], float)
        entry = {"name": name, "label": label, "n": len(have), "tau": kendall(x, y), "rho": spearman(x, y),
                 "top": top_overlap(x, y) if len(have) else 0, "top_of": min(TOP, len(have))}
        if len(have) == n and idx is not None:  # all architectures: paired resamples
            full = np.array([value_of(r, name) for r in valid], float)
            boot[name] = bootstrap(full, ref, "kendall", index=idx)
            entry["tau_ci"] = interval(boot[name])
            entry["rho_ci"] = interval(bootstrap(full, ref, "spearman", index=idx))
        elif len(have) >= 2:
            entry["tau_ci"] = interval(bootstrap(x, y, "kendall", n_boot, seed))
            entry["rho_ci"] = interval(bootstrap(x, y, "spearman", n_boot, seed))
        else:
            entry["tau_ci"] = entry["rho_ci"] = (float("nan"), float("nan"))
        entry["words"] = interpret(entry["tau"], *entry["tau_ci"])
        table.append(entry)
    floors = [e for e in table if e["name"] in TRIVIAL and math.isfinite(e["tau"]) and e["name"] in boot]
    floor = max(floors, key=lambda e: e["tau"]) if floors else None
    for e in table:
        e["vs_floor"] = None
        if floor is not None and e["name"] in boot and e["name"] not in TRIVIAL:
            d = boot[e["name"]] - boot[floor["name"]]
            e["vs_floor"] = {"floor": floor["name"], "diff": e["tau"] - floor["tau"], "ci": interval(d)}
    for e in table:  # the supernet's score against the per-trial proxy, on the same architectures (paired)
        if e["name"] == "supernet" and "supernet" in boot and "proxy" in boot:
            by = {x["name"]: x for x in table}
            e["vs_proxy"] = {"diff": e["tau"] - by["proxy"]["tau"], "ci": interval(boot["supernet"] - boot["proxy"])}
    acc = [[r["proxy"].get(s) for s in seeds] for r in rows]
    seed_taus = []
    for i, a in enumerate(seeds):
        for b in seeds[i + 1:]:
            pair = [(r["proxy"][a], r["proxy"][b]) for r in rows
                    if r["proxy"].get(a) is not None and r["proxy"].get(b) is not None]
            if len(pair) >= 2:
                seed_taus.append(kendall([p[0] for p in pair], [p[1] for p in pair]))
    return {"n": n, "k": len(rows), "table": table, "floor": floor and floor["name"], "noise": seed_noise(acc),
            "seed_tau": float(np.nanmean(seed_taus)) if seed_taus and np.isfinite(seed_taus).any() else float("nan"),
            "level": LEVEL, "n_boot": int(n_boot)}


def value_of(row: dict, name: str) -> float:
    if name == "proxy":
        return row["proxy_mean"]
    if name.startswith("proxy_seed_"):
        return row["proxy"][int(name[len("proxy_seed_"):])]
    return row["scores"][name]


