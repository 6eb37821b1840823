"""The α/β/γ grid search run on an engine, resumable through a store.

One runner for `nas.search --scale-grid` and `python -m scaling grid`: the candidates
(`scaling.grid`), each on several seeds, train as a `BatchSource` of one kind in the
run's store, so a killed grid resumes where it stopped, on whichever engine the caller
built; `scaling.grid.decide` then keeps the paper's coefficients unless beaten at p < 0.05.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Sequence

from nas.engines.protocol import EvalContext
from nas.evaluate.budget import frozen_fields, measurement_id

from .batch import BatchSource
from .objective import Objective


def grid_kind(b0: Any, ctx: EvalContext, objective: Objective, candidates: Sequence[tuple]) -> str:
    """A record kind naming this grid exactly (baseline, budget, evaluator, reward, points):
    grids that differ in any of them never reuse each other's records in one store."""
    ident = [b0.key(), b0.resolution, frozen_fields(ctx.budget), ctx.evaluator, dataclasses.asdict(objective),
             [list(c) for c in candidates]]
    return "grid:" + hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def run_grid(store: Any, b0: Any, candidates: Sequence[tuple], engine: Any, ctx: EvalContext,
             objective: Objective, kind: str = "grid",
             listeners: Callable[[int, int], list] | None = None, seeds: Sequence[int] | None = None) -> Any:
    """`scaling.grid.grid_search` of `b0` over `candidates` (and the paper's point), each
    trained on every seed of `seeds` (default: the budget's seed alone) on `engine`.

    Each candidate trains at the proxy resolution scaled by its γ and is costed at its
    own resolution (`ProxyBudget.at_resolution`); each run is stored under its
    measurement id (`nas.evaluate.budget.measurement_id`), so a grid resumes where it
    stopped and more seeds add only the missing runs. `listeners(n_runs, n_stored)`, when
    given, returns the record listeners for the batch (progress); those with a `close()`
    are closed when the batch ends.
    """
    from scaling.grid import grid_search

    ctx = dataclasses.replace(ctx, per_spec_resolution=True)
    seeds = [int(ctx.budget.seed)] if seeds is None else [int(s) for s in seeds]

    def evaluate(specs: list, seeds: list) -> list:
        runs = [(spec, s) for spec in specs for s in seeds]
        ids = [measurement_id(spec.key(), s, ctx.budget.at_resolution(spec.resolution), ctx.evaluator)
               for spec, s in runs]
        stored = sum(1 for i in ids if store.trial(kind, i) is not None)
        extra = listeners(len(runs), stored) if listeners else []
        source = BatchSource(store, [spec for spec, _ in runs], objective, kind=kind, listeners=extra,
                             overrides=[{"seed": s} for _, s in runs], ids=ids)
        source.run(engine, ctx)
        return source.results()

    return grid_search(b0, evaluate, candidates, seeds=seeds)
