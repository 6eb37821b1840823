"""The α/β/γ grid search at φ = 1: which split of a 2x cost budget between depth, width and resolution is best.

The search takes an `evaluate` callable (a list of ArchSpecs, and the seeds, in; one
result per run out, each with `.accuracy` and `.status`), so the caller decides how and
where the candidates train (sequentially, in a pool, on NNI). Nothing here knows about
training.

A grid that noise cannot fool: every candidate trains on several seeds, the paper's
(1.2, 1.1, 1.15) is always one of them, candidates rank by mean search-validation
accuracy, and a winner other than the paper's point is adopted only when it beats the
paper's with Welch p < 0.05 (`decide`); otherwise the paper's coefficients are kept.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from search_space.spec import ArchSpec

from .compound import PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, RESOLUTION_MULTIPLE, round_resolution, scale
from .errors import ScalingError
from .stats import SIGNIFICANCE, mean_sd, pm, welch_test
from .tables import to_csv, to_markdown, write_atomic

PAPER = (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA)
DEFAULT_SEEDS = 3  # runs per grid candidate (`python -m scaling grid --seeds`, `nas.search --grid-seeds`)

GRID_COLUMNS = ("alpha", "beta", "gamma", "constraint", "width", "depth", "resolution", "macs", "params",
                "accuracy", "sd", "n", "status", "role", "p")
GRID_HEADERS = ("α", "β", "γ", "α·β²·γ²", "width", "depth", "resolution", "multiply-adds", "params",
                "accuracy (mean)", "sd", "n", "status", "decision", "Welch p vs the paper's")
MD_COLUMNS = ("alpha", "beta", "gamma", "constraint", "width", "depth", "resolution", "macs", "params",
              "accuracy_pm", "n", "status", "role", "p")
MD_HEADERS = ("α", "β", "γ", "α·β²·γ²", "width", "depth", "resolution", "multiply-adds", "params",
              "accuracy (mean ± sd)", "n", "status", "decision", "Welch p vs the paper's")


class GridResult(NamedTuple):
    rows: list[dict]
    best: dict | None           # the adopted row: the paper's unless beaten at p < SIGNIFICANCE
    decision: dict | None = None  # adopted ('paper' | 'candidate' | None), p, diff, low, high, text


# At most this many (α, β, γ) points are enumerated (a tiny --step would otherwise hang).
MAX_GRID_POINTS = 10 ** 6


def _axis(lo: float, hi: float, step: float, label: str) -> list[float]:
    if not math.isfinite(lo) or lo < 1:
        raise ScalingError(f"{label} range must start at >= 1, got {lo:g}")
    if not math.isfinite(hi):
        raise ScalingError(f"{label} range must end at a finite number, got {hi:g}")
    if hi < lo:
        raise ScalingError(f"{label} range is empty ({lo:g} to {hi:g})")
    n = int(math.floor((hi - lo) / step + 1e-9))
    if n >= MAX_GRID_POINTS:
        raise ScalingError(f"{label} range {lo:g} to {hi:g} in steps of {step:g} is too fine; use a larger step")
    return [round(lo + i * step, 6) for i in range(n + 1)]


def grid_candidates(step: float = 0.05, alpha_range: tuple[float, float] = (1.0, 2.0),
                    beta_range: tuple[float, float] = (1.0, 1.5), gamma_range: tuple[float, float] = (1.0, 1.5),
                    tol: float = 0.1) -> list[tuple[float, float, float]]:
    """All (α, β, γ) on the grid with α, β, γ >= 1 and |α·β²·γ² − 2| <= tol, closest to 2 first."""
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise ScalingError(f"grid step must be positive, got {step!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ScalingError(f"tolerance must be >= 0, got {tol!r}")
    alphas = _axis(*alpha_range, step, "alpha")
    betas = _axis(*beta_range, step, "beta")
    gammas = _axis(*gamma_range, step, "gamma")
    if len(alphas) * len(betas) * len(gammas) > MAX_GRID_POINTS:
        raise ScalingError(f"the grid has {len(alphas) * len(betas) * len(gammas):,} points (at most "
                           f"{MAX_GRID_POINTS:,}); use a larger step or narrower ranges")
    kept = [(a, b, g) for a in alphas for b in betas for g in gammas if abs(a * b * b * g * g - 2) <= tol + 1e-12]
    if not kept:
        raise ScalingError(f"the grid keeps no point with |α·β²·γ² − 2| <= {tol:g} (step {step:g}); "
                           "widen the ranges or the tolerance")
    return sorted(kept, key=lambda c: (round(abs(c[0] * c[1] * c[1] * c[2] * c[2] - 2), 9), c))


def candidate_spec(b0: ArchSpec, alpha: float, beta: float, gamma: float, phi: float = 1.0,
                   resolution_multiple: int = RESOLUTION_MULTIPLE) -> ArchSpec:
    """The baseline scaled by (α^φ, β^φ, γ^φ) with the family's rounding rules."""
    res = round_resolution(b0.resolution * gamma ** phi, resolution_multiple)
    name = f"{b0.name or 'b0'}-a{alpha:g}-b{beta:g}-g{gamma:g}"
    return scale(b0, beta ** phi, alpha ** phi, res, name=name)


