"""What the search loop needs to know, grouped by what each part decides.

`LoopSettings(objective, window, stop, target_resolution, asha, prefilter, kind)`: the reward
(`Objective`), which architectures are trained (`CostWindow`), when the search ends
(`StopRule`), the two optional policies for cheaper trials (`AshaSettings`,
`PrefilterSettings`; None = off), and the kind its proposals are recorded as. Every default is stated once, here or in the module of
its policy; the CLI (`nas.cli.options`) reads them from these classes. The settings are
plain data so that the loop can be rebuilt in another process (`to_dict`/`from_dict`:
NNI's dispatcher, `nas.search.handover`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .asha import AshaSettings
from .objective import Objective
from .prefilter import PrefilterSettings

SEARCH_KIND = "search"    # records of proposals trained per trial
ONESHOT_KIND = "oneshot"  # records of proposals scored with inherited weights (nas.supernet.score)


@dataclass(frozen=True)
class CostWindow:
    """Train only architectures with `low·T ≤ cost ≤ high·T` for every target T; the others
    are told the cost-only reward (`Objective.cost_only_reward`), which never exceeds
    `chance`, the accuracy of a model that learned nothing (1/classes)."""

    low: float = 0.5
    high: float = 1.0
    chance: float = 0.1

    def text(self) -> str:
        """`0.5,1.0`: as the `--cost-window` option writes it."""
        return f"{self.low!r},{self.high!r}"


@dataclass(frozen=True)
class StopRule:
    """`trials`: trained trials to run (source 'trained', any status); cost-only, cached and
    prefiltered proposals are recorded and told but do not count. `max_proposals` caps all
    asks (a controller stuck proposing untrainable or known architectures ends the run; 0:
    50 × trials + 100). `max_epochs`: start no trial once the epochs trained reach it (0: no
    limit), counting `epochs` per trial (one trial's budget)."""

    trials: int = 40
    max_proposals: int = 0
    max_epochs: float = 0.0
    epochs: float = 0.0

    @property
    def proposal_cap(self) -> int:
        return self.max_proposals or 50 * self.trials + 100


@dataclass
class LoopSettings:
    objective: Objective
    window: CostWindow = field(default_factory=CostWindow)
    stop: StopRule = field(default_factory=StopRule)
    target_resolution: int = 224      # where multiply-adds (and latency) are counted
    asha: Optional[AshaSettings] = None
    prefilter: Optional[PrefilterSettings] = None
    kind: str = SEARCH_KIND           # the kind of the proposals' records: 'search', or 'oneshot' (scored
    #                                   with a supernet's inherited weights); one loop and one store for both

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoopSettings":
        def part(kind, value):
            return None if value is None else kind(**value)
        return cls(objective=Objective(**data["objective"]), window=CostWindow(**data["window"]),
                   stop=StopRule(**data["stop"]), target_resolution=int(data["target_resolution"]),
                   asha=part(AshaSettings, data.get("asha")), prefilter=part(PrefilterSettings, data.get("prefilter")),
                   kind=str(data.get("kind") or SEARCH_KIND))
