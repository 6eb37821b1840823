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
    """MnasNet's reward with one cost term per target: ACC × (MACs/T)^w × (LAT/T_lat)^w.

    `target` is the multiply-add target, `latency_ms` the latency target (either may be None,
    not both); each term's w is alpha when its cost is within its target, else beta. The
    latency fields say where a job's latency is predicted (`nas.latency_cost`): the device,
    batch, threads and table file; `new_job` asks for the prediction, trials never do.
    """

    target: Optional[int] = None
    alpha: float = -0.07
    beta: float = -0.07
    latency_ms: Optional[float] = None
    latency_device: str = "cpu"
    latency_batch: int = 1
    latency_threads: int = 1
    latency_table: Optional[str] = None

    def terms(self, macs: int, latency_ms: float | None = None) -> list[tuple[str, float, float]]:
        """(name, cost, target) of each cost term: MACs, then latency (ms)."""
        out = []
        if self.target:
            out.append(("MACs", float(macs), float(self.target)))
        if self.latency_ms:
            if latency_ms is None:
                raise ValueError("a latency target needs the job's predicted latency (nas.records.new_job)")
            out.append(("latency", float(latency_ms), float(self.latency_ms)))
        if not out:
            raise ValueError("an Objective needs a multiply-add target, a latency target, or both")
        return out

    def ratios(self, macs: int, latency_ms: float | None = None) -> dict[str, float]:
        """Cost / target per term (the cost window applies to each)."""
        return {name: cost / target for name, cost, target in self.terms(macs, latency_ms)}

    def reward(self, accuracy: float, macs: int, latency_ms: float | None = None) -> float:
        r = float(accuracy)
        for _, cost, target in self.terms(macs, latency_ms):
            r *= float(mnas_reward(1.0, cost, target, self.alpha, self.beta))
        return r

    def cost_only_reward(self, macs: int, latency_ms: float | None, chance: float) -> float:
        """The reward told for an architecture outside the cost window (no training):
        `chance × Π min(m, 1/m)` over the terms' ratios m (see `nas.loop.cost_only_reward`)."""
        r = float(chance)
        for m in self.ratios(macs, latency_ms).values():
            m = max(m, 1e-12)
            r *= min(m, 1.0 / m)
        return r

    def predict_latency(self, spec: Any, resolution: int) -> Optional[float]:
        """Predicted latency (ms) of `spec` at `resolution`, or None without a latency target."""
        if not self.latency_ms:
            return None
        from nas.latency_cost import predict_ms
        return predict_ms(self.latency_device, self.latency_batch, self.latency_threads, str(self.latency_table),
                          spec, resolution)


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
    """The stored record of `job` (columns: `nas.store.TRIAL_COLUMNS`).

    A trained result is rewarded here, when ok; records that reuse a reward (a cached
    architecture) or have one from cost alone pass `reward` and a `source` other
    than 'trained'. A trial stopped by ASHA is rewarded as `nas.asha.stopped_reward` says.
    """
    trained = source == "trained"
    if job.overrides:  # what this job alone trained with (stage 2: its seed)
        extra = {**(extra or {}), "overrides": dict(job.overrides)}
    if result.stopped_at:  # ASHA: the rung and accuracy reached (nas.asha)
        extra = {**(extra or {}), "stopped_at": dict(result.stopped_at)}
    if trained:
        result = checked(result)
        # ok: its reward; stopped (ASHA): the reward of the rung accuracy (nas.asha.stopped_reward)
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
