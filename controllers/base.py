"""The ask/tell protocol every engine drives every controller through.

A controller sees only how many choices each decision has. `ask()` hands out a
`Proposal` (an id and one choice index per decision); the engine later calls
`tell(proposal, reward)` or `tell_failure(proposal, status)`, in any order, for
proposals asked one by one or in batches. `state_dict()` captures everything needed
to continue exactly as if never stopped (RNG state, history, proposals not yet told).

States are plain data (`is_plain`): dicts with str keys, lists, str, int, float, bool,
None and CPU tensors. Why: `nas.store` writes them as JSON plus raw tensor bytes, so
loading a checkpoint from a run directory can never execute code (pickle could).

History. Evolution and de-duplicating random search never propose an architecture twice,
so they remember the key of every proposal ever made: a set that grows with the run.
`state_dict()` includes it (a self-contained state, e.g. for a file). A search writes a
checkpoint with every ask and every tell, and writing the whole set each time made a
run's cost quadratic (2,000 trials: 77 ms a trial against 24 ms at 500). So controllers
whose `replays_history` is True also give `state_dict(history=False)`: the same state
without the keys, bounded whatever the run's length, with their number; after
`load_state_dict` of such a state, `replay_history(choices, keys)` rebuilds the set from
the choices of every proposal made before it was saved. Why replay and not an
append-only table of keys: the store already holds every proposal's choices and key
(the trials and pending tables, written in the same transaction as the checkpoint taken
after the ask), so nothing new is written and nothing can disagree. `nas.search.loop.SearchLoop`
saves history-free states and replays on resume. Until the history is replayed, `ask`
raises RuntimeError (re-proposing silently would break exact resume), and a replay that
yields another number of keys than the state was saved with raises ValueError.
"""
from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence


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
    """Base class: subclasses implement ask/tell and their own state.

    `replays_history`: True when `state_dict(history=False)` leaves the history out and
    `replay_history` puts it back (module docstring, "History"). False (the default):
    `state_dict()` takes no argument and is bounded or self-contained as it is.
    """

    replays_history: bool = False

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
        """Everything needed to resume, as plain data (`is_plain`); it shares no tensor
        with the live controller, so later asks/tells do not change a saved state.
        Where `replays_history`: `state_dict(history=False)` leaves the history out."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; later asks equal those of the uninterrupted run."""

    def replay_history(self, choices: Iterable[Sequence[int]], keys: Optional[Iterable[Hashable]] = None) -> None:
        """Rebuild the history a `state_dict(history=False)` left out, from the choices of
        every proposal made before that state was saved (all in one call, any order).
        `keys`, when given, are `key_fn(c)` of each, already computed (the store's key
        column, when the key function is the space's: it spares a decode per proposal)
        and used instead of the choices. Controllers without a history ignore it."""
        del choices, keys  # no history here: nothing to rebuild


# --- shared plumbing (additive): pending-proposal bookkeeping and de-duplication ---


class SpaceExhausted(Exception):
    """No architecture is left that has not been proposed already.

    Not a StopIteration: one raised inside a generator becomes a RuntimeError (PEP 479)
    and one escaping into a `for` loop silently ends it. Catch `SpaceExhausted`.
    """


