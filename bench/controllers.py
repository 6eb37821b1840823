"""Sample efficiency of the controllers, under the search's own rules, on a trained objective.

Objective `surrogate` (default): the search's reward, MnasNet's ACC × (MACs/T)^-0.07
(`nas.search.objective.Objective`, T = 400M at 224 px), with ACC the proxy accuracy predicted by
a surrogate fitted on real proxy runs of the default space (`bench/surrogate.py`, data
in `bench/data/surrogate_v2.csv.gz`). Objective `naswot`: the same with ACC replaced by the NASWOT score
(`nas.evaluate.zero_cost.naswot`: class-balanced batch of mnist5k, fixed init, dropout and
drop-connect off: deterministic) — a training-free check, not evidence of accuracy.

Every method is driven by one loop with the search's rules (`nas.search.loop.SearchLoop`),
one proposal at a time:
- a proposal outside the cost window (0.5-1.0 × T) is told the cost-only reward
  (`nas.search.objective.Objective.cost_only_reward`) and does not count;
- a proposal whose architecture (canonical key) was evaluated already in this run is
  told the known reward and does not count (the search's cache);
- only distinct in-window evaluations count against the budget; at most 50 × budget +
  100 proposals are asked (the search's cap).
So the de-duplication is the same for every method: a repeat costs no evaluation, for
anyone, and a method that repeats itself only loses proposals.

Methods, each at the configuration a search would use at that budget: ours (`rl`,
`evolution`, `random`, `predictor`) built by `nas.search.recipe.ControllerRecipe.for_run` (the
`--controller` sizing, the canonical key, the predictor's cost window); NNI 3.0's TPE,
Evolution, Regularized Evolution and GP tuners through their tuner API
(`bench/nni_tuners.py`; NNI's evolution tuners sized like ours; the GP with a cheaper
acquisition search, and only up to 40 evaluations: see there; TPE only up to 100: see
MAX_BUDGET).

Reported, over seeds `--seed-offset` ... + `--seeds` - 1: the median and interquartile
range of the best reward after each budget; the ratio to random search's median; the
evaluations each method needs (median over seeds) to reach random search's median
best-of-N, and N over that (how many times fewer evaluations than random).

    python bench/controllers.py [--objective surrogate|naswot] [--budgets 40,100,300]
        [--seeds 20] [--seed-offset 0] [--methods ...] [--data FILE] [--quick] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import nni_tuners  # noqa: E402
from bench.surrogate import DATA, MODEL  # noqa: E402

TARGET = 400_000_000
WINDOW = (0.5, 1.0)
RES = 224
CHANCE = 0.1                  # 1 / classes of mnist5k: the search's cost-only reward scale
OURS = ("rl", "evolution", "random", "predictor")
METHODS = ("rl", "predictor", "nni-gp", "evolution", "random", "nni-tpe", "nni-evolution", "nni-regevo")
# (the slowest first: with --jobs they start first)
# Tuners whose cost per proposal grows with the results so far are run to these budgets
# only: NNI's GP costs ~1 s a proposal here (bench/nni_tuners.py); NNI's TPE ~11 ms a
# proposal up to 100 evaluations, but one 300-evaluation run had not ended after 5 min
# (20 seeds: hours), so it is compared at 40 and 100.
MAX_BUDGET = {"nni-gp": 40, "nni-tpe": 100}
BUDGETS = (40, 100, 300)
REACH = (40, 100, 200, 300)   # random's best-of-N that the others are timed against


class Evaluator:
    """reward(spec, macs) of the chosen objective, cached per canonical key (deterministic)."""

    def __init__(self, kind: str, data: str | Path = DATA, model: str = MODEL) -> None:
        from nas.search.objective import Objective
        self.kind = kind
        self.objective = Objective(TARGET)
        self.cache: dict[str, float] = {}
        self.seconds = 0.0
        if kind == "surrogate":
            from bench.surrogate import Surrogate
            self.surrogate = Surrogate(data, model)
            self.n_data = self.surrogate.n
            self.score: Callable[[Any], float] = self.surrogate.accuracy
        elif kind == "naswot":
            from nas.evaluate import data as D
            from nas.evaluate import zero_cost
            from nas.evaluate.budget import ProxyBudget
            batch = zero_cost.balanced_batch(D.load(ProxyBudget()))
            self.n_data = 0
            self.score = lambda spec: zero_cost.naswot(spec, batch, seed=0)
        else:
            raise ValueError(f"unknown objective {kind!r}")

    def __call__(self, spec: Any, key: str, macs: int) -> float:
        v = self.cache.get(key)
        if v is None:
            t = time.perf_counter()
            v = self.objective.reward(self.score(spec), macs)
            self.seconds += time.perf_counter() - t
            self.cache[key] = v
        return v


def build(method: str, space: Any, seed: int, budget: int) -> Any:
    if method in OURS:
        from nas.search.recipe import ControllerRecipe
        return ControllerRecipe.for_run(method, seed, budget, target=TARGET, cost_window=WINDOW,
                                        target_resolution=RES).build(space)
    return nni_tuners.NniController(method, space.decisions, seed, budget)


def config(method: str, budget: int) -> Any:
    """What the method is built with at `budget` (runs with equal configs are shared)."""
    if method in OURS:
        from nas.search.recipe import ControllerRecipe
        return ControllerRecipe.for_run(method, 0, budget, target=TARGET, cost_window=WINDOW).kwargs
    return nni_tuners.config(method, budget)


def drive(ctl: Any, space: Any, evaluate: Evaluator, budget: int) -> dict:
    """One run under the search's rules (module docstring); the reward of each counted
    evaluation in order, proposals asked, and seconds spent inside the controller."""
    from controllers import SpaceExhausted
    from nas.search.objective import Objective
    from search_space import cost

    lo, hi = WINDOW[0] * TARGET, WINDOW[1] * TARGET
    known: dict[str, float] = {}
    rewards: list[float] = []
    chosen: list[list[int]] = []
    asked, spent = 0, 0.0
    cap = 50 * budget + 100
    while len(rewards) < budget and asked < cap:
        t = time.perf_counter()
        try:
            p = ctl.ask()
        except SpaceExhausted:
            break
        spent += time.perf_counter() - t
        asked += 1
        spec = space.decode(list(p.choices), num_classes=1000, resolution=RES)
        macs = int(cost.macs(spec, RES))
        if not lo <= macs <= hi:
            r = Objective(TARGET).cost_only_reward(macs, None, CHANCE)
        else:
            key = spec.key()
            r = known.get(key)
            if r is None:
                r = known[key] = evaluate(spec, key, macs)
                rewards.append(r)
                chosen.append([int(c) for c in p.choices])
        t = time.perf_counter()
        ctl.tell(p, r)
        spent += time.perf_counter() - t
    return {"rewards": rewards, "choices": chosen, "asked": asked, "controller_s": spent}


def best_after(rewards: Sequence[float], n: int) -> float:
    return max(rewards[:n]) if rewards else float("nan")


def needed(rewards: Sequence[float], level: float) -> Optional[int]:
    """Evaluations until the best reaches `level` (None: not within the run)."""
    best = -math.inf
    for i, r in enumerate(rewards, 1):
        best = max(best, r)
        if best >= level:
            return i
    return None


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(values, float)
    return float(np.median(a)), float(np.quantile(a, 0.25)), float(np.quantile(a, 0.75))


def run_method(method: str, budgets: Sequence[int], seeds: Sequence[int], evaluate: Evaluator, space: Any) -> dict:
    """One method on every seed; runs whose configuration is the same at several
    budgets are made once, at the largest, and read at each budget (a prefix)."""
    top = min(max(budgets), MAX_BUDGET.get(method, max(budgets)))
    mine = [b for b in budgets if b <= top]
    groups: dict[str, list[int]] = {}
    for b in mine:
        groups.setdefault(json.dumps(config(method, b), sort_keys=True), []).append(b)
    best: dict[int, list[float]] = {b: [] for b in mine}
    longest: list[list[float]] = []
    paths: list[list[list[int]]] = []
    asked, asked_top, spent, t0 = 0, 0, 0.0, time.perf_counter()
    for group in groups.values():
        n = max(group)
        for seed in seeds:
            res = drive(build(method, space, seed, n), space, evaluate, n)
            asked += res["asked"]
            spent += res["controller_s"]
            for b in group:
                best[b].append(best_after(res["rewards"], b))
            if n == top:
                longest.append(res["rewards"])
                paths.append(res["choices"])
                asked_top += res["asked"]
    return {"best": best, "longest": longest, "paths": paths, "top": top, "asked": asked, "asked_longest": asked_top,
            "controller_ms_per_proposal": 1e3 * spent / max(1, asked),
            "wall_s": time.perf_counter() - t0, "config": {str(b): config(method, b) for b in mine}}


def trajectory_picks(raw: dict, k: int) -> list[dict]:
    """`k` architectures per method from its longest runs, evenly spaced over the runs'
    progress (early, random-start proposals as well as late, good ones; the runs of all
    seeds pooled): the `--specs` lines of `bench/surrogate_data.py`. Why: a surrogate fitted
    on a uniform sample is least sure where searches end up, and every compared method
    gets the same number of points, so the data favour none of them."""
    out = []
    for method, r in raw.items():
        pool = sorted(((i + 0.5) / len(path), s, tuple(c)) for s, path in enumerate(r["paths"])
                      for i, c in enumerate(path))
        seen: set = set()
        distinct = [c for _, _, c in pool if not (c in seen or seen.add(c))]
        picks = distinct if len(distinct) <= k else [distinct[int(j * len(distinct) / k)] for j in range(k)]
        out += [{"choices": list(c), "origin": f"trajectory:{method}"} for c in picks]
    return out


def _line(method: str, r: dict) -> str:
    med = "  ".join(f"@{b}: {np.median(v):.4f}" for b, v in r["best"].items())
    return (f"{method:14s} {med}   ({r['controller_ms_per_proposal']:.1f} ms/proposal in the controller, "
            f"{r['asked_longest']} proposals for {sum(len(x) for x in r['longest'])} evaluations in the "
            f"{r['top']}-runs, "
            f"{r['wall_s']:.0f} s)")


_WORKER: dict = {}


def _job(args: tuple) -> tuple[str, dict, dict]:
    """A worker process's task: one method (the evaluator is built once per process;
    its fit is deterministic, so every process has the same objective)."""
    import logging
    import warnings
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    method, budgets, seeds, kind, data = args
    if "evaluate" not in _WORKER:
        from search_space.space import SearchSpace
        _WORKER["evaluate"], _WORKER["space"] = Evaluator(kind, data), SearchSpace.default()
    ev = _WORKER["evaluate"]
    before = dict(ev.cache)
    r = run_method(method, budgets, seeds, ev, _WORKER["space"])
    return method, r, {k: v for k, v in ev.cache.items() if k not in before}


def run_all(methods: Sequence[str], budgets: Sequence[int], seeds: Sequence[int], evaluate: Evaluator,
            space: Any, log: Callable[[str], None] = print, jobs: int = 1, kind: str = "surrogate",
            data: str | Path = DATA) -> dict:
    """Every method on every seed (`run_method`), in `jobs` processes (one method each)."""
    out: dict[str, Any] = {}
    if jobs <= 1:
        for method in methods:
            out[method] = run_method(method, budgets, seeds, evaluate, space)
            log(_line(method, out[method]))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_job, (m, list(budgets), list(seeds), kind, str(data))) for m in methods]
        for f in as_completed(futures):
            method, r, cache = f.result()
            out[method] = r
            evaluate.cache.update(cache)
            log(_line(method, r))
    return {m: out[m] for m in methods}


def summarize(raw: dict, budgets: Sequence[int]) -> dict:
    """Medians, IQRs, ratios to random, evaluations needed to reach random's best-of-N."""
    table: dict[str, Any] = {}
    base = raw.get("random")
    random_best = {n: [best_after(r, n) for r in base["longest"]] for n in REACH if n <= base["top"]} if base else {}
    levels = {n: float(np.median(v)) for n, v in random_best.items()}
    for method, r in raw.items():
        row: dict[str, Any] = {"budgets": {}, "reach": {}, "controller_ms_per_proposal": r["controller_ms_per_proposal"],
                               "config": r["config"], "max_budget": r["top"],
                               "proposals_per_evaluation": r["asked_longest"] / max(1, sum(map(len, r["longest"])))}
        for b, vals in r["best"].items():
            med, q1, q3 = quartiles(vals)
            entry = {"median": med, "q1": q1, "q3": q3}
            if base and b in base["best"]:
                entry["ratio_to_random"] = med / float(np.median(base["best"][b]))
            row["budgets"][str(b)] = entry
        for n, level in levels.items():
            counts = [needed(rw, level) for rw in r["longest"]]
            # median with "not reached" as +inf: defined when more than half reached it
            ranked = sorted(math.inf if c is None else c for c in counts)
            med = float(np.median(ranked)) if ranked else math.inf
            row["reach"][str(n)] = {"level": level, "median_evaluations": None if math.isinf(med) else med,
                                    "reached": sum(c is not None for c in counts), "of": len(counts),
                                    "speedup": None if math.isinf(med) or med == 0 else n / med}
        table[method] = row
    goal = None
    if base and 200 in levels:
        at40 = {m: t["budgets"]["40"]["median"] for m, t in table.items() if "40" in t["budgets"]}
        if at40:
            best = max(at40, key=at40.get)
            goal = {"random_best_of_200": levels[200], "best_method_at_40": best, "its_median": at40[best],
                    "met": at40[best] >= levels[200], **_goal_test(raw[best]["best"][40], random_best[200], levels[200])}
    return {"methods": table, "random_levels": {str(k): v for k, v in levels.items()}, "goal_40_vs_random_200": goal}


