"""How much training a candidate gets on the proxy task, and how; and which of it is measured.

The identity of a measurement (`measurement_id`), one rule for stage 2 and the proxy
check: an (architecture, seed, budget, evaluator) run is the same measurement whenever
the budget fields in `MEASURED` agree. Not part of it: the seed (given on its own),
`device`, `time_limit` and `download` — where a run happens, how long it may take and
whether files may be fetched. So extending stage 2 with other `--workers`, another time
limit or another device trains nothing already stored. A run on another device *is*
taken as the same measurement: on the CPU a seed repeats exactly, on CUDA float rounding
(and bf16 under `precision: auto`) moves accuracies by about the seed noise; the record
keeps its worker, so mixed devices can be told apart afterwards.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

# The proxy datasets (`nas.evaluate.data` loads them) and their class counts where fixed (an
# ImageFolder's comes from its folders). Kept here, free of torch, so that the CLI can
# check names without importing the training code.
DATASETS = ("mnist5k", "digits", "cifar10", "cifar100", "imagefolder")
NUM_CLASSES = {"mnist5k": 10, "digits": 10, "cifar10": 10, "cifar100": 100}


@dataclass
class ProxyBudget:
    """Everything `nas.evaluate.trial.evaluate` needs besides the spec and the cost target.

    `epochs` may be fractional; `steps`, when set, overrides it. Cost is always counted
    at `target_resolution`, training happens at `resolution` (the proxy resolution).
    """

    dataset: str = "mnist5k"          # built-in default, offline
    data_dir: str | None = None
    download: bool = False
    resolution: int = 32              # proxy resolution
    target_resolution: int = 224      # resolution at which MACs are counted
    epochs: float = 2.0               # the default proxy (its rank agreement: nas.proxy check, docs/proxy-check.md)
    steps: int | None = None
    batch_size: int = 128
    optimizer: str = "sgd"            # sgd | rmsprop
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    schedule: str = "cosine"          # cosine | linear
    warmup_epochs: float = 0.2
    label_smoothing: float = 0.1
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"               # cpu | cuda | cuda:N | auto
    time_limit: float | None = None   # seconds per trial
    num_classes: int | None = None    # filled from the dataset when None
    max_images: int | None = None     # stratified cap on images read (big folders); None = all
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    zero_init: bool = True            # zero classifier + last BN of residual branches (nas.evaluate.train)
    channels_last: bool | None = None  # None = auto (on: faster on CPU and CUDA)
    test: bool = False                # also score the held-out test part (stage 2 only; nas.evaluate.data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def at_resolution(self, resolution: int) -> "ProxyBudget":
        """This budget for a network run at `resolution` instead of `target_resolution`.

        Compound scaling's γ: the proxy resolution grows by the same factor (so γ changes
        what is learned, not only what is counted) and cost is counted at `resolution`.
        """
        proxy = max(1, int(round(self.resolution * resolution / self.target_resolution)))
        return dataclasses.replace(self, resolution=proxy, target_resolution=int(resolution))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProxyBudget":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown budget field {unknown[0]!r}")
        return cls(**data)


NOT_MEASURED = ("seed", "device", "time_limit", "download")
MEASURED = tuple(f.name for f in dataclasses.fields(ProxyBudget) if f.name not in NOT_MEASURED)


def measurement_id(key: str, seed: int, budget: ProxyBudget, evaluator: str) -> int:
    """A stable id (< 2**60) of one (architecture, seed, measured budget, evaluator) run
    (module docstring: which fields count). Stored runs hold these ids: never change the rule."""
    fields = {k: v for k, v in dataclasses.asdict(budget).items() if k in MEASURED}
    ident = json.dumps([key, int(seed), fields, evaluator], sort_keys=True)
    return int(hashlib.sha1(ident.encode()).hexdigest()[:15], 16)
