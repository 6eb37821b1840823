"""Per-trial overhead of the NNI engine against the local engine, in one run.

Both engines run the same search loop (random controller, built-in space) with the same
trivial evaluator (`nas.trial:hash_evaluate`: no training), at the same
concurrency. Per-trial overhead is the steady-state time between consecutive recorded
trials ((last finish - first finish) / (N - 1)) times the concurrency; the fixed cost
is the rest of the wall time (start-up and stop). The ratio NNI / local is printed.

    python bench/engine_overhead_nni.py [--quick] [--json] [--trials N] [--concurrency C]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.evaluate.budget import ProxyBudget  # noqa: E402
from nas.engines.protocol import EvalContext  # noqa: E402
from nas.search.loop import SearchLoop
from nas.search.recipe import ControllerRecipe
from nas.search.objective import Objective
from nas.search.settings import CostWindow, LoopSettings, StopRule  # noqa: E402
from nas.store import Store  # noqa: E402
from search_space.space import SearchSpace  # noqa: E402

TARGET = 400_000_000


def measure(engine, out: Path, trials: int) -> dict:
    space = SearchSpace.default()
    store = Store.create(out, {"bench": engine.name})
    loop = SearchLoop(store, space, ControllerRecipe("random", seed=0),
                      LoopSettings(Objective(TARGET), CostWindow(0.0, 1e9), StopRule(trials=trials)))
    ctx = EvalContext(budget=ProxyBudget(), evaluator="nas.trial:hash_evaluate")
    t0 = time.time()
    engine.run(loop, ctx)
    wall = time.time() - t0
    done = sorted(r["finished_at"] for r in store.trials())
    store.close()
    assert len(done) == trials, f"{engine.name}: {len(done)} of {trials} trials recorded"
    per_trial = (done[-1] - done[0]) / (trials - 1)
    return {"wall_s": round(wall, 3), "per_trial_s": round(per_trial, 4),
            "fixed_s": round(wall - per_trial * (trials - 1), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few trials (under a minute)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=1)
    a = ap.parse_args()
    trials = a.trials or (5 if a.quick else 20)
    if trials < 2:
        print("--trials must be at least 2", file=sys.stderr)
        sys.exit(2)
    from nas.engines.local import LocalEngine
    from nas.nni.engine import NniEngine

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HOME"] = tmp  # NNI's experiment manifest goes under $HOME
        local = measure(LocalEngine(slots=["cpu"] * a.concurrency), Path(tmp) / "local", trials)
        nni = measure(NniEngine(concurrency=a.concurrency, log=lambda m: None), Path(tmp) / "nni", trials)
    ratio = nni["per_trial_s"] / max(local["per_trial_s"], 1e-6)
    print(f"engine overhead, {trials} trials of a no-work evaluator, concurrency {a.concurrency}")
    print(f"{'engine':8} {'per trial (s)':>14} {'fixed (s)':>10} {'wall (s)':>9}")
    for name, m in (("local", local), ("nni", nni)):
        print(f"{name:8} {m['per_trial_s']:>14.4f} {m['fixed_s']:>10.2f} {m['wall_s']:>9.2f}")
    print(f"NNI per-trial overhead = {ratio:.0f}x the local engine's")
    if a.json:
        print(json.dumps({"trials": trials, "concurrency": a.concurrency, "local": local, "nni": nni,
                          "nni_over_local_per_trial": round(ratio, 1)}))


if __name__ == "__main__":
    main()
