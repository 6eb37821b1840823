"""`python -m scaling verify RUN` (and `nas.search --verify-scaling`): compound scaling
against single-dimension scaling at matched cost, trained on the run's store and engine.

For φ in `--phi`: the run's family member B_φ and B0 scaled by width, depth or resolution
alone to B_φ's multiply-adds (`scaling.verify`), plus B0 itself; each network trained on
fresh seeds (never the search seed) with the final budget at its own image size (the
budget's times its resolution over B0's, rounded as the family does), scored on
search-validation and test. Every run is stored as kind 'verify' under its measurement id
(`nas.evaluate.budget.measurement_id`), so a killed check resumes and more seeds or φ add
only what is missing. Writes scaling.md, scaling.csv and scaling.png into RUN.
Exit status 0 with a verdict for every φ, 1 without, 2 for bad input.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from nas.errors import UserError

from .args import cli_main, log, member_phis
from .final import parse_seeds
from .options import DEFAULTS
from .rundir import check_out_dir, open_run
from .runs import show_progress
from .setup import Setup, validate

PROG = "scaling"
KIND = "verify"
AGAIN = "rerun the same command to go on"


def read_family(run: Path) -> dict[float, Any]:
    """The run's family (`RUN/family/b<φ>.yaml`), by φ; a one-line error without one."""
    from scaling.errors import ScalingError
    from scaling.family import read_family as read
    try:
        return read(run / "family")
    except ScalingError:
        raise UserError(f"{run}: the run has no family (family/b0.yaml); it was searched with --no-scale or "
                        f"stopped before the hand-off: derive one with python -m scaling derive "
                        f"{run / 'best.yaml'} --coefficients paper --out {run / 'family'}") from None


def plan(run: Path, phis: Sequence[float], say: Callable[[str], None] = lambda m: None) -> list:
    """The networks of the check (`scaling.verify.Variant`s), B0 first; a one-line error when a
    single dimension cannot match a member's multiply-adds. The family's B0 is the one checked;
    `say` notes when the run's best.yaml has since become another network (`nas.final` chose
    another B0 and the family was not derived again)."""
    from scaling.errors import ScalingError
    from scaling.verify import variants
    from search_space.errors import SpecError
    from search_space.spec import ArchSpec
    family = read_family(run)
    try:
        best = ArchSpec.load(run / "best.yaml") if (run / "best.yaml").is_file() else None
    except SpecError:
        best = None
    if best is not None and best.key() != family[0.0].key():
        say(f"note: {run / 'best.yaml'} is another network than the family's B0 ({run / 'family' / 'b0.yaml'}): "
            f"the check runs on the family; derive it again from best.yaml to check that B0")
    try:
        return variants(family[0.0], family, phis)
    except ScalingError as exc:
        raise UserError(f"{run}: {exc}") from None


def verify(setup: Setup, store: Any, out: Path, items: Sequence[Any], seeds: Sequence[int],
           say: Callable[[str], None] = lambda m: None) -> dict:
    """Train what is missing of `items` × `seeds` on the setup's engine (kind 'verify'), then
    the table and verdicts (`scaling.verify.summarize`), written to scaling.md/.csv/.png in `out`."""
    from nas.evaluate.budget import measurement_id
    from nas.final.plan import final_budget
    from nas.reports.progress import Progress
    from nas.search.batch import BatchSource
    from scaling.verify import summarize, train_resolution

    opts = setup.opts
    final = final_budget(setup.budget, float(opts["final_epochs"]), opts.get("final_resolution"))
    b0 = items[0].spec
    items = [dataclasses.replace(v, train_resolution=train_resolution(final.resolution, b0.resolution, v.resolution))
             for v in items]
    jobs: dict[int, tuple[Any, dict]] = {}   # measurement id -> (spec, budget overrides); one job per id
    per_item: list[list[int]] = []
    for v in items:
        ids = []
        for s in seeds:
            fields = {"seed": int(s), "resolution": v.train_resolution, "target_resolution": v.resolution}
            ident = measurement_id(v.spec.key(), int(s), dataclasses.replace(final, **fields), setup.ctx.evaluator)
            jobs.setdefault(ident, (v.spec, fields))
            ids.append(ident)
        per_item.append(ids)
    stored = sum(store.trial(KIND, i) is not None for i in jobs)
    say(f"scaling verify: {len(items)} networks (B0; compound, width, depth, resolution at φ = "
        f"{', '.join(f'{p:g}' for p in sorted({v.phi for v in items if v.phi}))}) × {len(seeds)} fresh seeds "
        f"{list(seeds)}, {final.epochs:g} epochs at {final.resolution}px for B0; {stored} of {len(jobs)} runs stored")
    progress = Progress(len(jobs), done=stored, kind=KIND, enabled=show_progress(opts))
    source = BatchSource(store, [spec for spec, _ in jobs.values()], setup.settings.objective, kind=KIND,
                         listeners=[progress], overrides=[f for _, f in jobs.values()], ids=list(jobs))
    source.run(setup.engine, dataclasses.replace(setup.ctx, budget=final, per_spec_resolution=False))
    records = {i: store.trial(KIND, i) for i in jobs}
    summary = summarize(items, [[records[i] for i in ids if records[i] is not None] for ids in per_item])
    write_outputs(summary, out, final, say)
    return summary


