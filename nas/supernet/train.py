"""Sandwich-rule training of the supernet, with in-place distillation, resumable.

Each step runs, on one batch, the largest sub-network (trained on the labels, with the
budget's label smoothing), the smallest and `random_subnets` sub-networks drawn uniformly
from the space (trained on the largest's detached soft predictions: in-place
distillation, as BigNAS and once-for-all do); the gradient of their mean loss takes one
optimizer step (the sum, at the proxy's learning rate, made the default space's loss rise:
docs/supernet.md). The proxy trainer's conventions hold (`nas.evaluate.train`): the budget's
optimizer (`make_optimizer`), learning-rate schedule (`lr_at`), batch size, label
smoothing, precision (bf16 autocast on CUDA), channels_last and seed; a NaN/Inf loss ends
the run as status `diverged` with a message, the budget's `time_limit` as `timeout`, any
other failure as `failed` (or `oom`); only bad input (`UserError`) is raised.

Every random draw of a step comes from a generator seeded by (seed, epoch) for the batch
order and augmentation, and by (seed, step) for the sub-networks, dropout and
drop-connect, so a run resumed from its last checkpoint ends with the same weights as an
uninterrupted one (on the CPU, bit for bit). Files: `nas.supernet.checkpoint`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from nas.errors import UserError
from nas.evaluate.budget import ProxyBudget
from nas.evaluate.data import ProxyData, load
from nas.evaluate.device import resolve
from nas.evaluate.train import check_budget, check_resolution, is_oom, lr_at, make_optimizer, one_line

from . import checkpoint as files
from .distributed import agree, average_gradients, local_rank, rank_world
from .model import KERNEL_MODES, Supernet

# Measured (docs/supernet.md): on mnist5k at 32 px the default trains in about 2-3 minutes
# of the 2-core CPU this project is developed on.
DEFAULT_EPOCHS = 6.0
CHECK_EVERY_CUDA = 25  # a loss check syncs the GPU; on the CPU it is free and runs every step
# Budget fields that may change on --resume (where and how long, not what is trained).
MAY_CHANGE = ("device", "time_limit", "download")


@dataclass
class Settings:
    """How the supernet trains, besides the budget (data, optimizer, schedule, seed)."""

    epochs: float = DEFAULT_EPOCHS
    random_subnets: int = 2          # sub-networks drawn per step besides the largest and smallest
    distill: bool = True             # in-place distillation from the largest
    kernel_mode: str = "transform"   # nas.supernet.model.KERNEL_MODES
    checkpoint_every: int = 0        # steps between checkpoints; 0 = once per epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Settings":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class TrainResult:
    """What a supernet training run measured; `status` as `nas.evaluate.result.STATUSES`."""

    status: str                       # ok | diverged | timeout | oom | failed
    loss: float | None = None         # the largest sub-network's label loss, mean over the last epoch
    losses: list[float] = field(default_factory=list)   # that mean, per finished epoch
    steps: int = 0
    total_steps: int = 0
    wall_time: float = 0.0            # seconds of training, over every session of a resumed run
    images_per_sec: float | None = None  # training images per second (each through 2 + N sub-networks)
    message: str = ""
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Diverged(Exception):
    pass


class _Timeout(Exception):
    pass


def check_settings(settings: Settings) -> None:
    if not (isinstance(settings.epochs, (int, float)) and math.isfinite(settings.epochs) and settings.epochs > 0):
        raise UserError(f"epochs {settings.epochs!r}: expected a positive number")
    if not isinstance(settings.random_subnets, int) or settings.random_subnets < 0:
        raise UserError(f"random_subnets {settings.random_subnets!r}: expected an integer >= 0")
    if settings.kernel_mode not in KERNEL_MODES:
        raise UserError(f"kernel_mode {settings.kernel_mode!r}: expected one of {', '.join(KERNEL_MODES)}")
    if not isinstance(settings.checkpoint_every, int) or settings.checkpoint_every < 0:
        raise UserError(f"checkpoint_every {settings.checkpoint_every!r}: expected an integer >= 0")


def seed_of(seed: int, *parts: int) -> int:
    """A 63-bit seed from (seed, what, index): independent streams per epoch and step."""
    return int(np.random.SeedSequence([int(seed), *parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def config_of(space, budget: ProxyBudget, settings: Settings, num_classes: int) -> dict[str, Any]:
    """What the files record about how the supernet was trained (and what a resume must match)."""
    return {"space": space.to_yaml(), "budget": budget.to_dict(), "settings": settings.to_dict(),
            "num_classes": int(num_classes)}


def train(space, budget: ProxyBudget, folder: str | Path, settings: Settings | None = None, resume: bool = False,
          data: ProxyData | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train the supernet of `space` on the train part of the budget's proxy data into `folder`.

    `resume`: continue from `folder`'s checkpoint (a fresh start when it has none); the
    space, budget and settings must be those it was trained with (only `device`,
    `time_limit` and `download` may change). Inside a process group (`nas.supernet.distributed`)
    each rank trains on its shard of every batch and rank 0 alone writes and logs.
    Always returns a `TrainResult`; raises only `UserError`.
    """
    settings = settings or Settings()
    check_budget(budget)
    check_settings(settings)
    rank, world = rank_world()
    device = torch.device(resolve(budget.device))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank())
    budget = dataclasses.replace(budget, device=str(device))
    if data is None:
        data = load(budget)
    check_resolution(space.skeleton(), data.resolution)
    num_classes = budget.num_classes or data.num_classes
    if num_classes < data.num_classes:
        raise UserError(f"num_classes {num_classes} is below the dataset's {data.num_classes} classes")
    folder = Path(folder)
    config = config_of(space, budget, settings, num_classes)
    saved = files.read_checkpoint(folder) if resume else None
    if saved is not None:
        _same_config(saved["config"], config, folder)
    say = log if (log is not None and rank == 0) else (lambda _msg: None)

    start = time.perf_counter()
    state: dict[str, Any] = {"step": 0, "losses": [], "images": 0, "time": 0.0, "elapsed": 0.0, "total": 0}
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model = _run(space, budget, settings, data, num_classes, folder, config, saved, state, say, rank, world)
        status, message = "ok", ""
    except _Diverged as exc:
        status, message, model = "diverged", str(exc), None
    except _Timeout as exc:
        status, message, model = "timeout", str(exc), None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a result
        status, message, model = ("oom" if is_oom(exc) else "failed"), one_line(exc), None
    elapsed = state["elapsed"] + (time.perf_counter() - start)
    result = TrainResult(status=status, loss=state["losses"][-1] if state["losses"] else None,
                         losses=list(state["losses"]), steps=state["step"], total_steps=state["total"],
                         wall_time=elapsed, message=message, world_size=world,
                         images_per_sec=state["images"] / state["time"] if state["time"] > 0 else None)
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        if model is not None:
            files.save_weights(folder, model, config)
        files.write_manifest(folder, {**config, "result": result.to_dict(), "seed": budget.seed,
                                      "epochs": settings.epochs, "files": {"weights": files.WEIGHTS,
                                                                           "checkpoint": files.CHECKPOINT}})
    return result


