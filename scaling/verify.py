"""Compound scaling against single-dimension scaling at matched cost (EfficientNet's Figure 8).

For each φ: the family's compound member B_φ, and three scalings of the same B0 along one
dimension only (width, depth, resolution), each solved so that its multiply-adds (the
exact cost model, `search_space.cost`) are within `MATCH_TOLERANCE` of B_φ's; then, from
plain results (nothing here trains), the table of mean ± sd and per φ the verdict
"compound vs the best single dimension": the best single dimension chosen on
search-validation, the comparison made on test (Welch's test, `scaling.stats`).

Pure: imports `search_space` and scipy (through `scaling.stats`) only.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from search_space import cost
from search_space.spec import ArchSpec

from .compound import RESOLUTION_MULTIPLE, format_phi, round_resolution, scale
from .errors import ScalingError
from .stats import SIGNIFICANCE, mean_sd, pm, verdict_words, welch_test
from .tables import to_csv, to_markdown

MATCH_TOLERANCE = 0.05   # a single-dimension variant's multiply-adds within 5 % of B_φ's
DEFAULT_PHIS = "1,2"     # `python -m scaling verify --phi`, `nas.search --verify-phi`
DEFAULT_SEEDS = 3        # fresh seeds per network
SINGLE = ("width", "depth", "resolution")
METHODS = ("baseline", "compound") + SINGLE
LABELS = {"baseline": "B0", "compound": "compound", "width": "width only", "depth": "depth only",
          "resolution": "resolution only"}
MAX_FACTOR = 64.0        # no single-dimension factor beyond this (the solvers stop there)


@dataclass(frozen=True)
class Variant:
    """One network of the check: its method, φ, the spec and its size against B0."""

    method: str              # baseline | compound | width | depth | resolution
    phi: float
    spec: ArchSpec
    width: float             # head channels / B0's (the channel multiplier as rounded)
    depth: float             # layers / B0's layers
    resolution: int
    macs: int                # at `resolution`
    params: int
    target_macs: int         # the compound member's (B0's own for the baseline)
    train_resolution: int | None = None  # set by the caller: the image size it trains at

    @property
    def error(self) -> float:
        """Relative difference of its multiply-adds from the compound member's."""
        return self.macs / self.target_macs - 1


def _macs(spec: ArchSpec) -> int:
    return int(cost.macs(spec, spec.resolution))


def _variant(method: str, phi: float, spec: ArchSpec, b0: ArchSpec, target: int) -> Variant:
    """Width and depth as realised after rounding: head channels and layers over B0's."""
    return Variant(method, float(phi), spec, round(spec.head_channels / b0.head_channels, 4),
                   round(spec.num_layers / b0.num_layers, 4), spec.resolution, _macs(spec), int(cost.params(spec)),
                   int(target))


def _check(method: str, spec: ArchSpec, target: int, tolerance: float) -> ArchSpec:
    err = _macs(spec) / target - 1
    if abs(err) > tolerance:
        raise ScalingError(f"{method} scaling alone cannot match {target:,} multiply-adds within "
                           f"{tolerance:.0%} (closest: {err:+.1%})")
    return spec


def matched_width(b0: ArchSpec, target: int, tolerance: float = MATCH_TOLERANCE) -> tuple[ArchSpec, float]:
    """(B0 widened alone, w) with multiply-adds closest to `target`: bisection on w, since
    the channel rounding makes them a non-decreasing step function of w."""
    def at(w: float) -> ArchSpec:
        return scale(b0, w, 1.0, b0.resolution)

    lo, hi = 1.0, 1.0
    while _macs(at(hi)) < target:
        lo, hi = hi, hi * 2
        if hi > MAX_FACTOR:
            raise ScalingError(f"width scaling alone cannot reach {target:,} multiply-adds")
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _macs(at(mid)) < target else (lo, mid)
    w = min((lo, hi), key=lambda x: abs(_macs(at(x)) - target))
    return _check("width", at(w), target, tolerance), w


def matched_resolution(b0: ArchSpec, target: int, tolerance: float = MATCH_TOLERANCE,
                       multiple: int = RESOLUTION_MULTIPLE) -> ArchSpec:
    """B0 at the multiple of `multiple` (the family's rounding) whose multiply-adds are closest to `target`."""
    res = round_resolution(b0.resolution, multiple)
    below = res
    while _macs(dataclasses.replace(b0, resolution=res)) < target:
        below, res = res, res + multiple
        if res > MAX_FACTOR * b0.resolution:
            raise ScalingError(f"resolution scaling alone cannot reach {target:,} multiply-adds")
    best = min((below, res), key=lambda r: abs(_macs(dataclasses.replace(b0, resolution=r)) - target))
    return _check("resolution", dataclasses.replace(b0, resolution=best), target, tolerance)


