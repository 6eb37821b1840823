"""The α/β/γ grid search at φ = 1: which split of a 2x cost budget between depth, width and resolution is best.

The search takes an `evaluate` callable (a list of ArchSpecs in, one result per spec
out, each with `.accuracy` and `.status`), so the caller decides how and where the
candidates train (sequentially, in a pool, on NNI). Nothing here knows about training.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from search_space.spec import ArchSpec

from .compound import RESOLUTION_MULTIPLE, round_resolution, scale
from .errors import ScalingError
from .tables import to_csv, to_markdown, write_atomic

GRID_COLUMNS = ("alpha", "beta", "gamma", "constraint", "width", "depth", "resolution", "macs", "params",
                "accuracy", "status")
GRID_HEADERS = ("α", "β", "γ", "α·β²·γ²", "width", "depth", "resolution", "multiply-adds", "params",
                "accuracy", "status")


class GridResult(NamedTuple):
    rows: list[dict]
    best: dict | None


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


def grid_search(b0: ArchSpec, evaluate: Callable[[list[ArchSpec]], Sequence], candidates: Sequence[tuple],
                phi: float = 1.0, resolution_multiple: int = RESOLUTION_MULTIPLE) -> GridResult:
    """Scale `b0` by every candidate, evaluate them in one call, and pick the best accuracy.

    Candidates that round to the same network at the same resolution are evaluated once.
    The winner is the best accuracy among `ok` results; ties go to the point closest to
    α·β²·γ² = 2, then to fewer multiply-adds. `best` is None when nothing trained.
    """
    from search_space import cost
    if not candidates:
        raise ScalingError("no grid candidates to evaluate")
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
    results = list(evaluate(specs))
    if len(results) != len(specs):
        raise ScalingError(f"evaluate returned {len(results)} results for {len(specs)} specs")
    for row in rows:
        result = results[row.pop("_index")]
        row["accuracy"] = getattr(result, "accuracy", None)
        row["status"] = getattr(result, "status", "failed")
    ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
    best = max(ok, key=lambda r: (r["accuracy"], -abs(r["constraint"] - 2), -r["macs"])) if ok else None
    return GridResult(rows, best)


def save_grid_table(rows: Sequence[dict], out_dir: str | Path, stem: str = "grid") -> tuple[Path, Path]:
    """Write `<stem>.md` and `<stem>.csv` (atomically) into `out_dir`."""
    out_dir = Path(out_dir)
    md, csv_path = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    write_atomic(md, to_markdown(rows, GRID_COLUMNS, GRID_HEADERS))
    write_atomic(csv_path, to_csv(rows, GRID_COLUMNS))
    return md, csv_path


def grid_markdown(rows: Sequence[dict]) -> str:
    return to_markdown(rows, GRID_COLUMNS, GRID_HEADERS)
