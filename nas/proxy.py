"""`python -m nas.proxy check`: does the proxy task rank architectures like a longer training does?

Why: the search trusts one short proxy run per candidate (2 epochs at 32 px on one seed)
to rank architectures. That is only worth its cost if the ranking agrees with what more
training would say, and if seed noise is small against the differences between
architectures. The check measures both, and scores training-free proxies
(`nas.zero_cost`) on the same architectures against the same reference, with the
trivial ones (parameters, multiply-adds) as the floor.

What it does:

1. samples K architectures of the space inside the cost window (MACs counted as the
   search counts them: at `--target-resolution` with 1000 classes), spread evenly over
   multiply-adds (`sample_architectures`);
2. trains each under the proxy budget on R seeds (`--seed` + 1 ... + R; kind 'proxy')
   and once under the reference budget (the stage-2 final budget,
   `nas.final.final_budget`, with `test=False`: the check never reads the test part;
   seed `--seed`; kind 'proxy-reference'), on the local engine (or NNI), resumable: a
   job is identified by (architecture, seed, budget, evaluator), so a rerun or an
   extension (more seeds) trains only what is missing;
3. scores every architecture with the zero-cost scores (cached in the store);
4. reports Kendall τ and Spearman ρ against the reference accuracy with bootstrap 90 %
   intervals (architectures resampled), seed noise, top-5 overlap and the cost of each
   budget, in `proxy.md`, `proxy.csv`, one scatter plot per proxy, and (`--json`) one
   JSON object on stdout's last line.

A seed fixes everything a run draws: the init, the batch order and the train /
search-validation split (`nas.data`), as in stage 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from nas.errors import UserError

PROG = "nas.proxy"
KIND = "proxy"
REF_KIND = "proxy-reference"
TOOL = "nas.proxy check"          # marks a store as a proxy-check run (not a search run)
LEVEL = 0.90                      # of every bootstrap interval
TOP = 5                           # top-k overlap
DEFAULT_OUT = "runs/proxy"
DB_FILES = ("search.db", "search.db-wal", "search.db-shm")


def _defaults() -> dict[str, Any]:
    from nas.budget import ProxyBudget
    from nas.final import DEFAULT_EPOCHS

    b = ProxyBudget()
    return {"target_flops": None, "space": None, "dataset": b.dataset, "data_dir": None,
            "proxy_epochs": float(b.epochs), "proxy_resolution": b.resolution, "batch_size": b.batch_size,
            "target_resolution": b.target_resolution, "cost_window": "0.5,1.0", "seed": 0,
            "final_epochs": float(DEFAULT_EPOCHS), "final_resolution": None, "device": "auto", "workers": 0,
            "engine": "local", "evaluator": "nas.trial:evaluate", "trial_timeout": 300.0, "k": 24, "seeds": 2,
            "scores": "all", "bootstrap": 2000, "out": DEFAULT_OUT, "resume": False, "overwrite": False,
            "quick": False, "json": False, "no_progress": False, "quiet": False}


# --quick: a smoke test that finishes in about a minute on 2 cores (CI); its τ decides nothing.
QUICK = {"k": 6, "seeds": 2, "proxy_epochs": 0.25, "final_epochs": 0.5, "dataset": "mnist5k",
         "proxy_resolution": 32, "bootstrap": 500}
# What is not recorded in the store (how this invocation runs, not what it measures).
NOT_RECORDED = ("resume", "overwrite", "json", "no_progress", "quiet", "quick")


# -- sampling -------------------------------------------------------------------------------
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


# -- statistics -----------------------------------------------------------------------------
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
    from nas.zero_cost import TRIVIAL

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
        x = np.array([_value(r, name) for r in have], float)
        y = np.array([r["reference"] for r in have], float)
        entry = {"name": name, "label": label, "n": len(have), "tau": kendall(x, y), "rho": spearman(x, y),
                 "top": top_overlap(x, y) if len(have) else 0, "top_of": min(TOP, len(have))}
        if len(have) == n and idx is not None:  # all architectures: paired resamples
            full = np.array([_value(r, name) for r in valid], float)
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


def _value(row: dict, name: str) -> float:
    if name == "proxy":
        return row["proxy_mean"]
    if name.startswith("proxy_seed_"):
        return row["proxy"][int(name[len("proxy_seed_"):])]
    return row["scores"][name]


# -- jobs -----------------------------------------------------------------------------------
def job_id(key: str, seed: int, budget: Any, evaluator: str) -> int:
    """A stable id (< 2**62) for one (architecture, seed, budget, evaluator) run; where and
    how long it may run (device, time limit) are no part of what it measures."""
    fields = {k: v for k, v in dataclasses.asdict(budget).items() if k not in ("seed", "device", "time_limit",
                                                                                "download")}
    ident = json.dumps([key, int(seed), fields, evaluator], sort_keys=True)
    return int(hashlib.sha1(ident.encode()).hexdigest()[:15], 16)


def batch_source(store: Any, specs: Sequence[Any], seeds: Sequence[int], budget: Any, evaluator: str, kind: str,
                 target: int, target_resolution: int, listeners: Sequence[Any] = ()) -> Any:
    """Every spec on every seed as one resumable `BatchSource` of `kind` (ids from `job_id`)."""
    from nas.loop import BatchSource
    from nas.records import Objective

    items = [(spec, s) for spec in specs for s in seeds]
    return BatchSource(store, [sp for sp, _ in items], Objective(int(target)), kind=kind,
                       target_resolution=int(target_resolution), listeners=listeners,
                       overrides=[{"seed": int(s)} for _, s in items],
                       ids=[job_id(sp.key(), s, budget, evaluator) for sp, s in items])


def budgets(opts: dict) -> tuple[Any, Any]:
    """(proxy budget, reference budget): the search's proxy budget from the options, and
    the stage-2 final budget built from it, without the test part."""
    from nas.budget import ProxyBudget
    from nas.final import final_budget

    proxy = ProxyBudget(dataset=str(opts["dataset"]).lower(), data_dir=opts.get("data_dir"),
                        resolution=int(opts["proxy_resolution"]), target_resolution=int(opts["target_resolution"]),
                        epochs=float(opts["proxy_epochs"]), batch_size=int(opts["batch_size"]), seed=int(opts["seed"]),
                        device=opts.get("_device", "cpu"), time_limit=float(opts["trial_timeout"]))
    ref = dataclasses.replace(final_budget(proxy, float(opts["final_epochs"]), opts.get("final_resolution")),
                              test=False)
    return proxy, ref


def proxy_seeds(opts: dict) -> list[int]:
    """The proxy seeds: `--seed` + 1 ... + R (the reference trains on `--seed` itself), so
    more seeds later keep every run already made."""
    return [int(opts["seed"]) + 1 + i for i in range(int(opts["seeds"]))]


def collect(specs: Sequence[Any], proxy_src: Any, ref_src: Any, seeds: Sequence[int],
            zc: dict[str, dict[str, float]]) -> list[dict]:
    """One row per architecture: cost, proxy accuracy per seed and mean, reference accuracy, scores."""
    from search_space import cost

    prox = proxy_src.records()
    refs = ref_src.records()
    out = []
    for i, spec in enumerate(specs):
        per = {}
        for j, s in enumerate(seeds):
            r = prox[i * len(seeds) + j]
            per[s] = r["accuracy"] if r is not None and r["status"] == "ok" else None
        ok = [v for v in per.values() if v is not None]
        ref = refs[i]
        out.append({"index": i, "key": spec.key(), "spec": spec, "macs": int(cost.macs(spec)),
                    "params": int(cost.params(spec)), "proxy": per,
                    "proxy_mean": float(np.mean(ok)) if ok else None,
                    "proxy_sd": float(np.std(ok, ddof=1)) if len(ok) > 1 else None,
                    "reference": ref["accuracy"] if ref is not None and ref["status"] == "ok" else None,
                    "scores": {name: vals.get(spec.key()) for name, vals in zc.items()}})
    return out


def cost_of(records: Sequence[Optional[dict]], budget: Any) -> dict:
    """Runs, epochs each and wall seconds (summed from the records) of one budget."""
    rs = [r for r in records if r is not None]
    wall = float(sum(r.get("wall_time") or 0.0 for r in rs))
    return {"runs": len(rs), "failed": sum(r["status"] != "ok" for r in rs), "epochs": float(budget.epochs),
            "resolution": int(budget.resolution), "wall_s": wall, "per_run_s": wall / len(rs) if rs else None}


# -- zero-cost scores -------------------------------------------------------------------------
def zero_cost_scores(store: Any, specs: Sequence[Any], names: Sequence[str], data: Any, seed: int,
                     log: Any = None) -> tuple[dict, dict, Optional[str]]:
    """({score: {key: value}}, {score: seconds per network}, the batch in words), computed once per
    (architecture, score, batch) and kept in the store's meta (a resumed check reuses them)."""
    from nas import zero_cost

    tag = None
    batch = None
    if data is not None:
        batch = zero_cost.balanced_batch(data, seed=0)
        tag = f"{data.name}/{data.resolution}/{batch.x.shape[0]}/seed{seed}"
    cache = json.loads(store.get_meta("zero_cost") or "{}")
    if cache.get("tag") != tag or not isinstance(cache.get("values"), dict):
        cache = {"tag": tag, "values": {}, "seconds": {}}
    values, seconds = cache["values"], cache["seconds"]
    t_last = time.time()
    for i, spec in enumerate(specs):
        for name in names:
            slot = f"{name}/{spec.key()}"
            if slot in values:
                continue
            t0 = time.perf_counter()
            v = zero_cost.score(name, spec, batch, seed=seed)
            seconds[slot] = time.perf_counter() - t0
            values[slot] = v if math.isfinite(v) else None
        if log is not None and (time.time() - t_last > 5 or i == len(specs) - 1):
            log(f"zero-cost scores: {i + 1}/{len(specs)} architectures")
            t_last = time.time()
    store.set_meta("zero_cost", json.dumps(cache))
    out = {n: {s.key(): values.get(f"{n}/{s.key()}") for s in specs} for n in names}
    per = {n: float(np.mean([seconds.get(f"{n}/{s.key()}", 0.0) for s in specs])) for n in names}
    about = None if batch is None else (f"{batch.x.shape[0]} images, {batch.x.shape[0] // batch.num_classes} "
                                        f"per class, {batch.resolution} px")
    return out, per, about


