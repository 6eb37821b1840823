"""Writing a derived family to a folder: one YAML per member, family.md/.csv, family.png.

Everything is computed first and written into a staging folder inside the output
folder, then renamed into place, so a failure never leaves a half-written family.
This is the hand-off the search calls (`derive_to_dir`) to put B1..B7 under --out/family/.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

from search_space.spec import ArchSpec

from .compound import (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, FamilyMember, derive_family, family_rows,
                       format_phi, parse_phis, published_family)
from .errors import ScalingError
from .tables import to_csv, to_markdown

FAMILY_COLUMNS = ("name", "phi", "width", "depth", "resolution", "params", "macs")
FAMILY_HEADERS = ("name", "φ", "width", "depth", "resolution", "params", "multiply-adds")
# Where a latency table exists (a search with --target-latency): per member, at its own resolution.
LATENCY_COLUMNS = ("latency_ms", "measured_ms")
LATENCY_HEADERS = ("predicted latency (ms)", "measured latency (ms)")
LatencyFn = Callable[[ArchSpec, int], Optional[float]]


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


def _columns(rows: list[dict]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The family's columns, and the latency ones that some row holds."""
    extra = [(c, h) for c, h in zip(LATENCY_COLUMNS, LATENCY_HEADERS) if any(c in r for r in rows)]
    return FAMILY_COLUMNS + tuple(c for c, _ in extra), FAMILY_HEADERS + tuple(h for _, h in extra)


def family_markdown(rows: list[dict], note: str = "") -> str:
    text = to_markdown(rows, *_columns(rows))
    return text + (f"\n{note}\n" if note else "")


def add_latency(rows: list[dict], members: list[FamilyMember], predict: LatencyFn,
                measure: LatencyFn | None = None) -> list[dict]:
    """Each member's predicted latency (ms, at its own resolution) as `latency_ms`, and with
    `measure` its measured one as `measured_ms`; None where the callable fails (e.g. a table of
    another device lacks a part) or returns nothing."""
    def safe(fn: LatencyFn, spec: ArchSpec, res: int) -> float | None:
        try:
            value = fn(spec, res)
        except Exception:  # noqa: BLE001 - a member without a latency still belongs in the table
            return None
        return None if value is None else round(float(value), 3)

    for row, m in zip(rows, members):
        row["latency_ms"] = safe(predict, m.spec, m.resolution)
        if measure is not None:
            row["measured_ms"] = safe(measure, m.spec, m.resolution)
    return rows


def derive_to_dir(b0: ArchSpec, out_dir: str | Path, alpha: float | None = PAPER_ALPHA,
                  beta: float | None = PAPER_BETA, gamma: float | None = PAPER_GAMMA,
                  phis: Iterable[float] | str = range(1, 8), coefficients: str | None = None,
                  plot: bool = True, latency: LatencyFn | None = None, measure: LatencyFn | None = None,
                  latency_note: str = "") -> list[dict]:
    """Derive the family and write it to `out_dir`; returns the table rows (baseline first).

    Files: `b<φ>.yaml` per member (b0.yaml is the baseline), `family.md`, `family.csv`,
    `family.png` (unless plot=False). `phis='published'` uses the published B1..B7 table.
    With `latency(spec, resolution) -> ms` (a latency table's prediction) each row gets its
    predicted latency, with `measure` its measured one too (`add_latency`); `latency_note`
    (the device and conditions) goes under the table in family.md.
    """
    members = family_members(b0, alpha, beta, gamma, phis, coefficients)
    rows = family_rows(members)
    if latency is not None:
        add_latency(rows, members, latency, measure)
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
        (stage / "family.md").write_text(family_markdown(rows, latency_note if latency is not None else ""))
        (stage / "family.csv").write_text(to_csv(rows, _columns(rows)[0]))
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


def read_family(folder: str | Path) -> dict[float, ArchSpec]:
    """The members a family folder holds (`b<φ>.yaml`, as `derive_to_dir` writes them), by φ;
    φ = 0 is the baseline. ScalingError when there is no `b0.yaml` or a member does not parse."""
    from search_space.errors import SpecError
    folder = Path(folder)
    if not (folder / "b0.yaml").is_file():
        raise ScalingError(f"{folder}: no family here (no b0.yaml)")
    members = {}
    for path in sorted(folder.glob("b*.yaml")):
        m = re.fullmatch(r"b(\d+(?:\.\d+)?)\.yaml", path.name)
        if m:
            try:
                members[float(m.group(1))] = ArchSpec.load(path)
            except SpecError as exc:
                raise ScalingError(f"{path}: {str(exc).splitlines()[0]}") from None
    return dict(sorted(members.items()))