def _run(space, budget: ProxyBudget, settings: Settings, data: ProxyData, num_classes: int, folder: Path,
         config: dict, saved: dict | None, state: dict, say: Callable[[str], None], rank: int, world: int) -> Supernet:
    device = data.device
    cuda = device.type == "cuda"
    bf16 = budget.precision == "bf16" or (budget.precision == "auto" and cuda)
    channels_last = True if budget.channels_last is None else bool(budget.channels_last)
    torch.manual_seed(budget.seed)
    model = Supernet(space, num_classes, settings.kernel_mode)
    if budget.zero_init:
        model.zero_init()
    model = model.to(device)
    if channels_last:  # as the proxy trainer: 1.5x faster training steps on the CPU (docs/supernet.md)
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, budget)
    params = [p for p in model.parameters()]
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state.update(step=saved["step"], losses=list(saved["losses"]), elapsed=saved["elapsed"])
        say(f"resumed at step {saved['step']}")

    n_train = data.n_train
    batch = min(budget.batch_size, n_train)
    if batch < world:
        raise UserError(f"batch size {batch} is below the number of processes {world}")
    per_epoch = n_train // batch
    total = max(1, math.ceil(settings.epochs * per_epoch))
    warmup = min(total - 1, round(budget.warmup_epochs * per_epoch)) if budget.warmup_epochs else 0
    every = settings.checkpoint_every or per_epoch
    state["total"] = total
    fixed = (model.largest(), model.smallest())
    epoch_sum = torch.zeros((), dtype=torch.float64, device=device)
    flagged = torch.zeros((), dtype=torch.bool, device=device)
    check_every = CHECK_EVERY_CUDA if cuda else 1
    limit = budget.time_limit  # over every session of a resumed run
    session_start = time.perf_counter()
    model.train()
    step = state["step"]
    if step % per_epoch:  # resumed inside an epoch: its loss sum so far is in the checkpoint
        epoch_sum += saved["epoch_sum"]
    while step < total:
        epoch = step // per_epoch
        generator = torch.Generator().manual_seed(seed_of(budget.seed, 0, epoch))
        skip = step - epoch * per_epoch
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(data.batches(batch, generator)):
            if i < skip:
                continue  # a resumed epoch: the batches (and augmentation draws) already trained
            if step >= total:
                break
            if limit is not None and state["elapsed"] + time.perf_counter() - session_start > limit:
                raise _Timeout(f"wall-time limit {limit:g} s reached after {step} of {total} steps")
            lr = lr_at(step, total, warmup, budget.lr, budget.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(seed_of(budget.seed, 1, step))  # dropout and drop-connect of this step
            rng = np.random.default_rng(seed_of(budget.seed, 2, step))
            specs = list(fixed) + [model.sample(rng) for _ in range(settings.random_subnets)]
            share = 1.0 / len(specs)  # the gradient of the mean loss over the step's sub-networks
            if world > 1:
                x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                teacher = model(x, specs[0]).float()
            loss = F.cross_entropy(teacher, y, label_smoothing=budget.label_smoothing)
            (loss * share).backward()
            flagged |= ~torch.isfinite(loss.detach())
            soft = teacher.detach().softmax(1) if settings.distill else None
            for spec in specs[1:]:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(x, spec).float()
                if soft is not None:
                    sub = F.cross_entropy(logits, soft)
                else:
                    sub = F.cross_entropy(logits, y, label_smoothing=budget.label_smoothing)
                (sub * share).backward()
                flagged |= ~torch.isfinite(sub.detach())
            epoch_sum += loss.detach().double()
            flagged = average_gradients(params, flagged)  # any rank's non-finite loss flags every rank
            if (step + 1) % check_every == 0 or (step + 1) % every == 0 or step + 1 == total:
                if bool(flagged):
                    raise _Diverged(f"loss became NaN/Inf by step {step + 1} of {total}")
            optimizer.step()
            step += 1
            state["step"] = step
            state["images"] += x.shape[0] * world
            if step % per_epoch == 0:
                mean = float(epoch_sum) / per_epoch
                state["losses"].append(_reduced(mean, world))
                epoch_sum.zero_()
            if step % every == 0 or step == total:
                state["time"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                if rank == 0:
                    folder.mkdir(parents=True, exist_ok=True)
                    files.save_checkpoint(folder, model, optimizer, step, config, state["losses"],
                                          state["elapsed"] + time.perf_counter() - session_start,
                                          epoch_sum=float(epoch_sum))
            if step % per_epoch == 0:
                say(f"epoch {step // per_epoch}/{math.ceil(total / per_epoch)}: step {step}/{total}, "
                    f"loss {state['losses'][-1]:.4f} (largest), lr {lr:.4g}")
        if cuda:
            torch.cuda.synchronize(device)
        state["time"] += time.perf_counter() - t0
    if bool(flagged):
        raise _Diverged(f"loss became NaN/Inf by step {step} of {total}")
    if not agree(params):
        raise RuntimeError("the processes ended with different weights (a bug: they must stay identical)")
    return model


def _reduced(value: float, world: int) -> float:
    """The mean of `value` over the ranks (each saw its own shard)."""
    if world == 1:
        return value
    import torch.distributed as dist
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]) / world


