"""Orchestration overhead of the local engine, and throughput scaling with workers.

1. Overhead per trial with an evaluator that does no work: everything the search does
   around a trial (controller ask/tell, decode, cost model, two store transactions with
   the controller checkpoint, reports) plus, for the worker pool, the hand-off to a
   worker process and back. Measured differentially, (wall(N2) - wall(N1)) / (N2 - N1),
   so worker start-up is excluded; the in-process loop is the baseline (ratio = pool / inline).
   Goal: <= 50 ms per trial.
2. Throughput with 1, 2, 4 workers and an evaluator that sleeps S seconds (no CPU), as
   trials per second and the speed-up against 1 worker measured in the same run.

    python bench/engine_overhead.py [--quick] [--json]

The NNI engine's figures are in bench/engine_overhead_nni.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET = 400_000_000


def noop_evaluate(spec, budget):
    """No work at all: a fixed accuracy."""
    from nas.evaluate.result import TrialResult
    return TrialResult(status="ok", accuracy=0.5)


def sleep_evaluate(spec, budget):
    """Sleeps BENCH_SLEEP seconds (default 0.2): a trial that waits, using no CPU."""
    from nas.evaluate.result import TrialResult
    time.sleep(float(os.environ.get("BENCH_SLEEP", "0.2")))
    return TrialResult(status="ok", accuracy=0.5)


def run_search(trials: int, workers: int, evaluator: str, in_process: bool = False) -> float:
    """Wall seconds of a search of `trials` trials (random controller, no cost window)."""
    from nas.evaluate.budget import ProxyBudget
    from nas.engines.protocol import EvalContext
    from nas.search.loop import SearchLoop
    from nas.search.recipe import ControllerRecipe
    from nas.search.objective import Objective
    from nas.search.settings import CostWindow, LoopSettings, StopRule
    from nas.engines.local import LocalEngine
    from nas.store import Store
    from search_space.space import SearchSpace

    space = SearchSpace.default()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.create(tmp, {"bench": True})
        loop = SearchLoop(store, space, ControllerRecipe("random", seed=0),
                          LoopSettings(Objective(TARGET), CostWindow(0.0, float("inf")), StopRule(trials=trials)))
        ctx = EvalContext(ProxyBudget(), evaluator=f"bench.engine_overhead:{evaluator}")
        t0 = time.perf_counter()
        LocalEngine(["cpu"] * workers, in_process=in_process).run(loop, ctx)
        wall = time.perf_counter() - t0
        assert store.count("search") == trials
        store.close()
    return wall


def overhead_ms(n1: int, n2: int, workers: int = 1, in_process: bool = False) -> float:
    w1 = run_search(n1, workers, "noop_evaluate", in_process)
    w2 = run_search(n2, workers, "noop_evaluate", in_process)
    return 1000.0 * (w2 - w1) / (n2 - n1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials (well under a minute)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    a = ap.parse_args(argv)
    n1, n2 = (20, 120) if a.quick else (50, 500)
    sleep = 0.2
    per_worker = 6 if a.quick else 12
    os.environ["BENCH_SLEEP"] = str(sleep)

    inline = overhead_ms(n1, n2, in_process=True)
    pool = overhead_ms(n1, n2, workers=1)
    print(f"overhead per trial, no-work evaluator: in-process loop {inline:.1f} ms (baseline), "
          f"1 worker process {pool:.1f} ms ({pool / inline:.2f}x baseline; goal <= 50 ms)")
    scaling = {}
    for w in (1, 2, 4):
        n = per_worker * w
        wall = run_search(n, w, "sleep_evaluate")
        scaling[w] = n / wall
    for w, tput in scaling.items():
        print(f"{w} worker(s), {sleep:g} s sleep-evaluator: {tput:.2f} trials/s, "
              f"{tput / scaling[1]:.2f}x of 1 worker (ideal {w}x; start-up included)")
    figures = {"overhead_inline_ms": round(inline, 2), "overhead_pool_ms": round(pool, 2),
               "pool_vs_inline": round(pool / inline, 2), "goal_ms": 50, "sleep_s": sleep,
               "throughput_per_s": {str(w): round(t, 3) for w, t in scaling.items()},
               "speedup_vs_1_worker": {str(w): round(t / scaling[1], 2) for w, t in scaling.items()}}
    if a.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
