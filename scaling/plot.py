"""family.png: params and multiply-adds of a family against φ, beside the paper's B0..B7 (Table 2)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from search_space.fileio import write_atomic

from .compound import PAPER_FLOPS_B, PAPER_PARAMS_M


def plot_family(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Two panels (params in M, multiply-adds in B) on log axes; the published points as crosses.

    Rendered in memory, then written atomically like every other output.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    rows = sorted(rows, key=lambda r: r["phi"])
    phis = [r["phi"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = ((axes[0], [r["params"] / 1e6 for r in rows], PAPER_PARAMS_M, "parameters (M)"),
              (axes[1], [r["macs"] / 1e9 for r in rows], PAPER_FLOPS_B, "multiply-adds (B)"))
    for ax, ours, paper, label in panels:
        ax.plot(phis, ours, "o-", label="this family")
        ax.plot(range(len(paper)), paper, "x--", color="gray", label="EfficientNet B0-B7 (paper, Table 2)")
        for r, y in zip(rows, ours):
            ax.annotate(r["name"].rsplit("-", 1)[-1], (r["phi"], y), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
        ax.set_xlabel("φ (published: Bk at φ = k)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Render `fig` in memory, close it, and write the PNG atomically."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=100, format="png")
    finally:
        plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path


def plot_verify(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """scaling.png: test accuracy (mean ± sd over seeds) against multiply-adds, one line per
    method (compound, width, depth, resolution only), each starting at B0, as the paper's
    Figure 8. `rows`: `scaling.verify.summarize`'s."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    base = next((r for r in rows if r["method"] == "baseline"), None)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    styles = {"compound": ("o-", "compound"), "width": ("s--", "width only"), "depth": ("^--", "depth only"),
              "resolution": ("D--", "resolution only")}
    for method, (style, label) in styles.items():
        line = sorted((r for r in rows if r["method"] == method and r["test"]["mean"] is not None),
                      key=lambda r: r["phi"])
        if not line:
            continue
        if base is not None and base["test"]["mean"] is not None:
            line = [base] + line
        ax.errorbar([r["macs"] / 1e9 for r in line], [r["test"]["mean"] for r in line],
                    yerr=[r["test"]["sd"] or 0.0 for r in line], fmt=style, capsize=3, label=label)
        for r in (line if method == "compound" else []):  # φ once, on the compound line
            if r is base:
                continue
            ax.annotate(f"φ={r['phi']:g}", (r["macs"] / 1e9, r["test"]["mean"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.set_xlabel("multiply-adds (B), at each network's own resolution")
    ax.set_ylabel("test accuracy (mean ± sd over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