def with_paper(candidates: Sequence[tuple]) -> list[tuple[float, float, float]]:
    """`candidates` with the paper's (1.2, 1.1, 1.15) added at the end when absent: always a candidate."""
    out = [tuple(float(x) for x in c) for c in candidates]
    if not any(_same(c, PAPER) for c in out):
        out.append(PAPER)
    return out


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x - y) < 1e-9 for x, y in zip(a, b))


def _status(statuses: Sequence[str]) -> str:
    """`ok` when every seed trained, `ok 2/3` when some did, else the first failure's status."""
    ok = sum(s == "ok" for s in statuses)
    if ok == len(statuses):
        return "ok"
    return f"ok {ok}/{len(statuses)}" if ok else next(s for s in statuses if s != "ok")


def grid_search(b0: ArchSpec, evaluate: Callable[..., Sequence], candidates: Sequence[tuple],
                phi: float = 1.0, resolution_multiple: int = RESOLUTION_MULTIPLE,
                seeds: Sequence[int] | None = None, level: float = SIGNIFICANCE) -> GridResult:
    """Scale `b0` by every candidate (and the paper's point, always), evaluate them in one
    call, rank by mean accuracy, and decide with the rule below.

    `evaluate(specs)` returns one result per spec (one run each); with `seeds`,
    `evaluate(specs, seeds)` returns one per (spec, seed), spec-major. Each result has
    `.accuracy` (search-validation: the caller never passes test scores) and `.status`.
    Candidates that round to the same network at the same resolution are evaluated once.

    The rule: the top row is the best mean accuracy over its ok runs (ties: closest to
    α·β²·γ² = 2, then fewer multiply-adds). It is adopted (`best`) only when it is the
    paper's point or beats the paper's with Welch p < `level`; otherwise the paper's
    coefficients are kept. `best` is None when nothing trained.
    """
    from search_space import cost
    if not candidates:
        raise ScalingError("no grid candidates to evaluate")
    candidates = with_paper(candidates)
    specs, rows, unique = [], [], {}
    for a, b, g in candidates:
        spec = candidate_spec(b0, a, b, g, phi, resolution_multiple)
        ident = (spec.key(), spec.resolution)
        if ident not in unique:
            unique[ident] = len(specs)
            specs.append(spec)
        rows.append({"alpha": a, "beta": b, "gamma": g, "constraint": round(a * b * b * g * g, 4),
                     "width": round(b ** phi, 6), "depth": round(a ** phi, 6), "resolution": spec.resolution,
                     "macs": int(cost.macs(spec, spec.resolution)), "params": int(cost.params(spec)),
                     "_index": unique[ident], "spec": spec})
    runs = 1 if seeds is None else len(seeds)
    if runs < 1:
        raise ScalingError("the grid needs at least one seed")
    results = list(evaluate(specs) if seeds is None else evaluate(specs, list(seeds)))
    if len(results) != len(specs) * runs:
        raise ScalingError(f"evaluate returned {len(results)} results for {len(specs) * runs} runs "
                           f"({len(specs)} specs × {runs} seeds)")
    for row in rows:
        i = row.pop("_index")
        mine = results[i * runs:(i + 1) * runs]
        statuses = [getattr(r, "status", "failed") for r in mine]
        values = [r.accuracy for r, s in zip(mine, statuses) if s == "ok" and getattr(r, "accuracy", None) is not None]
        summary = mean_sd(values)
        row.update(accuracy=summary["mean"], sd=summary["sd"] if runs > 1 else None, n=summary["n"],
                   status=_status(statuses), values=values, role="", p=None)
    return decide(rows, level)