def matched_depth(b0: ArchSpec, target: int, tolerance: float = MATCH_TOLERANCE, step: float = 0.01) -> ArchSpec:
    """B0 deepened alone, with multiply-adds closest to `target`.

    Each stage's repeats n_i is ⌊d·r_i⌋ or ⌈d·r_i⌉ for one depth coefficient d (the family's
    ⌈d·r_i⌉ alone moves in steps too coarse to land within 5 %: every stage jumps at the same
    d). An extra repeat adds one identical layer, so the multiply-adds are B0's plus Σ (n_i − r_i)
    · c_i, with c_i the cost of stage i's extra layer from the cost model; the chosen spec is
    checked with the cost model itself.
    """
    base = _macs(b0)
    reps = [b.repeats for b in b0.blocks]
    extra = []
    for i in range(len(b0.blocks)):
        more = dataclasses.replace(b0, blocks=tuple(dataclasses.replace(x, repeats=x.repeats + (j == i))
                                                    for j, x in enumerate(b0.blocks)))
        extra.append(_macs(more) - base)
    best: tuple[float, float, tuple[int, ...]] | None = None
    d = 1.0
    while d <= MAX_FACTOR:
        low = [max(r, math.floor(d * r + 1e-9)) for r in reps]
        high = [max(r, math.ceil(d * r - 1e-9)) for r in reps]
        if base + sum((n - r) * c for n, r, c in zip(low, reps, extra)) > target * (1 + tolerance):
            break
        if base + sum((n - r) * c for n, r, c in zip(high, reps, extra)) >= target * (1 - tolerance):
            options = [()]
            for lo, hi in zip(low, high):
                options = [o + (n,) for o in options for n in ({lo, hi})]
            for n in options:
                err = abs(base + sum((k - r) * c for k, r, c in zip(n, reps, extra)) - target) / target
                if best is None or err < best[0] - 1e-12:
                    best = (err, d, n)
        d = round(d + step, 9)
    if best is None:
        raise ScalingError(f"depth scaling alone cannot match {target:,} multiply-adds within {tolerance:.0%}")
    spec = dataclasses.replace(b0, blocks=tuple(dataclasses.replace(b, repeats=n)
                                                for b, n in zip(b0.blocks, best[2])))
    return _check("depth", spec, target, tolerance)


def variants(b0: ArchSpec, members: Mapping[float, ArchSpec], phis: Sequence[float],
             tolerance: float = MATCH_TOLERANCE) -> list[Variant]:
    """B0, then for each φ the compound member `members[φ]` and B0 scaled by width, depth
    and resolution alone to the member's multiply-adds (within `tolerance`). A single-
    dimension variant takes the member's dropout, so only the shape differs."""
    stem = (b0.name or "b0").removesuffix("-b0")
    out = [_variant("baseline", 0.0, b0, b0, _macs(b0))]
    for phi in phis:
        if phi not in members:
            raise ScalingError(f"φ = {format_phi(phi)} is not a member of the family")
        member = members[phi]
        target = _macs(member)
        out.append(_variant("compound", phi, member, b0, target))
        singles = ((matched_width(b0, target, tolerance)[0], "width"), (matched_depth(b0, target, tolerance), "depth"),
                   (matched_resolution(b0, target, tolerance), "resolution"))
        for spec, method in singles:
            spec = dataclasses.replace(spec, dropout=member.dropout, name=f"{stem}-{method}{format_phi(phi)}")
            out.append(_variant(method, phi, spec, b0, target))
    return out


def train_resolution(budget_resolution: int, b0_resolution: int, resolution: int,
                     multiple: int = RESOLUTION_MULTIPLE) -> int:
    """The image size a network of `resolution` trains at: the budget's (B0's training size)
    times resolution / B0's, rounded as the family does; B0's own is the budget's."""
    if resolution == b0_resolution:
        return int(budget_resolution)
    return round_resolution(budget_resolution * resolution / b0_resolution, multiple)


# -- the table and the verdicts, from results -----------------------------------------------------
def _field(result: Any, name: str) -> Any:
    return result.get(name) if isinstance(result, Mapping) else getattr(result, name, None)


