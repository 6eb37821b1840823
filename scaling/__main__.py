"""`python -m scaling`: derive a family from a baseline, run the α/β/γ grid search, or
verify compound scaling against single dimensions on a search run's family.

    python -m scaling derive efficientnet-b0 --coefficients published --out runs/family
    python -m scaling derive runs/search/best.yaml --alpha 1.2 --beta 1.1 --gamma 1.15 --phis 1-7 --json
    python -m scaling grid efficientnet-b0 --step 0.1 --proxy-epochs 1 --out runs/grid
    python -m scaling verify runs/search --phi 1,2 --seeds 3

`grid` and `verify` need the training code: `grid` imports `nas` lazily inside `run_grid`,
`verify` hands its parsed options to `nas.cli.verify` (a deliberate boundary crossing, at
this composition root only; `scaling.compound`/`grid`/`verify` stay free of training
code). Bad input: one line `scaling: error: ...`, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from search_space.errors import SpecError
from search_space.spec import ArchSpec

from .compound import PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, check_coefficients, parse_phis
from .errors import ScalingError
from .family import FAMILY_COLUMNS, derive_to_dir, family_markdown, family_members
from .grid import DEFAULT_SEEDS as DEFAULT_GRID_SEEDS
from .grid import GridResult, grid_candidates, grid_markdown, save_grid_table
from .tables import write_atomic
from .verify import DEFAULT_PHIS as DEFAULT_VERIFY_PHIS
from .verify import DEFAULT_SEEDS as DEFAULT_VERIFY_SEEDS

PROG = "scaling"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2 (no usage dump)."""

    def error(self, message: str):  # noqa: D401
        raise ScalingError(message)


