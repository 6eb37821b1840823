"""Cost, reward and the trial record: counted and built in one place for every kind of job.

Why here and not in the evaluator: an evaluator only measures (`nas.result.TrialResult`);
multiply-adds and parameters are counted when a job is made (analytically, at the
resolution the target is stated for) and the reward is computed when its result is
recorded, by the same two functions whether the job is a search proposal, the
reference network or a scaling-grid candidate, and whatever engine trained it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from nas.engine import Job, checked
from nas.result import TrialResult, finite
from nas.reward import reward as mnas_reward


@dataclass(frozen=True)
class Objective:
    """MnasNet's ACC × (MACs/T)^w: the target T and the exponents (w = alpha if MACs <= T)."""

    target: int
    alpha: float = -0.07
    beta: float = -0.07

    def reward(self, accuracy: float, macs: int) -> float:
        return float(mnas_reward(float(accuracy), macs, self.target, self.alpha, self.beta))


def new_job(kind: str, proposal_id: int, spec: Any, resolution: int | None = None,
            choices: Optional[list] = None) -> Job:
    """A job for `spec` with its cost counted at `resolution` (default: the spec's own)."""
    from search_space import cost

    res = int(resolution or spec.resolution)
    return Job(kind=kind, proposal_id=int(proposal_id), spec=spec.to_dict(), key=spec.key(),
               macs=int(cost.macs(spec, res)), params=int(cost.params(spec)),
               choices=None if choices is None else list(choices))


def trial_record(job: Job, result: TrialResult, objective: Objective, *, told: bool, source: str = "trained",
                 reward: float | None = None, worker: str = "", started_at: float | None = None,
                 finished_at: float | None = None, extra: dict | None = None) -> dict:
    """The stored record of `job` (columns: `nas.store.TRIAL_COLUMNS`).

    A trained result is rewarded here, when ok; records that reuse a reward (a cached
    architecture) or have one from cost alone pass `reward` and a `source` other
    than 'trained'.
    """
    trained = source == "trained"
    if job.overrides:  # what this job alone trained with (stage 2: its seed)
        extra = {**(extra or {}), "overrides": dict(job.overrides)}
    if trained:
        result = checked(result)
        reward = objective.reward(result.accuracy, job.macs) if result.status == "ok" else None
    return dict(kind=job.kind, proposal_id=job.proposal_id, choices=job.choices, spec=job.spec, key=job.key,
                macs=job.macs, params=job.params, accuracy=finite(result.accuracy), reward=reward,
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
                       test_accuracy=record.get("test_accuracy"))


def best_trial(rows: Iterable[dict]) -> Optional[dict]:
    """The highest-reward trained, ok trial (ties: fewer MACs, then earlier)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("reward") is not None
          and r.get("source", "trained") == "trained"]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["reward"], -(r.get("macs") or 0), -(r.get("id") or 0)))
