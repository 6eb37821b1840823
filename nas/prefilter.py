"""A training-free prefilter for the search: `--prefilter SCORE --prefilter-ratio N`.

The controller's proposals that would be trained (inside the cost window, not cached,
no twin in flight) are collected N at a time and scored training-free
(`nas.zero_cost.score`, on the class-balanced batch `nas.proxy check` uses, at the proxy
resolution); only the best of each N is trained (ties: the earliest proposal). The others
are recorded as `status: skipped, source: prefilter` with their score and rank in the
message, and the controller is told `prefilter_reward`: the cost-only reward of an
untrained architecture (`chance × min(m, 1/m)`, m = MACs / target; never above chance
accuracy). Why that one: the prefilter judged them worse than a sibling, and a reward
below every trained one keeps a controller from breeding from them, as for an
architecture outside the cost window. They count neither as trained trials nor as epochs.

Resume (SIGKILL at any instant): every collected proposal is written at once as a
pending row marked `prefilter.held` with its score (with the controller checkpoint after
its ask, as any pending job), so at every instant each proposal the checkpoint has made
is in the store. When the N-th arrives the winner's row loses the mark (`chosen`), then
each loser is told and recorded (checkpoint after its tell), in proposal order. A resumed
loop (`restore`) records the losers of a batch whose winner is chosen, and takes the
held rows of an unfinished batch back, so asking goes on exactly where it stopped:
nothing is lost, nothing trained twice, and the controller sees the same sequence.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Optional

from nas.errors import UserError


def check(score: Any, ratio: Any) -> tuple[str, int]:
    """(score name or '', ratio) as used, or a one-line `UserError`."""
    from nas.zero_cost import SCORES
    name = str(score or "").strip().lower().replace("-", "_")
    if name in ("", "none", "off"):
        name = ""
    elif name not in SCORES:
        raise UserError(f"--prefilter {score!r}: expected one of {', '.join(SCORES)} (or none)")
    from nas.config import _positive_int, checked
    return name, checked(_positive_int("--prefilter-ratio"), ratio)


def prefilter_reward(loop: Any, job: Any) -> float:
    """What the controller is told for a prefiltered proposal (module docstring: why)."""
    return loop.objective.cost_only_reward(job.macs, job.latency_ms, loop.s.chance)


class Prefilter:
    """Batches of `ratio` proposals, scored by `score`; see the module docstring."""

    def __init__(self, score: str, ratio: int, budget: Optional[dict] = None, seed: int = 0) -> None:
        self.score, self.ratio, self.budget, self.seed = score, int(ratio), budget, int(seed)
        self.held: list[tuple[Any, float]] = []   # (job, score) of the batch being collected
        self._batch: Any = None

    # -- scoring ------------------------------------------------------------------------
    def _data(self) -> Any:
        from nas import zero_cost
        if self.score not in zero_cost.NEEDS_DATA:
            return None
        if self._batch is None:
            from nas import data
            from nas.budget import ProxyBudget
            budget = ProxyBudget.from_dict({**(self.budget or {}), "device": "cpu"})
            self._batch = zero_cost.balanced_batch(data.load(budget), seed=0)
        return self._batch

    def score_of(self, job: Any) -> float:
        """The job's score; NaN (an unscorable network) ranks last."""
        from nas import zero_cost
        from search_space.spec import ArchSpec
        try:
            v = float(zero_cost.score(self.score, ArchSpec.from_dict(job.spec), self._data(), seed=self.seed))
        except (RuntimeError, ValueError) as exc:  # e.g. a network the batch cannot run: never chosen
            print(f"warning: --prefilter {self.score} failed on proposal {job.proposal_id}: {exc}", file=sys.stderr)
            v = float("nan")
        return v

    # -- the batch ----------------------------------------------------------------------
    def offer(self, loop: Any, job: Any) -> Optional[Any]:
        """Hold `job` (a pending row with the checkpoint after its ask); None until the
        batch is full, then the batch's winner (its losers recorded)."""
        from nas.loop import _job_row
        s = self.score_of(job)
        mark = {"batch": self.held[0][0].proposal_id if self.held else job.proposal_id, "score": _json(s),
                "held": True}
        loop.store.add_pending(job.kind, job.proposal_id, {**_job_row(job), "prefilter": mark}, loop._ckpt())
        self.held.append((job, s))
        return self.decide(loop) if len(self.held) >= self.ratio else None

    def decide(self, loop: Any) -> Optional[Any]:
        """The best held job (now chosen, pending as a plain job); the others recorded."""
        from nas.loop import _job_row
        if not self.held:
            return None
        held, self.held = self.held, []
        batch = held[0][0].proposal_id
        ranked = sorted(held, key=lambda js: (-_rank(js[1]), js[0].proposal_id))
        winner = ranked[0][0]
        loop.store.add_pending(winner.kind, winner.proposal_id,
                               {**_job_row(winner), "prefilter": {"batch": batch, "score": _json(ranked[0][1]),
                                                                  "chosen": True}})
        ranks = {j.proposal_id: i + 1 for i, (j, _) in enumerate(ranked)}
        for job, s in sorted(held[1:] + held[:1], key=lambda js: js[0].proposal_id):
            if job is not winner:
                self._record(loop, job, s, ranks[job.proposal_id], len(held), winner.proposal_id)
        return winner

    def _record(self, loop: Any, job: Any, s: float, rank: int, n: int, winner: int) -> None:
        from nas.records import trial_record
        from nas.result import TrialResult
        r = prefilter_reward(loop, job)
        loop.controller.tell(loop._proposal(job), r)
        loop._tells += 1
        note = (f"prefilter {self.score} = {s:.6g}, rank {rank} of {n}: not trained "
                f"(proposal {winner} of its batch was)")
        rec = trial_record(job, TrialResult(status="skipped", message=note), loop.objective, told=True,
                           source="prefilter", reward=r, extra={"prefilter": {"score": _json(s), "rank": rank}})
        loop._write(rec, loop._ckpt())

    # -- resume -------------------------------------------------------------------------
    def restore(self, loop: Any, rows: list[dict]) -> Optional[Any]:
        """Held rows from the store (`initial_jobs`): record the losers of batches whose
        winner is chosen, take those of an unfinished batch back into `held`; the winner
        of that batch when it is full (to queue), else None."""
        from nas.engine import Job
        chosen = {(d.get("prefilter") or {}).get("batch") for d in loop.store.pending("search")
                  if (d.get("prefilter") or {}).get("chosen")}
        done, left = [], []
        for d in sorted(rows, key=lambda d: d["proposal_id"]):
            job = Job.from_dict(d)
            mark = d["prefilter"]
            s = float("nan") if mark.get("score") is None else float(mark["score"])
            (done if mark.get("batch") in chosen else left).append((job, s, mark.get("batch")))
        for batch in sorted({b for _, _, b in done}):
            members = [(j, s) for j, s, b in done if b == batch]
            winner = next(d for d in loop.store.pending("search")
                          if (d.get("prefilter") or {}).get("batch") == batch and d["prefilter"].get("chosen"))
            w_score = winner["prefilter"].get("score")
            everyone = members + [(Job.from_dict(winner), float("nan") if w_score is None else float(w_score))]
            ranked = sorted(everyone, key=lambda js: (-_rank(js[1]), js[0].proposal_id))
            ranks = {j.proposal_id: i + 1 for i, (j, _) in enumerate(ranked)}
            for job, s in members:
                self._record(loop, job, s, ranks[job.proposal_id], len(everyone), winner["proposal_id"])
        self.held = [(j, s) for j, s, _ in left]
        return self.decide(loop) if len(self.held) >= self.ratio else None  # killed with the batch full


def _rank(s: float) -> float:
    return s if math.isfinite(s) else -math.inf


def _json(s: float) -> Optional[float]:
    return s if math.isfinite(s) else None
