"""`python -m nas.proxy check`: does the proxy task rank architectures like a longer training does?

Why: the search trusts one short proxy run per candidate (2 epochs at 32 px on one seed)
to rank architectures. That is only worth its cost if the ranking agrees with what more
training would say, and if seed noise is small against the differences between
architectures. The check measures both, and scores training-free proxies
(`nas.evaluate.zero_cost`) on the same architectures against the same reference, with the
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
search-validation split (`nas.evaluate.data`), as in stage 2.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Optional, Sequence

import numpy as np

from nas.evaluate.budget import measurement_id

KIND = "proxy"
REF_KIND = "proxy-reference"
INHERITED = "supernet"   # the column of `--proxy supernet`: accuracy with a supernet's inherited weights


def batch_source(store: Any, specs: Sequence[Any], seeds: Sequence[int], budget: Any, evaluator: str, kind: str,
                 target: int, target_resolution: int, listeners: Sequence[Any] = ()) -> Any:
    """Every spec on every seed as one resumable `BatchSource` of `kind` (ids: the one
    identity rule, `nas.evaluate.budget.measurement_id`)."""
    from nas.search.batch import BatchSource
    from nas.search.objective import Objective

    items = [(spec, s) for spec in specs for s in seeds]
    return BatchSource(store, [sp for sp, _ in items], Objective(int(target)), kind=kind,
                       target_resolution=int(target_resolution), listeners=listeners,
                       overrides=[{"seed": int(s)} for _, s in items],
                       ids=[measurement_id(sp.key(), s, budget, evaluator) for sp, s in items])


def budgets(opts: dict) -> tuple[Any, Any]:
    """(proxy budget, reference budget): the search's proxy budget from the options, and
    the stage-2 final budget built from it, without the test part."""
    from nas.evaluate.budget import ProxyBudget, data_fields
    from nas.final.plan import final_budget

    proxy = ProxyBudget(dataset=str(opts["dataset"]).lower(), data_dir=opts.get("data_dir"),
                        resolution=int(opts["proxy_resolution"]), target_resolution=int(opts["target_resolution"]),
                        epochs=float(opts["proxy_epochs"]), batch_size=int(opts["batch_size"]), seed=int(opts["seed"]),
                        device=opts.get("_device", "cpu"), time_limit=float(opts["trial_timeout"]),
                        **data_fields(opts))
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


def zero_cost_scores(store: Any, specs: Sequence[Any], names: Sequence[str], data: Any, seed: int,
                     log: Any = None) -> tuple[dict, dict, Optional[str]]:
    """({score: {key: value}}, {score: seconds per network}, the batch in words), computed once per
    (architecture, score, batch) and kept in the store's meta (a resumed check reuses them)."""
    from nas.evaluate import zero_cost

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




def inherited_scores(store: Any, specs: Sequence[Any], folder: str, device: str = "cpu",
                     log: Any = None) -> tuple[dict[str, float], float]:
    """({key: accuracy with the supernet's inherited weights}, seconds per network): the
    one-shot search's score (`nas.supernet.score.InheritedWeights`, with the search's
    default calibration and search-validation images), kept in the store's meta for a
    resumed check (tagged with the supernet's folder and weights file's size and time)."""
    from pathlib import Path

    from nas.supernet.checkpoint import WEIGHTS
    from nas.supernet.oneshot import CALIBRATION_IMAGES, SCORE_IMAGES
    from nas.supernet.score import InheritedWeights

    weights = Path(folder) / WEIGHTS
    stat = weights.stat()
    tag = f"{Path(folder).resolve()}/{stat.st_size}/{stat.st_mtime_ns}/{CALIBRATION_IMAGES}/{SCORE_IMAGES}"
    cache = json.loads(store.get_meta("inherited") or "{}")
    if cache.get("tag") != tag:
        cache = {"tag": tag, "values": {}, "seconds": {}}
    values, seconds = cache["values"], cache["seconds"]
    evaluator = InheritedWeights(folder, calibration_images=CALIBRATION_IMAGES, val_images=SCORE_IMAGES)
    budget = None
    for spec in specs:
        key = spec.key()
        if key in values:
            continue
        if budget is None:
            from nas.evaluate.budget import ProxyBudget
            budget = ProxyBudget(device=device)
        result = evaluator(spec, budget)
        values[key], seconds[key] = result.accuracy, result.wall_time
    store.set_meta("inherited", json.dumps(cache))
    if log is not None:
        log(f"supernet scores: {len(specs)} architectures with inherited weights from {folder}")
    return {s.key(): values.get(s.key()) for s in specs}, float(np.mean([seconds.get(s.key(), 0.0) for s in specs]))