# -- outputs --------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _ci(ci: Sequence[float]) -> str:
    return f"[{_f(ci[0], '.2f')}, {_f(ci[1], '.2f')}]"


CSV_HEAD = ("index", "key", "macs", "params")


def csv_text(rows: Sequence[dict], seeds: Sequence[int], scores: Sequence[str]) -> str:
    """proxy.csv: one row per architecture."""
    import csv

    from nas.zero_cost import TRIVIAL

    extra = [s for s in scores if s not in TRIVIAL]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*CSV_HEAD, *[f"proxy_acc_seed_{s}" for s in seeds], "proxy_acc_mean", "proxy_acc_sd",
                "reference_acc", *extra, "blocks"])
    cell = (lambda v: "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.6g}")
    for r in rows:
        w.writerow([r["index"], r["key"], r["macs"], r["params"], *[cell(r["proxy"].get(s)) for s in seeds],
                    cell(r["proxy_mean"]), cell(r["proxy_sd"]), cell(r["reference"]),
                    *[cell(r["scores"].get(s)) for s in extra], " ".join(r["spec"].to_tf_strings())])
    return buf.getvalue()


def markdown(summary: dict) -> str:
    """proxy.md: the table, the noise and costs, and what the numbers say, in words."""
    a, c = summary["analysis"], summary["cost"]
    pb, rb = summary["proxy_budget"], summary["reference_budget"]
    lines = [f"# Proxy check: {a['k']} architectures, {len(summary['seeds'])} proxy seeds",
             "",
             f"Target {summary['target'] / 1e6:g}M multiply-adds, cost window {summary['window'][0]:g}–"
             f"{summary['window'][1]:g} × T (counted at {summary['target_resolution']} px, 1000 classes). "
             f"Proxy budget: {pb['dataset']}, {pb['epochs']:g} epochs at {pb['resolution']} px on seeds "
             f"{summary['seeds']}; reference: {rb['epochs']:g} epochs at {rb['resolution']} px on seed "
             f"{summary['reference_seed']} (the stage-2 final budget, scored on search-validation, never on test). "
             f"{a['n']} of {a['k']} architectures have both; intervals are bootstrap {a['level']:.0%} "
             f"({a['n_boot']} resamples of the architectures).",
             "",
             "| proxy | Kendall τ [90 %] | Spearman ρ [90 %] | top-5 overlap | Δτ vs floor [90 %] | reading |",
             "|---|---|---|---|---|---|"]
    for e in a["table"]:
        vf = e["vs_floor"]
        vs = "-" if vf is None else f"{vf['diff']:+.2f} {_ci(vf['ci'])} vs {vf['floor']}"
        lines.append(f"| {e['label']} | {_f(e['tau'], '.2f')} {_ci(e['tau_ci'])} | {_f(e['rho'], '.2f')} "
                     f"{_ci(e['rho_ci'])} | {e['top']}/{e['top_of']} | {vs} | {e['words']} |")
    nz = a["noise"]
    lines += ["",
              f"Seed noise of the proxy accuracy: within-architecture sd {_f(nz['within_sd'], '.4f')}, between-"
              f"architecture sd {_f(nz['between_sd'], '.4f')}, ratio {_f(nz['ratio'], '.2f')}: "
              f"{noise_words(nz['ratio'])}. Kendall τ between proxy seeds: {_f(a['seed_tau'], '.2f')} "
              "(the agreement of the proxy with itself, a ceiling for any single-seed ranking).",
              "",
              "| budget | runs | epochs | px | wall s (sum) | s per run |",
              "|---|---|---|---|---|---|"]
    for label, b in (("proxy", c["proxy"]), ("reference", c["reference"])):
        runs = f"{b['runs']} ({b['failed']} failed)" if b["failed"] else str(b["runs"])
        lines.append(f"| {label} | {runs} | {b['epochs']:g} | {b['resolution']} | {b['wall_s']:.0f} | "
                     f"{_f(b['per_run_s'], '.1f')} |")
    for name, s in c["zero_cost_s"].items():
        lines.append(f"| zero-cost {name} | {a['k']} | 0 | {pb['resolution']} | {s * a['k']:.1f} | {s:.2f} |")
    lines += ["", "In words:", ""]
    lines += [f"- {line}" for line in summary["words"]]
    lines += ["", "Scores: " + ZERO_COST_NOTE.format(batch=summary.get("zc_batch") or "no images"), ""]
    return "\n".join(lines)


