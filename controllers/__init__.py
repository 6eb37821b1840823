"""Who proposes the next architecture: one ask/tell protocol, three controllers.

`make(name, decisions, seed=0, **kwargs)` builds one by name ('random', 'evolution',
'rl'); controllers see only decisions (choice counts), never blocks or training.
"""
from __future__ import annotations

from typing import Any, Sequence

from .base import Controller, Ledger, Proposal, SpaceExhausted, decision_sizes
from .evolution import RegularizedEvolution
from .random import RandomSearch
from .rl import RLController

CONTROLLERS: dict[str, type] = {
    "random": RandomSearch,
    "evolution": RegularizedEvolution,
    "rl": RLController,
}


def make(name: str, decisions: Sequence[Any], seed: int = 0, **kwargs: Any) -> Controller:
    """The controller registered under `name`; ValueError listing the names otherwise."""
    try:
        cls = CONTROLLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown controller {name!r}; choose one of: "
                         f"{', '.join(sorted(CONTROLLERS))}") from None
    return cls(decisions, seed=seed, **kwargs)


__all__ = ["CONTROLLERS", "Controller", "Ledger", "Proposal", "RLController", "RandomSearch",
           "RegularizedEvolution", "SpaceExhausted", "decision_sizes", "make"]
