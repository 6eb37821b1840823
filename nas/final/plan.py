"""Stage 2: retrain the search's best candidates and the reference on fresh seeds, choose
on search-validation, judge on test.

Why: the search picks the best of many on its own validation part, from one seed each,
so its numbers are biased by that selection. Stage 2 retrains the top-k architectures
(by search reward) and the reference network with a final budget on S seeds that the
search never used, scores each on the search-validation part *and* on the test part
that no search or selection has read (`nas.evaluate.data`), then

1. chooses B0 among the candidates by mean stage-2 reward on search-validation, from
   records stripped of their test scores (`choose` never sees them), and only then
2. judges B0 against the reference on test: mean ± sd over seeds, the difference with
   its 95 % confidence interval and Welch's t-test (`scipy.stats`), in the words the
   numbers allow ("better", "no significant difference", "worse").

Jobs are kind 'final' in the run's store with ids derived from (architecture, seed,
final budget, evaluator) by the one identity rule (`nas.evaluate.budget.measurement_id`),
so stage 2 resumes after a kill and can be extended later (more seeds, other candidates,
another budget: `python -m nas.final RUN`). This package: `plan` (what is trained, and
running it), `stats` (the choice and the verdict), `report` (final.md, final.csv).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from nas.engines.protocol import Engine, EvalContext
from nas.evaluate.budget import ProxyBudget, measurement_id
from nas.search.batch import BatchSource
from nas.search.objective import Objective

from .stats import summarize

KIND = "final"
DEFAULT_TOP_K = 3      # architectures retrained besides the reference
DEFAULT_SEEDS = 3      # fresh seeds each
DEFAULT_EPOCHS = 4.0   # epochs of the final budget


@dataclass(frozen=True)
class Candidate:
    """One architecture of stage 2: a search trial (`trial` its id) or the reference (None)."""

    label: str
    spec: Any                   # search_space.ArchSpec, as the search recorded it
    trial: Optional[int] = None

    @property
    def is_reference(self) -> bool:
        return self.trial is None


def final_budget(search: ProxyBudget, epochs: float = DEFAULT_EPOCHS, resolution: int | None = None) -> ProxyBudget:
    """The search's budget with the final epochs and resolution, scoring the test part too."""
    return dataclasses.replace(search, epochs=float(epochs), steps=None, resolution=int(resolution or search.resolution),
                               test=True)


def fresh_seeds(search_seed: int, n: int, taken: Sequence[int] = ()) -> list[int]:
    """`n` seeds after the search seed, none equal to it (nor to any in `taken`)."""
    seeds, s = [], int(search_seed)
    while len(seeds) < n:
        s += 1
        if s not in taken:
            seeds.append(s)
    return seeds


def top_candidates(rows: Sequence[dict], k: int, trial_ids: Sequence[int] | None = None) -> list[Candidate]:
    """The k best distinct architectures by search reward (ties as `best_trial`), or the
    trials named by id; only trained, ok search trials qualify."""
    from search_space.spec import ArchSpec

    ok = [r for r in rows if r.get("kind") == "search" and r.get("source") == "trained"
          and r.get("status") == "ok" and r.get("reward") is not None]
    if trial_ids:
        by_id = {r["id"]: r for r in ok}
        missing = [i for i in trial_ids if i not in by_id]
        if missing:
            raise ValueError(f"trial {missing[0]} is not a trained, ok search trial of this run")
        chosen = [by_id[i] for i in dict.fromkeys(trial_ids)]
    else:
        chosen, keys = [], set()
        for r in sorted(ok, key=lambda r: (-r["reward"], r.get("macs") or 0, r["id"])):
            if r["key"] not in keys:
                keys.add(r["key"])
                chosen.append(r)
            if len(chosen) == k:
                break
    return [Candidate(f"trial {r['id']}", ArchSpec.from_dict(r["spec"]), r["id"]) for r in chosen]


