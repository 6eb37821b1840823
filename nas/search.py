"""`python -m nas.search --target-flops 400M`: the main job.

Wires the search space, a controller, the proxy evaluation and an engine together
(nas/loop.py for the loop, nas/engine_local.py and nas/nni/ for the engines,
nas/store.py for the crash-safe record), writes the
reports, then hands the best architecture (B0) to compound scaling (B1..B7 under
`--out/family/`).

Order of work, and why: every option, file and folder is validated *before* `--out`
is created, so a bad invocation leaves nothing a later `--resume` could mistake for a
run. Bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from nas import config as cfg
from nas.errors import UserError

PROG = "effnas-search"
OUTPUT_FILES = ("search.db", "search.db-wal", "search.db-shm", "best.yaml", "trials.csv", "pareto.png", "final.md",
                "final.csv")
OUTPUT_DIRS = ("tb", "family", "nni", "grid")


@dataclass
class Setup:
    """Everything validated, nothing written yet."""

    opts: dict
    space: Any
    budget: Any
    ctx: Any
    settings: Any
    reference: Any
    recipe: Any = None                  # nas.loop.ControllerRecipe
    engine: Any = None                  # built and checked once, used for the search and the grid
    slots: list = field(default_factory=list)
    phis: list = field(default_factory=list)


def _log(opts: dict, msg: str) -> None:
    if not opts.get("quiet"):
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# validation (writes nothing)
# ----------------------------------------------------------------------------------------
def _space(opts: dict, given: set, stored: Optional[dict]) -> Any:
    from search_space.errors import SpecError
    from search_space.space import SearchSpace
    try:
        if opts.get("space") and (stored is None or "space" in given):
            path = Path(opts["space"])
            if not path.is_file():
                raise UserError(f"--space {opts['space']}: no such file")
            space = SearchSpace.from_yaml(path)
        elif stored is not None and stored.get("space_text"):
            space = SearchSpace.from_yaml_text(stored["space_text"], source="the run's stored space")
        else:
            space = SearchSpace.default()
    except SpecError as exc:
        raise UserError(f"--space: {str(exc).splitlines()[0]}") from None
    text = space.to_yaml()
    if stored is not None and stored.get("space_text") and text != stored["space_text"]:
        raise UserError("--resume: --space differs from the run's search space; it cannot change on resume")
    opts["space_text"] = text
    return space


def controller_recipe(opts: dict, space: Any) -> Any:
    """The controller named in opts, sized for the run; built once here so that a bad
    setting is a one-line error before `--out` exists."""
    from nas.loop import ControllerRecipe
    recipe = ControllerRecipe.for_run(opts["controller"], int(opts["seed"]), int(opts["trials"]),
                                      target=None if opts.get("target_flops") is None else int(opts["target_flops"]),
                                      cost_window=cfg.parse_window(opts["cost_window"]),
                                      target_resolution=int(opts["target_resolution"]))
    try:
        recipe.build(space)
    except ValueError as exc:
        raise UserError(f"--controller {recipe.name}: {exc}") from None
    return recipe


def _device(opts: dict) -> str:
    return cfg.device_option(opts["device"])


def validate(opts: dict, given: set, stored: Optional[dict] = None) -> Setup:
    """Check every option, file and folder; build (but do not start) the pieces."""
    from nas.budget import ProxyBudget
    from nas.engine import EvalContext, load_evaluator
    from nas.engine_local import device_slots
    from nas.loop import LoopSettings
    from nas.reward import preset

    if opts.get("target_flops") is None and opts.get("target_latency") is None:
        raise UserError("a target is required: --target-flops (e.g. 400M) and/or --target-latency (e.g. 20ms)")
    target = None if opts.get("target_flops") is None else int(opts["target_flops"])
    alpha0, beta0 = preset(opts["reward"])
    opts["alpha"] = alpha0 if opts.get("alpha") is None else float(opts["alpha"])
    opts["beta"] = beta0 if opts.get("beta") is None else float(opts["beta"])
    window = cfg.parse_window(opts["cost_window"])
    phis = cfg.parse_phis(opts["phis"])
    for k in ("alpha_scale", "beta_scale", "gamma_scale"):
        if float(opts[k]) < 1:
            raise UserError(f"--{k.replace('_', '-')} must be >= 1, got {opts[k]}")
    if opts.get("scale_grid") and not opts.get("no_scale"):
        from scaling.grid import grid_candidates
        try:
            grid_candidates(float(opts["grid_step"]), tol=float(opts["grid_tol"]))
        except Exception as exc:  # ScalingError: e.g. no point under the tolerance
            raise UserError(f"--scale-grid: {str(exc).splitlines()[0]}") from None
    cfg.check_out_dir(opts["out"], bool(opts.get("resume")), bool(opts.get("overwrite")))
    elsewhere = False  # trials on other machines (NNI remote/cluster): their GPUs and folders, not ours
    nni_cfg = None
    if opts["engine"] == "nni":
        try:
            from nas.nni import config as nni_config
            from nas.nni.engine import NniEngine
        except Exception as exc:
            raise UserError(f"--engine nni: NNI cannot be used here ({type(exc).__name__}: {exc})") from None
        nni_cfg = nni_config.load_nni_config(opts.get("nni_config"))  # the one read of the file
        elsewhere = nni_config.trials_run_elsewhere(nni_cfg)
    space = _space(opts, given, stored)
    recipe = controller_recipe(opts, space)  # its errors, too, before --out exists
    stride = space.skeleton().total_stride
    if int(opts["proxy_resolution"]) < stride:
        raise UserError(f"--proxy-resolution {opts['proxy_resolution']} is below the networks' total stride "
                        f"{stride}; use at least {stride}")
    # elsewhere, `auto` and `cuda` are resolved by each trial on its own machine
    device = opts["device"] if elsewhere and opts["device"] != "cpu" else _device(opts)
    if device == "cuda" and not elsewhere:
        slots = device_slots("cuda", int(opts["workers"]), int(opts["workers_per_gpu"]))
    else:
        n = int(opts["workers"]) or max(1, min(4, os.cpu_count() or 1))
        slots = device_slots("cpu", n)
    if nni_cfg is not None:  # every NNI option checked as the engine is built, before --out exists
        engine = NniEngine.from_args({**opts, "workers": len(slots)}, nni_cfg, log=lambda m: _log(opts, m))
    else:
        from nas.engine_local import LocalEngine
        grace = min(30.0, 0.25 * float(opts["trial_timeout"]))
        engine = LocalEngine(slots, trial_timeout=float(opts["trial_timeout"]) + grace)
    try:
        load_evaluator(opts["evaluator"])
    except Exception as exc:
        raise UserError(f"--evaluator {opts['evaluator']}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    ref = None
    if str(opts.get("reference") or "none").lower() != "none":
        from search_space import zoo
        try:
            ref = zoo.get(opts["reference"])
        except Exception as exc:
            raise UserError(f"--reference {opts['reference']}: {str(exc).splitlines()[0]}") from None
    budget = ProxyBudget(dataset=str(opts["dataset"]).lower(), data_dir=opts.get("data_dir"),
                         download=bool(opts.get("download")), resolution=int(opts["proxy_resolution"]),
                         target_resolution=int(opts["target_resolution"]), epochs=float(opts["proxy_epochs"]),
                         batch_size=int(opts["batch_size"]), seed=int(opts["seed"]), device=device,
                         time_limit=float(opts["trial_timeout"]))
    num_classes = _check_data(budget, opts, elsewhere)
    from nas.latency_cost import settings_from
    latency = settings_from(opts, given, space, ref)  # the table opened and checked here, in this process
    settings = LoopSettings(target=target, alpha=opts["alpha"], beta=opts["beta"], trials=int(opts["trials"]),
                            cost_window=window, target_resolution=int(opts["target_resolution"]),
                            chance=1.0 / num_classes, **latency, **cheaper_trials(opts, budget))
    ctx = EvalContext(budget=budget, evaluator=opts["evaluator"])
    return Setup(opts=opts, space=space, budget=budget, ctx=ctx, settings=settings, reference=ref,
                 recipe=recipe, engine=engine, slots=slots, phis=phis)


def cheaper_trials(opts: dict, budget: Any) -> dict:
    """LoopSettings of --early-stop/--eta/--min-fraction, --prefilter/--prefilter-ratio and
    --max-epochs (nas.asha, nas.prefilter), checked (one-line UserError); `opts` normalised."""
    from nas import asha, prefilter
    mode, eta, fraction = asha.check(opts.get("early_stop"), opts.get("eta", 3), opts.get("min_fraction", "1/9"))
    score, ratio = prefilter.check(opts.get("prefilter"), opts.get("prefilter_ratio", 1))
    opts.update(early_stop=mode, eta=eta, prefilter=score or "none", prefilter_ratio=ratio)
    return dict(early_stop=mode, eta=eta, min_fraction=fraction, prefilter=score, prefilter_ratio=ratio,
                prefilter_budget=budget.to_dict() if score else None, max_epochs=float(opts.get("max_epochs") or 0),
                epochs=float(budget.epochs))


def _check_data(budget: Any, opts: dict, elsewhere: bool = False) -> int:
    """Number of classes; with the real evaluator the dataset is loaded once here (so a
    missing or broken dataset is one clear error, and a download happens once). A
    `--data-dir` that is not on this machine is the workers' path when trials run elsewhere."""
    from nas.budget import DATASETS, NUM_CLASSES
    if budget.dataset not in DATASETS:
        raise UserError(f"--dataset {budget.dataset!r}: expected one of {', '.join(DATASETS)}")
    if budget.data_dir and not Path(budget.data_dir).is_dir():
        if elsewhere:
            _log(opts, f"note: --data-dir {budget.data_dir} is not on this machine; the trials read it on theirs")
            return NUM_CLASSES.get(budget.dataset, 10)
        raise UserError(f"--data-dir {budget.data_dir}: no such folder")
    if opts["evaluator"] != cfg.DEFAULTS["evaluator"]:
        return NUM_CLASSES.get(budget.dataset, 10)
    from nas import data
    n = int(data.load_checked(budget).num_classes)
    data.clear_cache()
    return max(2, n)


