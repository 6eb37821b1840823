"""`python -m nas.search --target-flops 400M`: the main job.

Wires the search space, a controller, the proxy evaluation and an engine together
(`nas.cli.setup` checks and builds them, `nas.search.loop` is the loop, `nas.engines` and
`nas.nni` the engines, `nas.store` the crash-safe record), runs stage 2 (`nas.final`),
writes the reports, then hands B0 to compound scaling (B1..B7 under `--out/family/`).
Bad input ends with one line on stderr and exit status 2, before `--out` is created.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from nas.errors import UserError
from nas.evaluate.result import FAILED_STATUSES

from . import oneshot, options
from .args import cli_main, log
from .options import IDENTITY
from .rundir import check_out_dir, open_run
from .runs import final_text, refresh_files, show_progress, stage2, stage2_best, write_outputs
from .setup import Setup, validate

PROG = "effnas-search"
OUTPUT_FILES = ("search.db", "search.db-wal", "search.db-shm", "best.yaml", "trials.csv", "pareto.png", "final.md",
                "final.csv", "best.safetensors", "scaling.md", "scaling.csv", "scaling.png")
OUTPUT_DIRS = ("tb", "family", "nni", "grid", "weights")
AGAIN = "continue with --resume --out {out}"


def run(argv: Sequence[str] | None = None) -> int:
    from nas.store.store import Store

    t0 = time.time()
    opts, given = options.parse(argv)
    stored = None
    if opts.get("resume"):
        check_out_dir(opts["out"], True, False)
        with Store.open(opts["out"]) as st:
            stored = st.config
            st.checkpoint()  # a checkpoint it would refuse is refused before anything is changed
        opts = options.merge_resume(stored, opts, given)
        opts["resume"] = True
    setup = validate(opts, given, stored)
    out = opts["out"]
    record = options.for_record({k: v for k, v in opts.items() if not k.startswith("_")})
    fresh = stored is None
    overwrite = OUTPUT_FILES + OUTPUT_DIRS if fresh and opts.get("overwrite") else ()
    with open_run(out, "the search", AGAIN.format(out=out), config=record, create=fresh, overwrite=overwrite) as store:
        if not fresh:
            store.set_meta("state", "running")
        s = setup.settings.objective
        if s.latency_ms:  # --out exists now: the latency table measured here may be written
            from nas.search.latency import start_saving
            start_saving(s.latency_device, s.latency_batch, s.latency_threads, s.latency_table)
        from nas.engines.protocol import sigterm_as_interrupt
        try:
            with sigterm_as_interrupt():
                return _search(setup, store, t0)
        except KeyboardInterrupt:  # outside the engine (TensorBoard start-up, outputs, the hand-off)
            _interrupted(store, setup)
            return 130


def _interrupted(store: Any, setup: Setup) -> None:
    print(f"{PROG}: interrupted; {store.count(setup.settings.kind)}/{setup.settings.stop.trials} trials are stored. "
          f"Continue with: python -m nas.search --resume --out {setup.opts['out']}", file=sys.stderr)


def _search(setup: Setup, store: Any, t0: float) -> int:
    from nas.reports import files
    from nas.reports.progress import Progress
    from nas.search.loop import SearchLoop
    from nas.search.records import best_trial

    opts = setup.opts
    out = Path(opts["out"])
    kind = setup.settings.kind  # 'search', or 'oneshot' (scored with a supernet's weights)
    done = store.count(kind)
    history = store.trials()  # read once: a resumed run's store may hold tens of thousands of rows
    searched = [r for r in history if r["kind"] == kind and r["source"] == "trained"]
    failed = sum(1 for r in searched if r["status"] in FAILED_STATUSES)
    progress = Progress(setup.settings.stop.trials, done=done, failed=failed, kind=kind,
                        enabled=show_progress(opts))
    listeners: list = [progress, refresh_files(store, out, setup, history)]
    tb = None
    if not opts.get("no_tensorboard"):
        from nas.reports.tb import TBLogger
        tb = TBLogger(out)
        listeners.append(tb)
    loop = SearchLoop(store, setup.space, setup.recipe, setup.settings, reference=setup.reference,
                      listeners=listeners)
    best0 = best_trial(searched)
    if best0 is not None:
        progress.best = best0["reward"]
    del history, searched
    what = (oneshot.describe(setup) if oneshot.is_oneshot(opts) else
            f"{opts['controller']} controller, {setup.settings.stop.trials} trials on {len(setup.slots)} "
            f"{setup.slots[0].split(':')[0]} worker(s), {setup.budget.dataset} at {setup.budget.resolution}px for "
            f"{setup.budget.epochs:g} epoch(s)")
    log(opts, f"search: target {_targets(setup.settings)}, {what}; "
              f"out: {out}" + (f" (resumed at {done} trials)" if opts.get("resume") else ""))
    interrupted = False
    try:
        engine, ctx = setup.engine, setup.ctx
        if oneshot.is_oneshot(opts):  # phase 1: the supernet; phase 2 scores with its weights, here
            engine, ctx = oneshot.scoring(setup, oneshot.supernet_folder(setup))
        engine.run(loop, ctx)
        loop.refresh()  # another process (NNI's dispatcher) may have driven it
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    rows = store.trials()
    best = best_trial(r for r in rows if r["kind"] == kind)
    reference = store.trial("reference", 0)
    write_outputs(store, out, setup, best, reference, rows=rows)
    final = None
    if not interrupted and best is not None and not opts.get("no_final"):
        try:
            final = stage2(setup, store, out)
        except KeyboardInterrupt:
            interrupted = True
        chosen = stage2_best(store, final, kind)
        if chosen is not None:  # B0 is the stage-2 winner
            best = chosen
            files.write_best(best, out, setup.settings.target_resolution)
            write_outputs(store, out, setup, best, reference, final)
    if interrupted:
        if tb:
            tb.close()
        _interrupted(store, setup)
        return 130
    family = verified = None
    if best is not None and not opts.get("no_scale"):
        family = _hand_off(setup, store, best)
        if family is not None and opts.get("verify_scaling"):
            verified = _verify(setup, store, out)
    if tb:
        tb.close({k: v for k, v in opts.items()
                  if (k in IDENTITY or k in ("trials", "workers")) and k != "space_text"},
                 {"best/reward": best and best["reward"], "best/accuracy": best and best["accuracy"]})
    counts = {"trained": store.count(kind), "cost-only": store.count(kind, ("cost-only",)),
              "cache": store.count(kind, ("cache",)),
              "failed": sum(1 for r in rows if r["kind"] == kind and r["source"] == "trained"
                            and r["status"] in FAILED_STATUSES),
              "stopped": sum(1 for r in rows if r["kind"] == kind and r["source"] == "trained"
                             and r["status"] == "stopped"),
              "prefilter": store.count(kind, ("prefilter",))}
    store.set_meta("state", "finished")
    objective = setup.settings.objective
    print(files.summary_table(best, reference, counts, objective.target, time.time() - t0, out, family,
                              loop.stop_reason, final and final_text(final, setup),
                              latency_target=objective.latency_ms, measured=(final or {}).get("measured"),
                              oneshot=oneshot.is_oneshot(opts)))
    if verified is not None:
        from .verify import text as verify_text
        print("\nCompound scaling against single dimensions (scaling.md):\n" + verify_text(verified))
    if best is None:
        print(f"{PROG}: no trial finished ok, so there is no B0 (see {out}/trials.csv)", file=sys.stderr)
        return 1
    return 0


def _targets(s: Any) -> str:
    """`400M MACs and 20 ms latency (cpu, batch 1)`: the run's targets in words."""
    from nas.search.latency import fmt_ms
    o = s.objective
    parts = [] if o.target is None else [f"{o.target / 1e6:g}M MACs"]
    if o.latency_ms:
        parts.append(f"{fmt_ms(o.latency_ms)} latency ({o.latency_device}, batch {o.latency_batch})")
    return " and ".join(parts)


