"""`python -m nas.final RUN`: run or extend stage 2 of an existing search run.

Other seeds, candidates, budget, device or engine than the run's; everything else comes
from the run's stored options. Runs are identified by the one measurement identity
(`nas.evaluate.budget.measurement_id`), so a rerun or an extension trains only what is
missing: other `--workers`, `--trial-timeout` or `--device` retrain nothing already stored.
Exit status 0 with a verdict, 1 without one, 2 for bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from nas.errors import UserError
from nas.final import sequential

from .args import Parser, cli_main, int_at_least, number, positive_int
from .options import DEFAULTS
from .rundir import check_out_dir, open_run
from .runs import final_text, stage2, stage2_best, write_outputs
from .setup import validate

PROG = "nas.final"
AGAIN = "rerun the same command to go on"


def parse_seeds(text: str, search_seed: int) -> tuple[Any, list[int] | None]:
    """`auto` (sequential), `3` (that many fresh seeds) or `4,5,6` (these); the search seed is
    never one of them."""
    if str(text).strip().lower() == "auto":
        return "auto", None
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected auto, a count such as 3 or a list such as 4,5,6") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"--seeds {text!r}: expected auto, a count such as 3 or a list such as 4,5,6")
    if len(values) == 1:
        if values[0] < 1:
            raise UserError(f"--seeds {text!r}: need at least one seed")
        return values[0], None
    if int(search_seed) in values:
        raise UserError(f"--seeds {text!r}: {search_seed} is the search seed; stage 2 needs fresh ones")
    if len(set(values)) != len(values):
        raise UserError(f"--seeds {text!r}: a seed is repeated")
    return len(values), values


def build_parser() -> Parser:
    p = Parser(prog=f"python -m {PROG}", description="Run or extend stage 2 (retrain the best on fresh seeds, "
               "choose on search-validation, judge on test) of an existing search run.")
    p.add_argument("run", metavar="RUN", help="the run folder (--out of nas.search)")
    p.add_argument("--top-k", type=positive_int("--top-k"),
                   help=f"the K best search architectures (default: the run's, {DEFAULTS['final_top_k']})")
    p.add_argument("--seeds", help="auto (3 seeds each, then more for B0 and the reference while the verdict is "
                                   "undecided), a count, or a list such as 4,5,6 (default: the run's, "
                                   f"{DEFAULTS['final_seeds']})")
    p.add_argument("--max-seeds", type=int_at_least("--max-seeds", sequential.INITIAL),
                   help=f"with auto: at most this many seeds for B0 and the reference (default: the run's, "
                        f"{DEFAULTS['final_max_seeds']})")
    p.add_argument("--first-seed", type=int_at_least("--first-seed", 0),
                   help="with auto or a count: the fresh seeds start here (default: the search seed + 1)")
    p.add_argument("--candidates", help="trial ids (trials.csv 'id') instead of the top K, e.g. 12,30")
    p.add_argument("--final-epochs", type=number("--final-epochs", 0, strict=True),
                   help=f"epochs of the final budget (default: the run's, {DEFAULTS['final_epochs']:g})")
    p.add_argument("--final-resolution", type=int_at_least("--final-resolution", 8),
                   help="image size of the final budget (default: the run's)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="training device (default: the run's)")
    p.add_argument("--workers", type=int_at_least("--workers", 0), help="trials at once (default: the run's)")
    p.add_argument("--trial-timeout", type=number("--trial-timeout", 0, strict=True), metavar="SECONDS",
                   help="a run longer than this is recorded as 'timeout' (default: the run's)")
    p.add_argument("--engine", choices=("local", "nni"), help="where the runs train (default: the run's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quiet", action="store_true", help="print only the table and the verdict")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Stage 2 of the run in RUN with other seeds, candidates, budget or device."""
    return cli_main(PROG, lambda: _main(build_parser().parse_args(argv)),
                    "interrupted; finished runs are stored, rerun the same command to go on")


def _main(args: Any) -> int:
    from nas.store.store import Store

    check_out_dir(args.run, True, False)
    with Store.open(args.run) as st:
        stored = st.config
        kind = "oneshot" if stored.get("strategy") == "oneshot" else "search"
        if not st.count(kind):
            raise UserError(f"{args.run}: the run has no trained search trial yet; finish the search first")
    given = {"out": args.run, "resume": True, "quiet": args.quiet, "no_progress": args.no_progress}
    if args.max_seeds is not None:
        given["final_max_seeds"] = args.max_seeds
    for name in ("device", "workers", "engine", "final_epochs", "final_resolution", "trial_timeout"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    if args.top_k is not None:
        given["final_top_k"] = args.top_k
    opts = {**DEFAULTS, **stored, **given}
    if args.seeds is not None:
        opts["final_seeds"], opts["_final_seed_list"] = parse_seeds(args.seeds, int(opts["seed"]))
    if args.first_seed is not None:
        if opts.get("_final_seed_list"):
            raise UserError("--first-seed goes with --seeds auto or a count, not with a list of seeds")
        opts["_final_first_seed"] = args.first_seed
    if args.candidates is not None:
        try:
            opts["_final_candidates"] = [int(x) for x in args.candidates.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--candidates {args.candidates!r}: expected trial ids such as 12,30") from None
    setup = validate(opts, set(given), stored)
    out = Path(args.run)
    with open_run(out, "stage 2", AGAIN) as store:
        summary = stage2(setup, store, out)
        best = stage2_best(store, summary, setup.settings.kind)
        if best is not None:
            write_outputs(store, out, setup, best, store.trial("reference", 0), summary)
        print(final_text(summary, setup))
    return 0 if summary["verdict"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
