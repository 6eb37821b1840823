"""How much training a candidate gets on the proxy task, and how."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The proxy datasets (`nas.data` loads them) and their class counts where fixed (an
# ImageFolder's comes from its folders). Kept here, free of torch, so that the CLI can
# check names without importing the training code.
DATASETS = ("mnist5k", "digits", "cifar10", "cifar100", "imagefolder")
NUM_CLASSES = {"mnist5k": 10, "digits": 10, "cifar10": 10, "cifar100": 100}


@dataclass
class ProxyBudget:
    """Everything `nas.trial.evaluate` needs besides the spec and the cost target.

    `epochs` may be fractional; `steps`, when set, overrides it. Cost is always counted
    at `target_resolution`, training happens at `resolution` (the proxy resolution).
    """

    dataset: str = "mnist5k"          # built-in default, offline
    data_dir: str | None = None
    download: bool = False
    resolution: int = 32              # proxy resolution
    target_resolution: int = 224      # resolution at which MACs are counted
    epochs: float = 2.0               # default: B0 reaches ~0.9 on mnist5k in ~10-20 s of CPU
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
    zero_init: bool = True            # zero classifier + last BN of residual branches (nas.train)
    channels_last: bool | None = None  # None = auto (on: faster on CPU and CUDA)
    test: bool = False                # also score the held-out test part (stage 2 only; nas.data)

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
