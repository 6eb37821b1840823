"""The ask/tell protocol every engine drives every controller through.

A controller sees only how many choices each decision has. `ask()` hands out a
`Proposal` (an id and one choice index per decision); the engine later calls
`tell(proposal, reward)` or `tell_failure(proposal, status)`, in any order, for
proposals asked one by one or in batches. `state_dict()` captures everything needed
to continue exactly as if never stopped (RNG state, history, proposals not yet told).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Proposal:
    """What a controller asks to be evaluated. `id` is unique within one controller."""

    id: int
    choices: tuple[int, ...]


def decision_sizes(decisions: Sequence[Any]) -> tuple[int, ...]:
    """Accept `search_space.Decision` objects or plain ints (number of choices)."""
    sizes = tuple(d if isinstance(d, int) else len(d.choices) for d in decisions)
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError("a controller needs at least one decision, each with at least one choice")
    return sizes


class Controller(ABC):
    """Base class: subclasses implement `_propose`, `_observe` and their own state."""

    def __init__(self, decisions: Sequence[Any], seed: int = 0) -> None:
        self.sizes = decision_sizes(decisions)
        self.seed = seed

    @abstractmethod
    def ask(self) -> Proposal:
        """The next architecture to evaluate."""

    def ask_batch(self, n: int) -> list[Proposal]:
        return [self.ask() for _ in range(n)]

    @abstractmethod
    def tell(self, proposal: Proposal, reward: float) -> None:
        """The reward of a finished proposal (higher is better)."""

    @abstractmethod
    def tell_failure(self, proposal: Proposal, status: str) -> None:
        """A proposal that could not be evaluated (`failed`, `diverged`, `oom`, `timeout`)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume; picklable (the store pickles it)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; later asks equal those of the uninterrupted run."""
