"""MnasNet's controller: an LSTM policy over the decisions, trained with PPO.

Policy (NASNet/MnasNet style): a one-layer LSTM (`nn.LSTMCell`, 100 hidden units) runs
one step per decision; its input is the embedding of the previous decision's choice (a
learned start token for the first); one softmax head per decision (sizes differ).
Weights start uniform in [-0.1, 0.1] as in NASNet/ENAS.

Learning: reward minus an exponential-moving-average baseline (decay 0.95) is the
advantage; every `batch_size` told proposals, `ppo_epochs` Adam steps on the PPO
clipped surrogate (clip 0.2) plus an entropy bonus. The "old" log-probability of a
proposal is the one under the policy that sampled it, so proposals told late (after
updates) are importance-weighted correctly. Advantages are divided by a running RMS
(EMA of squared advantages), not by the batch's std, which would inflate noise-level
differences once the policy concentrates. Defaults (lr 1e-2, batch 4, entropy weight
2e-2) suit budgets of hundreds of proposals: more updates early, no collapse onto a
few architectures later (docs/controllers.md gives the numbers).
Failures count as reward `failure_reward` (default: the lowest reward seen so far, 0
before any).

Sampling uses a private `torch.Generator`; weights are initialised from it too, so the
global torch RNG is never touched. The policy's ops are tiny (one row, 100 units), so
they run on `threads` intra-op threads (default 1), set for the duration of an ask or
tell and restored after: with more threads than free cores (workers training beside
it), OpenMP's waiting made an ask 20-40x slower here (151 ms against 7.5 ms). For the
same duration denormal floats are flushed to zero (`_tiny_ops`): without it an ask
and tell cost 3x more after 20,000 tells than after 2,000.

Cost per ask and tell is bounded and independent of the history: told proposals wait
in a buffer of at most `batch_size`, which one PPO update (over that batch only)
empties; the state is the policy, Adam's moments and a few numbers, the same size
after 10 or 10,000 tells. The update scores its batch with one fused LSTM call and all
heads at once (`LSTMPolicy.evaluate`), instead of a handful of small ops per decision:
4x faster for the same result (to float rounding).

`state_dict()` is plain data (controllers.base.is_plain): tensors for the policy, the
Adam moments and the generator state (uint8), lists and numbers for the rest.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .base import Controller, Ledger, Proposal, check_state, finite_reward


class LSTMPolicy(nn.Module):
    """Autoregressive categorical policy: one `nn.LSTMCell` step and one softmax head per
    decision. Modules are built with `skip_init` (on the meta device), so torch's own
    initialisation, which draws from the global RNG, never runs; every weight is then
    drawn from `generator`: the same seed gives the same policy."""

    def __init__(self, sizes: Sequence[int], hidden: int, generator: torch.Generator,
                 init_range: float = 0.1) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.hidden = hidden
        # embedding rows: 0 = start token, then one block of rows per decision's choices;
        # head rows: one block per decision (all heads stacked in one Linear)
        self.offsets = [1 + sum(self.sizes[:i]) for i in range(len(self.sizes))]
        n_heads = sum(self.sizes)
        self.embedding = nn.utils.skip_init(nn.Embedding, 1 + n_heads, hidden)
        self.cell = nn.utils.skip_init(nn.LSTMCell, hidden, hidden)
        self.heads = nn.utils.skip_init(nn.Linear, hidden, n_heads)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-init_range, init_range, generator=generator)
        # evaluate(): head rows of every decision padded to the widest (mask: real rows),
        # and the embedding row offset of each step's input (the previous choice)
        width = max(self.sizes)
        self._seg_rows = torch.tensor([[o - 1 + min(j, s - 1) for j in range(width)]
                                       for o, s in zip(self.offsets, self.sizes)], dtype=torch.long)
        self._seg_mask = torch.tensor([[j < s for j in range(width)] for s in self.sizes])
        self._in_offsets = torch.tensor(self.offsets[:-1], dtype=torch.long)

    def _logits(self, d: int, h: torch.Tensor) -> torch.Tensor:
        lo = self.offsets[d] - 1
        hi = lo + self.sizes[d]
        return F.linear(h, self.heads.weight[lo:hi], self.heads.bias[lo:hi])

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> tuple[list[int], float]:
        """One choice per decision and the total log-probability of the sample.

        The cell's op is called directly (`torch.lstm_cell`, what `nn.LSTMCell` runs),
        without the module call's checks: the same samples, bit for bit, 30 % faster."""
        cell, heads, emb = self.cell, self.heads, self.embedding.weight
        w_ih, w_hh, b_ih, b_hh = cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh
        h = c = emb.new_zeros(1, self.hidden)  # LSTMCell's zero state
        x = emb[0:1]
        choices, logp = [], 0.0
        for offset, size in zip(self.offsets, self.sizes):
            h, c = torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
            lo = offset - 1
            log_probs = torch.log_softmax(F.linear(h, heads.weight[lo:lo + size], heads.bias[lo:lo + size])[0],
                                          dim=-1)
            k = int(torch.multinomial(log_probs.exp(), 1, generator=generator))
            choices.append(k)
            logp += float(log_probs[k])
            x = emb[offset + k:offset + k + 1]
        return choices, logp

    def evaluate(self, choices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy (summed over decisions) of a batch of choice rows.

        The inputs are known (the given choices), so the whole sequence runs through
        torch's LSTM kernel (`torch.lstm`, what `nn.LSTM` calls, with the cell's weights:
        the same function as stepping `nn.LSTMCell`, equal to ~1e-6); all heads are
        scored in one matmul and a log-softmax over each decision's rows (padding masked
        to -1e9: its probability is exactly 0, so it changes neither the values nor the
        gradients). 4x faster than a few small ops per decision."""
        n = choices.shape[0]
        rows = torch.cat([torch.zeros(n, 1, dtype=torch.long), self._in_offsets + choices[:, :-1]], dim=1)
        xs = self.embedding(rows)                                   # (n, steps, hidden)
        zeros = xs.new_zeros(1, n, self.hidden)
        cell = self.cell  # the cell's own weights, run over the sequence by torch's LSTM kernel
        hs = torch.lstm(xs, (zeros, zeros), [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh],
                        True, 1, 0.0, self.training, False, True)[0]  # (n, steps, hidden)
        logits = F.linear(hs, self.heads.weight, self.heads.bias)
        seg = logits.gather(2, self._seg_rows.expand(n, -1, -1)).masked_fill(~self._seg_mask, -1e9)
        log_probs = torch.log_softmax(seg, dim=-1)                  # (n, steps, widest)
        logp = log_probs.gather(2, choices.unsqueeze(2)).squeeze(2).sum(1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=(1, 2))
        return logp, entropy

    @torch.no_grad()
    def greedy_probs(self) -> list[list[float]]:
        """Per-decision choice probabilities along the most likely path (for logs/tests)."""
        state = None
        x = self.embedding.weight[0:1]
        out = []
        for d in range(len(self.sizes)):
            state = self.cell(x, state)
            probs = torch.softmax(self._logits(d, state[0])[0], dim=-1)
            out.append(probs.tolist())
            x = self.embedding.weight[self.offsets[d] + int(probs.argmax())].unsqueeze(0)
        return out


def _flushing_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has no getter)."""
    return torch.tensor(1e-39).mul(1.0).item() == 0.0