def load_baseline(text: str) -> ArchSpec:
    """A zoo name (`efficientnet-b0`) or a YAML/JSON spec file (such as a search's best.yaml)."""
    from search_space import zoo
    if zoo.has(text):
        return zoo.get(text)
    path = Path(text)
    if not path.exists():
        raise ScalingError(f"baseline {text!r}: neither a zoo name ({', '.join(zoo.names())}) nor an existing file")
    if path.is_dir():
        raise ScalingError(f"baseline {text!r}: is a folder, expected a spec file")
    try:
        return ArchSpec.load(path)
    except SpecError as exc:
        raise ScalingError(f"baseline does not parse: {exc}") from None


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI such as 1,2, got {text!r}") from None
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Compound scaling (EfficientNet): derive B1..B7, grid-search α, β, γ, or verify "
                "compound against single-dimension scaling.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("derive", help="scale a baseline into a family")
    d.add_argument("spec", metavar="SPEC", help="zoo name or spec YAML (e.g. a search's best.yaml)")
    d.add_argument("--coefficients", choices=("published", "paper"), default=None,
                   help="published: the B1..B7 table as given (default when no --alpha/--beta/--gamma); "
                        "paper: the formula with α=1.2, β=1.1, γ=1.15")
    d.add_argument("--alpha", type=float, help="depth coefficient α (d = α^φ)")
    d.add_argument("--beta", type=float, help="width coefficient β (w = β^φ)")
    d.add_argument("--gamma", type=float, help="resolution coefficient γ (r = γ^φ)")
    d.add_argument("--phis", default="1-7", help="φ values: 1-7, 1,2,5, 0.5-3, 0-2:0.5 (default 1-7)")
    d.add_argument("--out", help="write b<φ>.yaml, family.md, family.csv, family.png here")
    d.add_argument("--no-plot", action="store_true", help="skip family.png")
    d.add_argument("--json", action="store_true", help="print one JSON list of the rows instead of the table")

    g = sub.add_parser("grid", help="grid-search α, β, γ at φ = 1 by proxy training")
    g.add_argument("spec", metavar="SPEC", help="zoo name or spec YAML")
    g.add_argument("--out", required=True, help="folder for search.db (resume), grid.md, grid.csv, best.json")
    g.add_argument("--step", type=float, default=0.05, help="grid step (default 0.05)")
    g.add_argument("--tol", type=float, default=0.1, help="keep |α·β²·γ² − 2| <= tol (default 0.1)")
    g.add_argument("--alpha-range", type=_range, default=(1.0, 2.0), help="LO,HI (default 1,2)")
    g.add_argument("--beta-range", type=_range, default=(1.0, 1.5), help="LO,HI (default 1,1.5)")
    g.add_argument("--gamma-range", type=_range, default=(1.0, 1.5), help="LO,HI (default 1,1.5)")
    g.add_argument("--max-candidates", type=int, default=None,
                   help="evaluate only the N points closest to α·β²·γ² = 2")
    g.add_argument("--proxy-epochs", type=float, default=1.0, help="training epochs per candidate (default 1)")
    g.add_argument("--proxy-steps", type=int, default=None, help="training steps per candidate (overrides epochs)")
    g.add_argument("--proxy-resolution", type=int, default=32,
                   help="proxy resolution of the baseline; a candidate trains at it times its γ (default 32)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--dataset", default="mnist5k", help="proxy dataset (default mnist5k, built in)")
    g.add_argument("--data-dir", default=None)
    g.add_argument("--proxy-images", default=None, metavar="N",
                   help="a stratified, fixed subset: N images or N/class (default: all; as in nas.search)")
    g.add_argument("--test-data-dir", default=None, metavar="DIR",
                   help="imagefolder: the held-out folder of the run (--data-dir is then searched whole)")
    g.add_argument("--cache-dir", default=None, metavar="DIR", help="the proxy-data cache folder (as in nas.search)")
    g.add_argument("--skip-bad-images", action="store_true", help="leave unreadable image files out")
    g.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    g.add_argument("--seed", type=int, default=0, help="the first training seed (default 0)")
    g.add_argument("--seeds", type=int, default=DEFAULT_GRID_SEEDS,
                   help=f"runs per candidate, on seeds --seed, --seed + 1, ... (default {DEFAULT_GRID_SEEDS}); "
                        f"a candidate other than the paper's (1.2, 1.1, 1.15) is adopted only when it beats "
                        f"it with Welch p < 0.05")
    g.add_argument("--workers", type=int, default=1,
                   help="parallel trials in worker processes (default 1: one after another, in this process)")
    g.add_argument("--target-flops", default=None,
                   help="reward target in multiply-adds (default: twice the baseline's at its resolution)")
    g.add_argument("--json", action="store_true", help="print one JSON object (rows and best) instead of the table")

    v = sub.add_parser("verify", help="train compound against width-, depth- and resolution-only scaling at "
                                      "matched multiply-adds (a search run's family)")
    v.add_argument("run", metavar="RUN", help="a search run folder (--out of nas.search) with its family/")
    v.add_argument("--phi", default=DEFAULT_VERIFY_PHIS,
                   help=f"which members: 1,2 or 1-3, among the family's (default {DEFAULT_VERIFY_PHIS})")
    v.add_argument("--seeds", help=f"fresh seeds per network: a count or a list such as 4,5,6, never the "
                                   f"search seed (default {DEFAULT_VERIFY_SEEDS})")
    v.add_argument("--final-epochs", type=_nas_type("number", "--final-epochs", 0, strict=True),
                   help="epochs of the final budget (default: the run's)")
    v.add_argument("--final-resolution", type=_nas_type("int_at_least", "--final-resolution", 8),
                   help="B0's image size in the final budget; the others scale from it (default: the run's)")
    v.add_argument("--workers", type=_nas_type("int_at_least", "--workers", 0),
                   help="trials at once (default: the run's)")
    v.add_argument("--device", choices=("cpu", "cuda", "auto"), help="training device (default: the run's)")
    v.add_argument("--engine", choices=("local", "nni"), help="where the runs train (default: the run's)")
    v.add_argument("--trial-timeout", type=_nas_type("number", "--trial-timeout", 0, strict=True),
                   metavar="SECONDS", help="a run longer than this is recorded as 'timeout' (default: the run's)")
    v.add_argument("--no-progress", action="store_true")
    v.add_argument("--quiet", action="store_true", help="print only the table and the verdicts")
    return p


def _nas_type(name: str, *args, **kwargs) -> Callable[[str], object]:
    """An argument type of `nas.cli.args`, imported only when `verify` parses (the library stays free of nas)."""
    def parse(text: str) -> object:
        from nas.cli import args as nas_args
        return getattr(nas_args, name)(*args, **kwargs)(text)
    return parse