def _hand_off(setup: Setup, store: Any, best: dict) -> Optional[list]:
    """B0 -> (optional grid search of alpha/beta/gamma) -> B1..B7 under out/family/."""
    from nas.reports import files
    opts = setup.opts
    out = Path(opts["out"])
    b0 = files.best_spec(best, setup.settings.target_resolution)
    a, b, g = float(opts["alpha_scale"]), float(opts["beta_scale"]), float(opts["gamma_scale"])
    try:
        if opts.get("scale_grid"):
            a, b, g = _grid(setup, store, b0)
        from scaling.family import derive_to_dir
        return derive_to_dir(b0, out / "family", a, b, g, setup.phis, **_family_latency(setup))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the search result stands even if scaling fails
        print(f"warning: family not derived ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
              file=sys.stderr)
        return None


def _family_latency(setup: Setup) -> dict:
    """With a latency target (so a latency table): each member's latency predicted from the
    table at its own resolution, and with --measure-family-latency measured here too."""
    from nas.search.latency import TABLE_DEVICE, measured_ms, predict_ms
    o = setup.settings.objective
    if not o.latency_ms:
        return {}
    where = (o.latency_device, o.latency_batch, o.latency_threads)
    log(setup.opts, "family latency: predicted per member from the latency table (parts it lacks are measured "
                    "first)" + (", then measured end to end" if setup.opts.get("measure_family_latency") else ""))
    measure = None
    if setup.opts.get("measure_family_latency") and o.latency_device != TABLE_DEVICE:
        def measure(spec: Any, res: int) -> Optional[float]:
            return measured_ms(*where, spec, res)
    device = "the table's device" if o.latency_device == TABLE_DEVICE else o.latency_device
    return {"latency": lambda spec, res: predict_ms(*where, o.latency_table, spec, res), "measure": measure,
            "latency_note": f"Latency per member at its own resolution: {device}, batch {o.latency_batch}, "
                            f"{o.latency_threads} thread(s), float32; predicted from {o.latency_table}"
                            + ("; measured end to end on this machine" if measure else "") + "."}


