"""Uniform random search: the baseline every other controller is compared with.

Each decision's choice is drawn uniformly and independently from a seeded numpy
Generator. By default proposals are i.i.d. (repeats possible, as in textbook random
search); with `unique=True` or a `key_fn` (e.g. `SearchSpace.key`, which maps
canonical duplicates to one key) architectures already proposed are re-drawn, and
`SpaceExhausted` is raised once every architecture has been proposed.

Cost per ask and tell is constant but for a set lookup; the set of proposed keys is
left out of `state_dict(history=False)` and replayed on resume (controllers/base.py,
"History"), so the checkpoint written with every trial stays the same size.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

import numpy as np

from .base import (Controller, History, Ledger, Proposal, check_state, finite_reward, identity_key,
                   sample_unseen)


class RandomSearch(Controller):
    """Uniform sampling over the decisions; rewards are recorded but do not steer it."""

    replays_history = True

    def __init__(self, decisions: Sequence[Any], seed: int = 0,
                 key_fn: Optional[Callable[[tuple[int, ...]], Hashable]] = None,
                 unique: bool = False) -> None:
        super().__init__(decisions, seed)
        self.unique = bool(unique or key_fn is not None)
        self.key_fn = key_fn or identity_key
        self.rng = np.random.default_rng(seed)
        self.ledger = Ledger()
        self.history = History(self.key_fn)
        self.best: Optional[tuple[float, tuple[int, ...]]] = None
        self.n_told = 0
        self.n_failed = 0

    @property
    def seen(self) -> set:
        """The keys of every proposal made when unique (read-only use)."""
        return self.history.keys

    def ask(self) -> Proposal:
        if self.unique:
            self.history.check()
            choices, key = sample_unseen(self.rng, self.sizes, self.history.keys, self.key_fn)
            self.history.add(key)
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

    def state_dict(self, history: bool = True) -> dict[str, Any]:
        """The whole state; `history=False`: without the proposed keys (bounded size)."""
        return {"kind": "random", "sizes": list(self.sizes), "seed": self.seed,
                "rng": self.rng.bit_generator.state, "ledger": self.ledger.state_dict(),
                **self.history.state(history),
                "best": None if self.best is None else [self.best[0], list(self.best[1])],
                "n_told": self.n_told, "n_failed": self.n_failed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, "random", self.sizes)
        self.rng.bit_generator.state = state["rng"]
        self.ledger.load_state_dict(state["ledger"])
        self.history.load(state)
        self.best = None if state["best"] is None else (float(state["best"][0]), tuple(state["best"][1]))
        self.n_told, self.n_failed = state["n_told"], state["n_failed"]

    def replay_history(self, choices: Iterable[Sequence[int]], keys: Optional[Iterable[Hashable]] = None) -> None:
        if self.unique:
            self.history.replay(choices, keys)
        else:
            self.history.missing = False  # nothing is remembered when proposals may repeat

