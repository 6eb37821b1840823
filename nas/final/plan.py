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
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from nas.engines.protocol import Engine, EvalContext
from nas.evaluate.budget import ProxyBudget, frozen_fields, measurement_id
from nas.search.batch import BatchSource
from nas.search.objective import Objective

from .stats import ALPHA, summarize

KIND = "final"
DEFAULT_TOP_K = 3      # architectures retrained besides the reference
DEFAULT_SEEDS = "auto"  # fresh seeds each: 3, then more for B0 and the reference while undecided
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


def top_candidates(rows: Sequence[dict], k: int, trial_ids: Sequence[int] | None = None,
                   kind: str = "search") -> list[Candidate]:
    """The k best distinct architectures by search reward (ties as `best_trial`), or the
    trials named by id; only trained, ok trials of `kind` qualify ('search': trained per
    trial; 'oneshot': scored with a supernet's inherited weights)."""
    from search_space.spec import ArchSpec

    ok = [r for r in rows if r.get("kind") == kind and r.get("source") == "trained"
          and r.get("status") == "ok" and r.get("reward") is not None]
    if trial_ids:
        by_id = {r["id"]: r for r in ok}
        missing = [i for i in trial_ids if i not in by_id]
        if missing:
            raise ValueError(f"trial {missing[0]} is not a trained, ok {kind} trial of this run")
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
    ident = json.dumps([key, int(seed), frozen_fields(budget) | {"seed": 0}, evaluator], sort_keys=True)
    return int(hashlib.sha1(ident.encode()).hexdigest()[:15], 16)


def weights_name(candidate: Candidate, seed: int) -> str:
    """`trial-39-seed1.safetensors`, `efficientnet-b0-seed2.safetensors`: architecture and seed."""
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", candidate.label).strip("-") or "network"
    return f"{label}-seed{int(seed)}.safetensors"


def final_source(store: Any, candidates: Sequence[Candidate], seeds: Sequence[int], ctx: EvalContext,
                 objective: Objective, target_resolution: int,
                 listeners: Sequence[Callable[[dict], None]] = (), weights_dir: Optional[Path] = None) -> BatchSource:
    """Every candidate on every seed, as one batch of kind 'final' (each run's weights kept
    under `weights_dir` when given)."""
    specs, overrides, ids, weights = [], [], [], []
    for c in candidates:
        for s in seeds:
            specs.append(c.spec)
            overrides.append({"seed": int(s)})
            weights.append(None if weights_dir is None else str(Path(weights_dir).absolute() / weights_name(c, s)))
            new = measurement_id(c.spec.key(), s, ctx.budget, ctx.evaluator)
            old = legacy_id(c.spec.key(), s, ctx.budget, ctx.evaluator)
            ids.append(old if store.trial(KIND, new) is None and store.trial(KIND, old) is not None else new)
    return BatchSource(store, specs, objective, kind=KIND, target_resolution=target_resolution, listeners=listeners,
                       overrides=overrides, ids=ids, weights=weights)


def run(store: Any, candidates: Sequence[Candidate], seeds: Sequence[int], engine: Engine, ctx: EvalContext,
        objective: Objective, target_resolution: int, listeners: Callable[[int, int], list] = lambda n, done: [],
        log: Callable[[str], None] = lambda m: None, max_seeds: Optional[int] = None,
        more_seeds: Callable[[int], list[int]] = lambda n: [], weights_dir: Optional[Path] = None) -> dict:
    """Stage 2 on `engine`: train what is missing (every candidate on every seed), then
    choose and judge (`nas.final.stats.summarize`) and, with a latency target, measure B0's
    and the reference's latency. `listeners(n_runs, n_stored)` gives the record listeners
    (progress, reports) of each batch trained; those with a `close()` are closed after it.

    With `max_seeds` (sequential seeds, `nas.final.sequential`): while the verdict is
    undecided, B0 and the reference get the seeds `more_seeds(n)` (n seeds in all) at each
    further look up to `max_seeds`, and the verdict uses the design's boundary. B0 stays the
    choice of the first look. A resumed stage 2 replays the looks from the store.
    With `weights_dir`, each run saves its trained weights there (`weights_name`).
    """
    from . import sequential

    def train(batch: Sequence[Candidate], batch_seeds: Sequence[int], what: str) -> BatchSource:
        source = final_source(store, batch, batch_seeds, ctx, objective, target_resolution, weights_dir=weights_dir)
        stored = sum(r is not None for r in source.records())
        source.listeners = list(listeners(len(source.jobs), stored))
        log(f"stage 2: {what} x {len(batch_seeds)} fresh seeds {list(batch_seeds)}, {ctx.budget.epochs:g} epochs "
            f"at {ctx.budget.resolution}px, scored on search-validation and test"
            + (f" ({stored} of {len(source.jobs)} runs already stored)" if stored else ""))
        source.run(engine, ctx)
        return source

    records = train(candidates, seeds, f"{len(candidates)} architectures").records()
    plan = sequential.looks(len(seeds), max(len(seeds), max_seeds)) if max_seeds else ()
    threshold = sequential.boundary(plan) if len(plan) > 1 else ALPHA
    summary = summarize(candidates, seeds, records, objective, threshold=threshold)
    look = 1
    ref = summary["reference"]
    while plan and look < len(plan) and summary["verdict"] is not None and \
            summary["verdict"]["words"] == "no significant difference":
        pair = [summary["chosen"], ref]
        extra = more_seeds(plan[look])
        batch = train([candidates[i] for i in pair], extra, f"look {look + 1}: B0 and the reference").records()
        look += 1
        more = {i: batch[k * len(extra):(k + 1) * len(extra)] for k, i in enumerate(pair)}
        summary = summarize(candidates, seeds, records, objective, more=more, threshold=threshold)
    summary["design"] = {"looks": list(plan), "look": look, "threshold": threshold} if len(plan) > 1 else {}
    measure_latency(summary, candidates, objective, target_resolution, log=log)
    return summary


def keep_weights(summary: dict, candidates: Sequence[Candidate], weights_dir: Path, best: Path) -> Optional[Path]:
    """After the choice: delete the weights this stage 2 trained for candidates other than B0
    and the reference, and copy B0's run with the best search-validation accuracy (never
    test) to `best`. Returns `best`, or None when no B0 run left weights."""
    chosen, ref = summary["chosen"], summary.get("reference")
    runs: list[tuple[float, Path]] = []
    for r in summary["records"]:
        i = next(k for k, c in enumerate(summary["candidates"]) if c["key"] == r["key"])
        path = Path(weights_dir) / weights_name(candidates[i], seed_of(r))
        if i not in (chosen, ref):
            path.unlink(missing_ok=True)
        elif i == chosen and r["status"] == "ok" and r["accuracy"] is not None and path.is_file():
            runs.append((r["accuracy"], path))
    if not runs:
        return None
    source = max(runs, key=lambda ap: ap[0])[1]
    tmp = best.with_name(best.name + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(best)
    return best


def seed_of(record: dict) -> Any:
    """The training seed of a stage-2 record (kept with the job's budget overrides)."""
    return ((record.get("extra") or {}).get("overrides") or {}).get("seed", "")


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
