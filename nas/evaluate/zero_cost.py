"""Training-free ("zero-cost") scores of an architecture, for the proxy check and a search prefilter.

Why these: each claims to rank architectures by what they would reach after training,
at the cost of one forward (and backward) pass. `python -m nas.proxy check` measures
that claim against trained accuracy on the same architectures; the trivial scores
(`params`, `macs`) are the floor any of them must beat to be worth its cost.

    score(name, spec, data, seed=0) -> float      # higher = predicted better
    SCORES                                         # the names, in report order

`data` is a `nas.evaluate.data.ProxyData` (a class-balanced batch is taken from its train part,
see `balanced_batch`), a `Batch`, or None for the scores that need no images
(`params`, `macs`; `synflow` then runs at the spec's own resolution and class count).

Every score is deterministic: the network is built under `torch.random.fork_rng` with
`manual_seed(seed)` (the global RNG is neither read nor moved), in a fixed mode, at the
builder's reference init (kaiming fan-out convs, uniform classifier): *not* the trainer's
zero-init (`nas.evaluate.train.proxy_init`), whose zero classifier makes every loss gradient below
it zero. Dropout and drop-connect are off. The batch is chosen from the data alone.

Definitions (the networks use swish/SiLU, so "ReLU codes" are defined by the sign of
each activation's *input*):

- naswot (Mellor et al. 2021): log|det K|, K[i, j] = Σ over the units of every activation
  module (ReLU/SiLU: stem, expansion, depthwise, squeeze-excite, head) of [c_i = c_j],
  c = 1[pre-activation > 0], over the class-balanced batch; BatchNorm in train mode
  (batch statistics, as the paper's code ran its networks).
- synflow (Tanaka et al. 2020): Σ |θ ⊙ ∂R/∂θ| over all parameters, R = sum of the
  outputs for one all-ones input at the data's resolution, with every parameter replaced
  by its absolute value, in float64; BatchNorm in eval mode with its initial running
  statistics (mean 0, var 1), i.e. a fixed per-channel scale 1/sqrt(1 + eps): the
  paper's code runs the model in eval mode, and this is "BN removed" up to that constant.
- grad_norm (Abdelfattah et al. 2021): Σ over conv/linear weights of ‖∂L/∂W‖₂, L the
  cross-entropy of the batch; BatchNorm in train mode.
- snip (Lee et al. 2019): Σ over conv/linear weights of |W ⊙ ∂L/∂W|, same loss and mode.
- params, macs: the analytic counts (`search_space.cost`) of the 1000-class network at
  the spec's resolution.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

SCORES = ("naswot", "synflow", "grad_norm", "snip", "params", "macs")
TRIVIAL = ("params", "macs")     # the floor: cost alone
NEEDS_DATA = ("naswot", "grad_norm", "snip")
BATCH = 32                       # images in the scoring batch: BATCH // classes per class


@dataclass(frozen=True)
class Batch:
    """Images (N, 3, R, R) float32, labels (N,) int64, and the class count of the task."""

    x: Any
    y: Any
    num_classes: int

    @property
    def resolution(self) -> int:
        return int(self.x.shape[-1])


def balanced_batch(data: Any, size: int = BATCH, seed: int = 0) -> Batch:
    """`size // classes` un-augmented train images of every class (at least one each),
    picked by a local generator seeded with `seed`, so the batch depends on nothing else.

    Class-balanced because a kernel over codes (NASWOT) or a loss gradient over one batch
    compares images; an unbalanced draw would score the class mix as much as the network.
    """
    import torch

    labels = data.train_labels().numpy()
    classes = int(data.num_classes)
    per = max(1, int(size) // classes)
    rng = np.random.default_rng(int(seed))
    picks = []
    for c in range(classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per:
            raise ValueError(f"class {c} has {len(idx)} train images, the scoring batch needs {per}")
        picks.append(np.sort(rng.choice(idx, size=per, replace=False)))
    order = np.stack(picks, 1).reshape(-1)  # interleaved: class 0, 1, ..., 0, 1, ...
    x, y = data.train_rows(torch.from_numpy(order.astype(np.int64)))
    return Batch(x, y, classes)


def _as_batch(data: Any, seed: int) -> Batch:
    if isinstance(data, Batch):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        return Batch(x, y, int(y.max()) + 1)
    if data is not None and hasattr(data, "train_rows"):
        return balanced_batch(data, seed=0)  # the batch is fixed; `seed` is the init's
    raise ValueError("this score needs data: a nas.evaluate.data.ProxyData, a Batch or (images, labels)")


def _build(spec: Any, num_classes: int, seed: int) -> Any:
    """The network with `num_classes` outputs, initialised from `seed` without touching the
    global RNG; dropout and drop-connect off, so no forward pass draws a random number."""
    import torch

    from search_space.model import build

    net_spec = dataclasses.replace(spec, num_classes=int(num_classes), dropout=0.0, drop_connect=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = build(net_spec, device="cpu")
    return net


def _weights(net: Any) -> list:
    """The conv and linear weights: the prunable connections of SNIP and grad-norm."""
    from torch import nn
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def naswot(spec: Any, data: Any, seed: int = 0) -> float:
    """log|det K| of the binary activation codes' kernel (see the module docstring)."""
    import torch
    from torch import nn

    batch = _as_batch(data, seed)
    net = _build(spec, batch.num_classes, seed)
    net.train()
    n = batch.x.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def hook(_module: Any, inputs: tuple) -> None:  # pre-hook: the input, before an in-place SiLU
        c = (inputs[0].detach() > 0).reshape(n, -1).to(torch.float64)
        kernel.add_(c @ c.t() + (1 - c) @ (1 - c).t())

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, (nn.ReLU, nn.SiLU))]
    try:
        with torch.no_grad():
            net(batch.x)
    finally:
        for h in handles:
            h.remove()
    return float(torch.linalg.slogdet(kernel)[1])


