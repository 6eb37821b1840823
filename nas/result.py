"""What one trial produced: the record that flows from evaluation to store and controller."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# ok: trained and scored. skipped: cost outside the window, reward from cost alone.
# diverged: NaN/Inf loss. oom: out of memory. failed: an exception. timeout: over the limit.
STATUSES = ("ok", "skipped", "diverged", "oom", "failed", "timeout")
FAILED_STATUSES = ("diverged", "oom", "failed", "timeout")


@dataclass
class TrialResult:
    status: str
    accuracy: float | None = None
    macs: int | None = None
    params: int | None = None
    reward: float | None = None
    loss: float | None = None
    epoch_accuracies: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    images_per_sec: float | None = None
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown trial status {self.status!r}")

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
