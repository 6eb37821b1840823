"""family.png: params and multiply-adds of a family against φ, beside the paper's B0..B7 (Table 2)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .compound import PAPER_FLOPS_B, PAPER_PARAMS_M


def plot_family(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Two panels (params in M, multiply-adds in B) on log axes; the published points as crosses.

    Written to a temporary file and renamed, like every other output.
    """
    import os
    import tempfile

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
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