# ----------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------
def _prepare_out(opts: dict) -> None:
    out = Path(opts["out"])
    if opts.get("overwrite") and not opts.get("resume"):
        for name in OUTPUT_FILES:
            p = out / name
            if p.exists():
                p.unlink()
        for name in OUTPUT_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)


def run(argv: Sequence[str] | None = None) -> int:
    from nas.store import Store

    t0 = time.time()
    opts, given = cfg.parse(argv)
    stored = None
    if opts.get("resume"):
        cfg.check_out_dir(opts["out"], True, False)
        with Store.open(opts["out"]) as st:
            stored = st.config
            st.checkpoint()  # a checkpoint it would refuse is refused before anything is changed
        opts = cfg.merge_resume(stored, opts, given)
        opts["resume"] = True
    setup = validate(opts, given, stored)
    from nas import lock
    lock.acquire(opts["out"], "the search")  # one owner per run folder, while it runs
    try:
        with io_errors_as_run_errors(opts["out"]):
            return _open_and_search(setup, opts, stored, t0)
    finally:
        lock.release(opts["out"])


def _open_and_search(setup: Setup, opts: dict, stored: Optional[dict], t0: float) -> int:
    from nas.engine import sigterm_as_interrupt
    from nas.store import Store

    _prepare_out(opts)
    record = cfg.for_record({k: v for k, v in opts.items() if not k.startswith("_")})
    if stored is None:
        store = Store.create(opts["out"], record)
    else:
        store = Store.open(opts["out"])
        store.set_config(record)
        store.requeue_pending()  # jobs that were running when the run stopped: attempt + 1
        store.set_meta("state", "running")
    s = setup.settings
    if s.latency_ms:  # --out exists now: the latency table measured here may be written
        from nas.latency_cost import start_saving
        start_saving(s.latency_device, s.latency_batch, s.latency_threads, s.latency_table)
    try:
        with sigterm_as_interrupt():
            return _search(setup, store, t0)
    except KeyboardInterrupt:  # outside the engine (TensorBoard start-up, outputs, the hand-off)
        _interrupted(store, setup)
        return 130
    finally:
        store.close()