def write_outputs(summary: dict, out: Path, budget: Any, say: Callable[[str], None] = lambda m: None) -> None:
    """scaling.md, scaling.csv and scaling.png in `out`, each written atomically (a failed plot is a warning)."""
    from scaling.plot import plot_verify
    from scaling.verify import csv_text, markdown
    from search_space.fileio import write_atomic

    write_atomic(out / "scaling.md", markdown(summary) + note(budget))
    write_atomic(out / "scaling.csv", csv_text(summary))
    try:
        plot_verify(summary["rows"], out / "scaling.png",
                    title=f"{budget.dataset}, {budget.epochs:g} epochs, B0 at {budget.resolution}px")
    except Exception as exc:  # noqa: BLE001 - a plot must not lose a finished check
        print(f"warning: scaling.png not written ({type(exc).__name__}: {exc})", file=sys.stderr)
    say(f"wrote {out / 'scaling.md'}, scaling.csv, scaling.png")


def note(budget: Any) -> str:
    """What the data can show: resolution beyond the images' own size only interpolates."""
    native = {"mnist5k": 28, "digits": 8, "cifar10": 32, "cifar100": 32}.get(str(budget.dataset))
    text = (f"\nBudget: {budget.dataset}, {budget.epochs:g} epochs, batch {budget.batch_size}; B0 trains at "
            f"{budget.resolution}px, every other network at that times its resolution over B0's (column "
            f"'trained at'). Multiply-adds are counted at each network's own resolution.\n")
    if native is not None:
        text += (f"The images of {budget.dataset} are {native}px: a network trained above that sees them "
                 f"interpolated, so resolution scaling adds no detail here; the check can show how depth, width "
                 f"and the compound mix use compute on this data, not what resolution buys on real images "
                 f"(use an ImageFolder at 128px or more: examples/verify_gpu.yaml).\n")
    return text


def text(summary: dict) -> str:
    """scaling.md without its title: the table and the verdicts, as printed."""
    from scaling.verify import markdown
    return "\n".join(markdown(summary).splitlines()[2:])


# -- the command --------------------------------------------------------------------------------
def run_args(args: Any) -> int:
    """`python -m scaling verify` with its parsed options (one-line errors, exit 2)."""
    return cli_main(PROG, lambda: _main(args), "interrupted; finished runs are stored, rerun the same command "
                                               "to go on")


def _main(args: Any) -> int:
    """The options were parsed (and typed) by `scaling/__main__.py`'s parser."""
    from nas.final.plan import fresh_seeds
    from nas.store.store import Store
    from scaling.verify import DEFAULT_SEEDS

    run = Path(args.run)
    check_out_dir(args.run, True, False)
    family = read_family(run)
    phis = member_phis(args.phi, list(family))
    with Store.open(run) as st:
        stored = st.config
    given = {"out": args.run, "resume": True, "quiet": args.quiet, "no_progress": args.no_progress}
    for name in ("device", "workers", "engine", "final_epochs", "final_resolution", "trial_timeout"):
        if getattr(args, name, None) is not None:
            given[name] = getattr(args, name)
    opts = {**DEFAULTS, **stored, **given}
    count, listed = parse_seeds(str(args.seeds if args.seeds is not None else DEFAULT_SEEDS), int(opts["seed"]))
    if count == "auto":
        raise UserError("--seeds auto is stage 2's sequential design; give a count such as 3 or a list such as 4,5,6")
    items = plan(run, phis, say=lambda m: log(opts, m))
    setup = validate(opts, set(given), stored)
    seeds = listed or fresh_seeds(int(opts["seed"]), int(count))
    with open_run(run, "scaling verify", AGAIN) as store:
        summary = verify(setup, store, run, items, seeds, say=lambda m: log(opts, m))
    print(text(summary))
    return 0 if all(v["test"] is not None for v in summary["verdicts"]) else 1
