"""What a search leaves for people: trials.csv, best.yaml, pareto.png and the summary table.

Every file is written to a temporary name and renamed, so a kill never leaves half a file
(the store, not these files, is the record; all of them can be rebuilt from it).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from search_space.fileio import write_atomic as atomic_write

CSV_COLUMNS = ("id", "kind", "proposal_id", "source", "status", "accuracy", "reward", "macs", "params",
               "latency_ms", "key", "choices", "epoch_accuracies", "wall_time", "worker", "attempt", "queued_at",
               "started_at", "finished_at", "message")


TIME_COLUMNS = ("queued_at", "started_at", "finished_at")  # Unix seconds: 6 significant digits round them to 10,000 s


def _cell(v: Any, column: str = "") -> Any:
    if isinstance(v, (list, tuple)):
        return " ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3f}" if column in TIME_COLUMNS else f"{v:.6g}"
    return "" if v is None else v


def write_trials_csv(rows: Iterable[dict], path: str | Path) -> None:
    """One line per recorded trial (search, reference, grid), in completion order."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([_cell(r.get(c), c) for c in CSV_COLUMNS])
    atomic_write(path, buf.getvalue())


def csv_line(row: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow([_cell(row.get(c), c) for c in CSV_COLUMNS])
    return buf.getvalue()


class TrialsCsv:
    """Listener: trials.csv grows by one line per record, so its cost per trial stays flat
    however long the run. `rewrite(rows)` writes it whole and atomically (at the start,
    to take a resumed run's history, and at the end); a kill between can at worst leave
    a torn last line, which the next rewrite replaces."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rewrite(self, rows: Iterable[dict]) -> None:
        write_trials_csv(rows, self.path)

    def __call__(self, rec: dict) -> None:
        if not self.path.exists():
            self.rewrite([])
        with open(self.path, "a", newline="") as fh:
            fh.write(csv_line(rec))


def best_spec(row: dict, target_resolution: int) -> Any:
    """The B0 as an ArchSpec: 1000 classes, the target resolution, named 'b0'."""
    import dataclasses
    from search_space.spec import ArchSpec
    spec = ArchSpec.from_dict(row["spec"])
    return dataclasses.replace(spec, num_classes=1000, resolution=int(target_resolution), name="b0")


def write_best(row: dict, out_dir: str | Path, target_resolution: int) -> Path:
    path = Path(out_dir) / "best.yaml"
    best_spec(row, target_resolution).save(path)
    return path


DENSE_FROM = 1500  # trained trials from which pareto.png shows their density, not each point


def pareto_front(rows: Sequence[dict]) -> list[dict]:
    """The trials no other beats in both accuracy and MACs (fewer MACs, then higher
    accuracy first), in order of MACs: the upper-left envelope of the plot."""
    front: list[dict] = []
    for r in sorted(rows, key=lambda r: (r["macs"], -r["accuracy"])):
        if not front or r["accuracy"] > front[-1]["accuracy"]:
            front.append(r)
    return front


def _plot_trials(fig: Any, ax: Any, ok: list, bad: list, skipped: list, lo: float, hi: float,
                 ylo: float, yhi: float) -> None:
    """The trials of `plot_pareto`, readable from ten to 20,000 of them: points (fainter and
    smaller as they get many) or, from DENSE_FROM on, their density as hexagons on a log
    colour scale; the Pareto front on top. Failed and skipped ones are ticks at the bottom,
    fainter when many. Large collections are rasterized (the PNG stays small either way)."""
    import numpy as np

    n = len(ok)
    if ok:
        xs = np.array([r["macs"] / 1e6 for r in ok])
        ys = np.array([r["accuracy"] for r in ok])
        if n >= DENSE_FROM:
            cells = ax.hexbin(xs, ys, xscale="log", gridsize=(60, 30), bins="log", mincnt=1, cmap="Blues",
                              extent=(np.log10(lo), np.log10(hi), ylo, yhi), linewidths=0.2, zorder=2,
                              label=f"trained ({n}), density")
            fig.colorbar(cells, ax=ax, pad=0.01, fraction=0.04).set_label("trained trials per cell", fontsize=7)
        else:
            ax.scatter(xs, ys, s=22 if n <= 300 else 10, c="tab:blue", alpha=max(0.25, min(0.8, 0.8 * (300 / n) ** 0.5)),
                       edgecolors="none", label=f"trained ({n})", zorder=3, rasterized=n > 300)
        front = pareto_front(ok)
        ax.step([r["macs"] / 1e6 for r in front], [r["accuracy"] for r in front], where="post", c="tab:red",
                lw=1.4, zorder=5, label=f"Pareto front ({len(front)} trials)")
        ax.scatter([r["macs"] / 1e6 for r in front], [r["accuracy"] for r in front], s=14, c="tab:red", zorder=5)
    for group, kw in ((bad, dict(marker="x", c="tab:red", label=f"failed/timeout ({len(bad)})", zorder=3)),
                      (skipped, dict(marker="|", c="0.6", label=f"outside cost window, not trained ({len(skipped)})",
                                     zorder=2))):
        if group:
            many = len(group) > 300
            ax.scatter([r["macs"] / 1e6 for r in group], [ylo + 0.005] * len(group), s=10 if many else 30,
                       alpha=max(0.15, min(1.0, (300 / len(group)) ** 0.5)), rasterized=many, **kw)


def _log_x(ax, lo: float, hi: float) -> None:
    """A log x axis from lo to hi labelled in plain numbers (costs span a few octaves)."""
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    plain = matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)


def plot_pareto(rows: Sequence[dict], path: str | Path, target: int, alpha: float, beta: float,
                best: Optional[dict] = None, reference: Optional[dict] = None, window: tuple | None = None,
                final: Optional[dict] = None, latency_target: Optional[float] = None) -> None:
    """Validation accuracy against MACs: every trained trial (their density from
    DENSE_FROM on) with the Pareto front on top, reward iso-lines, the target
    (and cost window), the best circled, the reference B0 marked; with `final` (a
    `nas.final.summarize` result) the stage-2 test accuracies, mean ± sd over seeds.
    With a latency target, a second panel: accuracy against predicted latency
    (`_latency_panel`). `target` None (latency only): the MACs panel has no target line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if latency_target:
        fig, (ax, lax) = plt.subplots(1, 2, figsize=(15, 5.5), dpi=110)
    else:
        fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    trained = [r for r in rows if r.get("source") == "trained" and r.get("kind") in ("search", "oneshot")]
    ok = [r for r in trained if r.get("status") == "ok" and r.get("accuracy") is not None]
    bad = [r for r in trained if r.get("status") != "ok" or r.get("accuracy") is None]
    skipped = [r for r in rows if r.get("source") == "cost-only"]
    macs_all = [r["macs"] for r in rows if r.get("macs")] + ([target] if target else [])
    lo, hi = min(macs_all) * 0.8 / 1e6, max(macs_all) * 1.2 / 1e6
    staged = [c for c in (final or {}).get("candidates", []) if c["test"]["mean"] is not None]
    accs = [r["accuracy"] for r in ok] + ([reference["accuracy"]] if reference and reference.get("accuracy") else [])
    accs += [c["test"]["mean"] - c["test"]["sd"] for c in staged] + [c["test"]["mean"] + c["test"]["sd"] for c in staged]
    ylo = max(0.0, min(accs) - 0.1) if accs else 0.0
    yhi = min(1.0, max(accs) + 0.08) if accs else 1.0
    _plot_trials(fig, ax, ok, bad, skipped, lo, hi, ylo, yhi)
    xs = np.geomspace(max(lo, 1e-3), hi, 200)
    best_reward = best["reward"] if best and best.get("reward") else None
    w = np.where(xs * 1e6 <= (target or 0), alpha, beta)
    for i, level in enumerate(np.linspace(ylo + 0.02, yhi, 4) if target else ()):
        # reward = acc * (m/T)^w  =>  acc = reward / (m/T)^w
        ax.plot(xs, level / (xs * 1e6 / target) ** w, ls=":", lw=1, c="0.6",
                label="reward iso-lines" if i == 0 else None, zorder=1)
    if best_reward and target and not latency_target:  # with two terms, a MACs iso-line alone would mislead
        ax.plot(xs, best_reward / (xs * 1e6 / target) ** w, ls="--", lw=1, c="tab:orange", alpha=0.7,
                label=f"iso-line of the best reward {best_reward:.3f}", zorder=1)
    if target:
        ax.axvline(target / 1e6, c="k", lw=1.2, ls="--", label=f"target T = {target / 1e6:g}M")
    if window and target:
        ax.axvspan(window[0] * target / 1e6, min(window[1] * target / 1e6, hi), color="tab:green", alpha=0.06,
                   label="cost window (trained)")
    if best:
        ax.scatter([best["macs"] / 1e6], [best["accuracy"]], s=260, facecolors="none", edgecolors="tab:orange",
                   linewidths=2.2, label=f"best (B0): {best['accuracy']:.3f} @ {best['macs'] / 1e6:.0f}M", zorder=4)
    if reference and reference.get("accuracy") is not None:
        ax.scatter([reference["macs"] / 1e6], [reference["accuracy"]], marker="*", s=160, c="tab:purple",
                   label=f"EfficientNet-B0: {reference['accuracy']:.3f} @ {reference['macs'] / 1e6:.0f}M", zorder=4)
    if staged:
        ax.errorbar([c["macs"] / 1e6 for c in staged], [c["test"]["mean"] for c in staged],
                    yerr=[c["test"]["sd"] for c in staged], fmt="D", ms=6, c="tab:green", capsize=4, zorder=5,
                    label=f"stage 2 on test: mean ± sd over {len(final['seeds'])} fresh seeds")
    _log_x(ax, lo, hi)
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("multiply-adds (millions, at the target resolution)")
    ax.set_ylabel("proxy accuracy (search-validation; stage 2: test)" if staged else
                  "proxy accuracy (search-validation)")
    ax.set_title("Search: accuracy vs multiply-adds")
    ax.grid(alpha=0.25, which="both")
    ax.legend(fontsize=7, loc="lower right")
    if latency_target:
        _latency_panel(lax, ok, latency_target, best, reference, window, staged, (ylo, yhi))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _latency_panel(ax: Any, ok: list, target_ms: float, best: Optional[dict], reference: Optional[dict],
                   window: tuple | None, staged: list, ylim: tuple) -> None:
    """Accuracy against predicted latency (ms, log axis): trained trials with a latency, their
    Pareto front, the latency target and its cost window, B0 and the reference; stage 2's B0
    and reference at their *measured* latency (test accuracy, mean ± sd)."""

    pts = [r for r in ok if r.get("latency_ms")]
    if pts:
        ax.scatter([r["latency_ms"] for r in pts], [r["accuracy"] for r in pts], s=22 if len(pts) <= 300 else 8,
                   c="tab:blue", alpha=0.7 if len(pts) <= 300 else 0.3, edgecolors="none",
                   label=f"trained ({len(pts)}), predicted latency", zorder=3, rasterized=len(pts) > 300)
        front = pareto_front([{**r, "macs": r["latency_ms"]} for r in pts])
        ax.step([r["macs"] for r in front], [r["accuracy"] for r in front], where="post", c="tab:red", lw=1.4,
                zorder=5, label=f"Pareto front ({len(front)} trials)")
    xs = [r["latency_ms"] for r in pts] + [target_ms]
    lo, hi = min(xs) * 0.8, max(xs) * 1.25
    ax.axvline(target_ms, c="k", lw=1.2, ls="--", label=f"latency target {target_ms:g} ms")
    if window:
        ax.axvspan(window[0] * target_ms, min(window[1] * target_ms, hi), color="tab:green", alpha=0.06,
                   label="cost window (trained)")
    for r, kw in ((best, dict(s=260, facecolors="none", edgecolors="tab:orange", linewidths=2.2, label="best (B0)")),
                  (reference, dict(marker="*", s=160, c="tab:purple", label="EfficientNet-B0"))):
        if r and r.get("latency_ms") and r.get("accuracy") is not None:
            ax.scatter([r["latency_ms"]], [r["accuracy"]], zorder=4, **kw)
    measured = [c for c in staged if c.get("measured_latency_ms")]
    if measured:
        ax.errorbar([c["measured_latency_ms"] for c in measured], [c["test"]["mean"] for c in measured],
                    yerr=[c["test"]["sd"] for c in measured], fmt="D", ms=6, c="tab:green", capsize=4, zorder=5,
                    label="stage 2: measured latency, test accuracy")
        lo, hi = min(lo, min(c["measured_latency_ms"] for c in measured) * 0.8), max(
            hi, max(c["measured_latency_ms"] for c in measured) * 1.25)
    _log_x(ax, lo, hi)
    ax.set_ylim(*ylim)
    ax.set_xlabel("latency (ms; trials: predicted by the latency table)")
    ax.set_title("Search: accuracy vs latency")
    ax.grid(alpha=0.25, which="both")
    ax.legend(fontsize=7, loc="lower right")


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def summary_table(best: Optional[dict], reference: Optional[dict], counts: dict[str, int], target: Optional[int],
                  wall: float, out_dir: str | Path, family: Optional[Sequence[dict]] = None,
                  stop_reason: str = "", final: Optional[str] = None, latency_target: Optional[float] = None,
                  measured: Optional[dict] = None, oneshot: bool = False) -> str:
    """The closing summary printed on stdout (Markdown-ish, readable in a terminal). With a
    latency target, a latency column beside MACs: predicted, and measured end to end where
    stage 2 measured it (`measured`: key -> ms); "within target" then judges the measured
    latency where there is one. `oneshot`: the search scored with a supernet's inherited weights."""
    lines = [f"Search finished in {wall / 60:.1f} min: {counts.get('trained', 0)} "
             f"{'scored with inherited weights' if oneshot else 'trained'} "
             f"({counts.get('failed', 0)} failed), {counts.get('cost-only', 0)} outside the cost window, "
             f"{counts.get('cache', 0)} cached"
             + (f", {counts['stopped']} of the trained stopped early (ASHA)" if counts.get("stopped") else "")
             + (f", {counts['prefilter']} prefiltered out" if counts.get("prefilter") else "")
             + f".  Results in {out_dir}/"]
    if stop_reason:
        lines.append(f"Note: {stop_reason}")
    lat_col = " latency predicted / measured |" if latency_target else ""
    measure = "inherited weights" if oneshot else "proxy, 1 seed"
    lines += ["", f"| model | search-val accuracy ({measure}) | MACs |{lat_col} params | reward | within target |",
              "|---|---|---|---|---|---|" + ("---|" if latency_target else "")]
    for name, r in (("B0 found", best), ("EfficientNet-B0", reference)):
        if r is None:
            continue
        within = target is None or r["macs"] <= target
        lat = ""
        if latency_target:
            seen = (measured or {}).get(r.get("key"))
            lat = f" {_fmt(r.get('latency_ms'), '.2f')} ms / {_fmt(seen, '.2f')}{' ms' if seen else ''} |"
            judged = seen if seen is not None else r.get("latency_ms")
            within = within and judged is not None and judged <= latency_target
        lines.append(f"| {name} | {_fmt(r.get('accuracy'))} | {r['macs'] / 1e6:.1f}M |{lat} {r['params'] / 1e6:.2f}M | "
                     f"{_fmt(r.get('reward'))} | {'yes' if within else 'no'} |")
    if best is None:
        lines.append("| B0 found | no trial finished ok | | | | |" + (" |" if latency_target else ""))
    if final:
        lines += ["", "Stage 2 (fresh seeds; B0 chosen on search-validation, judged on test):", final.rstrip()]
    if best is not None:
        from search_space.spec import ArchSpec
        spec = ArchSpec.from_dict(best["spec"])
        lines += ["", "B0 blocks: " + "  ".join(spec.to_tf_strings())]
    if family:
        lines += ["", "| model | phi | width | depth | resolution | params | MACs |", "|---|---|---|---|---|---|---|"]
        for row in family:
            lines.append(f"| {row.get('name', '')} | {_g(row.get('phi'))} | {_g(row.get('width'))} | "
                         f"{_g(row.get('depth'))} | {row.get('resolution', '')} | "
                         f"{_m(row.get('params'))} | {_m(row.get('macs'))} |")
    return "\n".join(lines)


def _g(v: Any) -> str:
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def _m(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v / 1e9:.2f}G" if v >= 1e9 else f"{v / 1e6:.1f}M"
