"""`python -m nas.search --strategy oneshot`: what differs from the per-trial search.

Checked before `--out` exists (`check`): options that only mean something when every
architecture is trained (early stopping, a training-free prefilter, an epoch budget, NNI)
are refused, and a reused `--supernet` must match the search's space and data. Then, in
the run: phase 1 (`supernet_folder`: train into `--out/supernet/`, resumable, or reuse),
and phase 2's engine (`scoring`): the same `SearchLoop` and controller, each proposal
scored with inherited weights in this process (`nas.supernet.score.InheritedWeights`),
recorded with kind 'oneshot'. Stage 2 trains the top-k from scratch on the search's own
engine, as after a per-trial search.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.errors import UserError

from .args import log

NOT_FOR_ONESHOT = (("early_stop", "off", "--early-stop"), ("prefilter", "none", "--prefilter"),
                   ("max_epochs", 0, "--max-epochs"), ("engine", "local", "--engine"))


def is_oneshot(opts: dict) -> bool:
    return opts.get("strategy") == "oneshot"


def check(opts: dict, given: set, space: Any, budget: Any) -> None:
    """One-line `UserError` for options a one-shot search cannot honour, and for a reused
    supernet of another space or other data (`nas.supernet.oneshot.check_reuse`)."""
    if not is_oneshot(opts):
        for name in ("supernet", "supernet_epochs", "score_images"):
            if name in given:
                raise UserError(f"--{name.replace('_', '-')} goes with --strategy oneshot")
        return
    for name, off, flag in NOT_FOR_ONESHOT:
        value = opts.get(name)
        if value and value != off:
            raise UserError(f"{flag} {value}: not with --strategy oneshot (nothing is trained per architecture)")
    if opts.get("supernet"):
        from nas.supernet.oneshot import check_reuse
        check_reuse(opts["supernet"], space, budget)


def supernet_folder(setup: Any) -> Path:
    """Phase 1: the trained supernet's folder: `--supernet`, else `--out/supernet/` trained
    (or its training continued) now. A training that fails ends the run (exit 1)."""
    from nas.errors import EngineError
    from nas.supernet.oneshot import SUBDIR, train_phase

    opts = setup.opts
    if opts.get("supernet"):
        log(opts, f"phase 1: reusing the supernet in {opts['supernet']}")
        return Path(opts["supernet"])
    folder = Path(opts["out"]) / SUBDIR
    result = train_phase(setup.space, setup.budget, folder, float(opts["supernet_epochs"]),
                         log=lambda m: log(opts, m))
    if result is None:
        log(opts, f"phase 1: the supernet in {folder} is trained already")
    elif result.status != "ok":
        raise EngineError(f"phase 1: supernet training {result.status}: {result.message} (its last checkpoint "
                          f"is in {folder})")
    else:
        loss = "" if result.loss is None else f", the largest sub-network's loss {result.loss:.3f}"
        log(opts, f"phase 1: trained in {result.wall_time:.0f} s ({result.steps} steps{loss})")
    return folder


def scoring(setup: Any, folder: Path) -> tuple[Any, Any]:
    """(engine, context) of phase 2: the run's worker slots (`--workers`), each worker
    loading the supernet and its images once and scoring single-threaded (one thread per
    scorer is fastest on the CPU: docs/supernet.md); with one slot, in this process."""
    import dataclasses

    from nas.engines.local import LocalEngine
    from nas.supernet.oneshot import CALIBRATION_IMAGES
    from nas.supernet.score import InheritedWeights

    evaluator = InheritedWeights(folder, calibration_images=CALIBRATION_IMAGES,
                                 val_images=int(setup.opts["score_images"]))
    ctx = dataclasses.replace(setup.ctx, evaluator=evaluator)
    slots = list(setup.slots)
    if len(slots) == 1:
        import torch
        if slots[0] == "cpu":
            torch.set_num_threads(1)
        return LocalEngine(slots, in_process=True), dataclasses.replace(
            ctx, budget=dataclasses.replace(ctx.budget, device=slots[0]))
    threads = 1 if slots[0] == "cpu" else None
    return LocalEngine(slots, trial_timeout=setup.engine.trial_timeout, threads=threads), ctx


def describe(setup: Any) -> str:
    """The search's opening line for a one-shot run."""
    opts = setup.opts
    return (f"{opts['controller']} controller, {setup.settings.stop.trials} sub-networks scored with inherited "
            f"weights on {opts['score_images']} search-validation images, {setup.budget.dataset} at "
            f"{setup.budget.resolution}px")