ZERO_COST_NOTE = ("training-free, at the builder's reference init (seed = --seed), on a class-balanced batch of "
                  "un-augmented train images ({batch}); NASWOT codes are the signs of the "
                  "*inputs* of every SiLU/ReLU (the networks use swish); synflow in float64 with absolute weights, "
                  "an all-ones input and BatchNorm in eval mode at its initial statistics; grad-norm and SNIP on "
                  "the batch's cross-entropy over conv/linear weights, BatchNorm in train mode (nas/zero_cost.py).")


def summary_words(summary: dict) -> list[str]:
    """The interpretation: one sentence per finding."""
    a = summary["analysis"]
    by = {e["name"]: e for e in a["table"]}
    if a["n"] < 3:
        return [f"Only {a['n']} of {a['k']} architectures have both a proxy and a reference accuracy: "
                "no rank statistic is meaningful (see the runs' status in the store)."]
    out = []
    p = by["proxy"]
    out.append(f"The proxy (mean of {len(summary['seeds'])} seeds): τ {_f(p['tau'], '.2f')} "
               f"{_ci(p['tau_ci'])}: {p['words']}; {p['top']} of its top {p['top_of']} are among the "
               f"reference's top {p['top_of']}.")
    singles = [e for e in a["table"] if e["name"].startswith("proxy_seed_")]
    if singles:
        out.append("One seed, as the search uses: τ " + ", ".join(f"{_f(e['tau'], '.2f')} {_ci(e['tau_ci'])}"
                                                                  for e in singles) + ".")
    nz = a["noise"]
    out.append(f"Seed noise is {noise_words(nz['ratio'])} (within/between sd {_f(nz['ratio'], '.2f')}).")
    if a["floor"]:
        fl = by[a["floor"]]
        out.append(f"The cost-only floor ({a['floor']}): τ {_f(fl['tau'], '.2f')} {_ci(fl['tau_ci'])}.")
        for e in a["table"]:
            vf = e["vs_floor"]
            if vf is None or e["name"].startswith("proxy_seed_"):
                continue
            lo, hi = vf["ci"]
            verdict = ("beats the floor" if lo > 0 else "is below the floor" if hi < 0
                       else "does not beat the floor (the interval of Δτ includes 0)")
            out.append(f"{e['label']}: τ {_f(e['tau'], '.2f')} {_ci(e['tau_ci'])}, {verdict}: "
                       f"Δτ {vf['diff']:+.2f} {_ci(vf['ci'])}.")
    c = summary["cost"]
    if c["proxy"]["wall_s"] and c["reference"]["wall_s"]:
        out.append(f"Cost: the proxy took {c['proxy']['wall_s']:.0f} s of training for {c['proxy']['runs']} runs, "
                   f"the reference {c['reference']['wall_s']:.0f} s for {c['reference']['runs']}; one proxy run "
                   f"costs {c['proxy']['per_run_s'] / c['reference']['per_run_s']:.0%} of a reference run.")
    return out


