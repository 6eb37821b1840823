"""Benchmark: the default search against ASHA early stopping and a training-free prefilter,
at equal compute, over several search seeds.

Every arm is `python -m nas.search` with the same options and the same compute budget
(`--max-epochs E`: epochs trained across the search's trials; E defaults to the
baseline's `--trials` x `--proxy-epochs`, so the baseline is the default search):

    base       the default search (every candidate trained in full)
    asha       --early-stop asha (eta 3, rungs 1/9, 1/3, 1)
    prefilter  --prefilter SCORE --prefilter-ratio N (default synflow, 3)

and then stage 2 (`nas.final`, as the search runs it) on each run's result. Per arm and
seed: architectures trained (and considered: trained + prefiltered out), epochs trained,
search wall time (first trial start to last search record, stage 2 excluded), and the stage-2 test accuracy of the run's B0. Printed as means over
seeds, with ratios against the baseline of the same seeds measured in the same run, and
the B0 difference against the seed noise (sd over seeds of the baseline's B0).
Goal (issue 14): >= 2.5x as many architectures evaluated, B0 no worse beyond noise.

    python bench/fidelity.py [--quick] [--json] [--seeds 0,1,2] [--arms base,asha,prefilter]
                             [--trials 40] [--workers 0] [--out DIR] [--evaluator M:F]

`--quick` runs a tiny search on a fake evaluator with a learning curve
(`tests.fake_evaluators:curve`: trains nothing) to check the machinery in seconds;
its figures say nothing about real training.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._stats import spread  # noqa: E402

ARMS = {
    "base": [],
    "asha": ["--early-stop", "asha"],
    "prefilter": [],  # filled from --prefilter / --ratio
}


def b0_test_accuracy(out: Path) -> float | None:
    """Mean stage-2 test accuracy of the run's B0 (best.yaml is the stage-2 winner)."""
    from search_space.spec import ArchSpec
    best, final = out / "best.yaml", out / "final.csv"
    if not best.is_file() or not final.is_file():
        return None
    key = ArchSpec.load(best).key()
    with open(final, newline="") as f:
        vals = [float(r["test_accuracy"]) for r in csv.DictReader(f) if r["key"] == key and r["test_accuracy"]]
    return statistics.mean(vals) if vals else None


def one_run(arm: str, seed: int, args: argparse.Namespace, root: Path) -> dict:
    from nas.search.asha import epochs_of
    from nas.cli.search import main
    from nas.store import Store

    out = root / f"{arm}-seed{seed}"
    extra = list(ARMS[arm])
    if arm == "prefilter":
        extra = ["--prefilter", args.prefilter, "--prefilter-ratio", str(args.ratio)]
    budget_epochs = args.trials * args.proxy_epochs
    argv = ["--target-flops", args.target_flops, "--seed", str(seed), "--out", str(out), "--overwrite",
            "--proxy-epochs", f"{args.proxy_epochs:g}", "--max-epochs", f"{budget_epochs:g}",
            "--trials", str(args.trials if arm == "base" else 100 * args.trials), "--workers", str(args.workers),
            "--evaluator", args.evaluator, "--no-scale", "--no-tensorboard", "--no-progress", "--quiet",
            "--device", args.device, *args.search_args, *extra]
    t0 = time.time()
    rc = main(argv)
    wall = time.time() - t0
    with Store.open(out) as st:
        rows = st.trials("search")
        trained = [r for r in rows if r["source"] == "trained"]
        prefiltered = sum(1 for r in rows if r["source"] == "prefilter")
        stage2 = st.trials("final")
        st_ref = st.trials("reference")
    spans = [r for r in rows if r.get("started_at")] + [r for r in st_ref if r.get("started_at")]
    search_s = (max(r["finished_at"] for r in rows) - min(r["started_at"] for r in spans)) if spans else wall
    return {"arm": arm, "seed": seed, "rc": rc, "trained": len(trained),
            "stopped": sum(r["status"] == "stopped" for r in trained), "prefiltered": prefiltered,
            "considered": len(trained) + prefiltered,
            "epochs": sum(epochs_of(r, args.proxy_epochs) for r in trained),
            "wall_s": wall, "search_s": search_s, "stage2_runs": len(stage2),
            "b0_test_accuracy": b0_test_accuracy(out)}


def _mean(xs: list) -> float | None:
    return spread(xs)["mean"]


def _sd(xs: list) -> float | None:
    return spread(xs)["sd"]


