"""Regularized (aging) evolution, Real et al. 2019 ("Regularized Evolution for Image
Classifier Architecture Search"), asynchronous form.

Population of at most P members, each (choices, reward). While the population plus
the proposals in flight number fewer than `initial_random` (default S), proposals are
uniform random. Afterwards each proposal is a child: sample S members without
replacement (all of them while fewer than S), take the best, change exactly one
decision to another choice. A told reward appends the child, so the population grows
to P, and beyond P drops the *oldest* member (aging, not the worst).

Why start mutating after S random members rather than after P (Real et al.'s
initial population): with P random proposals first, evolution equals random search
for its first P proposals, which is most of a short budget (the bench: 50 of 100).
S members are enough for a tournament; the population still reaches P, and aging
regularizes exactly as before once it has. `initial_random=P` restores the paper's form.

Never proposes an architecture twice: every proposal's key (`key_fn(choices)`,
default the choice tuple; pass `SearchSpace.key` to merge canonical duplicates) is
remembered; a mutation hitting a seen key is retried, then a random unseen
architecture is used, and `SpaceExhausted` is raised when none is left.
Failures (`tell_failure`) never enter the population but stay "seen".

Cost per ask and tell is bounded: a tournament reads S members of a population of at
most P, a mutation tries at most `mutation_tries` children; only the set of seen keys
grows (a set lookup per candidate). `state_dict(history=False)` leaves that set out
(the loop replays it from the store on resume; controllers/base.py, "History"), so the
checkpoint the search writes with every trial stays the same size.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

import numpy as np

from .base import (Controller, History, Ledger, Proposal, check_state, finite_reward, identity_key,
                   sample_unseen)


class RegularizedEvolution(Controller):
    """Aging evolution with tournament selection and one-decision mutations."""

    replays_history = True

    def __init__(self, decisions: Sequence[Any], seed: int = 0, population_size: int = 50,
                 sample_size: int = 10,
                 key_fn: Optional[Callable[[tuple[int, ...]], Hashable]] = None,
                 mutation_tries: int = 50, initial_random: Optional[int] = None) -> None:
        super().__init__(decisions, seed)
        if population_size < 1 or not 1 <= sample_size <= population_size:
            raise ValueError(f"need population_size >= 1 and 1 <= sample_size <= population_size, "
                             f"got {population_size} and {sample_size}")
        initial = sample_size if initial_random is None else int(initial_random)
        if not 1 <= initial <= population_size:
            raise ValueError(f"need 1 <= initial_random <= population_size, got {initial_random}")
        self.population_size, self.sample_size = int(population_size), int(sample_size)
        self.initial_random = initial
        self.mutation_tries = int(mutation_tries)
        self.key_fn = key_fn or identity_key
        self.mutable = [i for i, s in enumerate(self.sizes) if s > 1]
        self.rng = np.random.default_rng(seed)
        self.ledger = Ledger()
        self.population: deque = deque()
        self.history = History(self.key_fn)
        self.n_told = 0
        self.n_failed = 0

    # -- proposing ---------------------------------------------------------------------
    @property
    def seen(self) -> set:
        """The keys of every proposal made (read-only use)."""
        return self.history.keys

    def ask(self) -> Proposal:
        self.history.check()
        found, origin = None, "random"
        if self.population and len(self.population) + len(self.ledger.pending) >= self.initial_random:
            found = self._child()
            origin = "mutation" if found is not None else "random"
        if found is None:
            found = sample_unseen(self.rng, self.sizes, self.history.keys, self.key_fn)
        choices, key = found
        self.history.add(key)
        return self.ledger.issue(choices, origin)

    def _child(self) -> Optional[tuple[tuple[int, ...], Hashable]]:
        """Tournament winner mutated in one decision, with its key; None when all tries
        were seen."""
        if not self.mutable:
            return None
        k = min(self.sample_size, len(self.population))
        picked = self.rng.choice(len(self.population), size=k, replace=False)
        parent = max((self.population[int(i)] for i in picked), key=lambda m: m[1])[0]
        for _ in range(self.mutation_tries):
            i = self.mutable[int(self.rng.integers(len(self.mutable)))]
            new = int(self.rng.integers(self.sizes[i] - 1))
            new += new >= parent[i]  # any choice but the current one
            child = parent[:i] + (new,) + parent[i + 1:]
            key = self.key_fn(child)
            if key not in self.history.keys:
                return child, key
        return None

    # -- learning ----------------------------------------------------------------------
    def tell(self, proposal: Proposal, reward: float) -> None:
        reward = finite_reward(reward)
        self.ledger.settle(proposal)
        self.population.append((proposal.choices, reward))
        while len(self.population) > self.population_size:
            self.population.popleft()  # aging: the oldest dies
        self.n_told += 1

    def tell_failure(self, proposal: Proposal, status: str) -> None:
        self.ledger.settle(proposal)  # not in the population; its key stays in `seen`
        self.n_failed += 1

    # -- resume ------------------------------------------------------------------------
    def state_dict(self, history: bool = True) -> dict[str, Any]:
        """The whole state; `history=False`: without the seen keys (bounded size)."""
        return {"kind": "evolution", "sizes": list(self.sizes), "seed": self.seed,
                "population_size": self.population_size, "sample_size": self.sample_size,
                "initial_random": self.initial_random, "rng": self.rng.bit_generator.state,
                "ledger": self.ledger.state_dict(),
                "population": [[list(c), r] for c, r in self.population],
                **self.history.state(history), "n_told": self.n_told, "n_failed": self.n_failed}

    def replay_history(self, choices: Iterable[Sequence[int]], keys: Optional[Iterable[Hashable]] = None) -> None:
        self.history.replay(choices, keys)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, "evolution", self.sizes)
        self.population_size, self.sample_size = state["population_size"], state["sample_size"]
        self.initial_random = state["initial_random"]
        self.rng.bit_generator.state = state["rng"]
        self.ledger.load_state_dict(state["ledger"])
        self.population = deque((tuple(c), float(r)) for c, r in state["population"])
        self.history.load(state)
        self.n_told, self.n_failed = state["n_told"], state["n_failed"]
