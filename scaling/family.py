"""Writing a derived family to a folder: one YAML per member, family.md/.csv, family.png.

Everything is computed first and written into a staging folder inside the output
folder, then renamed into place, so a failure never leaves a half-written family.
This is the hand-off the search calls (`derive_to_dir`) to put B1..B7 under --out/family/.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from search_space.spec import ArchSpec

from .compound import (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, FamilyMember, derive_family, family_rows,
                       format_phi, parse_phis, published_family)
from .errors import ScalingError
from .tables import to_csv, to_markdown

FAMILY_COLUMNS = ("name", "phi", "width", "depth", "resolution", "params", "macs")
FAMILY_HEADERS = ("name", "φ", "width", "depth", "resolution", "params", "multiply-adds")


def family_members(b0: ArchSpec, alpha: float | None = PAPER_ALPHA, beta: float | None = PAPER_BETA,
                   gamma: float | None = PAPER_GAMMA, phis: Iterable[float] | str = range(1, 8),
                   coefficients: str | None = None, include_baseline: bool = True) -> list[FamilyMember]:
    """Members for `phis` (formula mode) or the published table (`phis='published'` or
    `coefficients='published'`), with the baseline as φ = 0 first unless excluded."""
    published = coefficients == "published" or phis == "published"
    if coefficients not in (None, "published", "paper"):
        raise ScalingError(f"coefficients {coefficients!r}: expected 'published' or 'paper'")
    if isinstance(phis, str):
        phis = range(1, 8) if phis == "published" else parse_phis(phis)
    phis = list(phis)
    if include_baseline and 0 not in phis and phis:
        phis = [0.0] + phis
    if published:
        return published_family(b0, phis)
    if coefficients == "paper":
        alpha, beta, gamma = PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA
    return derive_family(b0, alpha, beta, gamma, phis)


def family_markdown(rows: list[dict]) -> str:
    return to_markdown(rows, FAMILY_COLUMNS, FAMILY_HEADERS)


def derive_to_dir(b0: ArchSpec, out_dir: str | Path, alpha: float | None = PAPER_ALPHA,
                  beta: float | None = PAPER_BETA, gamma: float | None = PAPER_GAMMA,
                  phis: Iterable[float] | str = range(1, 8), coefficients: str | None = None,
                  plot: bool = True) -> list[dict]:
    """Derive the family and write it to `out_dir`; returns the table rows (baseline first).

    Files: `b<φ>.yaml` per member (b0.yaml is the baseline), `family.md`, `family.csv`,
    `family.png` (unless plot=False). `phis='published'` uses the published B1..B7 table.
    """
    members = family_members(b0, alpha, beta, gamma, phis, coefficients)
    rows = family_rows(members)
    out = Path(out_dir)
    created = not out.exists()
    if out.exists() and not out.is_dir():
        raise ScalingError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out, prefix=".family-"))
    except OSError as exc:
        raise ScalingError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    try:
        for m in members:
            m.spec.save(stage / f"b{format_phi(m.phi)}.yaml")
        (stage / "family.md").write_text(family_markdown(rows))
        (stage / "family.csv").write_text(to_csv(rows, FAMILY_COLUMNS))
        if plot:
            from .plot import plot_family
            plot_family(rows, stage / "family.png", title=f"compound scaling of {b0.name or 'the baseline'}")
        for item in sorted(stage.iterdir()):
            os.replace(item, out / item.name)
    except OSError as exc:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise ScalingError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return rows