class Ledger:
    """Ids and proposals asked but not yet told, so tells may come in any order.

    `issue` hands out the next id; `settle` checks that a told proposal is pending
    (unknown or already-told ones raise ValueError) and returns its stored extra.
    An extra must be plain data (it is part of the controller's state).
    """

    def __init__(self) -> None:
        self.next_id = 0
        self.pending: dict[int, tuple[tuple[int, ...], Any]] = {}

    def issue(self, choices: Sequence[int], extra: Any = None) -> Proposal:
        proposal = Proposal(self.next_id, tuple(int(c) for c in choices))
        self.pending[proposal.id] = (proposal.choices, extra)
        self.next_id += 1
        return proposal

    def check(self, proposal: Proposal) -> Any:
        """The stored extra of a pending proposal; ValueError for unknown/told ones."""
        entry = self.pending.get(getattr(proposal, "id", None))
        if entry is None:
            raise ValueError(f"proposal {getattr(proposal, 'id', proposal)!r} is unknown or was already told")
        if entry[0] != tuple(proposal.choices):
            raise ValueError(f"proposal {proposal.id} was told with choices that differ from those asked")
        return entry[1]

    def settle(self, proposal: Proposal) -> Any:
        extra = self.check(proposal)
        del self.pending[proposal.id]
        return extra

    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self.next_id,
                "pending": [[i, list(c), e] for i, (c, e) in self.pending.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_id = int(state["next_id"])
        self.pending = {int(i): (tuple(c), e) for i, c, e in state["pending"]}


def space_size(sizes: Sequence[int]) -> int:
    n = 1
    for s in sizes:
        n *= int(s)
    return n


class History:
    """The keys of every proposal made (a set that grows with the run; see the module
    docstring, "History"). `missing` after loading a state saved without them, until
    `replay`; `expected` is the number of keys that state was saved with."""

    def __init__(self, key_fn: Callable[[tuple[int, ...]], Hashable]) -> None:
        self.key_fn = key_fn
        self.keys: set = set()
        self.missing = False
        self.expected: Optional[int] = None

    def add(self, key: Hashable) -> None:
        self.keys.add(key)

    def state(self, history: bool) -> dict[str, Any]:
        """The part of a controller state: the keys, or (history=False) only their number."""
        if history:
            return {"seen": [plain_key(k) for k in self.keys]}
        return {"seen_count": len(self.keys)}

    def load(self, state: dict[str, Any]) -> None:
        if "seen" in state:
            self.keys = {key_from_plain(k) for k in state["seen"]}
            self.missing, self.expected = False, None
        else:
            self.keys = set()
            self.missing, self.expected = True, int(state["seen_count"])

    def replay(self, choices: Iterable[Sequence[int]], keys: Optional[Iterable[Hashable]] = None) -> None:
        if keys is None:
            keys = (self.key_fn(tuple(int(c) for c in ch)) for ch in choices)
        self.keys.update(keys)
        if self.expected is not None and len(self.keys) != self.expected:
            found, self.keys = len(self.keys), set()
            raise ValueError(f"the replayed history has {found} distinct proposals, the state was saved "
                             f"after {self.expected}")
        self.missing, self.expected = False, None

    def check(self) -> None:
        """Refuse to propose with an incomplete history (it could re-propose)."""
        if self.missing:
            raise RuntimeError("this controller's state was loaded without its history: call "
                               "replay_history(...) with every proposal made before asking again")


def sample_unseen(rng: Any, sizes: Sequence[int], seen: set, key_fn: Any,
                  tries: int = 200, enumerate_limit: int = 200_000) -> tuple[tuple[int, ...], Hashable]:
    """A uniformly random choice tuple whose key is not in `seen`, and its key.

    Rejection sampling first; when that keeps hitting seen keys and the space is small
    enough, enumerate the unseen ones and pick one. Raises `SpaceExhausted` otherwise.
    `rng` is a numpy Generator. The key is returned because `key_fn` may be costly (the
    space's key decodes the network: ~0.25 ms).
    """
    for _ in range(tries):
        choices = tuple(int(rng.integers(s)) for s in sizes)
        key = key_fn(choices)
        if key not in seen:
            return choices, key
    total = space_size(sizes)
    if total > enumerate_limit:
        raise SpaceExhausted(f"no unseen architecture found in {tries} random draws "
                             f"(space of {total} choice tuples, {len(seen)} seen)")
    unseen, keys = [], set()
    for choices in itertools.product(*(range(s) for s in sizes)):
        key = key_fn(choices)
        if key not in seen and key not in keys:
            keys.add(key)
            unseen.append(choices)
    if not unseen:
        raise SpaceExhausted(f"all {len(seen)} distinct architectures of the space were proposed")
    choices = tuple(int(c) for c in unseen[int(rng.integers(len(unseen)))])
    return choices, key_fn(choices)


def identity_key(choices: Sequence[int]) -> tuple[int, ...]:
    return tuple(choices)


def plain_key(key: Any) -> Any:
    """A de-duplication key as plain data: tuples become lists (recursively).

    Keys are hashable, so no key is a list and `key_from_plain` inverts this exactly.
    """
    if isinstance(key, tuple):
        return [plain_key(k) for k in key]
    if key is None or isinstance(key, (str, int, float)):
        return key
    raise TypeError(f"a de-duplication key must be built of str, int, float, None and tuples, "
                    f"got {type(key).__name__}")


def key_from_plain(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(key_from_plain(v) for v in value)
    return value


def is_plain(obj: Any) -> bool:
    """True for the data a controller state may hold: dicts with str keys, lists, str,
    int, float, bool, None and CPU tensors (no tuples, sets or other objects)."""
    import torch
    if obj is None or isinstance(obj, (str, int, float)):
        return True
    if isinstance(obj, list):
        return all(is_plain(v) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in obj.items())
    return isinstance(obj, torch.Tensor) and obj.device.type == "cpu"


def finite_reward(reward: float) -> float:
    reward = float(reward)
    if not math.isfinite(reward):
        raise ValueError(f"reward must be a finite number, got {reward}; use tell_failure instead")
    return reward


def check_state(state: dict[str, Any], kind: str, sizes: Sequence[int]) -> None:
    """Refuse a state saved by another controller kind or for other decisions."""
    if not isinstance(state, dict) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"state is for controller {got!r}, not {kind!r}")
    if tuple(state.get("sizes", ())) != tuple(sizes):
        raise ValueError(f"state is for decisions of sizes {tuple(state.get('sizes', ()))}, "
                         f"not {tuple(sizes)}")