def _same_config(stored: dict, config: dict, folder: Path) -> None:
    """On resume, what is trained must be what the checkpoint was trained as."""
    if stored.get("space") != config["space"]:
        raise UserError(f"--resume: {folder} was trained over another search space; it cannot change on resume")
    for part in ("settings", "budget"):
        old, new = stored.get(part, {}), config[part]
        for key in sorted(set(old) | set(new)):
            if part == "budget" and key in MAY_CHANGE:
                continue
            if old.get(key) != new.get(key):
                name = key.replace("_", "-")
                raise UserError(f"--resume: {name} was {old.get(key)!r} in {folder}, now {new.get(key)!r}; "
                                "it cannot change on resume")
    if stored.get("num_classes") != config["num_classes"]:
        raise UserError(f"--resume: {folder} has {stored.get('num_classes')} classes, the data {config['num_classes']}")


def load_supernet(folder: str | Path, device: str = "cpu") -> Supernet:
    """The trained supernet in `folder` (`supernet.safetensors`), on `device`, in eval mode."""
    from search_space.space import SearchSpace

    path = Path(folder) / files.WEIGHTS
    if not path.is_file():
        raise UserError(f"{folder}: no trained supernet ({files.WEIGHTS} missing; train it with "
                        "python -m nas.supernet train)")
    config, tensors = files.read_weights(path)
    try:
        space = SearchSpace.from_yaml_text(config["space"], source=f"{path}'s space")
        settings = Settings.from_dict(config.get("settings", {}))
        model = Supernet(space, int(config["num_classes"]), settings.kernel_mode)
        model.load_state_dict(tensors)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: does not load into its supernet ({one_line(exc)})") from None
    return model.to(torch.device(resolve(device))).eval()

