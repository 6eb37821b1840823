"""What the search and `nas.final` share once a run is open: stage 2 on the run's engine and
store, and the run's reports (trials.csv, best.yaml, pareto.png, final.md/csv)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Optional

from nas.errors import UserError

from .args import log
from .setup import Setup


def show_progress(opts: dict) -> bool:
    return not (opts.get("no_progress") or opts.get("quiet"))


def refresh_files(store: Any, out: Path, setup: Setup, history: Optional[list] = None):
    """Listener: keep trials.csv and best.yaml current after every trial, at a cost that
    does not grow with the run (one appended line; best.yaml only when the best changes).
    `history`: the store's rows, where the caller has read them already."""
    from nas.reports import files
    from nas.search.records import best_trial

    csv_file = files.TrialsCsv(out / "trials.csv")
    rows = store.trials() if history is None else history
    csv_file.rewrite(rows)  # once: the history of a resumed run
    kind = setup.settings.kind
    best = [best_trial(r for r in rows if r["kind"] == kind)]

    def listener(rec: dict) -> None:
        csv_file(rec)
        if rec.get("kind") == kind and best_trial([r for r in (best[0], rec) if r]) is rec:
            best[0] = rec
            files.write_best(rec, out, setup.settings.target_resolution)
    return listener


def write_outputs(store: Any, out: Path, setup: Setup, best: Optional[dict], reference: Optional[dict],
                  final: Optional[dict] = None, rows: Optional[list] = None) -> None:
    """trials.csv, best.yaml and pareto.png from the store (a failed plot is a warning)."""
    from nas.reports import files
    rows = store.trials() if rows is None else rows
    files.write_trials_csv(rows, out / "trials.csv")
    if best is not None:
        files.write_best(best, out, setup.settings.target_resolution)
    s = setup.settings
    try:
        files.plot_pareto([r for r in rows if r["kind"] == s.kind], out / "pareto.png", s.objective.target,
                          s.objective.alpha, s.objective.beta, best, reference, (s.window.low, s.window.high),
                          final=final, latency_target=s.objective.latency_ms)
    except Exception as exc:  # noqa: BLE001 - a plot must not lose a finished search
        print(f"warning: pareto.png not written ({type(exc).__name__}: {exc})", file=sys.stderr)


def stage2(setup: Setup, store: Any, out: Path) -> dict:
    """Stage 2 (`nas.final.plan.run`) on the search's engine and store: top-k and the
    reference on fresh seeds (sequential with `--final-seeds auto`), B0 chosen on
    search-validation, the verdict on test; resumable. Keeps the weights of B0's and the
    reference's runs under weights/, B0's best on search-validation as best.safetensors,
    and writes final.md and final.csv."""
    from nas.final import plan, report, sequential
    from nas.reports.progress import Progress

    opts = setup.opts
    try:
        kind = setup.settings.kind
        candidates = plan.top_candidates(store.trials(kind, "trained"), int(opts["final_top_k"]),
                                         opts.get("_final_candidates"), kind=kind)
    except ValueError as exc:
        raise UserError(f"--candidates: {exc}") from None
    if setup.reference is not None:
        candidates.append(plan.Candidate(setup.reference.name or "reference", setup.reference))
    auto = str(opts["final_seeds"]) == "auto"
    search_seed = int(opts["seed"])
    first = opts.get("_final_first_seed")
    start, taken = (search_seed, ()) if first is None else (int(first) - 1, (search_seed,))

    def seed_run(n: int) -> list[int]:
        return plan.fresh_seeds(start, n, taken)

    seeds = opts.get("_final_seed_list") or seed_run(sequential.INITIAL if auto else int(opts["final_seeds"]))
    budget = final_budget(setup)
    objective = setup.settings.objective

    def listeners(n: int, stored: int) -> list:
        return [Progress(n, done=stored, kind=plan.KIND, enabled=show_progress(opts)),
                refresh_files(store, out, setup)]

    weights = out / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    summary = plan.run(store, candidates, seeds, setup.engine, dataclasses.replace(setup.ctx, budget=budget),
                       objective, setup.settings.target_resolution, listeners=listeners, log=lambda m: log(opts, m),
                       max_seeds=int(opts["final_max_seeds"]) if auto else None,
                       more_seeds=lambda n: seed_run(n)[len(seeds):], weights_dir=weights)
    if summary["chosen"] >= 0 and plan.keep_weights(summary, candidates, weights, out / "best.safetensors"):
        log(opts, f"weights: {out / 'best.safetensors'} (B0's run with the best search-validation accuracy), "
                  f"every run of B0 and the reference under {weights}")
    report.write_outputs(summary, out, budget, objective)
    return summary


def final_budget(setup: Setup) -> Any:
    from nas.final.plan import final_budget as make
    return make(setup.budget, float(setup.opts["final_epochs"]), setup.opts.get("final_resolution"))


def final_text(final: dict, setup: Setup) -> str:
    """final.md without its title: the table and the verdict, as the summary prints them."""
    from nas.final.report import markdown
    return "\n".join(markdown(final, final_budget(setup)).splitlines()[2:])


def stage2_best(store: Any, final: dict, kind: str = "search") -> Optional[dict]:
    """The search record (of `kind`: 'search' or 'oneshot') of stage 2's B0 (None without a choice)."""
    if final is None or final["chosen"] < 0:
        return None
    trial = final["candidates"][final["chosen"]]["trial"]
    return next(r for r in store.trials(kind, "trained") if r["id"] == trial)
