"""Stage 2's sequential seeds against the fixed design, by simulation (no training).

    python bench/sequential.py [--studies 20000] [--max-seeds 8]

Per design: the share of studies that decide (falsely) with no true gap, the share that
say "better" at true gaps of 1, 2 and 2.5 seed sds, and the mean seeds B0 and the
reference use. Seeds 7001+ (the boundary is calibrated on its own fixed seed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.final import sequential as Q  # noqa: E402
from nas.final.stats import ALPHA  # noqa: E402

GAPS = (0.0, 1.0, 2.0, 2.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=20_000)
    p.add_argument("--max-seeds", type=int, default=Q.DEFAULT_MAX_SEEDS)
    a = p.parse_args(argv)
    plan = Q.looks(Q.INITIAL, a.max_seeds)
    designs = [("fixed, 3 seeds", (Q.INITIAL,), ALPHA), (f"fixed, {a.max_seeds} seeds", (a.max_seeds,), ALPHA),
               (f"sequential, looks {', '.join(map(str, plan))}", plan, Q.boundary(plan))]
    print(f"| design | p below | {' | '.join(f'gap {g:g} sd: decided' if g == 0 else f'gap {g:g} sd: better' for g in GAPS)}"
          f" | mean seeds at 2.5 sd |")
    print("|---|---|" + "---|" * len(GAPS) + "---|")
    for name, looks, threshold in designs:
        cells, seeds = [], None
        for i, gap in enumerate(GAPS):
            r = Q.simulate(looks, gap, threshold, studies=a.studies, seed=7001 + i)
            cells.append(f"{r['better'] + r['worse']:.1%}" if gap == 0 else f"{r['better']:.1%}")
            seeds = r["mean_seeds"]
        print(f"| {name} | {threshold:.4f} | {' | '.join(cells)} | {seeds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