def decide(rows: list[dict], level: float = SIGNIFICANCE) -> GridResult:
    """The grid's rule on rows with `values` (per-seed accuracies), `alpha`/`beta`/`gamma`,
    `constraint` and `macs`: see `grid_search`. Sets each row's `role` and the top row's `p`."""
    paper = next(r for r in rows if _same((r["alpha"], r["beta"], r["gamma"]), PAPER))
    ok = [r for r in rows if r["values"]]
    if not ok:
        return GridResult(rows, None, {"adopted": None, "text": "no candidate trained; nothing to decide"})
    top = max(ok, key=lambda r: (r["accuracy"], -abs(r["constraint"] - 2), -r["macs"]))
    if top is paper:
        paper["role"] = "paper's, best mean, adopted"
        return GridResult(rows, paper, {"adopted": "paper", "p": None,
                                        "text": f"the paper's (α, β, γ) = {_point(paper)} has the best mean "
                                                f"accuracy on search-validation: kept"})
    test = welch_test(top["values"], paper["values"]) if paper["values"] else None
    top["p"] = None if test is None else test["p"]
    won = test is not None and test["p"] < level and test["diff"] > 0
    top["role"] = "best mean, adopted" if won else "best mean, not adopted"
    paper["role"] = "paper's" if won else "paper's, kept"
    if not paper["values"]:
        why = f"the paper's point did not train ({paper['status']}), so no candidate can be shown better"
    elif test is None:
        why = "fewer than 2 runs a side: no test"
    else:
        why = (f"{test['diff']:+.4f} (95 % CI {test['low']:+.4f} to {test['high']:+.4f}), Welch p = "
               f"{test['p']:.3g} {'<' if won else '>='} {level:g}")
    head = f"best mean: {_point(top)} over the paper's {_point(paper)}: {why}"
    decision = {"adopted": "candidate" if won else "paper", "p": top["p"],
                **({} if test is None else {k: test[k] for k in ("diff", "low", "high")}),
                "text": head + (f": adopted {_point(top)}" if won else ": kept the paper's coefficients")}
    return GridResult(rows, top if won else paper, decision)


def _point(row: dict) -> str:
    return f"({row['alpha']:g}, {row['beta']:g}, {row['gamma']:g})"


def save_grid_table(rows: Sequence[dict], out_dir: str | Path, stem: str = "grid",
                    decision: dict | None = None) -> tuple[Path, Path]:
    """Write `<stem>.md` (mean ± sd, n, the decision with its p-value) and `<stem>.csv`
    (atomically) into `out_dir`."""
    out_dir = Path(out_dir)
    md, csv_path = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    write_atomic(md, grid_markdown(rows, decision))
    write_atomic(csv_path, to_csv(rows, GRID_COLUMNS))
    return md, csv_path


def grid_markdown(rows: Sequence[dict], decision: dict | None = None) -> str:
    shown = [{**r, "accuracy_pm": pm({"mean": r.get("accuracy"), "sd": r.get("sd") or 0.0})} for r in rows]
    text = to_markdown(shown, MD_COLUMNS, MD_HEADERS)
    if decision:
        text += f"\nDecision (Welch's test at p < {SIGNIFICANCE:g}, on search-validation): {decision['text']}.\n"
    return text
