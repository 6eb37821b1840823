"""A proxy check's outputs: proxy.md (the table and what it says in words), proxy.csv, one
scatter plot per proxy, and the JSON summary."""
from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from .check import INHERITED
from .stats import noise_words, value_of


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

    from nas.evaluate.zero_cost import TRIVIAL

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
        what = "supernet score (inherited weights)" if name == INHERITED else f"zero-cost {name}"
        lines.append(f"| {what} | {a['k']} | 0 | {pb['resolution']} | {s * a['k']:.1f} | {s:.2f} |")
    lines += ["", "In words:", ""]
    lines += [f"- {line}" for line in summary["words"]]
    lines += ["", "Scores: " + ZERO_COST_NOTE.format(batch=summary.get("zc_batch") or "no images"), ""]
    if INHERITED in summary.get("scores", ()):
        lines += [INHERITED_NOTE.format(folder=summary.get("supernet")), ""]
    return "\n".join(lines)


ZERO_COST_NOTE = ("training-free, at the builder's reference init (seed = --seed), on a class-balanced batch of "
                  "un-augmented train images ({batch}); NASWOT codes are the signs of the "
                  "*inputs* of every SiLU/ReLU (the networks use swish); synflow in float64 with absolute weights, "
                  "an all-ones input and BatchNorm in eval mode at its initial statistics; grad-norm and SNIP on "
                  "the batch's cross-entropy over conv/linear weights, BatchNorm in train mode (nas/evaluate/zero_cost.py).")


INHERITED_NOTE = ("supernet: the one-shot search's score, each architecture's search-validation accuracy with the "
                  "weights it inherits from the trained supernet in {folder}, BatchNorm recalibrated on training "
                  "images, with the search's default numbers of images (nas/supernet/oneshot.py); the "
                  "architectures are sampled from the supernet's space, so the per-trial proxy's τ here is on "
                  "the same sample.")


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
    sn = by.get(INHERITED)
    if sn is not None and sn.get("vs_proxy"):
        vp = sn["vs_proxy"]
        lo, hi = vp["ci"]
        verdict = ("ranks better than" if lo > 0 else "ranks worse than" if hi < 0
                   else "is not distinguishable from")
        out.append(f"The supernet's inherited-weight accuracy: τ {_f(sn['tau'], '.2f')} {_ci(sn['tau_ci'])}, "
                   f"ρ {_f(sn['rho'], '.2f')} {_ci(sn['rho_ci'])}; it {verdict} the per-trial proxy on the same "
                   f"architectures: Δτ {vp['diff']:+.2f} {_ci(vp['ci'])}; the seed-noise ceiling (τ between "
                   f"proxy seeds) is {_f(a['seed_tau'], '.2f')}.")
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
    x = [value_of(r, entry["name"]) for r in have]
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
        v = value_of(row, name)
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