def _goal_test(at40: Sequence[float], random200: Sequence[float], level: float) -> dict:
    """The goal's spread as a test: one-sided Mann-Whitney U of the method's best-of-40
    against random's best-of-200 over seeds (independent samples, no normality assumed),
    and the share of its seeds at or above `level`, random's median best-of-200."""
    from scipy.stats import mannwhitneyu
    if len(at40) < 2 or len(random200) < 2:
        return {"p_mannwhitney": None, "share_above_random_median": None}
    return {"p_mannwhitney": float(mannwhitneyu(at40, random200, alternative="greater").pvalue),
            "share_above_random_median": sum(v >= level for v in at40) / len(at40)}


def _fmt(v: Optional[float], spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report(summary: dict, budgets: Sequence[int]) -> str:
    width = 32   # room for three-digit scores (the naswot objective) and a space between
    lines = ["", "best reward, median [IQR] over seeds:",
             "method         " + "".join(f"@{b}".rjust(width) for b in budgets)]
    for m, row in summary["methods"].items():
        cells = []
        for b in budgets:
            e = row["budgets"].get(str(b))
            cells.append(("-" if e is None else f"{e['median']:.4f} [{e['q1']:.4f}, {e['q3']:.4f}]").rjust(width))
        lines.append(f"{m:14s} " + "".join(cells))
    lines += ["", "ratio to random search's median at the same budget:"]
    for m, row in summary["methods"].items():
        lines.append(f"{m:14s} " + "  ".join(f"@{b}: {_fmt(row['budgets'].get(str(b), {}).get('ratio_to_random'))}"
                                            for b in budgets))
    lines += ["", "proposals asked per counted evaluation in the longest runs (repeats and out-of-window "
                  "proposals are told, not counted):",
              "  ".join(f"{m} {row['proposals_per_evaluation']:.2f}" for m, row in summary["methods"].items())]
    levels = summary["random_levels"]
    if levels:
        lines += ["", "evaluations to reach random's median best-of-N (median over seeds; x = N / that; "
                      "reached: seeds that got there within the run):"]
        lines.append("method         " + "".join(f"{'N=' + n + ' (' + format(v, '.4f') + ')':>26s}"
                                                 for n, v in levels.items()))
        for m, row in summary["methods"].items():
            cells = []
            for n in levels:
                e = row["reach"].get(n)
                if e is None:
                    cells.append(f"{'-':>26s}")
                else:
                    cells.append(f"{_fmt(e['median_evaluations'], '.0f')} (x{_fmt(e['speedup'], '.1f')}, "
                                 f"{e['reached']}/{e['of']})".rjust(26))
            lines.append(f"{m:14s} " + "".join(cells))
    g = summary.get("goal_40_vs_random_200")
    if g:
        lines += ["", f"goal (best method at 40 reaches random's best-of-200 = {g['random_best_of_200']:.4f}): "
                      f"{'met' if g['met'] else 'missed'} — best at 40: {g['best_method_at_40']} {g['its_median']:.4f}"]
        if g.get("p_mannwhitney") is not None:
            lines.append(f"  on {g['share_above_random_median']:.0%} of its seeds the best-of-40 reaches random's median "
                         f"best-of-200; one-sided Mann-Whitney U (its best-of-40 > random's best-of-200, over seeds) "
                         f"p = {g['p_mannwhitney']:.2g}")
    return "\n".join(lines)


def machine() -> dict:
    from search_space.latency import cpu_model
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "platform": platform.platform()}


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objective", choices=("surrogate", "naswot"), default="surrogate",
                    help="surrogate (default: trained accuracy, bench/data/) or naswot (training-free)")
    ap.add_argument("--data", default=str(DATA), help="the surrogate's table (default bench/data/surrogate_v2.csv.gz)")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="evaluation budgets (default 40,100,300)")
    ap.add_argument("--seeds", type=int, default=20, help="seeds per method (default 20)")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed (default 0; held-out: 2000, and 1000 with surrogate_v1)")
    ap.add_argument("--methods", default=None, help=f"comma list (default all: {','.join(METHODS)})")
    ap.add_argument("--jobs", type=int, default=1, help="processes, one method each (default 1; results do not "
                                                         "depend on it)")
    ap.add_argument("--quick", action="store_true", help="budgets 6,12, 2 seeds, ours + NNI TPE (a smoke test)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--trajectories", metavar="FILE", help="also write K architectures per method from its runs, "
                                                              "one JSON line each (bench/surrogate_data.py --specs)")
    ap.add_argument("--trajectory-count", type=int, default=12, metavar="K", help="per method (default 12)")
    a = ap.parse_args(argv)
    try:
        a.budgets = sorted({int(b) for b in str(a.budgets).split(",")})
        if not a.budgets or a.budgets[0] < 1:
            raise ValueError
    except ValueError:
        ap.exit(2, f"error: --budgets must be positive integers, got {a.budgets!r}\n")
    quick_methods = a.quick and a.methods is None
    a.methods = [m for m in (a.methods or ",".join(METHODS)).split(",") if m]
    bad = [m for m in a.methods if m not in METHODS]
    if bad or not a.methods:
        ap.exit(2, f"error: unknown method {bad[0] if bad else ''!r}; choose from {', '.join(METHODS)}\n")
    if a.seeds < 1 or a.seed_offset < 0 or a.jobs < 1 or a.trajectory_count < 1:
        ap.exit(2, "error: --seeds, --jobs and --trajectory-count must be >= 1 and --seed-offset >= 0\n")
    if a.quick:
        a.budgets, a.seeds = [6, 12], 2
        if quick_methods:
            a.methods = list(OURS) + ["nni-tpe"]
    if a.objective == "surrogate" and not Path(a.data).is_file():
        ap.exit(2, f"error: --data {a.data}: no such file (bench/surrogate_data.py makes it)\n")
    return a


