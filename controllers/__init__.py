"""Who proposes the next architecture: one ask/tell protocol, four controllers.

`make(name, decisions, seed=0, **kwargs)` builds one by name ('random', 'evolution',
'rl', 'predictor'); controllers see only decisions (choice counts), never blocks or training.

`rl` and `predictor` (and with them torch, ~0.8 s to import) are loaded when first used:
a search with evolution or random search, and its `--resume`, start without it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator, Sequence

from .base import Controller, Ledger, Proposal, SpaceExhausted, decision_sizes
from .evolution import RegularizedEvolution
from .random import RandomSearch


def _rl() -> type:
    from .rl import RLController
    return RLController


def _predictor() -> type:
    from .predictor import PredictorController
    return PredictorController


class _Registry(Mapping):
    """name -> controller class; the RL and predictor classes are imported on first lookup."""

    _load = {"random": lambda: RandomSearch, "evolution": lambda: RegularizedEvolution, "rl": _rl,
             "predictor": _predictor}

    def __getitem__(self, name: str) -> type:
        return self._load[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._load)

    def __len__(self) -> int:
        return len(self._load)


CONTROLLERS: Mapping[str, type] = _Registry()


def __getattr__(name: str) -> Any:
    if name == "RLController":
        return _rl()
    if name == "PredictorController":
        return _predictor()
    raise AttributeError(f"module 'controllers' has no attribute {name!r}")


def make(name: str, decisions: Sequence[Any], seed: int = 0, **kwargs: Any) -> Controller:
    """The controller registered under `name`; ValueError listing the names otherwise."""
    try:
        cls = CONTROLLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown controller {name!r}; choose one of: "
                         f"{', '.join(sorted(CONTROLLERS))}") from None
    return cls(decisions, seed=seed, **kwargs)


__all__ = ["CONTROLLERS", "Controller", "Ledger", "PredictorController", "Proposal", "RLController", "RandomSearch",
           "RegularizedEvolution", "SpaceExhausted", "decision_sizes", "make"]
