"""Accuracy of a sub-network with inherited weights: the one-shot search's measurement.

For each spec: BatchNorm statistics recalibrated on the first un-augmented training
images (`ProxyData.calibration_batches`) (the supernet trains on batch statistics only, and statistics shared by every
sub-network would fit none), then top-1 accuracy on the search-validation part in eval
mode. The same calibration images serve every spec, so two specs differ only in their
weights and structure. `Scorer` keeps the images ready (on the device, channels_last) for
the thousands of calls of a search; `score` is the one-call form.

How many calibration images: 256 by default. BN statistics are per-channel means and
variances; their sampling error falls as 1/sqrt(n), and accuracy stops moving well before
n = 256 on the proxy data (docs/supernet.md has the measurement), while every image
costs one forward pass: calibration is a third of a call's time at 256 images against
800 validation images.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from nas.evaluate.budget import ProxyBudget
from nas.evaluate.data import ProxyData
from nas.evaluate.result import TrialResult
from search_space.spec import ArchSpec

from .model import Supernet

CALIBRATION_IMAGES = 256


class Scorer:
    """`scorer(spec) -> accuracy` of `spec`'s sub-network on search-validation (see the module doc).

    With `channels_last` (the default) the supernet's weights are put in channels_last
    memory, in place, as the proxy trainer does with its models."""

    def __init__(self, supernet: Supernet, data: ProxyData, calibration_images: int = CALIBRATION_IMAGES,
                 batch_size: int = 1024, channels_last: bool | None = None, precision: str = "auto",
                 val_images: int | None = None):
        self.supernet = supernet
        self.device = data.device
        self.channels_last = True if channels_last is None else bool(channels_last)
        if self.channels_last:  # weights too: 2.8x faster forward passes on the CPU (docs/supernet.md)
            supernet.to(memory_format=torch.channels_last)
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        n = max(1, min(int(calibration_images), data.n_train))
        self.calibration = [self._ready(x) for x in data.calibration_batches(n, batch_size)]
        self.val: list[tuple[torch.Tensor, torch.Tensor]] = []
        seen = 0
        for vx, vy in data.val_batches(batch_size):
            if val_images is not None:
                vx, vy = vx[:val_images - seen], vy[:val_images - seen]
            if vx.shape[0] == 0:
                break
            self.val.append((self._ready(vx), vy))
            seen += vx.shape[0]
        self.val_count = seen

    def _ready(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def __call__(self, spec: ArchSpec) -> float:
        net = self.supernet
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            net.recalibrate(spec, self.calibration, channels_last=False)
            was = net.training
            net.eval()
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            with torch.inference_mode():
                for x, y in self.val:
                    correct += (net(x, spec).argmax(1) == y).sum()
            net.train(was)
        return int(correct) / self.val_count


def score(supernet: Supernet, spec: ArchSpec, data: ProxyData, **kwargs: Any) -> float:
    """Search-validation accuracy of `spec` with inherited weights after BN recalibration
    (`Scorer`'s keyword arguments). For many specs build one `Scorer` and call it."""
    return Scorer(supernet, data, **kwargs)(spec)


class InheritedWeights:
    """The one-shot search's evaluator: `evaluator(spec, budget) -> TrialResult` whose accuracy
    is `spec`'s sub-network's with the weights it inherits from the trained supernet in
    `folder` (`Scorer`: BatchNorm recalibrated, then search-validation accuracy).

    Why an object and not a function: the supernet and the images are loaded once per
    process, on the first call, and kept for the thousands that follow; it pickles as its
    settings alone, so a `LocalEngine` worker process builds its own on its first call.
    The images are the supernet's own proxy data (its budget: dataset, resolution and the
    seed that split train from search-validation), so no image the supernet trained on is
    ever scored, whatever the search's seed; only the device is the caller's (`budget.device`).
    The spec's number of classes and resolution are the deliverable's (1000, the target
    resolution); the sub-network has the supernet's classes and runs at its resolution.
    """

    def __init__(self, folder: str | Path, calibration_images: int = CALIBRATION_IMAGES,
                 val_images: int | None = None, batch_size: int = 1024) -> None:
        self.folder = str(folder)
        self.calibration_images = int(calibration_images)
        self.val_images = None if val_images is None else int(val_images)
        self.batch_size = int(batch_size)
        self._scorer: Scorer | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_scorer"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _scorer=None)

    def scorer(self, device: str = "cpu") -> Scorer:
        """The `Scorer` of this process (built on the first call)."""
        if self._scorer is None:
            from nas.evaluate.data import load

            from .checkpoint import read_config
            from .train import load_supernet
            config = read_config(Path(self.folder))
            budget = dataclasses.replace(ProxyBudget.from_dict(config["budget"]), device=str(device),
                                         time_limit=None, test=False)
            net = load_supernet(self.folder, device=str(device))
            self._scorer = Scorer(net, load(budget), self.calibration_images, self.batch_size,
                                  val_images=self.val_images)
        return self._scorer

    def __call__(self, spec: ArchSpec, budget: ProxyBudget) -> TrialResult:
        t0 = time.time()
        scorer = self.scorer(budget.device)
        accuracy = scorer(dataclasses.replace(spec, num_classes=scorer.supernet.num_classes))
        return TrialResult(status="ok", accuracy=accuracy, wall_time=time.time() - t0)
