"""Benchmark: the default per-trial search against the default one-shot search, per search seed.

For each seed, in this order and one at a time on this machine:

    pertrial   python -m nas.search --target-flops 400M --seed S            (every candidate trained)
    oneshot    python -m nas.search --target-flops 400M --seed S --strategy oneshot
               (phase 1 trains its own supernet; phase 2 scores sub-networks with its weights)

each with stage 2 as the default run has it (top 3 and EfficientNet-B0 trained from scratch
on fresh seeds, the verdict on test), and no scaling. The one-shot defaults were frozen so
that its whole run takes no longer than the per-trial one; the per-trial run's wall time
is measured in the same bench run, beside it, so "equal wall time" is checked, not
assumed (`oneshot wall / pertrial wall` per seed). Per run: wall time, architectures
trained or scored, the B0's multiply-adds, its stage-2 test accuracy (mean over its
stage-2 seeds) and EfficientNet-B0's in the same stage 2, and their difference.

Summary per paradigm over seeds: mean ± sd and median [IQR] of B0's test accuracy and of
its difference to EfficientNet-B0; a paired t-test of the two paradigms' B0 test
accuracies over seeds (and a Wilcoxon signed-rank p when there are >= 6 seeds).

    python bench/oneshot.py [--quick] [--json] [--seeds 101,102,103] [--out DIR] [-- NAS.SEARCH OPTIONS]

The default seeds 101-103 were used to choose no setting. `--quick` runs both paradigms on a
tiny space (digits at 8 px, a supernet trained half an epoch, stage 2 on a fake evaluator)
to check the machinery in seconds; its figures say nothing about the paradigms.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._cli import OneLineParser  # noqa: E402
from bench._stats import spread  # noqa: E402
from tests.spaces import TINY_ONESHOT  # noqa: E402

PARADIGMS = ("pertrial", "oneshot")


def quick_args(root: Path) -> dict[str, list[str]]:
    space = root / "tiny.yaml"
    space.write_text(TINY_ONESHOT)
    common = ["--space", str(space), "--dataset", "digits", "--proxy-resolution", "8", "--cost-window", "0,1",
              "--evaluator", "tests.fake_evaluators:ok", "--final-seeds", "2", "--final-top-k", "2",
              "--workers", "1", "--device", "cpu", "--controller", "random"]
    return {"pertrial": [*common, "--trials", "6"],
            "oneshot": [*common, "--trials", "40", "--supernet-epochs", "0.5"]}


def one_run(paradigm: str, seed: int, target: str, extra: list[str], root: Path) -> dict:
    """One whole `python -m nas.search` (stage 2 included, no scaling) in a subprocess; its figures."""
    from nas.store import Store
    from search_space.spec import ArchSpec

    out = root / f"{paradigm}-seed{seed}"
    argv = [sys.executable, "-m", "nas.search", "--target-flops", target, "--seed", str(seed), "--out", str(out),
            "--overwrite", "--no-scale", "--no-tensorboard", "--no-progress", "--quiet", *extra]
    if paradigm == "oneshot":
        argv += ["--strategy", "oneshot"]
    t0 = time.time()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    kind = "oneshot" if paradigm == "oneshot" else "search"
    row = {"paradigm": paradigm, "seed": seed, "rc": done.returncode, "wall_s": wall, "evaluated": None,
           "b0_macs": None, "b0_test": None, "reference_test": None, "delta": None, "verdict": None}
    if done.returncode != 0:
        row["error"] = done.stderr.strip().splitlines()[-1:] or [""]
    if not Store.is_run(out):
        return row
    with Store.open(out) as st:
        row["evaluated"] = len(st.trials(kind, "trained"))
        finals = st.trials("final")
        reference = st.trial("reference", 0)
    if (out / "best.yaml").is_file():
        b0 = ArchSpec.load(out / "best.yaml")
        from search_space import cost
        row["b0_macs"] = int(cost.macs(b0, 224))
        row["b0_test"] = _mean_test(finals, b0.key())
    if reference is not None:
        row["reference_test"] = _mean_test(finals, reference["key"])
    if row["b0_test"] is not None and row["reference_test"] is not None:
        row["delta"] = row["b0_test"] - row["reference_test"]
    final_md = out / "final.md"
    if final_md.is_file():
        row["verdict"] = verdict_words(final_md.read_text())
    return row


def verdict_words(final_md: str) -> str | None:
    """`better (p = 0.004)`: the stage-2 verdict of final.md in short, or None without one."""
    import re
    m = re.search(r"Welch p = ([0-9.e+-]+): ([a-z ]+)", final_md)
    return f"{m.group(2).strip()} (p = {float(m.group(1)):.3g})" if m else None


def _mean_test(finals: list[dict], key: str) -> float | None:
    vals = [r["test_accuracy"] for r in finals if r["key"] == key and r["test_accuracy"] is not None]
    return statistics.mean(vals) if vals else None


def compare(runs: list[dict]) -> dict:
    """The paired comparison over seeds that both paradigms finished: one-shot minus per-trial."""
    from scipy import stats
    by = {(r["paradigm"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    pairs = [(by[("oneshot", s)]["b0_test"], by[("pertrial", s)]["b0_test"]) for s in seeds
             if ("oneshot", s) in by and ("pertrial", s) in by
             and by[("oneshot", s)]["b0_test"] is not None and by[("pertrial", s)]["b0_test"] is not None]
    out = {"pairs": len(pairs), "diff": spread([a - b for a, b in pairs]), "t_p": None, "wilcoxon_p": None}
    if len(pairs) >= 2 and len({round(a - b, 12) for a, b in pairs}) > 1:
        out["t_p"] = float(stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
    if len(pairs) >= 6:
        out["wilcoxon_p"] = float(stats.wilcoxon([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
    return out


def summarize(runs: list[dict]) -> dict:
    out = {}
    for p in PARADIGMS:
        rs = [r for r in runs if r["paradigm"] == p]
        out[p] = {"runs": len(rs), "wall_s": spread([r["wall_s"] for r in rs]),
                  "evaluated": spread([r["evaluated"] for r in rs]), "b0_test": spread([r["b0_test"] for r in rs]),
                  "delta": spread([r["delta"] for r in rs])}
    by = {(r["paradigm"], r["seed"]): r for r in runs}
    ratios = [by[("oneshot", s)]["wall_s"] / by[("pertrial", s)]["wall_s"] for (p, s) in by
              if p == "pertrial" and ("oneshot", s) in by]
    return {"paradigms": out, "wall_ratio": spread(ratios), "wall_ratio_max": max(ratios) if ratios else None,
            "oneshot_vs_pertrial": compare(runs)}


def markdown(runs: list[dict], summary: dict) -> str:
    def f(x, fmt="{:.4f}"):
        return "—" if x is None else fmt.format(x)

    lines = ["| paradigm | seed | wall s | architectures evaluated | B0 MACs | B0 test acc | EfficientNet-B0 test acc "
             "| Δ vs EfficientNet-B0 | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["seed"], r["paradigm"])):
        lines.append(f"| {r['paradigm']} | {r['seed']} | {r['wall_s']:.0f} | {f(r['evaluated'], '{}')} | "
                     f"{f(r['b0_macs'] and r['b0_macs'] / 1e6, '{:.0f}M')} | {f(r['b0_test'])} | "
                     f"{f(r['reference_test'])} | {f(r['delta'], '{:+.4f}')} | {r['verdict'] or '—'} |")
    lines += ["", "| paradigm | runs | wall s, mean | evaluated, mean | B0 test: mean ± sd | median [IQR] | "
                  "Δ vs EfficientNet-B0: mean ± sd | median [IQR] |", "|---|---|---|---|---|---|---|---|"]
    for p, s in summary["paradigms"].items():
        b, d = s["b0_test"], s["delta"]
        lines.append(f"| {p} | {s['runs']} | {f(s['wall_s']['mean'], '{:.0f}')} | {f(s['evaluated']['mean'], '{:.0f}')} "
                     f"| {f(b['mean'])} ± {f(b['sd'])} | {f(b['median'])} [{f(b['q1'])}, {f(b['q3'])}] | "
                     f"{f(d['mean'], '{:+.4f}')} ± {f(d['sd'])} | {f(d['median'], '{:+.4f}')} "
                     f"[{f(d['q1'], '{:+.4f}')}, {f(d['q3'], '{:+.4f}')}] |")
    c, w = summary["oneshot_vs_pertrial"], summary["wall_ratio"]
    lines += ["", f"One-shot minus per-trial B0 test accuracy over {c['pairs']} paired seeds: mean "
                  f"{f(c['diff']['mean'], '{:+.4f}')} ± {f(c['diff']['sd'])}, paired t-test p = {f(c['t_p'], '{:.3f}')}"
                  + (f", Wilcoxon p = {c['wilcoxon_p']:.3f}" if c["wilcoxon_p"] is not None else "")
                  + f". Wall time one-shot / per-trial: mean {f(w['mean'], '{:.2f}')}, at most "
                  f"{f(summary['wall_ratio_max'], '{:.2f}')}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser("bench/oneshot.py", __doc__.splitlines()[0],
                      "both paradigms on a tiny space with a fake stage-2 trainer (machinery check, seconds)")
    p.add_argument("--seeds", default=None, help="search seeds (default 101,102,103; --quick: 101)")
    p.add_argument("--target-flops", default="400M")
    p.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("search_args", nargs="*", help="more nas.search options for both paradigms, after --")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in (args.seeds or ("101" if args.quick else "101,102,103")).split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected integers such as 101,102,103")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="effnas-oneshot-"))
    root.mkdir(parents=True, exist_ok=True)
    extra = quick_args(root) if args.quick else {k: [] for k in PARADIGMS}
    target = "60M" if args.quick else args.target_flops
    runs = []
    for seed in seeds:
        for paradigm in PARADIGMS:
            load = os.getloadavg()[0]
            r = one_run(paradigm, seed, target, [*extra[paradigm], *args.search_args], root)
            r["load_at_start"] = load
            runs.append(r)
            print(f"{paradigm} seed {seed}: rc {r['rc']}, {r['wall_s']:.0f} s, {r['evaluated']} evaluated, B0 test "
                  f"{r['b0_test']}, EfficientNet-B0 {r['reference_test']} (load {load:.1f} at the start)"
                  + (f"; {r['error']}" if r.get("error") else ""), file=sys.stderr, flush=True)
            (root / "bench.json").write_text(json.dumps({"runs": runs}, indent=1))
    summary = summarize(runs)
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end; "
          f"runs in {root}")
    print(markdown(runs, summary))
    if args.json:
        print(json.dumps({"runs": runs, **summary, "quick": args.quick}))
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