# -- derive ---------------------------------------------------------------------------
def _derive_args(args) -> dict:
    given = [x is not None for x in (args.alpha, args.beta, args.gamma)]
    if any(given):
        if not all(given):
            raise ScalingError("give all three of --alpha, --beta, --gamma (or --coefficients)")
        if args.coefficients:
            raise ScalingError("--coefficients and --alpha/--beta/--gamma exclude each other")
        check_coefficients(args.alpha, args.beta, args.gamma)
        return {"alpha": args.alpha, "beta": args.beta, "gamma": args.gamma, "coefficients": None}
    return {"alpha": PAPER_ALPHA, "beta": PAPER_BETA, "gamma": PAPER_GAMMA,
            "coefficients": args.coefficients or "published"}


def cmd_derive(args) -> int:
    b0 = load_baseline(args.spec)
    coeffs = _derive_args(args)
    phis = parse_phis(args.phis)
    if args.out:
        rows = derive_to_dir(b0, args.out, phis=phis, plot=not args.no_plot, **coeffs)
    else:
        from .compound import family_rows
        rows = family_rows(family_members(b0, phis=phis, **coeffs))
    if args.json:
        print(json.dumps([{c: r[c] for c in FAMILY_COLUMNS} for r in rows]))
    else:
        print(family_markdown(rows), end="")
        if args.out:
            print(f"wrote {len(rows)} specs, family.md, family.csv" + ("" if args.no_plot else ", family.png")
                  + f" to {args.out}")
    return 0


# -- grid -----------------------------------------------------------------------------
DEFAULT_EVALUATOR = "nas.trial:evaluate"
STORE_CONFIG = {"kind": "scaling-grid"}


def run_grid(b0: ArchSpec, out_dir: str | Path, budget, target: int | None = None, step: float = 0.05,
             tol: float = 0.1, alpha_range=(1.0, 2.0), beta_range=(1.0, 1.5), gamma_range=(1.0, 1.5),
             workers: int = 1, max_candidates: int | None = None, evaluator: str = DEFAULT_EVALUATOR,
             log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
             seeds: int = DEFAULT_GRID_SEEDS) -> GridResult:
    """The grid search on the local engine (`nas.search.grid.run_grid`), resumable through
    `out_dir/search.db`.

    `budget` is a `nas.evaluate.budget.ProxyBudget` for the baseline (its `resolution` the proxy
    resolution; `target_resolution` is set to b0's). A grid with the same baseline,
    budget, evaluator, target and points is read back from the store, not retrained;
    one that differs in any of them is trained anew beside it. Writes grid.md, grid.csv
    and best.json (the winner with its spec) to `out_dir`.
    """
    import dataclasses

    from nas.cli.rundir import open_run
    from nas.engines.local import LocalEngine, device_slots
    from nas.engines.protocol import EvalContext
    from nas.search.grid import grid_kind
    from nas.search.grid import run_grid as run_on_store
    from nas.search.objective import Objective
    from nas.store.store import Store
    from search_space import cost

    candidates = grid_candidates(step, alpha_range, beta_range, gamma_range, tol)
    if max_candidates is not None:
        if max_candidates < 1:
            raise ScalingError(f"--max-candidates must be >= 1, got {max_candidates}")
        candidates = candidates[:max_candidates]
    if workers < 1:
        raise ScalingError(f"--workers must be >= 1, got {workers}")
    if seeds < 1:
        raise ScalingError(f"--seeds must be >= 1, got {seeds}")
    if target is None:
        target = 2 * cost.macs(b0, b0.resolution)
    budget = dataclasses.replace(budget, target_resolution=b0.resolution)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ScalingError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ScalingError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    existing = Store.is_run(out)
    ctx = EvalContext(budget=budget, evaluator=evaluator)
    objective = Objective(int(target))
    kind = grid_kind(b0, ctx, objective, candidates)
    slots = device_slots(budget.device, workers) if workers > 1 else [budget.device]
    engine = LocalEngine(slots=slots, in_process=workers == 1)

    def listeners(n: int, stored: int) -> list:
        if stored:
            log(f"resuming: {stored} of {n} runs (candidates × seeds) already in {store.path}")
        done = [stored]

        def line(rec: dict) -> None:
            done[0] += 1
            acc = rec["accuracy"]
            log(f"[{done[0]}/{n}] {rec['spec'].get('name') or rec['key']}: {rec['status']}"
                + (f" accuracy {acc:.4f}" if acc is not None else ""))
        return [line]

    with open_run(out, "the grid", "rerun the same command to go on", config=None if existing else STORE_CONFIG,
                  create=not existing) as store:
        if existing:  # checked under the lock: another process may be writing it
            if store.config != STORE_CONFIG:
                raise ScalingError(f"--out {out}: holds a search run, not a grid; use another --out")
            store.requeue_pending()
        result = run_on_store(store, b0, candidates, engine, ctx, objective, kind=kind, listeners=listeners,
                              seeds=[budget.seed + i for i in range(seeds)])
    save_grid_table(result.rows, out, decision=result.decision)
    best = None
    if result.best is not None:
        best = {k: v for k, v in result.best.items() if k != "spec"}
        best["spec"] = result.best["spec"].to_dict()
        best["decision"] = result.decision
    write_atomic(out / "best.json", json.dumps(best, indent=2) + "\n")
    return result