def summarize(items: Sequence[Variant], runs: Sequence[Sequence[Any]], level: float = SIGNIFICANCE) -> dict:
    """`runs[i]`: the results of `items[i]` (dicts or objects with `status`, `accuracy` on
    search-validation and `test_accuracy`). Returns {"rows", "verdicts"}: a row per variant
    with mean ± sd on both parts; per φ, the single-dimension variant with the best mean on
    search-validation (never test) is compared with the compound member on test."""
    if len(items) != len(runs):
        raise ScalingError(f"{len(runs)} result lists for {len(items)} networks")
    rows = []
    for v, results in zip(items, runs):
        ok = [r for r in results if _field(r, "status") == "ok" and _field(r, "accuracy") is not None]
        tests = [float(_field(r, "test_accuracy")) for r in ok if _field(r, "test_accuracy") is not None]
        rows.append({"method": v.method, "label": LABELS[v.method], "phi": v.phi, "depth": v.depth, "width": v.width,
                     "resolution": v.resolution, "train_resolution": v.train_resolution, "macs": v.macs,
                     "macs_vs_compound": round(v.error, 4), "params": v.params, "name": v.spec.name,
                     "val": mean_sd([float(_field(r, "accuracy")) for r in ok]), "test": mean_sd(tests),
                     "test_values": tests, "runs": len(results)})
    verdicts = []
    for phi in sorted({v.phi for v in items if v.method == "compound"}):
        mine = [r for r in rows if r["phi"] == phi]
        compound = next(r for r in mine if r["method"] == "compound")
        singles = [r for r in mine if r["method"] in SINGLE and r["val"]["mean"] is not None]
        verdict = {"phi": phi, "compound": compound["label"], "single": None, "test": None,
                   "words": "no single-dimension network trained"}
        if singles:
            best = max(singles, key=lambda r: (r["val"]["mean"], -r["macs"]))
            test = welch_test(compound["test_values"], best["test_values"], 1 - level)
            verdict.update(single=best["method"], single_label=best["label"], test=test,
                           compound_test=compound["test"], single_test=best["test"],
                           words=verdict_words(test, level))
        verdicts.append(verdict)
    return {"rows": rows, "verdicts": verdicts, "level": level}


def verdict_line(v: dict, level: float = SIGNIFICANCE) -> str:
    """`φ = 1: compound 0.9120 ± 0.0040 vs width only 0.9050 ± 0.0060 (...): +0.0070 (95 % CI ...), Welch p = 0.17:
    no significant difference`."""
    head = f"φ = {format_phi(v['phi'])}: "
    if v["single"] is None:
        return head + v["words"]
    text = (f"{head}compound {pm(v['compound_test'])} (n = {v['compound_test']['n']}) vs {v['single_label']} "
            f"{pm(v['single_test'])} (n = {v['single_test']['n']}), the best single dimension on "
            f"search-validation")
    t = v["test"]
    if t is None:
        return f"{text}: {v['words']}"
    words = v["words"] if v["words"] == "no significant difference" else f"compound {v['words']}"
    return (f"{text}: difference on test {t['diff']:+.4f} (95 % CI {t['low']:+.4f} to {t['high']:+.4f}), "
            f"Welch p = {t['p']:.3g}: {words} (at p < {level:g})")


COLUMNS = ("method", "phi", "depth", "width", "resolution", "train_resolution", "macs", "macs_vs_compound", "params",
           "val_mean", "val_sd", "test_mean", "test_sd", "n", "runs", "verdict_vs", "diff", "ci_low", "ci_high", "p",
           "words")
MD_COLUMNS = ("label", "phi", "depth", "width", "resolution", "train_resolution", "macs", "macs_vs", "params",
              "val_pm", "test_pm", "n")
MD_HEADERS = ("method", "φ", "depth", "width", "resolution", "trained at (px)", "multiply-adds", "vs B_φ", "params",
              "val accuracy (mean ± sd)", "test accuracy (mean ± sd)", "n")


def flat_rows(summary: dict) -> list[dict]:
    """The CSV rows: one per network; the compound rows carry their φ's verdict."""
    by_phi = {v["phi"]: v for v in summary["verdicts"]}
    out = []
    for r in summary["rows"]:
        row = {k: r[k] for k in ("method", "phi", "depth", "width", "resolution", "train_resolution", "macs",
                                 "macs_vs_compound", "params", "runs")}
        row.update(val_mean=r["val"]["mean"], val_sd=r["val"]["sd"], test_mean=r["test"]["mean"],
                   test_sd=r["test"]["sd"], n=r["test"]["n"])
        v = by_phi.get(r["phi"]) if r["method"] == "compound" else None
        if v is not None and v["single"] is not None:
            t = v["test"] or {}
            row.update(verdict_vs=v["single"], diff=t.get("diff"), ci_low=t.get("low"), ci_high=t.get("high"),
                       p=t.get("p"), words=v["words"])
        out.append(row)
    return out


def markdown(summary: dict, title: str = "Compound scaling against single dimensions at matched cost") -> str:
    shown = [{**r, "val_pm": pm(r["val"]), "test_pm": pm(r["test"]), "n": r["test"]["n"],
              "macs_vs": "" if r["method"] == "baseline" else f"{r['macs_vs_compound']:+.1%}"} for r in summary["rows"]]
    lines = [f"# {title}", "", to_markdown(shown, MD_COLUMNS, MD_HEADERS).rstrip("\n"), "",
             f"Verdicts (on test; the single dimension compared is the one with the best mean on search-validation; "
             f"Welch's test, two-sided, at p < {summary['level']:g}):", ""]
    lines += [f"- {verdict_line(v, summary['level'])}" for v in summary["verdicts"]]
    return "\n".join(lines) + "\n"


def csv_text(summary: dict) -> str:
    return to_csv(flat_rows(summary), COLUMNS)