def plot(rows: Sequence[dict], entry: dict, path: Path) -> None:
    """Scatter of one proxy against the reference accuracy, written atomically (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search_space.fileio import write_atomic

    have = [r for r in rows if r["reference"] is not None and _defined(r, entry["name"])]
    x = [_value(r, entry["name"]) for r in have]
    y = [r["reference"] for r in have]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    if entry["name"] == "proxy" and have:
        sd = [r["proxy_sd"] or 0.0 for r in have]
        ax.errorbar(x, y, xerr=sd, fmt="o", ms=5, alpha=0.8, capsize=2, label="mean ± sd over seeds")
        lo, hi = min(x + y), max(x + y)
        ax.plot([lo, hi], [lo, hi], ls=":", c="0.5", lw=1, label="y = x")
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.scatter(x, y, s=25, alpha=0.8)
    if x and min(x) > 0 and max(x) / min(x) > 100:
        ax.set_xscale("log")
    ax.set_xlabel(entry["label"])
    ax.set_ylabel("reference accuracy (search-validation)")
    ax.set_title(f"{entry['label']}: τ {_f(entry['tau'], '.2f')} {_ci(entry['tau_ci'])}, n = {len(have)}",
                 fontsize=10)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def _defined(row: dict, name: str) -> bool:
    try:
        v = _value(row, name)
    except KeyError:
        return False
    return v is not None and math.isfinite(v)


def to_json(summary: dict) -> dict:
    """The summary as plain JSON (NaN as null)."""
    a = summary["analysis"]

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    by = {e["name"]: e for e in a["table"]}
    p = by["proxy"]
    return clean({"k": a["k"], "n": a["n"], "seeds": summary["seeds"], "reference_seed": summary["reference_seed"],
                  "tau": p["tau"], "tau_ci": list(p["tau_ci"]), "rho": p["rho"], "rho_ci": list(p["rho_ci"]),
                  "top5_overlap": p["top"], "noise": a["noise"], "seed_tau": a["seed_tau"], "floor": a["floor"],
                  "proxies": {e["name"]: {"tau": e["tau"], "tau_ci": list(e["tau_ci"]), "rho": e["rho"],
                                          "rho_ci": list(e["rho_ci"]), "top5_overlap": e["top"],
                                          "vs_floor": e["vs_floor"], "words": e["words"]} for e in a["table"]},
                  "cost": summary["cost"], "out": summary["out"], "files": summary["files"],
                  "trained_now": summary["trained_now"], "wall_s": summary["wall_s"]})


def write_outputs(summary: dict, rows: Sequence[dict], out: Path) -> list[str]:
    """proxy.csv, proxy.md and one scatter PNG per proxy; returns the file names."""
    from search_space.fileio import write_atomic

    write_atomic(out / "proxy.csv", csv_text(rows, summary["seeds"], summary["scores"]))
    write_atomic(out / "proxy.md", markdown(summary))
    files = ["proxy.csv", "proxy.md"]
    for e in summary["analysis"]["table"]:
        if e["name"].startswith("proxy_seed_"):
            continue
        name = f"scatter-{e['name']}.png"
        try:
            plot(rows, e, out / name)
            files.append(name)
        except Exception as exc:  # noqa: BLE001 - a plot must not lose a finished check
            print(f"warning: {name} not written ({type(exc).__name__}: {exc})", file=sys.stderr)
    return files


# -- the command ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    """`check` and its options (defaults applied after parsing, so --resume knows what was given)."""
    from nas import config as cfg

    d = _defaults()
    p = _Parser(prog=f"python -m {PROG}", argument_default=argparse.SUPPRESS,
                description="Check the proxy task: rank correlation of proxy accuracy (and of training-free "
                            "scores) with accuracy under a longer reference budget, on architectures sampled "
                            "from the cost window.")
    p.add_argument("command", choices=("check",), help="check: run (or resume) the proxy check")
    g = p.add_argument_group("what is checked (as in nas.search)")
    g.add_argument("--target-flops", type=cfg._count, metavar="COUNT",
                   help="multiply-add target T (required, unless --resume): 400M, 0.4G, 4e8")
    g.add_argument("--space", metavar="FILE", help="search space YAML (default: the built-in MnasNet space)")
    g.add_argument("--cost-window", metavar="LO,HI", help=f"sample LO*T <= MACs <= HI*T (default: {d['cost_window']})")
    g.add_argument("--target-resolution", type=cfg._int_at_least("--target-resolution", 32),
                   help=f"resolution at which MACs are counted (default: {d['target_resolution']})")
    g.add_argument("--dataset", help=f"mnist5k, digits, cifar10, cifar100, imagefolder (default: {d['dataset']})")
    g.add_argument("--data-dir", metavar="DIR", help="where cifar*/imagefolder data live (default: none)")
    g.add_argument("--proxy-epochs", type=cfg._float("--proxy-epochs", 0, strict=True),
                   help=f"epochs of the proxy budget (default: {d['proxy_epochs']:g})")
    g.add_argument("--proxy-resolution", type=cfg._int_at_least("--proxy-resolution", 8),
                   help=f"image size of the proxy budget (default: {d['proxy_resolution']})")
    g.add_argument("--batch-size", type=cfg._positive_int("--batch-size"),
                   help=f"training batch size (default: {d['batch_size']})")
    g.add_argument("--final-epochs", type=cfg._float("--final-epochs", 0, strict=True),
                   help=f"epochs of the reference budget, the stage-2 final budget (default: {d['final_epochs']:g})")
    g.add_argument("--final-resolution", type=cfg._int_at_least("--final-resolution", 8),
                   help="image size of the reference budget (default: --proxy-resolution)")
    g.add_argument("--seed", type=cfg._int_at_least("--seed", 0, cfg.MAX_SEED),
                   help=f"sampling seed; the reference trains on it, the proxy on seed+1..seed+R "
                        f"(default: {d['seed']})")
    g.add_argument("--k", type=cfg._int_at_least("--k", 3), help=f"architectures (default: {d['k']})")
    g.add_argument("--seeds", type=cfg._positive_int("--seeds"), help=f"proxy seeds R (default: {d['seeds']})")
    g.add_argument("--scores", metavar="LIST",
                   help="zero-cost scores: all, none or a comma list of naswot, synflow, grad_norm, snip, params, "
                        f"macs (default: {d['scores']})")
    g.add_argument("--bootstrap", type=cfg._int_at_least("--bootstrap", 100),
                   help=f"bootstrap resamples of the intervals (default: {d['bootstrap']})")
    g.add_argument("--evaluator", metavar="MODULE:FUNC", help=f"the trainer (default: {d['evaluator']})")
    g = p.add_argument_group("where and how it runs")
    g.add_argument("--engine", choices=("local", "nni"), help=f"where runs train (default: {d['engine']})")
    g.add_argument("--workers", type=cfg._int_at_least("--workers", 0),
                   help="runs at once (default: 0 = one per core, at most 4, or one per GPU)")
    g.add_argument("--device", choices=("cpu", "cuda", "auto"), help=f"training device (default: {d['device']})")
    g.add_argument("--trial-timeout", type=cfg._float("--trial-timeout", 0, strict=True), metavar="SECONDS",
                   help=f"a run longer than this is recorded as 'timeout' (default: {d['trial_timeout']:g})")
    g.add_argument("--out", metavar="DIR", help=f"folder of the check (default: {d['out']})")
    g.add_argument("--resume", action="store_true", help="continue the check in --out (other options from it)")
    g.add_argument("--overwrite", action="store_true", help="replace a check in --out")
    g.add_argument("--quick", action="store_true",
                   help="smoke test: K=6, R=2, proxy 0.25 and reference 0.5 epochs on mnist5k at 32 px "
                        "(about a minute on 2 cores; explicit options win)")
    g.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")
    g.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    g.add_argument("--quiet", action="store_true", help="no progress or log lines on stderr")
    try:
        from nas.nni.config import add_cli_options
        add_cli_options(p)
    except Exception:  # NNI not importable: --engine nni says so when used
        pass
    return p


def parse(argv: Sequence[str] | None) -> tuple[dict, set]:
    """(options: defaults < --quick < the stored check on --resume < given; names given)."""
    p = build_parser()
    given = vars(p.parse_args(list(sys.argv[1:] if argv is None else argv)))
    given.pop("command", None)
    opts = _defaults()
    for action in p._actions:  # NNI's options and their defaults
        if action.dest not in opts and action.dest not in ("help", "command") and \
                action.default is not argparse.SUPPRESS:
            opts[action.dest] = action.default
    if given.get("quick"):
        opts.update(QUICK)
    opts.update(given)
    return opts, set(given)


def _check_out(out: str, resume: bool, overwrite: bool) -> None:
    """--out must hold a proxy check exactly when --resume is given, and be writable."""
    from nas import config as cfg

    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    cfg.check_out_dir(out, resume, overwrite, what="proxy check")


def _device(want: str) -> str:
    from nas import config as cfg
    return cfg.device_option(want)


@dataclasses.dataclass
class Setup:
    """Everything validated, nothing written yet."""

    opts: dict
    specs: list
    proxy: Any
    reference: Any
    seeds: list
    scores: list
    engine: Any
    data: Any = None


def validate(opts: dict, stored: Optional[dict] = None) -> Setup:
    """Check every option, file and folder, sample the architectures; write nothing."""
    from nas import config as cfg
    from nas import zero_cost
    from nas.budget import DATASETS
    from nas.engine import load_evaluator
    from nas.engine_local import LocalEngine, device_slots
    from search_space.errors import SpecError
    from search_space.space import SearchSpace

    if opts.get("target_flops") is None:
        raise UserError("--target-flops is required (e.g. --target-flops 400M)")
    target = int(opts["target_flops"])
    window = cfg.parse_window(opts["cost_window"])
    _check_out(opts["out"], bool(opts.get("resume")), bool(opts.get("overwrite")))
    try:
        if stored is not None and stored.get("space_text") and not opts.get("_space_given"):
            space = SearchSpace.from_yaml_text(stored["space_text"], source="the check's stored space")
        elif opts.get("space"):
            if not Path(opts["space"]).is_file():
                raise UserError(f"--space {opts['space']}: no such file")
            space = SearchSpace.from_yaml(opts["space"])
        else:
            space = SearchSpace.default()
    except SpecError as exc:
        raise UserError(f"--space: {str(exc).splitlines()[0]}") from None
    opts["space_text"] = space.to_yaml()
    stride = space.skeleton().total_stride
    for name in ("proxy_resolution", "final_resolution"):
        if opts.get(name) is not None and int(opts[name]) < stride:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} {opts[name]} is below the networks' total stride {stride}; use at least {stride}")
    try:
        scores = zero_cost.parse_names(opts["scores"])
    except ValueError as exc:
        raise UserError(f"--scores: {exc}") from None
    dataset = str(opts["dataset"]).lower()
    if dataset not in DATASETS:
        raise UserError(f"--dataset {opts['dataset']!r}: expected one of {', '.join(DATASETS)}")
    if opts.get("data_dir") and not Path(opts["data_dir"]).is_dir():
        raise UserError(f"--data-dir {opts['data_dir']}: no such folder")
    try:
        load_evaluator(opts["evaluator"])
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--evaluator {opts['evaluator']}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    opts["_device"] = _device(opts["device"])
    if opts["_device"] == "cuda":
        slots = device_slots("cuda", int(opts["workers"]))
    else:
        slots = device_slots("cpu", int(opts["workers"]) or max(1, min(4, os.cpu_count() or 1)))
    if opts["engine"] == "nni":
        try:
            from nas.nni import config as nni_config
            from nas.nni.engine import NniEngine
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"--engine nni: NNI cannot be used here ({type(exc).__name__}: {exc})") from None
        engine = NniEngine.from_args({**opts, "workers": len(slots)}, nni_config.load_nni_config(opts.get("nni_config")),
                                     log=lambda m: _log(opts, m))
    else:
        timeout = float(opts["trial_timeout"])
        engine = LocalEngine(slots, trial_timeout=timeout + min(30.0, 0.25 * timeout))
    try:
        specs = sample_architectures(space, target, window, int(opts["k"]), int(opts["seed"]),
                                     int(opts["target_resolution"]))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    proxy, reference = budgets(opts)
    data = None
    if opts["evaluator"] == _defaults()["evaluator"] or any(s in zero_cost.NEEDS_DATA or s == "synflow"
                                                             for s in scores):
        from nas import data as D
        data = D.load_checked(proxy)
    return Setup(opts=opts, specs=specs, proxy=proxy, reference=reference, seeds=proxy_seeds(opts), scores=scores,
                 engine=engine, data=data)


def _log(opts: dict, msg: str) -> None:
    if not opts.get("quiet"):
        print(msg, file=sys.stderr, flush=True)


def _record(opts: dict) -> dict:
    keep = {k: v for k, v in opts.items() if not k.startswith("_") and k not in NOT_RECORDED}
    return {**{k: v for k, v in keep.items() if v is None or isinstance(v, (str, int, float, bool, list))},
            "tool": TOOL}


def _train(setup: Setup, store: Any, kind: str, budget: Any, seeds: Sequence[int], label: str) -> tuple[Any, int]:
    """Train what is missing of one budget; (the source, runs trained now)."""
    from nas import report
    from nas.engine import EvalContext

    opts = setup.opts
    show = not (opts.get("no_progress") or opts.get("quiet"))
    source = batch_source(store, setup.specs, seeds, budget, opts["evaluator"], kind, int(opts["target_flops"]),
                          int(opts["target_resolution"]))
    stored = sum(r is not None for r in source.records())
    todo = len(source.jobs) - stored
    _log(opts, f"{label}: {len(setup.specs)} architectures x seeds {list(seeds)}, {budget.epochs:g} epochs at "
               f"{budget.resolution}px" + (f" ({stored} of {len(source.jobs)} runs already stored)" if stored else ""))
    if todo:
        progress = report.Progress(len(source.jobs), done=stored, kind=kind, enabled=show)
        source.listeners.append(progress)
        try:
            setup.engine.run(source, EvalContext(budget=budget, evaluator=opts["evaluator"]))
        finally:
            progress.close()
    return source, sum(r is not None for r in source.records()) - stored


def run(argv: Sequence[str] | None = None) -> dict:
    """The whole check (validate, train what is missing, score, report); its summary."""
    from nas.engine import sigterm_as_interrupt
    from nas.store import Store

    t0 = time.time()
    opts, given = parse(argv)
    stored = None
    if opts.get("resume"):
        _check_out(opts["out"], True, False)
        with Store.open(opts["out"]) as st:
            stored = st.config
        if stored.get("tool") != TOOL:
            raise UserError(f"--resume: {opts['out']} holds a search run, not a proxy check; use another --out")
        fresh, _ = parse(["check"])  # defaults (NNI's too), then the check's options, then the given ones
        opts = {**fresh, **{k: v for k, v in stored.items() if k != "tool"}, **{k: opts[k] for k in given}}
        opts["resume"] = True
        opts["_space_given"] = "space" in given
    setup = validate(opts, stored)
    out = Path(opts["out"])
    if opts.get("overwrite") and not opts.get("resume"):
        for name in DB_FILES:
            if (out / name).exists():
                (out / name).unlink()
    store = Store.create(out, _record(opts)) if stored is None else Store.open(out)
    try:
        if stored is not None:
            store.set_config(_record(opts))
            store.requeue_pending()
        with sigterm_as_interrupt():
            return _check(setup, store, out, t0)
    finally:
        store.close()


def _check(setup: Setup, store: Any, out: Path, t0: float) -> dict:
    from nas.config import parse_window
    from search_space import cost

    opts = setup.opts
    lo, hi = cost.macs(setup.specs[0]), cost.macs(setup.specs[-1])
    _log(opts, f"proxy check: {len(setup.specs)} architectures of {lo / 1e6:.0f}M-{hi / 1e6:.0f}M MACs "
               f"(target {int(opts['target_flops']) / 1e6:g}M), {len(setup.seeds)} proxy seeds, "
               f"{opts['engine']} engine; out: {out}")
    zc, zc_s, zc_batch = zero_cost_scores(store, setup.specs, setup.scores, setup.data, int(opts["seed"]),
                                log=lambda m: _log(opts, m))
    prox, n1 = _train(setup, store, KIND, setup.proxy, setup.seeds, "proxy budget")
    ref, n2 = _train(setup, store, REF_KIND, setup.reference, [int(opts["seed"])], "reference budget")
    rows = collect(setup.specs, prox, ref, setup.seeds, zc)
    analysis = analyze(rows, setup.seeds, setup.scores, int(opts["bootstrap"]), int(opts["seed"]))
    summary = {"analysis": analysis, "seeds": setup.seeds, "reference_seed": int(opts["seed"]),
               "scores": setup.scores, "target": int(opts["target_flops"]),
               "window": list(parse_window(opts["cost_window"])),
               "target_resolution": int(opts["target_resolution"]),
               "proxy_budget": dataclasses.asdict(setup.proxy), "reference_budget": dataclasses.asdict(setup.reference),
               "cost": {"proxy": cost_of(prox.records(), setup.proxy), "reference": cost_of(ref.records(), setup.reference),
                        "zero_cost_s": zc_s},
               "out": str(out), "trained_now": n1 + n2, "files": [], "zc_batch": zc_batch}
    summary["words"] = summary_words(summary)
    summary["files"] = write_outputs(summary, rows, out)
    summary["wall_s"] = time.time() - t0
    summary["rows"] = rows
    summary["json"] = bool(opts.get("json"))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m nas.proxy check ...`; 0 with statistics, 1 without (fewer than 3
    architectures have both accuracies; or the engine stopped), 2 for bad input, 130 when
    interrupted (finished runs stay in the store: `--resume` goes on)."""
    from nas.errors import cli_main
    return cli_main(PROG, lambda: _report(run(argv)),
                    "interrupted; finished runs are stored, rerun with --resume to go on")


def _report(summary: dict) -> int:
    text = markdown(summary)
    print("\n".join(text.splitlines()[2:]).rstrip())
    if summary["json"]:
        print(json.dumps(to_json(summary), sort_keys=True))
    if summary["analysis"]["n"] < 3:
        print(f"{PROG}: only {summary['analysis']['n']} architectures have both accuracies; the statistics "
              "are undefined", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
