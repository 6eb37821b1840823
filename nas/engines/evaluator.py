"""How one job is evaluated, wherever an engine runs it (a local worker or an NNI trial).

`evaluate_job` is the single place that turns an evaluator's return or exception into a
`TrialResult`, so that a crashing, diverging or misbehaving evaluator is recorded the same
way by every engine, and the search goes on.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import time
from typing import Any, Callable

from nas.evaluate.result import TrialResult, checked

from .protocol import DEFAULT_EVALUATOR, EvalContext, Job


def load_evaluator(ref: str | Callable | None) -> Callable[..., Any]:
    """`'module:function'` (or `module.function`), a callable, or None for `nas.trial:evaluate`.

    The contract: `fn(spec, budget) -> TrialResult` (or a dict of its fields); it may
    take a keyword `on_epoch(epoch, accuracy)` to report its learning curve as it goes.
    """
    if callable(ref):
        return ref
    ref = ref or DEFAULT_EVALUATOR
    module, sep, attr = ref.partition(":")
    if not sep:
        module, _, attr = ref.rpartition(".")
    if not module or not attr:
        raise ValueError(f"evaluator {ref!r}: expected 'module:function'")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ValueError(f"evaluator {ref!r}: {module} has no function {attr!r}")
    return fn


def with_epoch_hook(fn: Callable[..., Any], on_epoch: Callable[..., None]) -> tuple[Callable[..., Any], bool]:
    """`fn` with `on_epoch` bound when its signature takes one; (fn, whether it was bound)."""
    try:
        names = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn, False
    if "on_epoch" in names:
        return functools.partial(fn, on_epoch=on_epoch), True
    return fn, False


def with_rung_hook(fn: Callable[..., Any], rungs: list, on_rung: Callable[[int, float], bool]) -> Callable[..., Any]:
    """`fn` with `rungs` and `on_rung` bound when its signature takes both (ASHA, nas.search.asha);
    an evaluator that does not take them trains its whole budget."""
    try:
        names = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    if "rungs" in names and "on_rung" in names:
        return functools.partial(fn, rungs=list(rungs), on_rung=on_rung)
    return fn


def with_weights_path(fn: Callable[..., Any], path: str) -> Callable[..., Any]:
    """`fn` with `weights_path` bound when its signature takes it (stage 2 keeps the trained
    weights there); an evaluator that does not take it keeps none."""
    try:
        names = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    return functools.partial(fn, weights_path=path) if "weights_path" in names else fn


def evaluate_job(job: Job, ctx: EvalContext, evaluator: Callable | None = None,
                 on_rung: Callable[[int, float], bool] | None = None) -> TrialResult:
    """Train `job` with the context's evaluator; never raises (but lets Ctrl-C through).

    Exceptions become status 'failed' (message: the exception's first line); a
    non-finite accuracy becomes 'diverged'; anything not a TrialResult becomes 'failed'.
    `on_rung(rung, accuracy) -> continue?` is handed to the evaluator when the job has
    rungs (ASHA): the engine's way of asking the search whether the trial goes on.
    """
    from search_space.spec import ArchSpec

    t0 = time.time()
    try:
        fn = evaluator or load_evaluator(ctx.evaluator)
        if job.rungs and on_rung is not None:
            fn = with_rung_hook(fn, job.rungs, on_rung)
        if job.weights:
            fn = with_weights_path(fn, job.weights)
        spec = ArchSpec.from_dict(job.spec)
        budget = ctx.budget.at_resolution(spec.resolution) if ctx.per_spec_resolution else ctx.budget
        if job.overrides:
            budget = dataclasses.replace(budget, **job.overrides)
        result = fn(spec, budget)
        if isinstance(result, dict):
            result = TrialResult.from_dict(result)
        if not isinstance(result, TrialResult):
            return TrialResult(status="failed", wall_time=time.time() - t0,
                               message=f"evaluator returned {type(result).__name__}, not a TrialResult")
    except BaseException as exc:  # noqa: BLE001 - a trial failure is a result, not a crash
        if isinstance(exc, KeyboardInterrupt):
            raise
        first = (f"{type(exc).__name__}: {exc}".splitlines() or ["error"])[0][:500]
        return TrialResult(status="failed", wall_time=time.time() - t0, message=first)
    if not result.wall_time:
        result.wall_time = time.time() - t0
    return checked(result)
