"""The proxy trainer: a short, fast, seeded training run that yields validation accuracy.

No DataLoader: batches come from `nas.evaluate.data.ProxyData` (uint8 rows of the proxy-data
cache, converted, normalized and augmented on the device). On CUDA the run uses
bf16 autocast, on CPU fp32 by default; channels_last everywhere by default (faster than
NCHW for MBConv nets: bench/proxy_train.py, BENCHMARKS.md). Both are switchable in the budget.
On CPU a seed fixes everything (model init, batch order, augmentation, dropout), so the
same seed gives the same accuracy exactly.

Failures are results, not exceptions: a NaN/Inf loss gives `diverged`, out-of-memory
`oom`, the wall-time limit `timeout`, any other exception `failed` with its message.
Only `UserError` (bad configuration, the same for every trial) propagates.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from .budget import ProxyBudget
from .data import ProxyData, load
from .device import resolve
from ..errors import UserError
from .result import TrialResult, stopped_result

OPTIMIZERS = ("sgd", "rmsprop")
SCHEDULES = ("cosine", "linear")
PRECISIONS = ("auto", "fp32", "bf16")


class _Diverged(Exception):
    pass


class _Timeout(Exception):
    pass


class _Stopped(Exception):
    """ASHA said stop at a rung (nas.search.asha): the result is status 'stopped'."""

    def __init__(self, rung: int, fraction: float, accuracy: float) -> None:
        super().__init__(rung, fraction, accuracy)
        self.rung, self.fraction, self.accuracy = rung, fraction, accuracy


def check_budget(budget: ProxyBudget) -> None:
    """One-line `UserError` for a budget that cannot run."""
    if budget.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer {budget.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if budget.schedule not in SCHEDULES:
        raise UserError(f"schedule {budget.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if budget.precision not in PRECISIONS:
        raise UserError(f"precision {budget.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if budget.steps is None and not budget.epochs > 0:
        raise UserError(f"epochs {budget.epochs!r}: expected a positive number (or set steps)")
    if budget.steps is not None and budget.steps < 1:
        raise UserError(f"steps {budget.steps!r}: expected a positive integer")
    if budget.batch_size < 1:
        raise UserError(f"batch_size {budget.batch_size!r}: expected a positive integer")
    if not budget.lr > 0:
        raise UserError(f"lr {budget.lr!r}: expected a positive number")
    if budget.warmup_epochs < 0 or not 0 <= budget.label_smoothing < 1:
        raise UserError("warmup_epochs must be >= 0 and label_smoothing in [0, 1)")
    if budget.time_limit is not None and not budget.time_limit > 0:
        raise UserError(f"time_limit {budget.time_limit!r}: expected a positive number of seconds")


def check_resolution(spec, resolution: int) -> None:
    """The proxy resolution must be at least the network's total stride (one pixel at the end)."""
    if resolution < spec.total_stride:
        raise UserError(f"proxy resolution {resolution} is below the network's total stride {spec.total_stride}")


def lr_at(step: int, total: int, warmup: int, base_lr: float, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then cosine or linear decay to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    return base_lr * (1 - progress)


def proxy_init(model: torch.nn.Module) -> None:
    """Zero the classifier and the last BN scale of every residual branch.

    The reference init (classifier uniform +-1/sqrt(classes)) gives 10-class logits with a
    std of several units, so a short run starts from a loss near 5 and spends its steps
    recovering. Zeroed, the net starts at uniform predictions and as a shallow network
    (each residual layer an identity), which is what a few dozen proxy steps can train.
    """
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if linears:
        torch.nn.init.zeros_(linears[-1].weight)
        if linears[-1].bias is not None:
            torch.nn.init.zeros_(linears[-1].bias)
    for layer in model.modules():
        if getattr(layer, "residual", False) is True:
            bns = [m for m in layer.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            if bns and bns[-1].weight is not None:
                torch.nn.init.zeros_(bns[-1].weight)


def make_optimizer(model: torch.nn.Module, budget: ProxyBudget) -> torch.optim.Optimizer:
    """SGD (momentum) or RMSProp (TF-style decay 0.9, eps 1e-3); no weight decay on BN/bias."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": budget.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if budget.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=budget.lr, momentum=budget.momentum, nesterov=False)
    return torch.optim.RMSprop(groups, lr=budget.lr, alpha=0.9, eps=1e-3, momentum=budget.momentum)


def recalibrate_bn(model: torch.nn.Module, data: ProxyData, batch: int, bf16: bool, channels_last: bool,
                   images: int = 1024) -> None:
    """Recompute BatchNorm running statistics from `images` un-augmented training images.

    A proxy run is a few dozen steps; with the reference BN momentum (0.01) the running
    statistics are still near their initial values and eval-mode accuracy would be chance.
    An exact average over a fixed set of training batches fixes that cheaply (forward only).
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = model.training
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches seen
        m.train()
    with torch.no_grad(), torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=bf16):
        for x in data.calibration_batches(images, batch):
            model(_layout(x, channels_last))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)


