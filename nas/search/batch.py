"""A fixed list of specs trained once each: stage 2, the proxy check, the scaling grid."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict
from typing import Any, Callable, Optional, Sequence

from nas.engines.protocol import Job
from nas.errors import UserError
from nas.evaluate.result import TrialResult
from nas.store.store import Store

from .objective import Objective
from .records import RecordWriter, job_row, new_job, result_of, trial_record


class BatchSource(RecordWriter):
    """Train a fixed list of specs once each, recorded as `kind` in the store.

    Resumable: specs already recorded are not trained again; pending ones re-run. Cost
    is counted at `target_resolution` (default: each spec's own). `overrides` (one dict
    or None per spec) changes budget fields of single jobs (stage 2: the seed); `ids`
    gives each job a stable proposal id (default: its index), so that batches that
    differ can share a kind in one store; `weights` (a path or None per spec) is where the
    evaluator keeps each job's trained weights. `results()` returns one TrialResult per
    spec, in the given order.
    """

    def __init__(self, store: Store, specs: Sequence[Any], objective: Objective, kind: str = "grid",
                 target_resolution: int | None = None, listeners: Sequence[Callable[[dict], None]] = (),
                 overrides: Sequence[dict | None] | None = None, ids: Sequence[int] | None = None,
                 weights: Sequence[str | None] | None = None) -> None:
        self.store, self.kind, self.objective, self.listeners = store, kind, objective, list(listeners)
        self.target_resolution = target_resolution
        self.specs = list(specs)
        self.overrides = list(overrides) if overrides is not None else [None] * len(self.specs)
        self.ids = [int(i) for i in ids] if ids is not None else list(range(len(self.specs)))
        if len(self.overrides) != len(self.specs) or len(set(self.ids)) != len(self.specs):
            raise ValueError("BatchSource needs one override and one distinct id per spec")
        self.weights = list(weights) if weights is not None else [None] * len(self.specs)
        self.jobs = []
        for pid, spec, extra, path in zip(self.ids, self.specs, self.overrides, self.weights):
            job = new_job(kind, pid, spec, target_resolution, objective=objective)
            job.overrides = dict(extra) if extra else None
            job.weights = path
            self.jobs.append(job)
        for job in self.jobs:
            row = store.trial(kind, job.proposal_id)
            if row is not None and row["key"] != job.key:
                raise UserError(f"the run's {kind!r} records were made for other networks (record "
                                f"{job.proposal_id} is another architecture): use another --out")
        self.lock = threading.RLock()
        self.in_flight: dict[str, Job] = {}

    def handover(self) -> dict:
        return {"type": "batch", "kind": self.kind, "specs": [s.to_dict() for s in self.specs],
                "objective": asdict(self.objective), "target_resolution": self.target_resolution,
                "overrides": self.overrides, "ids": self.ids, "weights": self.weights}

    def rung(self, job: Job, rung: int, accuracy: float) -> bool:
        """No early stopping in a batch: every job trains its whole budget."""
        return True

    def refresh(self) -> None:
        """Nothing to re-read: what is done is read from the store each time."""

    def max_jobs(self) -> int:
        return max(1, len(self.jobs) + 1)

    @property
    def done(self) -> bool:
        return not self.in_flight and all(self.store.trial(self.kind, j.proposal_id) for j in self.jobs)

    def initial_jobs(self) -> list[Job]:
        """Jobs of this batch left pending by a previous run (same proposal ids)."""
        with self.lock:
            pending = {d["proposal_id"]: d.get("attempt", 1) for d in self.store.pending(self.kind)}
            jobs = []
            for job in self.jobs:
                if job.proposal_id in pending and not self.store.trial(self.kind, job.proposal_id):
                    job.attempt = pending[job.proposal_id]
                    self.in_flight[job.name] = job
                    jobs.append(job)
            return jobs

    def next_job(self) -> Optional[Job]:
        with self.lock:
            for job in self.jobs:
                if job.name in self.in_flight or self.store.trial(self.kind, job.proposal_id):
                    continue
                self.in_flight[job.name] = job
                self.store.add_pending(job.kind, job.proposal_id, job_row(job))
                return job
            return None

    def complete(self, job: Job, result: TrialResult, worker: str = "", started_at: float | None = None,
                 finished_at: float | None = None, extra: dict | None = None) -> dict:
        with self.lock:
            rec = trial_record(job, result, self.objective, told=False, worker=worker, started_at=started_at,
                               finished_at=finished_at or time.time(), extra=extra)
            self.in_flight.pop(job.name, None)
            return self.write(rec)

    def run(self, engine: Any, ctx: Any) -> None:
        """Train what is missing on `engine`; afterwards, however it ends, close the
        listeners that have a `close()` (progress lines)."""
        try:
            engine.run(self, ctx)
        finally:
            for listener in self.listeners:
                close = getattr(listener, "close", None)
                if callable(close):
                    close()

    def results(self) -> list[TrialResult]:
        out = []
        for row in self.records():
            out.append(TrialResult(status="failed", message="not evaluated") if row is None else result_of(row))
        return out

    def records(self) -> list[Optional[dict]]:
        """The stored record of each job (None where it has none), in the given order."""
        return [self.store.trial(self.kind, job.proposal_id) for job in self.jobs]