def _check_budget_args(args) -> None:
    """The proxy-budget options, checked before anything trains (else every candidate just fails)."""
    import math

    from nas.evaluate.budget import DATASETS
    from nas.evaluate.device import resolve  # raises nas.errors.UserError: one line, exit 2
    if args.proxy_resolution < 1:
        raise ScalingError(f"--proxy-resolution must be >= 1, got {args.proxy_resolution}")
    if args.batch_size < 1:
        raise ScalingError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not (math.isfinite(args.proxy_epochs) and args.proxy_epochs > 0):
        raise ScalingError(f"--proxy-epochs must be a finite number > 0, got {args.proxy_epochs:g}")
    if args.proxy_steps is not None and args.proxy_steps < 1:
        raise ScalingError(f"--proxy-steps must be >= 1, got {args.proxy_steps}")
    if str(args.dataset).lower() not in DATASETS:
        raise ScalingError(f"--dataset {args.dataset!r}: expected one of {', '.join(DATASETS)}")
    for flag, folder in (("--data-dir", args.data_dir), ("--test-data-dir", args.test_data_dir)):
        if folder and not Path(folder).is_dir():
            raise ScalingError(f"{flag} {folder}: no such folder")
    resolve(args.device, "--device")


def cmd_grid(args) -> int:
    b0 = load_baseline(args.spec)
    from nas.cli.args import parse_count
    from nas.evaluate.budget import ProxyBudget, data_fields
    _check_budget_args(args)
    target = parse_count(args.target_flops, "--target-flops") if args.target_flops is not None else None
    budget = ProxyBudget(dataset=args.dataset, data_dir=args.data_dir, resolution=args.proxy_resolution,
                         target_resolution=b0.resolution, epochs=args.proxy_epochs, steps=args.proxy_steps,
                         batch_size=args.batch_size, device=args.device, seed=args.seed, **data_fields(vars(args)))
    result = run_grid(b0, args.out, budget, target, args.step, args.tol, args.alpha_range, args.beta_range,
                      args.gamma_range, args.workers, args.max_candidates, seeds=args.seeds)
    rows = [{k: v for k, v in r.items() if k != "spec"} for r in result.rows]
    best = None if result.best is None else {k: v for k, v in result.best.items() if k != "spec"}
    if args.json:
        print(json.dumps({"rows": rows, "best": best, "decision": result.decision}))
    else:
        print(grid_markdown(rows, result.decision), end="")
        if best is None:
            print(f"no candidate trained successfully; see {Path(args.out) / 'grid.csv'}")
        else:
            acc = "" if best["accuracy"] is None else f" mean accuracy={best['accuracy']:.4f}"
            print(f"adopted: alpha={best['alpha']:g} beta={best['beta']:g} gamma={best['gamma']:g}{acc} "
                  f"(tables in {args.out})")
    return 0 if result.decision and result.decision.get("adopted") else 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "verify":  # the composition lives in nas (store, engines, budgets)
            from nas.cli.verify import run_args
            return run_args(args)
        return cmd_derive(args) if args.command == "derive" else cmd_grid(args)
    except (ScalingError, SpecError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ == "UserError":  # nas.errors.UserError, without importing nas here
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
