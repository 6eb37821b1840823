"""Benchmark: does removing the size trend from a score make it rank better?

The one-shot search's winners sit at the top of the cost window because the supernet's
inherited-weight accuracy follows size (issue 27). If the stand-alone accuracy the score
should predict did not follow size, the part of the score that size explains would be
noise, and the score with its size trend removed (the residual of a least-squares line
of score on log multiply-adds) would rank the architectures better and pick smaller
winners. This reads `nas.proxy check` tables (`proxy.csv`, with the `supernet` column)
and prints, per table, with bootstrap 90 % intervals over the architectures:

    tau(MACs, score)          how much the score follows size
    tau(score, reference)     the score's fidelity, as the proxy check reports it
    tau(residual, reference)  the same with the size trend removed
    tau(MACs, reference)      how much the reference itself follows size

    python bench/size_bias.py RUN/proxy.csv [RUN2/proxy.csv ...] [--score supernet] [--json]

`--quick` builds a synthetic table in which the score is size plus the reference's
signal, so that removing the trend must help: it checks the machinery, not a supernet.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._cli import OneLineParser  # noqa: E402
from nas.proxy.stats import bootstrap, interval, kendall, resamples  # noqa: E402


def residual(log_macs: np.ndarray, score: np.ndarray) -> np.ndarray:
    """`score` less its least-squares line on `log_macs`."""
    slope, intercept = np.polyfit(log_macs, score, 1)
    return score - (slope * log_macs + intercept)


def figures(macs: np.ndarray, score: np.ndarray, reference: np.ndarray, n_boot: int = 2000) -> dict:
    """The four Kendall taus with their intervals (one shared set of resamples)."""
    log_macs = np.log(macs)
    index = resamples(len(score), n_boot)
    pairs = {"macs_score": (log_macs, score), "score_reference": (score, reference),
             "residual_reference": (residual(log_macs, score), reference), "macs_reference": (log_macs, reference)}
    out: dict = {"architectures": len(score)}
    for name, (x, y) in pairs.items():
        out[name] = {"tau": kendall(x, y), "ci": interval(bootstrap(x, y, index=index))}
    return out


def read_table(path: Path, score: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(MACs, score, reference) of the architectures that have both; ValueError names what is missing."""
    rows = list(csv.DictReader(path.open()))
    if not rows or any(c not in rows[0] for c in ("macs", score, "reference_acc")):
        raise ValueError(f"{path}: not a proxy-check table with columns macs, {score}, reference_acc")
    kept = [r for r in rows if r[score] not in ("", "nan") and r["reference_acc"] not in ("", "nan")]
    if len(kept) < 4:
        raise ValueError(f"{path}: {len(kept)} architectures with both {score} and reference_acc; need 4")
    col = lambda name: np.array([float(r[name]) for r in kept])  # noqa: E731
    return col("macs"), col(score), col("reference_acc")


def synthetic(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    macs = rng.uniform(200e6, 400e6, n)
    reference = rng.normal(0.9, 0.02, n)
    score = 0.2 * np.log(macs / 200e6) + (reference - 0.9)  # size trend + the reference's signal
    return macs, score, reference


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser("size_bias", __doc__.splitlines()[0], "a synthetic table (checks the machinery)")
    ap.add_argument("tables", nargs="*", type=Path, help="proxy.csv files written by nas.proxy check")
    ap.add_argument("--score", default="supernet", help="the score column (default: supernet)")
    args = ap.parse_args(argv)
    if not args.quick and not args.tables:
        ap.error("name at least one proxy.csv (or --quick)")
    tables = {"synthetic": synthetic()} if args.quick else {}
    for path in args.tables:
        if not path.is_file():
            ap.error(f"{path}: no such file")
        try:
            tables[str(path)] = read_table(path, args.score)
        except ValueError as exc:
            ap.error(str(exc))
    result = {name: figures(*t) for name, t in tables.items()}
    print(f"{'table':<40} {'n':>3}  {'tau(MACs,score)':>22}  {'tau(score,ref)':>22}  "
          f"{'tau(residual,ref)':>22}  {'tau(MACs,ref)':>22}")
    for name, f in result.items():
        cells = [f"{f[k]['tau']:+.2f} [{f[k]['ci'][0]:+.2f}, {f[k]['ci'][1]:+.2f}]"
                 for k in ("macs_score", "score_reference", "residual_reference", "macs_reference")]
        print(f"{name[-40:]:<40} {f['architectures']:>3}  " + "  ".join(f"{c:>22}" for c in cells))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