def legacy_id(key: str, seed: int, budget: ProxyBudget, evaluator: str) -> int:
    """The id stage 2 gave a run before the identity rule was shared with the proxy check
    (it hashed every budget field, the device and time limit too). Kept only so that a
    stage 2 stored then is found, not retrained, when such a run is resumed or extended."""
    ident = json.dumps([key, int(seed), dataclasses.asdict(budget) | {"seed": 0}, evaluator], sort_keys=True)
    return int(hashlib.sha1(ident.encode()).hexdigest()[:15], 16)


def final_source(store: Any, candidates: Sequence[Candidate], seeds: Sequence[int], ctx: EvalContext,
                 objective: Objective, target_resolution: int,
                 listeners: Sequence[Callable[[dict], None]] = ()) -> BatchSource:
    """Every candidate on every seed, as one batch of kind 'final'."""
    specs, overrides, ids = [], [], []
    for c in candidates:
        for s in seeds:
            specs.append(c.spec)
            overrides.append({"seed": int(s)})
            new = measurement_id(c.spec.key(), s, ctx.budget, ctx.evaluator)
            old = legacy_id(c.spec.key(), s, ctx.budget, ctx.evaluator)
            ids.append(old if store.trial(KIND, new) is None and store.trial(KIND, old) is not None else new)
    return BatchSource(store, specs, objective, kind=KIND, target_resolution=target_resolution, listeners=listeners,
                       overrides=overrides, ids=ids)


def run(store: Any, candidates: Sequence[Candidate], seeds: Sequence[int], engine: Engine, ctx: EvalContext,
        objective: Objective, target_resolution: int, listeners: Callable[[int, int], list] = lambda n, done: [],
        log: Callable[[str], None] = lambda m: None) -> dict:
    """Stage 2 on `engine`: train what is missing (every candidate on every seed), then
    choose and judge (`nas.final.stats.summarize`) and, with a latency target, measure B0's
    and the reference's latency. `listeners(n_runs, n_stored)` gives the record listeners
    (progress, reports); those with a `close()` are closed when training ends."""
    source = final_source(store, candidates, seeds, ctx, objective, target_resolution)
    stored = sum(r is not None for r in source.records())
    source.listeners = list(listeners(len(source.jobs), stored))
    budget = ctx.budget
    log(f"stage 2: {len(candidates)} architectures x {len(seeds)} fresh seeds {list(seeds)}, "
        f"{budget.epochs:g} epochs at {budget.resolution}px, scored on search-validation and test"
        + (f" ({stored} of {len(source.jobs)} runs already stored)" if stored else ""))
    try:
        engine.run(source, ctx)
    finally:
        for listener in source.listeners:
            close = getattr(listener, "close", None)
            if callable(close):
                close()
    summary = summarize(candidates, seeds, source.records(), objective)
    measure_latency(summary, candidates, objective, target_resolution, log=log)
    return summary


def measure_latency(summary: dict, candidates: Sequence[Candidate], objective: Objective, resolution: int,
                    log: Callable[[str], None] = lambda m: None) -> None:
    """With a latency target: B0's and the reference's latency measured end to end (not
    predicted) on the target device, here in the search's process, after training; put in
    `summary` (`measured_latency_ms` of their rows, `measured`: key -> ms). Nothing is
    measured when the target device is another machine's (`--latency-device table`)."""
    from nas.search.latency import measured_ms
    if not objective.latency_ms:
        return
    chosen = [i for i, c in enumerate(summary["candidates"]) if i == summary["chosen"] or c["reference"]]
    summary["measured"] = {}
    for i in chosen:
        row = summary["candidates"][i]
        spec = dataclasses.replace(candidates[i].spec, num_classes=1000)
        ms = measured_ms(objective.latency_device, objective.latency_batch, objective.latency_threads, spec,
                         resolution)
        if ms is None:
            continue
        row["measured_latency_ms"] = ms
        summary["measured"][row["key"]] = ms
        log(f"latency of {row['label']}{' (B0)' if i == summary['chosen'] else ''} at {resolution}x{resolution}: "
            f"measured {ms:.2f} ms, predicted {row['latency_ms']:.2f} ms, target {objective.latency_ms:g} ms")
