"""Asynchronous successive halving (ASHA, Li et al. 2020) for the search: `--early-stop asha`.

Why this shape:
- Rungs are fractions of one trial's budget, finer than an epoch (the default budget is
  2 epochs): `rung_fractions(1/9, 3)` = 1/9, 1/3, 1. The trainer evaluates on
  search-validation at each rung below 1 (at that fraction of its total steps) and asks
  `on_rung(rung, accuracy)` whether to go on.
- The decision is ASHA's stopping rule, asynchronous: a trial reaching rung r continues
  iff its accuracy is in the top 1/η of all accuracies recorded at rung r so far (its own
  included); with fewer than η recorded it continues. No worker waits for another trial.
- `Asha` is a policy: it holds the rung accuracies in memory and returns decisions. The
  loop that holds it (`nas.search.loop.SearchLoop.rung`) writes each accuracy to the store
  (`Store.add_rung`) before asking, and hands the stored ones back when it starts, so a
  resume after SIGKILL keeps them. A trial re-run after a kill reports its rungs again:
  its earlier value is replaced, never counted twice.
- A stopped trial is status `stopped` (not failed), `source: trained` (it counts as a
  trained trial), with `{"rung", "fraction", "accuracy"}` in its record's `extra.stopped_at`
  and that accuracy as its accuracy (`nas.evaluate.result.stopped_result`). The controller
  is told the objective's reward of the accuracy reached at the rung — a conservative
  stand-in, since accuracy only rises with more training, and one that keeps its rank
  among the trials stopped at the same rung.

Per decision: one bisect into a sorted list; nothing grows with the run but the lists.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Optional

from nas.errors import UserError

MODES = ("off", "asha")


@dataclass(frozen=True)
class AshaSettings:
    """`--eta` (keep the top 1/η at each rung; rungs η× apart) and `--min-fraction` (the first rung)."""

    eta: int = 3
    min_fraction: float = 1 / 9


def parse_fraction(text: Any, flag: str = "--min-fraction") -> float:
    """`1/9`, `0.111` -> a float in (0, 1); `UserError` otherwise."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{flag} must be a fraction such as 1/9 or 0.1, got {text!r}") from None
    if not 0 < value < 1:
        raise UserError(f"{flag} must be above 0 and below 1, got {text!r}")
    return value


def rung_fractions(min_fraction: float, eta: int) -> list[float]:
    """min_fraction · η^k below 1, then 1 (the full budget): 1/9, 1/3, 1 for (1/9, 3)."""
    out, f = [], float(min_fraction)
    while f < 1 - 1e-9:
        out.append(f)
        f *= eta
    return out + [1.0]


def continues(accuracy: float, recorded: list[float], eta: int) -> bool:
    """ASHA's rule on `recorded` (sorted ascending, `accuracy` among them): continue iff
    `accuracy` is in the top ⌊n/η⌋, or n < η (too few to judge). Ties continue."""
    k = len(recorded) // eta
    return k == 0 or accuracy >= recorded[-k]


class Asha:
    """The rung accuracies of one search and the stopping rule over them.

    `stored`: the (proposal id, rung, accuracy) rows the store holds (`Store.rungs`)."""

    def __init__(self, settings: AshaSettings, stored: Iterable[tuple[int, int, float]] = ()) -> None:
        self.eta = int(settings.eta)
        self.fractions = rung_fractions(settings.min_fraction, settings.eta)
        self.recorded: list[list[float]] = [[] for _ in self.fractions]
        self.by_trial: dict[tuple[int, int], float] = {}
        for pid, rung, acc in stored:
            if 0 <= rung < len(self.fractions):
                self._put(pid, rung, acc)

    @property
    def decision_fractions(self) -> list[float]:
        """The rungs a trial is asked at (all but the full budget): what a Job carries."""
        return self.fractions[:-1]

    def is_decision(self, rung: int, accuracy: float) -> bool:
        """Whether a report at `rung` is judged (a decision rung, a real number): only these
        are stored and counted; any other report just goes on."""
        return 0 <= int(rung) < len(self.fractions) - 1 and accuracy == accuracy

    def _put(self, pid: int, rung: int, acc: float) -> None:
        old = self.by_trial.get((pid, rung))
        if old is not None:
            rec = self.recorded[rung]
            del rec[bisect.bisect_left(rec, old)]
        self.by_trial[(pid, rung)] = acc
        bisect.insort(self.recorded[rung], acc)

    def decide(self, proposal_id: int, rung: int, accuracy: float) -> bool:
        """Count `accuracy` at decision rung `rung` for this proposal; True: the trial goes on."""
        rung, acc = int(rung), float(accuracy)
        self._put(int(proposal_id), rung, acc)
        return continues(acc, self.recorded[rung], self.eta)


def epochs_of(record: dict, epochs: float) -> float:
    """Epochs a stored search record trained: the budget's (a stopped one: its rung's
    fraction of it); 0 for records not trained (cost-only, cache, prefilter)."""
    if record.get("source") != "trained":
        return 0.0
    stop: Optional[dict] = (record.get("extra") or {}).get("stopped_at") if record.get("status") == "stopped" \
        else None
    return float(epochs) * (float(stop["fraction"]) if stop else 1.0)