@contextlib.contextmanager
def io_errors_as_run_errors(out: str):
    """A full disk, a read-only or unwritable folder: one line naming what failed where, and
    the way on (`RunIOError`), never a traceback. The store stays resumable: every write
    is one transaction, and the engines stop their workers on the way out."""
    import sqlite3

    from nas.errors import RunIOError
    try:
        yield
    except OSError as exc:
        where = exc.filename or out
        raise RunIOError(f"cannot write {where}: {exc.strerror or exc}; the store is intact: fix it (free "
                         f"space, permissions) and continue with --resume --out {out}") from None
    except sqlite3.OperationalError as exc:
        raise RunIOError(f"cannot write {Path(out) / 'search.db'}: {exc}; the store is intact: fix it (free "
                         f"space, permissions) and continue with --resume --out {out}") from None


def _interrupted(store: Any, setup: Setup) -> None:
    print(f"{PROG}: interrupted; {store.count('search')}/{setup.settings.trials} trials are stored. "
          f"Continue with: python -m nas.search --resume --out {setup.opts['out']}", file=sys.stderr)


def _search(setup: Setup, store: Any, t0: float) -> int:
    from nas import report
    from nas.loop import SearchLoop
    from nas.records import best_trial

    opts = setup.opts
    out = Path(opts["out"])
    done = store.count("search")
    history = store.trials()  # read once: a resumed run's store may hold tens of thousands of rows
    searched = [r for r in history if r["kind"] == "search" and r["source"] == "trained"]
    failed = sum(1 for r in searched if r["status"] not in ("ok", "stopped"))
    progress = report.Progress(setup.settings.trials, done=done, failed=failed,
                               enabled=not (opts.get("no_progress") or opts.get("quiet")))
    listeners: list = [progress, _refresh_files(store, out, setup, history)]
    tb = None
    if not opts.get("no_tensorboard"):
        from nas.tb import TBLogger
        tb = TBLogger(out)
        listeners.append(tb)
    loop = SearchLoop(store, setup.space, setup.recipe, setup.settings, reference=setup.reference,
                      listeners=listeners)
    best0 = best_trial(searched)
    if best0 is not None:
        progress.best = best0["reward"]
    del history, searched
    _log(opts, f"search: target {_targets(setup.settings)}, {opts['controller']} controller, "
               f"{setup.settings.trials} trials on {len(setup.slots)} {setup.slots[0].split(':')[0]} worker(s), "
               f"{setup.budget.dataset} at {setup.budget.resolution}px for {setup.budget.epochs:g} epoch(s); "
               f"out: {out}" + (f" (resumed at {done} trials)" if opts.get("resume") else ""))
    interrupted = False
    try:
        setup.engine.run(loop, setup.ctx)
        loop.refresh()  # another process (NNI's dispatcher) may have driven it
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    rows = store.trials()
    best = best_trial(r for r in rows if r["kind"] == "search")
    reference = store.trial("reference", 0)
    _write_outputs(store, out, setup, best, reference, rows=rows)
    final = None
    if not interrupted and best is not None and not opts.get("no_final"):
        try:
            final = _stage2(setup, store, out)
        except KeyboardInterrupt:
            interrupted = True
        if final is not None and final["chosen"] >= 0:  # B0 is the stage-2 winner
            best = store.trial("search", store_trial_proposal(rows, final["candidates"][final["chosen"]]["trial"]))
            report.write_best(best, out, setup.settings.target_resolution)
            _write_outputs(store, out, setup, best, reference, final)
    if interrupted:
        if tb:
            tb.close()
        _interrupted(store, setup)
        return 130
    family = None
    if best is not None and not opts.get("no_scale"):
        family = _hand_off(setup, store, best)
    if tb:
        tb.close({k: v for k, v in opts.items()
                  if (k in cfg.IDENTITY or k in ("trials", "workers")) and k != "space_text"},
                 {"best/reward": best and best["reward"], "best/accuracy": best and best["accuracy"]})
    counts = {"trained": store.count("search"), "cost-only": store.count("search", ("cost-only",)),
              "cache": store.count("search", ("cache",)),
              "failed": sum(1 for r in rows if r["kind"] == "search" and r["source"] == "trained"
                            and r["status"] not in ("ok", "stopped")),
              "stopped": sum(1 for r in rows if r["kind"] == "search" and r["source"] == "trained"
                             and r["status"] == "stopped"),
              "prefilter": store.count("search", ("prefilter",))}
    store.set_meta("state", "finished")
    print(report.summary_table(best, reference, counts, setup.settings.target, time.time() - t0, out, family,
                               loop.stop_reason, final and _final_text(final, setup),
                               latency_target=setup.settings.latency_ms, measured=(final or {}).get("measured")))
    if best is None:
        print(f"{PROG}: no trial finished ok, so there is no B0 (see {out}/trials.csv)", file=sys.stderr)
        return 1
    return 0


