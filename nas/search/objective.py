"""What the search maximises: MnasNet's reward ACC × (MACs/T)^w, one cost term per target.

`w = alpha` when a cost is within its target, else `beta`. The soft preset (-0.07, -0.07)
is EfficientNet's choice; the hard preset (0, -1) leaves accuracy alone under the target
and punishes anything above it in proportion.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from nas.errors import UserError

PRESETS: dict[str, tuple[float, float]] = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}
DEFAULT_PRESET = "soft"


def reward(acc: float, macs: float, target: float, alpha: float = PRESETS[DEFAULT_PRESET][0],
           beta: float = PRESETS[DEFAULT_PRESET][1]) -> float:
    """ACC x (macs / target)^w with w = alpha if macs <= target else beta."""
    if not macs or macs <= 0 or not target or target <= 0:
        raise ValueError(f"reward needs positive macs and target, got macs={macs!r} target={target!r}")
    w = alpha if macs <= target else beta
    return float(acc) * (float(macs) / float(target)) ** w


def preset(name: str) -> tuple[float, float]:
    """(alpha, beta) of a named preset; a one-line `UserError` for an unknown name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"reward preset {name!r}: expected one of {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class Objective:
    """MnasNet's reward with one cost term per target: ACC × (MACs/T)^w × (LAT/T_lat)^w.

    `target` is the multiply-add target, `latency_ms` the latency target (either may be None,
    not both); each term's w is alpha when its cost is within its target, else beta. The
    latency fields say where a job's latency is predicted (`nas.search.latency`): the device,
    batch, threads and table file; `new_job` asks for the prediction, trials never do.
    """

    target: Optional[int] = None
    alpha: float = PRESETS[DEFAULT_PRESET][0]
    beta: float = PRESETS[DEFAULT_PRESET][1]
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
                raise ValueError("a latency target needs the job's predicted latency (nas.search.records.new_job)")
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
            r *= float(reward(1.0, cost, target, self.alpha, self.beta))
        return r

    def cost_only_reward(self, macs: int, latency_ms: float | None, chance: float) -> float:
        """The reward told for an architecture outside the cost window (no training):
        `chance × Π min(m, 1/m)` over the terms' ratios m: never above chance accuracy (so
        below any model that learned something), rising toward the target from both sides,
        so a learning controller is pulled back into the window rather than just pushed away."""
        r = float(chance)
        for m in self.ratios(macs, latency_ms).values():
            m = max(m, 1e-12)
            r *= min(m, 1.0 / m)
        return r

    def predict_latency(self, spec: Any, resolution: int) -> Optional[float]:
        """Predicted latency (ms) of `spec` at `resolution`, or None without a latency target."""
        if not self.latency_ms:
            return None
        from .latency import predict_ms
        return predict_ms(self.latency_device, self.latency_batch, self.latency_threads, str(self.latency_table),
                          spec, resolution)
