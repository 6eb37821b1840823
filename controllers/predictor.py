"""A model-based controller: an ensemble of small MLPs predicts the reward of candidates.

After Neural Predictor (Wen et al. 2020) and BANANAS (White et al. 2021): fit a
predictor on the results told so far and propose, of many random and mutated
candidates, the best under an acquisition that keeps exploring.

- Encoding: one-hot of every decision's choice (what the controller sees: choice counts).
- Predictor: `ensemble` MLPs (two hidden layers of `hidden` units, ReLU), each from its
  own init, trained together (one batched forward) with Adam on the standardised
  rewards; mean and spread over members are the prediction and its uncertainty.
- Candidates per ask: `n_random` uniform draws plus `n_mutations` children of the
  `parents` best results so far (one or two decisions changed).
- Acquisition: independent Thompson sampling (BANANAS' ITS, the default): each candidate
  scores mean + sd·z with its own z ~ N(0, 1), drawn anew for every ask, so proposals
  asked before their predecessors are told (in flight) differ and uncertain regions
  keep being tried; or `acquisition='ucb'`: mean + kappa·sd.
- The first `initial_random` proposals (counting those in flight) are uniform random.
- Never proposes an architecture twice (`key_fn`, as evolution: the canonical key
  when built by the search), and when given `cost_fn` (multiply-adds of a choice
  tuple) and `window` (LO, HI in multiply-adds), skips candidates outside the window
  (the search would not train them), checking at most `cost_checks` candidates in
  acquisition order per ask.
- Failures never enter the training data; their keys stay seen.

Bounded cost (asks and tells flat in the number of results): the training data keep
at most `max_points` results (beyond: the oldest of those not among the best half is
dropped), the model is refitted when enough results have been told since the
last fit (`refit_interval`: every tell at first, at most every `refit_cap` later),
for `epochs` full-batch steps, and an ask scores a fixed number of
candidates. The seen keys grow with the run like evolution's; they are left out of
`state_dict(history=False)` and replayed on resume (controllers/base.py, "History").

State is plain data: the numpy generator state, the data, the ledger and the
ensemble's weights (tensors), so a resumed controller proposes exactly what the
uninterrupted one would have (the model is not refitted on load).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

import numpy as np
import torch

from .base import (Controller, History, Ledger, Proposal, check_state, finite_reward, identity_key,
                   sample_unseen)
from .rl import _tiny_ops


class PredictorController(Controller):
    """Ensemble-MLP predictor + Thompson-sampled candidates (ask/tell, resumable)."""

    replays_history = True

    def __init__(self, decisions: Sequence[Any], seed: int = 0,
                 key_fn: Optional[Callable[[tuple[int, ...]], Hashable]] = None,
                 cost_fn: Optional[Callable[[tuple[int, ...]], float]] = None,
                 window: Optional[Sequence[float]] = None, initial_random: int = 10,
                 ensemble: int = 5, hidden: int = 32, epochs: int = 100, lr: float = 0.01,
                 weight_decay: float = 1e-4, n_random: int = 500, n_mutations: int = 500, parents: int = 8,
                 acquisition: str = "its", kappa: float = 1.0, refit_every: int = 1, refit_cap: int = 10,
                 max_points: int = 256,
                 cost_checks: int = 64, threads: Optional[int] = 1) -> None:
        super().__init__(decisions, seed)
        if acquisition not in ("its", "ucb"):
            raise ValueError(f"acquisition must be 'its' or 'ucb', got {acquisition!r}")
        ints = dict(initial_random=initial_random, ensemble=ensemble, hidden=hidden, epochs=epochs,
                    refit_every=refit_every, refit_cap=refit_cap, max_points=max_points, parents=parents, cost_checks=cost_checks)
        bad = [k for k, v in ints.items() if int(v) < 1]
        if bad or n_random < 0 or n_mutations < 0 or n_random + n_mutations < 1:
            raise ValueError(f"{(bad or ['n_random + n_mutations'])[0]} must be at least 1")
        if (cost_fn is None) != (window is None):
            raise ValueError("cost_fn and window go together")
        self.initial_random, self.ensemble, self.hidden = int(initial_random), int(ensemble), int(hidden)
        self.epochs, self.lr, self.weight_decay = int(epochs), float(lr), float(weight_decay)
        self.n_random, self.n_mutations, self.parents = int(n_random), int(n_mutations), int(parents)
        self.acquisition, self.kappa = acquisition, float(kappa)
        self.refit_every, self.max_points, self.cost_checks = int(refit_every), int(max_points), int(cost_checks)
        self.refit_cap = max(int(refit_cap), self.refit_every)
        self.threads = threads
        self.key_fn = key_fn or identity_key
        self.cost_fn = cost_fn
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.width = int(sum(self.sizes))
        self.mutable = np.array([i for i, s in enumerate(self.sizes) if s > 1], dtype=np.int64)
        self.rng = np.random.default_rng(seed)
        self.ledger = Ledger()
        self.history = History(self.key_fn)
        self.data: list[tuple[tuple[int, ...], float]] = []   # (choices, reward), at most max_points
        self.n_told = 0
        self.n_failed = 0
        self.fitted_at = 0        # n_told when the model was last fitted (0: no model yet)
        self.weights: Optional[list[torch.Tensor]] = None
        self.y_mean, self.y_sd = 0.0, 1.0

    @property
    def seen(self) -> set:
        return self.history.keys

    # -- proposing ---------------------------------------------------------------------
    def ask(self) -> Proposal:
        self.history.check()
        found, origin = None, "random"
        if self.data and len(self.data) + len(self.ledger.pending) >= self.initial_random:
            if self.weights is None or self.n_told - self.fitted_at >= self.refit_interval():
                self._fit()
            found = self._best_candidate()
            origin = "model" if found is not None else "random"
        if found is None:
            found = self._random_in_window()
        choices, key = found
        self.history.add(key)
        return self.ledger.issue(choices, origin)

    def refit_interval(self) -> int:
        """Tells between fits: `refit_every` while few results are in, then one per 25
        results told, at most `refit_cap` (a fit costs ~0.1-0.25 s; early results change
        the model most)."""
        return min(self.refit_cap, max(self.refit_every, self.n_told // 25))

    def _in_window(self, choices: tuple[int, ...]) -> bool:
        if self.cost_fn is None:
            return True
        m = float(self.cost_fn(choices))
        return self.window[0] <= m <= self.window[1]

    def _random_in_window(self) -> tuple[tuple[int, ...], Hashable]:
        """An unseen uniform draw, redrawn (up to `cost_checks` times) while outside the
        window; the last draw if none was inside (the search then tells its cost-only reward)."""
        for _ in range(self.cost_checks):
            choices, key = sample_unseen(self.rng, self.sizes, self.history.keys, self.key_fn)
            if self._in_window(choices):
                return choices, key
        return choices, key

    def _candidates(self) -> np.ndarray:
        """(n, decisions) int array: uniform draws, then mutations of the best parents."""
        sizes = np.asarray(self.sizes)
        rand = (self.rng.random((self.n_random, len(sizes))) * sizes).astype(np.int64)
        if not self.n_mutations or not len(self.mutable):
            return rand
        best = sorted(self.data, key=lambda cr: -cr[1])[:self.parents]
        par = np.array([c for c, _ in best], dtype=np.int64)
        kids = par[self.rng.integers(len(par), size=self.n_mutations)]
        for second in (False, True):  # one change always, a second one half of the time
            rows = np.arange(self.n_mutations)
            if second:
                rows = rows[self.rng.random(self.n_mutations) < 0.5]
            which = self.mutable[self.rng.integers(len(self.mutable), size=len(rows))]
            step = 1 + (self.rng.random(len(rows)) * (sizes[which] - 1)).astype(np.int64)
            kids[rows, which] = (kids[rows, which] + step) % sizes[which]
        return np.concatenate([rand, kids])

    def _best_candidate(self) -> Optional[tuple[tuple[int, ...], Hashable]]:
        cand = self._candidates()
        mean, sd = self._predict(cand)
        if self.acquisition == "its":
            score = mean + sd * self.rng.standard_normal(len(mean))
        else:
            score = mean + self.kappa * sd
        order = np.argsort(-score, kind="stable")
        tried: set = set()
        checks = 0
        for i in order:
            choices = tuple(int(c) for c in cand[i])
            if choices in tried:
                continue
            tried.add(choices)
            key = self.key_fn(choices)
            if key in self.history.keys:
                continue
            if self._in_window(choices):
                return choices, key
            checks += 1
            if checks >= self.cost_checks:
                break
        return None

    # -- the model ---------------------------------------------------------------------
    def _encode(self, choices: np.ndarray) -> torch.Tensor:
        x = np.zeros((len(choices), self.width), dtype=np.float32)
        x[np.arange(len(choices))[:, None], choices + self.offsets] = 1.0
        return torch.from_numpy(x)

    def _forward(self, w: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2, w3, b3 = w
        h = torch.relu(torch.matmul(x, w1) + b1)     # (E, N, H)
        h = torch.relu(torch.bmm(h, w2) + b2)
        return (torch.bmm(h, w3) + b3).squeeze(-1)  # (E, N)

    def _fit(self) -> None:
        """Train the ensemble from scratch on the data (init from a seed drawn from the
        controller's generator, so the fit is part of the reproducible stream)."""
        gen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        x = self._encode(np.array([c for c, _ in self.data], dtype=np.int64))
        y = np.array([r for _, r in self.data], dtype=np.float64)
        self.y_mean = float(y.mean())
        self.y_sd = float(y.std()) if len(y) > 1 and y.std() > 1e-12 else 1.0
        yt = torch.from_numpy(((y - self.y_mean) / self.y_sd).astype(np.float32))
        e, d, h = self.ensemble, self.width, self.hidden

        def init(*shape: int, fan_in: int) -> torch.Tensor:
            bound = 1.0 / math.sqrt(fan_in)
            return ((torch.rand(*shape, generator=gen) * 2 - 1) * bound).requires_grad_()

        w = [init(e, d, h, fan_in=d), init(e, 1, h, fan_in=d), init(e, h, h, fan_in=h), init(e, 1, h, fan_in=h),
             init(e, h, 1, fan_in=h), init(e, 1, 1, fan_in=h)]
        with _tiny_ops(self.threads):
            opt = torch.optim.Adam(w, lr=self.lr, weight_decay=self.weight_decay)
            for _ in range(self.epochs):
                loss = ((self._forward(w, x) - yt) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.weights = [t.detach().clone() for t in w]
        self.fitted_at = self.n_told

    def _predict(self, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread over the ensemble, in reward units."""
        with torch.no_grad(), _tiny_ops(self.threads):
            out = self._forward(self.weights, self._encode(choices)).double().numpy()
        out = out * self.y_sd + self.y_mean
        return out.mean(0), out.std(0)

    def predict(self, choices: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The current model's (mean, sd) reward of each choice tuple (fits one if none yet)."""
        if self.weights is None:
            if not self.data:
                raise RuntimeError("no results told yet: nothing to predict from")
            self._fit()
        return self._predict(np.asarray(choices, dtype=np.int64))

    # -- learning ----------------------------------------------------------------------
    def tell(self, proposal: Proposal, reward: float) -> None:
        reward = finite_reward(reward)
        self.ledger.settle(proposal)
        self.data.append((proposal.choices, reward))
        if len(self.data) > self.max_points:
            self._drop_one()
        self.n_told += 1

    def _drop_one(self) -> None:
        """Drop the oldest result not among the best half (bounded data, good ones kept)."""
        keep = self.max_points // 2
        cut = sorted((r for _, r in self.data), reverse=True)[keep - 1] if keep else math.inf
        for i, (_, r) in enumerate(self.data):
            if r < cut:
                del self.data[i]
                return
        del self.data[0]

    def tell_failure(self, proposal: Proposal, status: str) -> None:
        self.ledger.settle(proposal)
        self.n_failed += 1

    # -- resume ------------------------------------------------------------------------
    HYPER = ("initial_random", "ensemble", "hidden", "epochs", "lr", "weight_decay", "n_random", "n_mutations",
             "parents", "acquisition", "kappa", "refit_every", "refit_cap", "max_points", "cost_checks")

    def state_dict(self, history: bool = True) -> dict[str, Any]:
        """The whole state, with the settings (a run resumed with other `--trials` goes on
        as it started, like evolution); `history=False`: without the seen keys."""
        return {"kind": "predictor", "sizes": list(self.sizes), "seed": self.seed,
                "settings": {k: getattr(self, k) for k in self.HYPER},
                "rng": self.rng.bit_generator.state, "ledger": self.ledger.state_dict(),
                "data": [[list(c), r] for c, r in self.data], **self.history.state(history),
                "n_told": self.n_told, "n_failed": self.n_failed, "fitted_at": self.fitted_at,
                "weights": None if self.weights is None else [t.clone() for t in self.weights],
                "y_mean": self.y_mean, "y_sd": self.y_sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, "predictor", self.sizes)
        for k, v in state["settings"].items():
            if k in self.HYPER:
                setattr(self, k, v)
        self.rng.bit_generator.state = state["rng"]
        self.ledger.load_state_dict(state["ledger"])
        self.data = [(tuple(int(v) for v in c), float(r)) for c, r in state["data"]]
        self.history.load(state)
        self.n_told, self.n_failed, self.fitted_at = state["n_told"], state["n_failed"], state["fitted_at"]
        self.weights = None if state["weights"] is None else [t.clone() for t in state["weights"]]
        self.y_mean, self.y_sd = float(state["y_mean"]), float(state["y_sd"])

    def replay_history(self, choices: Iterable[Sequence[int]], keys: Optional[Iterable[Hashable]] = None) -> None:
        self.history.replay(choices, keys)