def _targets(s: Any) -> str:
    """`400M MACs and 20 ms latency (cpu, batch 1)`: the run's targets in words."""
    from nas.latency_cost import fmt_ms
    parts = [] if s.target is None else [f"{s.target / 1e6:g}M MACs"]
    if s.latency_ms:
        parts.append(f"{fmt_ms(s.latency_ms)} latency ({s.latency_device}, batch {s.latency_batch})")
    return " and ".join(parts)


def _refresh_files(store: Any, out: Path, setup: Setup, history: Optional[list] = None):
    """Listener: keep trials.csv and best.yaml current after every trial, at a cost that
    does not grow with the run (one appended line; best.yaml only when the best changes).
    `history`: the store's rows, where the caller has read them already."""
    from nas import report
    from nas.records import best_trial

    csv_file = report.TrialsCsv(out / "trials.csv")
    rows = store.trials() if history is None else history
    csv_file.rewrite(rows)  # once: the history of a resumed run
    best = [best_trial(r for r in rows if r["kind"] == "search")]

    def listener(rec: dict) -> None:
        csv_file(rec)
        if rec.get("kind") == "search" and best_trial([r for r in (best[0], rec) if r]) is rec:
            best[0] = rec
            report.write_best(rec, out, setup.settings.target_resolution)
    return listener