def evaluate_accuracy(model: torch.nn.Module, data: ProxyData, bf16: bool, channels_last: bool,
                      part: str = "val") -> float:
    """Top-1 accuracy on the held-out validation part, in large batches without autograd."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode(), torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=bf16):
        for x, y in data.val_batches(1024, part):
            correct += (model(_layout(x, channels_last)).argmax(1) == y).sum()
    model.train(was_training)
    return int(correct) / data.part_size(part)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The batch in the model's memory format (the data's batches come channels_last)."""
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def train(spec, budget: ProxyBudget, data: ProxyData | None = None,
          on_epoch: Callable[[int, float], None] | None = None, rungs: list | None = None,
          on_rung: Callable[[int, float], bool] | None = None, weights_path: str | None = None) -> TrialResult:
    """Train `spec` for `budget` on the proxy dataset; always returns a TrialResult.

    `on_epoch(epoch, accuracy)` is called after each epoch's validation, so that an
    engine can report the learning curve while training runs (NNI's assessors use it
    to stop a trial early). ASHA (`nas.search.asha`): at each fraction in `rungs` of the total
    steps the model is scored on search-validation and `on_rung(rung index, accuracy)`
    asked; False ends the run as status 'stopped' with that accuracy. Scoring a rung
    changes neither the weights nor the RNG, so a trial that goes on ends exactly as
    without rungs. `weights_path`: where an ok run's trained weights are saved
    (`search_space.weights`: safetensors with the trained spec; stage 2). A weights file
    that cannot be written (a full disk) is said in the message, and the run stays ok:
    the measurement stands, the machine failed.
    """
    check_budget(budget)
    device = torch.device(resolve(budget.device))
    if data is None:
        data = load(dataclasses.replace(budget, device=str(device)))
    check_resolution(spec, data.resolution)
    num_classes = budget.num_classes or data.num_classes
    if num_classes < data.num_classes:
        raise UserError(f"num_classes {num_classes} is below the dataset's {data.num_classes} classes")
    start = time.perf_counter()
    state = {"loss": None, "epoch_accuracies": [], "train_time": 0.0, "images": 0, "test_accuracy": None}
    try:
        with torch.random.fork_rng(devices=[]):
            accuracy = _run(dataclasses.replace(spec, num_classes=num_classes), budget, data, state, start,
                            on_epoch, rungs if on_rung is not None else None, on_rung)
        status, message = "ok", ""
        if weights_path:
            message = _save_weights(state.pop("model"), spec, num_classes, data.resolution, weights_path)
    except _Stopped as exc:
        stopped = stopped_result(exc.rung, exc.fraction, exc.accuracy)
        accuracy, status, message = exc.accuracy, "stopped", stopped.message
        state["stopped_at"] = stopped.stopped_at
    except _Diverged as exc:
        accuracy, status, message = None, "diverged", str(exc)
    except _Timeout as exc:
        accuracy, status, message = None, "timeout", str(exc)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a result
        accuracy, status, message = None, ("oom" if is_oom(exc) else "failed"), one_line(exc)
    if status == "oom":
        gc.collect()
        torch.cuda.empty_cache()  # a no-op where CUDA was never initialized
    ips = state["images"] / state["train_time"] if state["train_time"] > 0 else None
    return TrialResult(status=status, accuracy=accuracy, loss=state["loss"], epoch_accuracies=state["epoch_accuracies"],
                       wall_time=time.perf_counter() - start, images_per_sec=ips, message=message,
                       test_accuracy=state["test_accuracy"] if status == "ok" else None,
                       stopped_at=state.get("stopped_at"))


