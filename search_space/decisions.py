"""The flat list of named categorical decisions that controllers see.

Controllers never see blocks or channels: only how many choices each decision has
(and names, for logging). A proposal is one choice index per decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    """One categorical decision, e.g. `b3.kernel` with choices (3, 5) (`SearchSpace.decisions`)."""

    name: str
    choices: tuple[Any, ...]

    @property
    def size(self) -> int:
        return len(self.choices)