def _write_outputs(store: Any, out: Path, setup: Setup, best: Optional[dict], reference: Optional[dict],
                   final: Optional[dict] = None, rows: Optional[list] = None) -> None:
    from nas import report
    rows = store.trials() if rows is None else rows
    report.write_trials_csv(rows, out / "trials.csv")
    if best is not None:
        report.write_best(best, out, setup.settings.target_resolution)
    try:
        report.plot_pareto([r for r in rows if r["kind"] == "search"], out / "pareto.png", setup.settings.target,
                           setup.settings.alpha, setup.settings.beta, best, reference, setup.settings.cost_window,
                           final=final, latency_target=setup.settings.latency_ms)
    except Exception as exc:  # noqa: BLE001 - a plot must not lose a finished search
        print(f"warning: pareto.png not written ({type(exc).__name__}: {exc})", file=sys.stderr)


def store_trial_proposal(rows: list, trial_id: int) -> int:
    """The proposal id of the search record with this trial id."""
    return next(r["proposal_id"] for r in rows if r["id"] == trial_id)


def _stage2(setup: Setup, store: Any, out: Path) -> Optional[dict]:
    """Stage 2 (`nas.final`) on the search's engine and store: top-k and the reference on
    fresh seeds, B0 chosen on search-validation, the verdict on test; resumable."""
    from nas import final as stage2
    from nas import report

    opts = setup.opts
    try:
        candidates = stage2.top_candidates(store.trials("search", "trained"), int(opts["final_top_k"]),
                                           opts.get("_final_candidates"))
    except ValueError as exc:
        raise UserError(f"--candidates: {exc}") from None
    if setup.reference is not None:
        candidates.append(stage2.Candidate(setup.reference.name or "reference", setup.reference))
    seeds = opts.get("_final_seed_list") or stage2.fresh_seeds(int(opts["seed"]), int(opts["final_seeds"]))
    budget = stage2.final_budget(setup.budget, float(opts["final_epochs"]), opts.get("final_resolution"))
    ctx = dataclasses.replace(setup.ctx, budget=budget)
    objective = setup.settings.objective
    progress = report.Progress(len(candidates) * len(seeds), kind=stage2.KIND,
                               enabled=not (opts.get("no_progress") or opts.get("quiet")))
    source = stage2.final_source(store, candidates, seeds, ctx, objective, setup.settings.target_resolution,
                                 listeners=[progress, _refresh_files(store, out, setup)])
    stored = sum(r is not None for r in source.records())
    progress.done = stored
    _log(opts, f"stage 2: {len(candidates)} architectures x {len(seeds)} fresh seeds {seeds}, "
               f"{budget.epochs:g} epochs at {budget.resolution}px, scored on search-validation and test"
               + (f" ({stored} of {len(source.jobs)} runs already stored)" if stored else ""))
    try:
        setup.engine.run(source, ctx)
    finally:
        progress.close()
    summary = stage2.summarize(candidates, seeds, source.records(), objective)
    stage2.measure_latency(summary, candidates, objective, setup.settings.target_resolution,
                           log=lambda m: _log(opts, m))
    stage2.write_outputs(summary, out, budget, objective)
    return summary