@contextmanager
def _tiny_ops(threads: Optional[int]) -> Iterator[None]:
    """Inside: torch's intra-op threads set to `threads` (None: left alone) and denormal
    floats flushed to zero; both restored after. Why the flush: as the policy
    concentrates, Adam's second moments and the softmax tails decay into denormals,
    which x86 computes ~100x slower: asks and tells took 18 ms instead of 6 ms after
    20,000 tells (flat with the flush, the same proposals)."""
    old = torch.get_num_threads()
    flushed = _flushing_denormals()
    if threads is not None and threads != old:
        torch.set_num_threads(threads)
    if not flushed:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not flushed:
            torch.set_flush_denormal(False)
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _plain_optimizer(sd: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state_dict as plain data: per-parameter states as [index, {name: tensor}]
    pairs (JSON keys are strings), tuples (Adam's betas) as lists, tensors copied."""
    return {"state": [[int(i), {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                                for k, v in st.items()}] for i, st in sorted(sd["state"].items())],
            "param_groups": [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
                             for g in sd["param_groups"]]}


def _torch_optimizer(plain: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `_plain_optimizer`; tensors are copied so the optimizer owns them."""
    return {"state": {int(i): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                      for i, st in plain["state"]},
            "param_groups": [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
                             for g in plain["param_groups"]]}


class RLController(Controller):
    """MnasNet/NASNet RL controller (LSTM policy + PPO); see the module docstring."""

    def __init__(self, decisions: Sequence[Any], seed: int = 0, hidden: int = 100,
                 lr: float = 1e-2, batch_size: int = 4, ppo_epochs: int = 4,
                 clip: float = 0.2, entropy_coef: float = 2e-2,
                 baseline_decay: float = 0.95, normalize_advantage: Any = "running",
                 failure_reward: Optional[float] = None, init_range: float = 0.1,
                 threads: Optional[int] = 1) -> None:
        super().__init__(decisions, seed)
        if batch_size < 1 or ppo_epochs < 1 or hidden < 1 or lr <= 0:
            raise ValueError("RLController needs batch_size, ppo_epochs, hidden >= 1 and lr > 0")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        self.batch_size, self.ppo_epochs = int(batch_size), int(ppo_epochs)
        self.clip, self.entropy_coef = float(clip), float(entropy_coef)
        self.baseline_decay = float(baseline_decay)
        norm = {True: "batch", False: "none"}.get(normalize_advantage, normalize_advantage)
        if norm not in ("batch", "running", "none"):
            raise ValueError(f"normalize_advantage must be True/'batch', 'running' or False/'none', "
                             f"got {normalize_advantage!r}")
        self.normalize_advantage = norm
        self.adv_sq: Optional[float] = None  # EMA of squared advantages ("running")
        self.failure_reward = failure_reward
        self.threads = threads
        self.generator = torch.Generator().manual_seed(int(seed))
        self.policy = LSTMPolicy(self.sizes, int(hidden), self.generator, init_range)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.ledger = Ledger()
        self.baseline: Optional[float] = None
        self.min_reward: Optional[float] = None
        self.buffer: list[tuple[tuple[int, ...], float, float]] = []  # choices, old logp, advantage
        self.n_told = self.n_failed = self.n_updates = 0

    def ask(self) -> Proposal:
        with _tiny_ops(self.threads):
            choices, logp = self.policy.sample(self.generator)
        return self.ledger.issue(choices, logp)

    def tell(self, proposal: Proposal, reward: float) -> None:
        reward = finite_reward(reward)
        old_logp = self.ledger.settle(proposal)
        self.min_reward = reward if self.min_reward is None else min(self.min_reward, reward)
        self.n_told += 1
        self._learn(proposal.choices, old_logp, reward)

    def tell_failure(self, proposal: Proposal, status: str) -> None:
        old_logp = self.ledger.settle(proposal)
        self.n_failed += 1
        reward = self.failure_reward
        if reward is None:
            reward = 0.0 if self.min_reward is None else self.min_reward
        self._learn(proposal.choices, old_logp, float(reward))

    def _learn(self, choices: tuple[int, ...], old_logp: float, reward: float) -> None:
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        if self.normalize_advantage == "running" and advantage != 0.0:
            d = self.baseline_decay
            sq = advantage * advantage
            self.adv_sq = sq if self.adv_sq is None else d * self.adv_sq + (1 - d) * sq
            advantage /= self.adv_sq ** 0.5
        self.buffer.append((choices, old_logp, advantage))
        if len(self.buffer) >= self.batch_size:
            with _tiny_ops(self.threads):
                self._update()
            self.buffer = []

    def _update(self) -> None:
        choices = torch.tensor([b[0] for b in self.buffer], dtype=torch.long)
        old_logp = torch.tensor([b[1] for b in self.buffer])
        adv = torch.tensor([b[2] for b in self.buffer])
        if self.normalize_advantage == "batch" and len(self.buffer) > 1:
            adv = adv / (adv.std() + 1e-8)
        for _ in range(self.ppo_epochs):
            logp, entropy = self.policy.evaluate(choices)
            ratio = torch.exp(logp - old_logp)
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
            loss = -surrogate.mean() - self.entropy_coef * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.n_updates += 1

    def choice_probs(self) -> list[list[float]]:
        """Choice probabilities per decision along the policy's most likely path."""
        return self.policy.greedy_probs()

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "rl", "sizes": list(self.sizes), "seed": self.seed,
                "generator": self.generator.get_state(),  # a new uint8 tensor
                "policy": {k: v.detach().clone() for k, v in self.policy.state_dict().items()},
                "optimizer": _plain_optimizer(self.optimizer.state_dict()),
                "ledger": self.ledger.state_dict(), "baseline": self.baseline, "adv_sq": self.adv_sq,
                "min_reward": self.min_reward, "buffer": [[list(c), lp, a] for c, lp, a in self.buffer],
                "n_told": self.n_told, "n_failed": self.n_failed, "n_updates": self.n_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, "rl", self.sizes)
        self.generator.set_state(state["generator"])
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(_torch_optimizer(state["optimizer"]))
        self.ledger.load_state_dict(state["ledger"])
        self.baseline, self.min_reward = state["baseline"], state["min_reward"]
        self.adv_sq = state["adv_sq"]
        self.buffer = [(tuple(c), float(lp), float(a)) for c, lp, a in state["buffer"]]
        self.n_told, self.n_failed, self.n_updates = state["n_told"], state["n_failed"], state["n_updates"]


