"""Benchmark: training images/s of `nas.evaluate.train` vs a minimal hand-written PyTorch loop.

Same model (EfficientNet-B0, 10 classes), same batch, same data (mnist5k at the proxy
resolution), same memory format and precision, same process; runs alternate and the best
of each is compared, printed as a ratio (goal: >= 0.95x). With CUDA, also prints B0
training images/s at 224 (bf16 + channels_last, synthetic batch) and at the proxy
resolution through `nas.evaluate.train`.

    python bench/proxy_train.py [--quick] [--json] [--steps N] [--batch N] [--resolution R]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nas.evaluate.budget import ProxyBudget  # noqa: E402
from nas.evaluate.data import load  # noqa: E402
from nas.evaluate.train import train  # noqa: E402
from search_space import zoo  # noqa: E402
from search_space.model import build  # noqa: E402


def hand_loop(spec, data, steps: int, batch: int, lr: float, channels_last: bool, bf16: bool) -> float:
    """The baseline: the shortest correct PyTorch training loop over the same tensors."""
    torch.manual_seed(0)
    model = build(spec).to(data.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    n = data.train_x.shape[0]
    order = torch.randperm(n, device=data.device)
    _sync(data.device)
    start = time.perf_counter()
    for step in range(steps):
        i = (step * batch) % (n - batch + 1)
        idx = order[i:i + batch]
        x, y = data.train_x[idx], data.train_y[idx]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(data.device)
    return steps * batch / (time.perf_counter() - start)


def nas_train(spec, data, budget: ProxyBudget) -> float:
    result = train(spec, budget, data)
    if result.status != "ok":
        raise SystemExit(f"nas.evaluate.train failed: {result.status} {result.message}")
    return result.images_per_sec


def gpu_b0_224(steps: int, batch: int) -> float:
    """B0 (1,000 classes) training at 224 with bf16 autocast and channels_last, synthetic data."""
    torch.manual_seed(0)
    model = build(zoo.get("efficientnet-b0")).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    for phase in ("warm", "timed"):
        _sync(x.device)
        start = time.perf_counter()
        for _ in range(3 if phase == "warm" else steps):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(x.device)
    return steps * batch / (time.perf_counter() - start)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (under a minute on 2 cores)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--steps", type=int, default=None, help="training steps per measurement")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    if args.batch < 1 or args.resolution < 32 or (args.steps is not None and args.steps < 1):
        print("error: --batch and --steps must be positive and --resolution at least 32 (B0's total stride)", file=sys.stderr)
        return 2
    steps = args.steps or (8 if args.quick else 30)
    repeats = args.repeats or (2 if args.quick else 3)

    device = "cpu"
    spec = dataclasses.replace(zoo.get("efficientnet-b0"), num_classes=10)
    budget = ProxyBudget(resolution=args.resolution, steps=steps, batch_size=args.batch, device=device)
    data = load(budget)
    bf16 = budget.precision == "bf16"
    channels_last = budget.channels_last is not False

    hand_loop(spec, data, 2, args.batch, budget.lr, channels_last, bf16)  # warm oneDNN kernels
    ours, base = [], []
    for _ in range(repeats):
        base.append(hand_loop(spec, data, steps, args.batch, budget.lr, channels_last, bf16))
        ours.append(nas_train(spec, data, budget))
    figures = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "model": "efficientnet-b0 (10 classes)", "resolution": args.resolution, "batch": args.batch, "steps": steps,
        "repeats": repeats, "channels_last": channels_last, "precision": "bf16" if bf16 else "fp32",
        "nas_train_images_per_sec": round(max(ours), 1), "hand_loop_images_per_sec": round(max(base), 1),
        "ratio": round(max(ours) / max(base), 3),
    }
    print(f"CPU  B0 @ {args.resolution}px, batch {args.batch}, {steps} steps, best of {repeats}:")
    print(f"  nas.evaluate.train  {figures['nas_train_images_per_sec']:9.1f} images/s  (augmentation, schedule, NaN checks included)")
    print(f"  hand loop  {figures['hand_loop_images_per_sec']:9.1f} images/s")
    print(f"  ratio      {figures['ratio']:9.3f}x  (goal >= 0.95x)")
    if not args.quick:
        nchw = hand_loop(spec, data, steps, args.batch, budget.lr, False, bf16)
        figures["hand_loop_nchw_images_per_sec"] = round(nchw, 1)
        print(f"  hand loop, NCHW (not channels_last) {nchw:9.1f} images/s")

    if torch.cuda.is_available():
        gpu_steps = 10 if args.quick else 30
        figures["gpu"] = torch.cuda.get_device_name(0)
        figures["gpu_b0_224_bf16_images_per_sec"] = round(gpu_b0_224(gpu_steps, 128), 1)
        gbudget = dataclasses.replace(budget, device="cuda", steps=gpu_steps * 4, batch_size=256)
        gdata = load(gbudget)
        nas_train(spec, gdata, gbudget)  # warm-up
        figures["gpu_nas_train_proxy_images_per_sec"] = round(nas_train(spec, gdata, gbudget), 1)
        print(f"GPU  {figures['gpu']}: B0 @ 224 bf16+channels_last {figures['gpu_b0_224_bf16_images_per_sec']:.1f} images/s; "
              f"nas.evaluate.train @ {args.resolution}px batch 256 {figures['gpu_nas_train_proxy_images_per_sec']:.1f} images/s")
    else:
        print("GPU  not available: skipped the 224px bf16 figures")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
