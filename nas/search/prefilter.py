"""A training-free prefilter for the search: `--prefilter SCORE --prefilter-ratio N`.

The controller's proposals that would be trained (inside the cost window, not cached,
no twin in flight) are collected N at a time and scored training-free
(`nas.evaluate.zero_cost.score`, on the class-balanced batch `nas.proxy check` uses, at the
proxy resolution); only the best of each N is trained (ties: the earliest proposal). The
others are recorded as `status: skipped, source: prefilter` with their score and rank in
the message, and the controller is told the cost-only reward of an untrained architecture
(`Objective.cost_only_reward`: never above chance accuracy). Why that one: the prefilter
judged them worse than a sibling, and a reward below every trained one keeps a controller
from breeding from them, as for an architecture outside the cost window. They count
neither as trained trials nor as epochs.

`Prefilter` is a policy: it scores, holds the batch being collected and returns
decisions (`Verdict`); the loop (`nas.search.loop.SearchLoop`) writes every row. Resume
(SIGKILL at any instant): every collected proposal is written at once as a pending row
marked `held` with its score (with the controller checkpoint after its ask, as any
pending job), so at every instant each proposal the checkpoint has made is in the store.
When the N-th arrives the winner's row loses the mark (`chosen`), then each loser is told
and recorded (checkpoint after its tell), in proposal order. On resume, `restore` turns
the held rows into the verdicts of batches whose winner was chosen (their losers still to
record) and takes those of an unfinished batch back, so asking goes on exactly where it
stopped: nothing is lost, nothing trained twice, and the controller sees the same sequence.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from nas.engines.protocol import Job


@dataclass(frozen=True)
class PrefilterSettings:
    """The score (a `nas.evaluate.zero_cost` name), 1 trained in `ratio`, and the proxy
    budget (a dict) whose data the scoring batch is drawn from."""

    score: str
    ratio: int
    budget: Optional[dict] = None
    seed: int = 0


@dataclass
class Loser:
    job: Job
    score: float
    rank: int

    def extra(self) -> dict:
        """What its record keeps in `extra.prefilter`."""
        return {"score": _json(self.score), "rank": self.rank}


@dataclass
class Verdict:
    """A full batch judged: the winner (to train) and the others (to record, in proposal order)."""

    batch: int
    winner: Job
    winner_score: float
    size: int
    losers: list[Loser] = field(default_factory=list)

    def mark(self) -> dict:
        """The winner's pending-row mark once chosen."""
        return {"batch": self.batch, "score": _json(self.winner_score), "chosen": True}


class Prefilter:
    """Batches of `ratio` proposals, scored by `score`; see the module docstring."""

    def __init__(self, settings: PrefilterSettings) -> None:
        self.settings = settings
        self.score, self.ratio = settings.score, int(settings.ratio)
        self.held: list[tuple[Job, float]] = []   # (job, score) of the batch being collected
        self._batch: Any = None

    # -- scoring ------------------------------------------------------------------------
    def _data(self) -> Any:
        from nas.evaluate import zero_cost
        if self.score not in zero_cost.NEEDS_DATA:
            return None
        if self._batch is None:
            from nas.evaluate import data
            from nas.evaluate.budget import ProxyBudget
            budget = ProxyBudget.from_dict({**(self.settings.budget or {}), "device": "cpu"})
            self._batch = zero_cost.balanced_batch(data.load(budget), seed=0)
        return self._batch

    def score_of(self, job: Job) -> float:
        """The job's score; NaN (an unscorable network) ranks last."""
        from nas.evaluate import zero_cost
        from search_space.spec import ArchSpec
        try:
            return float(zero_cost.score(self.score, ArchSpec.from_dict(job.spec), self._data(),
                                         seed=self.settings.seed))
        except (RuntimeError, ValueError) as exc:  # e.g. a network the batch cannot run: never chosen
            print(f"warning: --prefilter {self.score} failed on proposal {job.proposal_id}: {exc}", file=sys.stderr)
            return float("nan")

    # -- the batch ----------------------------------------------------------------------
    def hold(self, job: Job) -> dict:
        """Score `job` and hold it in the batch; the mark of its pending row."""
        s = self.score_of(job)
        mark = {"batch": self.held[0][0].proposal_id if self.held else job.proposal_id, "score": _json(s),
                "held": True}
        self.held.append((job, s))
        return mark

    @property
    def full(self) -> bool:
        return len(self.held) >= self.ratio

    def decide(self) -> Optional[Verdict]:
        """The verdict on the held batch (full, or cut short by the end of the run); None when empty."""
        if not self.held:
            return None
        held, self.held = self.held, []
        ranked = sorted(held, key=lambda js: (-_rank(js[1]), js[0].proposal_id))
        verdict = Verdict(held[0][0].proposal_id, ranked[0][0], ranked[0][1], len(held))
        verdict.losers = _losers(ranked, verdict.winner)
        return verdict

    def note(self, loser: Loser, verdict: Verdict) -> str:
        """The record's message for a loser."""
        return (f"prefilter {self.score} = {loser.score:.6g}, rank {loser.rank} of {verdict.size}: not trained "
                f"(proposal {verdict.winner.proposal_id} of its batch was)")

    # -- resume -------------------------------------------------------------------------
    def restore(self, held_rows: list[dict], chosen_rows: list[dict]) -> list[Verdict]:
        """Held rows from the store, with the pending rows of chosen winners: the verdicts of
        batches whose winner is chosen (their losers to record; the winner is pending
        already); the rows of an unfinished batch are held again."""
        chosen = {row["prefilter"]["batch"]: row for row in chosen_rows}
        done: dict[int, list[tuple[Job, float]]] = {}
        self.held = []
        for d in sorted(held_rows, key=lambda d: d["proposal_id"]):
            mark = d["prefilter"]
            item = (Job.from_dict(d), _score(mark))
            if mark.get("batch") in chosen:
                done.setdefault(mark["batch"], []).append(item)
            else:
                self.held.append(item)
        verdicts = []
        for batch in sorted(done):
            row = chosen[batch]
            winner = Job.from_dict(row)
            everyone = done[batch] + [(winner, _score(row["prefilter"]))]
            ranked = sorted(everyone, key=lambda js: (-_rank(js[1]), js[0].proposal_id))
            verdict = Verdict(batch, winner, _score(row["prefilter"]), len(everyone))
            verdict.losers = _losers(ranked, winner)
            verdicts.append(verdict)
        return verdicts


def _losers(ranked: list[tuple[Job, float]], winner: Job) -> list[Loser]:
    out = [Loser(j, s, i + 1) for i, (j, s) in enumerate(ranked) if j is not winner]
    return sorted(out, key=lambda loser: loser.job.proposal_id)


def _score(mark: dict) -> float:
    return float("nan") if mark.get("score") is None else float(mark["score"])


def _rank(s: float) -> float:
    return s if math.isfinite(s) else -math.inf


def _json(s: float) -> Optional[float]:
    return s if math.isfinite(s) else None