def synflow(spec: Any, data: Any = None, seed: int = 0, resolution: int | None = None) -> float:
    """Σ |θ ⊙ ∂R/∂θ| with absolute weights and an all-ones input, float64, BN in eval."""
    import torch

    res = int(resolution or (_as_batch(data, seed).resolution if data is not None else spec.resolution))
    classes = _as_batch(data, seed).num_classes if data is not None else spec.num_classes
    net = _build(spec, classes, seed).double()
    net.eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    out = net(torch.ones(1, 3, res, res, dtype=torch.float64))
    net.zero_grad(set_to_none=True)
    out.sum().backward()
    total = torch.zeros((), dtype=torch.float64)
    for p in net.parameters():
        if p.grad is not None:
            total += (p.detach() * p.grad).abs().sum()
    return float(total)


def _loss_grads(spec: Any, data: Any, seed: int) -> list:
    import torch.nn.functional as F

    batch = _as_batch(data, seed)
    net = _build(spec, batch.num_classes, seed)
    net.train()
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(batch.x), batch.y).backward()
    return [(w.detach(), w.grad) for w in _weights(net) if w.grad is not None]


def grad_norm(spec: Any, data: Any, seed: int = 0) -> float:
    """Σ over conv/linear weights of the L2 norm of the loss gradient on the batch."""
    return float(sum(float(g.double().norm()) for _, g in _loss_grads(spec, data, seed)))


def snip(spec: Any, data: Any, seed: int = 0) -> float:
    """Σ |W ⊙ ∂L/∂W| over conv/linear weights on the batch."""
    return float(sum(float((w.double() * g.double()).abs().sum()) for w, g in _loss_grads(spec, data, seed)))


def params(spec: Any, data: Any = None, seed: int = 0) -> float:
    from search_space import cost
    return float(cost.params(dataclasses.replace(spec, num_classes=1000)))


def macs(spec: Any, data: Any = None, seed: int = 0) -> float:
    from search_space import cost
    return float(cost.macs(dataclasses.replace(spec, num_classes=1000)))


_FUNCS: dict[str, Callable[..., float]] = {"naswot": naswot, "synflow": synflow, "grad_norm": grad_norm,
                                           "snip": snip, "params": params, "macs": macs}


def score(name: str, spec: Any, data: Any = None, seed: int = 0) -> float:
    """The score `name` (one of SCORES) of `spec`: higher predicts better accuracy.

    Runs on the CPU in float32 (synflow float64) on one torch thread (restored after), so
    the value does not depend on the caller's thread count. ValueError for an unknown name or a score that needs data without it.
    """
    fn = _FUNCS.get(str(name))
    if fn is None:
        raise ValueError(f"unknown zero-cost score {name!r}: expected one of {', '.join(SCORES)}")
    if name in NEEDS_DATA and data is None:
        raise ValueError(f"zero-cost score {name!r} needs data (a ProxyData or a Batch)")
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions whatever the caller's setting (and no oversubscription)
    try:
        with torch.random.fork_rng(devices=[]):  # nothing a score does moves the caller's RNG
            value = fn(spec, data, seed=seed)
    finally:
        torch.set_num_threads(threads)
    return value if math.isfinite(value) else float("nan")


def parse_names(text: str) -> list[str]:
    """`all`, `none` or a comma list of SCORES (ValueError naming the unknown one)."""
    t = str(text).strip().lower()
    if t == "all":
        return list(SCORES)
    if t in ("", "none"):
        return []
    names = [p.strip().replace("-", "_") for p in t.split(",") if p.strip()]
    for n in names:
        if n not in SCORES:
            raise ValueError(f"unknown zero-cost score {n!r}: expected all, none or some of {', '.join(SCORES)}")
    return list(dict.fromkeys(names))
