"""MnasNet's reward, ACC x (MACs/T)^w, and the parser for cost targets such as `400M`.

`w = alpha` when MACs <= T, else `beta`. The soft preset (-0.07, -0.07) is EfficientNet's
choice; the hard preset (0, -1) leaves accuracy alone under the target and punishes
anything above it in proportion.
"""
from __future__ import annotations

import math
import re

from .errors import UserError

PRESETS: dict[str, tuple[float, float]] = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}

# Suffixes are decimal: k = 1e3, M = 1e6, G = B = 1e9 ("0.39B FLOPS" in the EfficientNet paper).
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
_COUNT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(e[+-]?\d+)?\s*([kmgb]?)", re.IGNORECASE)


def reward(acc: float, macs: float, target: float, alpha: float = -0.07, beta: float = -0.07) -> float:
    """ACC x (macs / target)^w with w = alpha if macs <= target else beta."""
    if not macs or macs <= 0 or not target or target <= 0:
        raise ValueError(f"reward needs positive macs and target, got macs={macs!r} target={target!r}")
    w = alpha if macs <= target else beta
    return float(acc) * (float(macs) / float(target)) ** w


def parse_count(text: str | int | float, what: str = "target") -> int:
    """`400M`, `0.4G`, `0.4B`, `4e8`, `400000000`, `400k` (any case) -> a positive int.

    Anything else raises `UserError` with one line naming `what` and the bad text.
    """
    hint = f"{what} {str(text)!r}: expected a positive count such as 400M, 0.4G, 4e8 or 400000000"
    if isinstance(text, bool):
        raise UserError(hint)
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _COUNT.fullmatch(str(text).strip())
        if not m:
            raise UserError(hint)
        number, exponent, suffix = m.groups()
        value = float(number + (exponent or "")) * _SUFFIX[suffix.lower()]
    if not math.isfinite(value) or round(value) < 1:
        raise UserError(hint)
    return int(round(value))


def preset(name: str) -> tuple[float, float]:
    """(alpha, beta) of a named preset; a one-line `UserError` for an unknown name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"reward preset {name!r}: expected one of {', '.join(PRESETS)}") from None
