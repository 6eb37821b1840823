"""What an evaluator measured for one trial; the loop adds cost and reward (`nas.search.records`)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# ok: trained and scored. skipped: cost outside the window, reward from cost alone.
# diverged: NaN/Inf loss. oom: out of memory. failed: an exception. timeout: over the limit.
# stopped: early-stopped at a rung by ASHA (`nas.search.asha`): trained, not failed, not a B0 candidate.
STATUSES = ("ok", "skipped", "diverged", "oom", "failed", "timeout", "stopped")
FAILED_STATUSES = ("diverged", "oom", "failed", "timeout")


@dataclass
class TrialResult:
    """Only what training measured: cost is counted and reward computed by the loop,
    once for every kind of job, so an evaluator cannot get either wrong."""

    status: str
    accuracy: float | None = None
    loss: float | None = None
    epoch_accuracies: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    images_per_sec: float | None = None
    message: str = ""
    test_accuracy: float | None = None   # only when the budget asked for it (stage 2)
    stopped_at: dict | None = None       # status 'stopped': {"rung", "fraction", "accuracy"} (nas.search.asha)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown trial status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialResult":
        """Unknown keys are ignored (a record or an older evaluator's dict carries more)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def finite(x: Any) -> float | None:
    """`x` as a float when it is a finite number, else None (NaN, Inf, junk)."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def checked(result: TrialResult) -> TrialResult:
    """An 'ok' result without a finite accuracy is 'diverged' (whatever engine ran it)."""
    if result.status == "ok" and finite(result.accuracy) is None:
        note = f"accuracy is {result.accuracy}"
        result.status, result.accuracy = "diverged", None
        result.message = f"{result.message} {note}" if result.message else note
    return result


def stopped_result(rung: int, fraction: float, accuracy: float, **fields: Any) -> TrialResult:
    """The TrialResult an evaluator returns when ASHA's `on_rung` said stop (`nas.search.asha`)."""
    return TrialResult(status="stopped", accuracy=float(accuracy),
                       stopped_at={"rung": int(rung), "fraction": float(fraction), "accuracy": float(accuracy)},
                       message=f"stopped by ASHA at rung {rung} ({fraction:.3g} of the budget): "
                               f"accuracy {accuracy:.4f} below the rung's top 1/eta", **fields)
