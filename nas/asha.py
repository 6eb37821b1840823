"""Asynchronous successive halving (ASHA, Li et al. 2020) for the search: `--early-stop asha`.

Why this shape:
- Rungs are fractions of one trial's budget, finer than an epoch (the default budget is
  2 epochs): `rung_fractions(1/9, 3)` = 1/9, 1/3, 1. The trainer evaluates on
  search-validation at each rung below 1 (at that fraction of its total steps) and asks
  `on_rung(rung, accuracy)` whether to go on.
- The decision is ASHA's stopping rule, asynchronous: a trial reaching rung r continues
  iff its accuracy is in the top 1/η of all accuracies recorded at rung r so far (its own
  included); with fewer than η recorded it continues. No worker waits for another trial.
- The rung accuracies belong to the search's process (the `SearchLoop` holds an `Asha`)
  and are written to the store (`Store.add_rung`) as they arrive, so a resume after
  SIGKILL keeps them. A trial re-run after a kill reports its rungs again: its earlier
  value is replaced, never counted twice.
- A stopped trial is status `stopped` (not failed), `source: trained` (it counts as a
  trained trial), with `{"rung", "fraction", "accuracy"}` in its record's `extra.stopped_at`
  and that accuracy as its accuracy. The controller is told `stopped_reward`: the
  objective's reward of the accuracy reached at the rung — a conservative stand-in, since
  accuracy only rises with more training, and one that keeps its rank among the trials
  stopped at the same rung.

Per decision: one bisect into a sorted list and one small write; the lists are read
from the store once, when the loop starts.
"""
from __future__ import annotations

import bisect
from fractions import Fraction
from typing import Any, Optional

from nas.errors import UserError

MODES = ("off", "asha")
DEFAULT_ETA = 3
DEFAULT_MIN_FRACTION = 1 / 9


def parse_fraction(text: Any, flag: str = "--min-fraction") -> float:
    """`1/9`, `0.111` -> a float in (0, 1); `UserError` otherwise."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{flag} must be a fraction such as 1/9 or 0.1, got {text!r}") from None
    if not 0 < value < 1:
        raise UserError(f"{flag} must be above 0 and below 1, got {text!r}")
    return value


def check(mode: str, eta: Any, min_fraction: Any) -> tuple[str, int, float]:
    """The early-stop options as used, or a one-line `UserError`."""
    mode = str(mode or "off").lower()
    if mode not in MODES:
        raise UserError(f"--early-stop {mode!r}: expected one of {', '.join(MODES)}")
    from nas.config import _int_at_least, checked
    return mode, checked(_int_at_least("--eta", 2), eta), parse_fraction(min_fraction)


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


def stopped_reward(objective: Any, accuracy: float, *costs: Any) -> float:
    """What the controller is told for a stopped trial (module docstring: why): the
    objective's reward of the rung accuracy, as `nas.records.trial_record` computes it."""
    return objective.reward(accuracy, *costs)


class Asha:
    """The rung accuracies of one search and the stopping rule over them."""

    def __init__(self, store: Any, eta: int = DEFAULT_ETA, min_fraction: float = DEFAULT_MIN_FRACTION,
                 kind: str = "search") -> None:
        self.store, self.eta, self.kind = store, int(eta), kind
        self.fractions = rung_fractions(min_fraction, eta)
        self.recorded: list[list[float]] = [[] for _ in self.fractions]
        self.by_trial: dict[tuple[int, int], float] = {}
        for pid, rung, acc in store.rungs(kind):
            if 0 <= rung < len(self.fractions):
                self._put(pid, rung, acc)

    @property
    def decision_fractions(self) -> list[float]:
        """The rungs a trial is asked at (all but the full budget): what a Job carries."""
        return self.fractions[:-1]

    def _put(self, pid: int, rung: int, acc: float) -> None:
        old = self.by_trial.get((pid, rung))
        if old is not None:
            rec = self.recorded[rung]
            del rec[bisect.bisect_left(rec, old)]
        self.by_trial[(pid, rung)] = acc
        bisect.insort(self.recorded[rung], acc)

    def decide(self, proposal_id: int, rung: int, accuracy: float) -> bool:
        """Record `accuracy` at `rung` for this proposal (store and memory); True: go on."""
        rung, acc = int(rung), float(accuracy)
        if not 0 <= rung < len(self.fractions) - 1 or acc != acc:
            return True  # not a decision rung (or a NaN): never stop on it
        self.store.add_rung(self.kind, int(proposal_id), rung, acc)
        self._put(int(proposal_id), rung, acc)
        return continues(acc, self.recorded[rung], self.eta)

    def stopped_at(self, rung: int, accuracy: float) -> dict:
        return {"rung": int(rung), "fraction": self.fractions[int(rung)], "accuracy": float(accuracy)}


def stopped_result(rung: int, fraction: float, accuracy: float, **fields: Any) -> Any:
    """The TrialResult an evaluator returns when `on_rung` said stop."""
    from nas.result import TrialResult
    return TrialResult(status="stopped", accuracy=float(accuracy),
                       stopped_at={"rung": int(rung), "fraction": float(fraction), "accuracy": float(accuracy)},
                       message=f"stopped by ASHA at rung {rung} ({fraction:.3g} of the budget): "
                               f"accuracy {accuracy:.4f} below the rung's top 1/eta", **fields)


def epochs_of(record: dict, epochs: float) -> float:
    """Epochs a stored search record trained: the budget's (a stopped one: its rung's
    fraction of it); 0 for records not trained (cost-only, cache, prefilter)."""
    if record.get("source") != "trained":
        return 0.0
    stop: Optional[dict] = (record.get("extra") or {}).get("stopped_at") if record.get("status") == "stopped" \
        else None
    return float(epochs) * (float(stop["fraction"]) if stop else 1.0)