def _final_text(final: dict, setup: Setup) -> str:
    from nas import final as stage2
    text = stage2.markdown(final, stage2.final_budget(setup.budget, float(setup.opts["final_epochs"]),
                                                      setup.opts.get("final_resolution")))
    return "\n".join(text.splitlines()[2:])  # without its title


def _hand_off(setup: Setup, store: Any, best: dict) -> Optional[list]:
    """B0 -> (optional grid search of alpha/beta/gamma) -> B1..B7 under out/family/."""
    from nas import report
    opts = setup.opts
    out = Path(opts["out"])
    b0 = report.best_spec(best, setup.settings.target_resolution)
    a, b, g = float(opts["alpha_scale"]), float(opts["beta_scale"]), float(opts["gamma_scale"])
    try:
        if opts.get("scale_grid"):
            a, b, g = _grid(setup, store, b0)
        from scaling.family import derive_to_dir
        return derive_to_dir(b0, out / "family", a, b, g, setup.phis)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the search result stands even if scaling fails
        print(f"warning: family not derived ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
              file=sys.stderr)
        return None


def _grid(setup: Setup, store: Any, b0: Any) -> tuple[float, float, float]:
    """The α/β/γ grid (`nas.grid.run_grid`) on the search's engine and store; resumable."""
    from nas import report
    from nas.grid import run_grid
    from scaling.grid import grid_candidates, save_grid_table

    opts, out = setup.opts, Path(setup.opts["out"])

    def listeners(n: int, stored: int) -> list:
        failed = sum(r["status"] != "ok" for r in store.trials("grid", "trained"))
        _log(opts, f"scale grid: {n} distinct networks at φ = 1 to train ({stored} already stored)")
        progress = report.Progress(n, done=stored, failed=failed, kind="grid",
                                   enabled=not (opts.get("no_progress") or opts.get("quiet")))
        return [progress, _refresh_files(store, out, setup)]

    result = run_grid(store, b0, grid_candidates(float(opts["grid_step"]), tol=float(opts["grid_tol"])),
                      setup.engine, setup.ctx, setup.settings.objective, listeners=listeners)
    rows = [{k: v for k, v in r.items() if k != "spec"} for r in result.rows]
    (out / "grid").mkdir(parents=True, exist_ok=True)
    save_grid_table(rows, out / "grid")
    if result.best is None:
        print("warning: no grid candidate trained ok; using the default coefficients", file=sys.stderr)
        return float(opts["alpha_scale"]), float(opts["beta_scale"]), float(opts["gamma_scale"])
    best = result.best
    _log(opts, f"scale grid: α = {best['alpha']:g}, β = {best['beta']:g}, γ = {best['gamma']:g} "
               f"(proxy accuracy {best['accuracy']:.4f}, best of {len(rows)} candidates); table: {out / 'grid' / 'grid.md'}")
    return best["alpha"], best["beta"], best["gamma"]


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for bad input)."""
    from nas.errors import cli_main
    return cli_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
