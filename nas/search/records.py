"""Cost, reward and the trial record: counted and built in one place for every kind of job.

Why here and not in the evaluator: an evaluator only measures (`nas.evaluate.result.TrialResult`);
multiply-adds and parameters are counted when a job is made (analytically, at the
resolution the target is stated for) and the reward is computed when its result is
recorded, by the same two functions whether the job is a search proposal, the
reference network or a scaling-grid candidate, and whatever engine trained it.
"""
from __future__ import annotations

import sys
import time
import traceback
from typing import Any, Iterable, Optional

from nas.engines.protocol import Job
from nas.store.store import Checkpoint, Store
from nas.evaluate.result import TrialResult, checked, finite

from .objective import Objective


def new_job(kind: str, proposal_id: int, spec: Any, resolution: int | None = None,
            choices: Optional[list] = None, objective: Optional[Objective] = None) -> Job:
    """A job for `spec` with its cost counted at `resolution` (default: the spec's own); with
    an `objective` that has a latency target, also its predicted latency there."""
    from search_space import cost

    res = int(resolution or spec.resolution)
    return Job(kind=kind, proposal_id=int(proposal_id), spec=spec.to_dict(), key=spec.key(),
               macs=int(cost.macs(spec, res)), params=int(cost.params(spec)),
               choices=None if choices is None else list(choices),
               latency_ms=objective.predict_latency(spec, res) if objective is not None else None)


def trial_record(job: Job, result: TrialResult, objective: Objective, *, told: bool, source: str = "trained",
                 reward: float | None = None, worker: str = "", started_at: float | None = None,
                 finished_at: float | None = None, extra: dict | None = None) -> dict:
    """The stored record of `job` (columns: `nas.store.schema.TRIAL_COLUMNS`).

    A trained result is rewarded here, when ok; records that reuse a reward (a cached
    architecture) or have one from cost alone pass `reward` and a `source` other
    than 'trained'. A trial stopped by ASHA is rewarded for the accuracy reached at its rung (`nas.search.asha`).
    """
    trained = source == "trained"
    if job.overrides:  # what this job alone trained with (stage 2: its seed)
        extra = {**(extra or {}), "overrides": dict(job.overrides)}
    if result.stopped_at:  # ASHA: the rung and accuracy reached (nas.search.asha)
        extra = {**(extra or {}), "stopped_at": dict(result.stopped_at)}
    if trained:
        result = checked(result)
        # ok: its reward; stopped (ASHA): the reward of the accuracy reached at its rung
        rewarded = result.status == "ok" or (result.status == "stopped" and finite(result.accuracy) is not None)
        reward = objective.reward(result.accuracy, job.macs, job.latency_ms) if rewarded else None
    return dict(kind=job.kind, proposal_id=job.proposal_id, choices=job.choices, spec=job.spec, key=job.key,
                macs=job.macs, params=job.params, latency_ms=finite(job.latency_ms), accuracy=finite(result.accuracy), reward=reward,
                status=result.status, message=result.message or "",
                epoch_accuracies=list(result.epoch_accuracies or []), loss=finite(result.loss),
                images_per_sec=finite(result.images_per_sec), queued_at=job.queued_at, started_at=started_at,
                finished_at=finished_at or time.time(), wall_time=result.wall_time if trained else None,
                worker=worker, source=source, attempt=job.attempt if trained else 1, told=told, extra=extra,
                test_accuracy=finite(result.test_accuracy) if result.status == "ok" else None)


def result_of(record: dict) -> TrialResult:
    """A stored record's measurements as a TrialResult (what a batch caller gets back)."""
    return TrialResult(status=record["status"], accuracy=record["accuracy"], loss=record.get("loss"),
                       epoch_accuracies=record.get("epoch_accuracies") or [], wall_time=record.get("wall_time") or 0.0,
                       images_per_sec=record.get("images_per_sec"), message=record.get("message") or "",
                       test_accuracy=record.get("test_accuracy"),
                       stopped_at=(record.get("extra") or {}).get("stopped_at"))


def best_trial(rows: Iterable[dict]) -> Optional[dict]:
    """The highest-reward trained, ok trial (ties: fewer MACs, then earlier)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("reward") is not None
          and r.get("source", "trained") == "trained"]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["reward"], -(r.get("macs") or 0), -(r.get("id") or 0)))


def job_row(job: Job) -> dict:
    """A job as stored in the pending table (kind, id and attempt are columns there)."""
    d = job.to_dict()
    for k in ("kind", "proposal_id", "attempt"):
        d.pop(k)
    return d


class RecordWriter:
    """The one path that writes a record and tells the listeners (a broken listener —
    a report, TensorBoard — must never break the run). Both job sources write through it."""

    store: Store
    listeners: list

    def write(self, rec: dict, ckpt: Checkpoint | None = None) -> dict:
        rec["id"] = self.store.add_trial(rec, ckpt)
        for listener in self.listeners:
            try:
                listener(rec)
            except OSError as exc:  # a full disk, a file made read-only: say so, go on (the store has it)
                print(f"warning: a report was not updated ({exc.filename or ''}: {exc.strerror or exc})",
                      file=sys.stderr)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        return rec