def _grid(setup: Setup, store: Any, b0: Any) -> tuple[float, float, float]:
    """The α/β/γ grid (`nas.search.grid.run_grid`) on the search's engine and store, each
    candidate on --grid-seeds seeds; the paper's coefficients are kept unless a candidate
    beats them at Welch p < 0.05 (`scaling.grid.decide`); resumable."""
    from nas.reports.progress import Progress
    from nas.search.grid import run_grid
    from scaling.grid import grid_candidates, save_grid_table

    opts, out = setup.opts, Path(setup.opts["out"])
    seeds = [int(opts["seed"]) + i for i in range(int(opts["grid_seeds"]))]

    def listeners(n: int, stored: int) -> list:
        failed = sum(r["status"] != "ok" for r in store.trials("grid", "trained"))
        log(opts, f"scale grid: {n} runs at φ = 1 ({n // len(seeds)} distinct networks × {len(seeds)} seeds) "
                  f"to train ({stored} already stored)")
        return [Progress(n, done=stored, failed=failed, kind="grid", enabled=show_progress(opts)),
                refresh_files(store, out, setup)]

    result = run_grid(store, b0, grid_candidates(float(opts["grid_step"]), tol=float(opts["grid_tol"])),
                      setup.engine, setup.ctx, setup.settings.objective, listeners=listeners, seeds=seeds)
    rows = [{k: v for k, v in r.items() if k != "spec"} for r in result.rows]
    (out / "grid").mkdir(parents=True, exist_ok=True)
    save_grid_table(rows, out / "grid", decision=result.decision)
    if result.best is None:
        print("warning: no grid candidate trained ok; using the default coefficients", file=sys.stderr)
        return float(opts["alpha_scale"]), float(opts["beta_scale"]), float(opts["gamma_scale"])
    best = result.best
    log(opts, f"scale grid: α = {best['alpha']:g}, β = {best['beta']:g}, γ = {best['gamma']:g} "
              f"({result.decision['text']}); table: {out / 'grid' / 'grid.md'}")
    return best["alpha"], best["beta"], best["gamma"]


def _verify(setup: Setup, store: Any, out: Path) -> dict:
    """--verify-scaling: `python -m scaling verify` on this run's family, engine and store."""
    from nas.final.plan import fresh_seeds

    from .args import member_phis
    from .verify import plan, verify
    opts = setup.opts
    phis = member_phis(opts["verify_phi"], setup.phis, "--verify-phi")
    seeds = fresh_seeds(int(opts["seed"]), int(opts["verify_seeds"]))
    return verify(setup, store, out, plan(out, phis), seeds, say=lambda m: log(opts, m))


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for bad input)."""
    return cli_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
