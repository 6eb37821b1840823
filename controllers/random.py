"""Uniform random search: the baseline every other controller is compared with.

Each decision's choice is drawn uniformly and independently from a seeded numpy
Generator. By default proposals are i.i.d. (repeats possible, as in textbook random
search); with `unique=True` or a `key_fn` (e.g. `SearchSpace.key`, which maps
canonical duplicates to one key) architectures already proposed are re-drawn, and
`SpaceExhausted` is raised once every architecture has been proposed.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Optional, Sequence

import numpy as np

from .base import (Controller, Ledger, Proposal, check_state, finite_reward, identity_key,
                   key_from_plain, plain_key, sample_unseen)


class RandomSearch(Controller):
    """Uniform sampling over the decisions; rewards are recorded but do not steer it."""

    def __init__(self, decisions: Sequence[Any], seed: int = 0,
                 key_fn: Optional[Callable[[tuple[int, ...]], Hashable]] = None,
                 unique: bool = False) -> None:
        super().__init__(decisions, seed)
        self.unique = bool(unique or key_fn is not None)
        self.key_fn = key_fn or identity_key
        self.rng = np.random.default_rng(seed)
        self.ledger = Ledger()
        self.seen: set = set()
        self.best: Optional[tuple[float, tuple[int, ...]]] = None
        self.n_told = 0
        self.n_failed = 0

    def ask(self) -> Proposal:
        if self.unique:
            choices = sample_unseen(self.rng, self.sizes, self.seen, self.key_fn)
            self.seen.add(self.key_fn(choices))
        else:
            choices = tuple(int(self.rng.integers(s)) for s in self.sizes)
        return self.ledger.issue(choices)

    def tell(self, proposal: Proposal, reward: float) -> None:
        reward = finite_reward(reward)
        self.ledger.settle(proposal)
        self.n_told += 1
        if self.best is None or reward > self.best[0]:
            self.best = (reward, proposal.choices)

    def tell_failure(self, proposal: Proposal, status: str) -> None:
        self.ledger.settle(proposal)
        self.n_failed += 1

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "random", "sizes": list(self.sizes), "seed": self.seed,
                "rng": self.rng.bit_generator.state, "ledger": self.ledger.state_dict(),
                "seen": [plain_key(k) for k in self.seen],
                "best": None if self.best is None else [self.best[0], list(self.best[1])],
                "n_told": self.n_told, "n_failed": self.n_failed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, "random", self.sizes)
        self.rng.bit_generator.state = state["rng"]
        self.ledger.load_state_dict(state["ledger"])
        self.seen = {key_from_plain(k) for k in state["seen"]}
        self.best = None if state["best"] is None else (float(state["best"][0]), tuple(state["best"][1]))
        self.n_told, self.n_failed = state["n_told"], state["n_failed"]