def main(argv: Optional[Sequence[str]] = None) -> int:
    import logging
    import warnings

    a = parse(argv)
    logging.disable(logging.WARNING)  # NNI's tuners log every suggestion
    warnings.filterwarnings("ignore")  # sklearn's GP convergence warnings
    from search_space.space import SearchSpace

    space = SearchSpace.default()
    t0 = time.perf_counter()
    try:
        evaluate = Evaluator(a.objective, a.data)
    except (ValueError, OSError) as exc:
        print(f"error: --data {a.data}: {exc}", file=sys.stderr)
        return 2
    seeds = list(range(a.seed_offset, a.seed_offset + a.seeds))
    print(f"objective {a.objective}" + (f" (surrogate {MODEL} on {evaluate.n_data} architectures of {a.data})"
                                        if a.objective == "surrogate" else "")
          + f"; budgets {a.budgets}; seeds {seeds[0]}..{seeds[-1]}", flush=True)
    trust = None
    if a.objective == "surrogate":
        from bench.surrogate import quality
        trust = quality(a.data, folds=min(5, max(2, evaluate.n_data // 2)))
        cv, ceil = trust["cv"], trust["ceiling"]
        print(f"surrogate on held-out architectures ({cv['folds']}-fold): tau {cv['tau']:.3f}, R2 {cv['r2']:.3f}, "
              f"tau vs one seed {cv.get('tau_seed1', float('nan')):.3f}; seed-noise ceiling tau(seed 1, seed 2) "
              f"{ceil['tau']:.3f}; table: " + ", ".join(f"{n} {o}" for o, n in trust["origins"].items()), flush=True)
    raw = run_all(a.methods, a.budgets, seeds, evaluate, space, log=lambda m: print(m, flush=True), jobs=a.jobs,
                  kind=a.objective, data=a.data)
    summary = summarize(raw, a.budgets)
    print(report(summary, a.budgets))
    if a.trajectories:
        from search_space.fileio import write_atomic
        picks = trajectory_picks(raw, a.trajectory_count)
        write_atomic(Path(a.trajectories), "".join(json.dumps(p) + "\n" for p in picks).encode())
        print(f"{len(picks)} trajectory architectures ({a.trajectory_count} per method) in {a.trajectories}")
    wall = time.perf_counter() - t0
    print(f"\n{len(evaluate.cache)} distinct architectures evaluated, {wall:.0f} s in all")
    if a.json:
        print(json.dumps({"objective": a.objective, "surrogate_architectures": evaluate.n_data, "surrogate": trust,
                          "budgets": a.budgets, "seeds": seeds, **summary, "wall_s": wall,
                          "distinct_architectures": len(evaluate.cache), "machine": machine()}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