def summarize(runs: list[dict], arms: list[str]) -> dict:
    base = {r["seed"]: r for r in runs if r["arm"] == "base"}
    noise = _sd([r["b0_test_accuracy"] for r in base.values()])
    out = {}
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        s = {k: _mean([r[k] for r in rs]) for k in ("trained", "considered", "stopped", "prefiltered", "epochs",
                                                      "search_s", "wall_s", "b0_test_accuracy")}
        s["b0_test_sd"] = _sd([r["b0_test_accuracy"] for r in rs])
        if base and arm != "base":
            paired = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
            s["trained_vs_base"] = _mean([r["trained"] / b["trained"] for r, b in paired if b["trained"]])
            s["considered_vs_base"] = _mean([r["considered"] / b["trained"] for r, b in paired if b["trained"]])
            s["search_s_vs_base"] = _mean([r["search_s"] / b["search_s"] for r, b in paired if b["search_s"]])
            diffs = [r["b0_test_accuracy"] - b["b0_test_accuracy"] for r, b in paired
                     if r["b0_test_accuracy"] is not None and b["b0_test_accuracy"] is not None]
            s["b0_delta"] = _mean(diffs)
            s["b0_delta_sd"] = _sd(diffs)
            s["b0_no_worse_beyond_noise"] = None if s["b0_delta"] is None or noise is None else \
                bool(s["b0_delta"] >= -noise)
        out[arm] = s
    return {"base_b0_seed_sd": noise, "arms": out}


def markdown(summary: dict, args: argparse.Namespace) -> str:
    def f(x, fmt="{:.2f}"):
        return "—" if x is None else fmt.format(x)
    lines = [f"seeds {args.seeds}; compute per run: {args.trials * args.proxy_epochs:g} epochs; "
             f"baseline B0 test sd over seeds {f(summary['base_b0_seed_sd'], '{:.4f}')}", "",
             "| arm | trained | considered | stopped | epochs | search s | B0 test acc | trained x | considered x | "
             "search s x | ΔB0 (sd) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in summary["arms"].items():
        lines.append(f"| {arm} | {f(s['trained'], '{:.1f}')} | {f(s['considered'], '{:.1f}')} | "
                     f"{f(s['stopped'], '{:.1f}')} | {f(s['epochs'], '{:.1f}')} | {f(s['search_s'], '{:.0f}')} | "
                     f"{f(s['b0_test_accuracy'], '{:.4f}')} | {f(s.get('trained_vs_base'))} | "
                     f"{f(s.get('considered_vs_base'))} | {f(s.get('search_s_vs_base'))} | "
                     f"{f(s.get('b0_delta'), '{:+.4f}')} ({f(s.get('b0_delta_sd'), '{:.4f}')}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny search on a fake evaluator (machinery check)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    p.add_argument("--seeds", default=None, help="search seeds (default 0,1,2; --quick: 0,1)")
    p.add_argument("--arms", default="base,asha,prefilter")
    p.add_argument("--trials", type=int, default=40, help="the baseline's trials (compute = trials x epochs)")
    p.add_argument("--proxy-epochs", type=float, default=2.0)
    p.add_argument("--target-flops", default="400M")
    p.add_argument("--prefilter", default="synflow")
    p.add_argument("--ratio", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--evaluator", default="nas.trial:evaluate")
    p.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("search_args", nargs="*", help="more nas.search options, after --")
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.evaluator, args.device, args.workers = 6, "tests.fake_evaluators:curve", "cpu", 1
        args.prefilter = "params"
        args.search_args = args.search_args + ["--final-top-k", "1", "--final-seeds", "2", "--controller", "random"]
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2")).split(",") if s.strip()]
    args.seeds = seeds
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "base" not in arms:
        p.error(f"--arms: need base, and only {', '.join(ARMS)} (got {args.arms})")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="effnas-fidelity-"))
    runs = []
    for seed in seeds:
        for arm in arms:
            r = one_run(arm, seed, args, root)
            print(f"{arm} seed {seed}: {r['trained']} trained ({r['stopped']} stopped, {r['prefiltered']} "
                  f"prefiltered), {r['epochs']:.1f} epochs, search {r['search_s']:.0f} s (with stage 2 "
                  f"{r['wall_s']:.0f} s), B0 test "
                  f"{r['b0_test_accuracy']}", file=sys.stderr, flush=True)
            runs.append(r)
    summary = summarize(runs, arms)
    print(f"machine: {platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; runs in {root}")
    print(markdown(summary, args))
    if args.json:
        print(json.dumps({"runs": runs, **summary, "quick": args.quick}))
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