def _run(spec, budget: ProxyBudget, data: ProxyData, state: dict, start: float,
         on_epoch: Callable[[int, float], None] | None, rungs: list | None = None,
         on_rung: Callable[[int, float], bool] | None = None) -> float:
    from search_space.model import build

    device = data.device
    cuda = device.type == "cuda"
    bf16 = budget.precision == "bf16" or (budget.precision == "auto" and cuda)
    channels_last = True if budget.channels_last is None else bool(budget.channels_last)
    torch.manual_seed(budget.seed)
    if cuda:
        torch.cuda.manual_seed_all(budget.seed)
    generator = torch.Generator().manual_seed(budget.seed)
    model = build(spec)
    if budget.zero_init:
        proxy_init(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, budget)

    n_train = data.n_train
    batch = min(budget.batch_size, n_train)
    per_epoch = n_train // batch
    total = budget.steps if budget.steps is not None else max(1, math.ceil(budget.epochs * per_epoch))
    warmup = min(total - 1, round(budget.warmup_epochs * per_epoch)) if budget.warmup_epochs else 0
    check_every = 1 if not cuda else 25  # a loss check syncs the GPU; on CPU it is free
    limit = budget.time_limit
    # ASHA: the step of each decision rung (a fraction of the total steps; see train)
    rung_at = {}
    for i, f in enumerate(rungs or []):
        rung_at.setdefault(min(total, max(1, round(float(f) * total))), []).append((i, float(f)))

    step = 0
    flagged = torch.zeros((), dtype=torch.bool, device=device)
    loss = None
    model.train()
    while step < total:
        t0 = time.perf_counter()
        for x, y in data.batches(batch, generator):
            if step >= total:
                break
            if limit is not None and time.perf_counter() - start > limit:
                raise _Timeout(f"wall-time limit {limit:g} s reached after {step} of {total} steps")
            lr = lr_at(step, total, warmup, budget.lr, budget.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = _layout(x, channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=budget.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            state["images"] += x.shape[0]
            flagged |= ~torch.isfinite(loss.detach())
            if step % check_every == 0 or step == total:
                if bool(flagged):
                    raise _Diverged(f"loss became NaN/Inf at step {step}")
                state["loss"] = float(loss.detach())
            for rung, fraction in rung_at.get(step, ()):
                if bool(flagged):
                    raise _Diverged(f"loss became NaN/Inf by step {step}")
                recalibrate_bn(model, data, batch, bf16, channels_last)
                acc = evaluate_accuracy(model, data, bf16, channels_last)
                if not on_rung(rung, acc):
                    raise _Stopped(rung, fraction, acc)
        if cuda:
            torch.cuda.synchronize(device)
        state["train_time"] += time.perf_counter() - t0
        if bool(flagged):
            raise _Diverged(f"loss became NaN/Inf by step {step}")
        state["loss"] = float(loss.detach()) if loss is not None else None
        recalibrate_bn(model, data, batch, bf16, channels_last)
        state["epoch_accuracies"].append(evaluate_accuracy(model, data, bf16, channels_last))
        if on_epoch is not None:
            on_epoch(len(state["epoch_accuracies"]), state["epoch_accuracies"][-1])
    if data.has_test:  # stage 2 only: after training, never seen by any choice
        state["test_accuracy"] = evaluate_accuracy(model, data, bf16, channels_last, "test")
    state["model"] = model
    return state["epoch_accuracies"][-1]


def _save_weights(model: torch.nn.Module, spec, num_classes: int, resolution: int, path: str) -> str:
    """Save the trained weights with the spec as trained; '' or the message of a failed write."""
    from search_space.weights import save
    try:
        save(model, dataclasses.replace(spec, num_classes=num_classes, resolution=resolution), path)
    except OSError as exc:
        return f"weights not saved to {path}: {exc.strerror or exc}"
    return ""


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):  # GPU memory, or host memory
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
