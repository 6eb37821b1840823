"""Benchmark: training images/s of `nas.evaluate.train` vs a minimal hand-written PyTorch loop.

Same model (EfficientNet-B0, 10 classes), same batch, same data (mnist5k at the proxy
resolution), same memory format and precision, same process; runs alternate and the best
of each is compared, printed as a ratio (goal: >= 0.95x). With CUDA, also prints B0
training images/s at 224 (bf16 + channels_last, synthetic batch) and at the proxy
resolution through `nas.evaluate.train`.

Precision on the CPU (fp32 against bf16 autocast), to decide what `precision: auto` means
there. The machine's peak: a 2048x2048 matmul, fp32 and bf16, best of alternating rounds,
on the trainer's threads and on all cores. Then EfficientNet-B0 and seeded random specs of
the default space, each trained by `nas.evaluate.train` with the default proxy budget in
fp32 and in bf16 on seeds 0 and 1 (the two precisions alternate, first one then the other,
so that other jobs on the CPU load both alike). From those runs: images/s; the achieved
multiply-add rate (MACs per image at the proxy resolution x 3 for forward + backward, x
images/s) as a fraction of the same precision's matmul peak; and the rank fidelity of bf16
accuracies: Kendall tau of fp32 against bf16 on the same seed (mean over the seeds) beside
the seed noise (fp32 seed 0 against fp32 seed 1), with paired bootstrap intervals over the
architectures. bf16 would become the CPU default only if it is faster by `CLEAR_MARGIN`
(geometric mean of images/s over the architectures, and CPU seconds of whole trials) and
its tau is not clearly below the seed noise's (the paired interval of the difference reaches 0).
Run it as the search runs its CPU workers, one thread each: `OMP_NUM_THREADS=1`.

    python bench/proxy_train.py [--quick] [--json] [--steps N] [--batch N] [--resolution R] [--archs N]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nas.evaluate.budget import ProxyBudget  # noqa: E402
from nas.evaluate.data import load  # noqa: E402
from nas.evaluate.train import train  # noqa: E402
from nas.proxy.stats import LEVEL, bootstrap, interval, kendall, resamples  # noqa: E402
from search_space import SearchSpace, zoo  # noqa: E402
from search_space.cost import macs  # noqa: E402
from search_space.model import build  # noqa: E402

PEAK_SIZE = 2048          # the matmul that measures the machine's peak
CLEAR_MARGIN = 1.2        # bf16 counts as faster only at >= 1.2x fp32 (geometric mean over architectures)
PRECISIONS = ("fp32", "bf16")
SEEDS = (0, 1)


def hand_loop(spec, data, steps: int, batch: int, lr: float, channels_last: bool, bf16: bool) -> float:
    """The baseline: the shortest correct PyTorch training loop over the same tensors."""
    torch.manual_seed(0)
    model = build(spec).to(data.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    # the train part as one float tensor on the device, made before the clock starts
    train_x = torch.cat(list(data.calibration_batches(data.n_train, 1024)))
    train_y = data.train_labels().to(data.device)
    n = train_x.shape[0]
    order = torch.randperm(n, device=data.device)
    _sync(data.device)
    start = time.perf_counter()
    for step in range(steps):
        i = (step * batch) % (n - batch + 1)
        idx = order[i:i + batch]
        x, y = train_x[idx], train_y[idx]
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


def gemm_peak(rounds: int, per_round: int, size: int = PEAK_SIZE, threads: int | None = None) -> dict:
    """GFLOP/s (2 n^3 per product) of an n x n matmul on `threads` (default: torch's), fp32 and
    bf16: the best of `rounds` rounds, the precisions alternating so that a busy CPU slows both alike."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _gemm_best(rounds, per_round, size)
    finally:
        torch.set_num_threads(before)


def _gemm_best(rounds: int, per_round: int, size: int) -> dict:
    a, b = torch.randn(size, size), torch.randn(size, size)
    operands = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    for x, y in operands.values():
        x @ y  # warm: oneDNN picks its kernel on the first call
    best = dict.fromkeys(PRECISIONS, 0.0)
    for r in range(rounds):
        for prec in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
            x, y = operands[prec]
            start = time.perf_counter()
            for _ in range(per_round):
                x @ y
            best[prec] = max(best[prec], 2 * size ** 3 * per_round / (time.perf_counter() - start) / 1e9)
    return {k: round(v, 1) for k, v in best.items()}


def study_archs(count: int, seed: int = 0) -> list:
    """EfficientNet-B0 and `count - 1` random specs of the default space (seeded), 10 classes."""
    space = SearchSpace.default()
    rng = np.random.default_rng(seed)
    archs = [("efficientnet-b0", dataclasses.replace(zoo.get("efficientnet-b0"), num_classes=10))]
    while len(archs) < count:
        archs.append((f"random-{len(archs)}", space.decode(space.sample(rng), num_classes=10)))
    return archs


def precision_runs(archs: list, budget: ProxyBudget, seeds=SEEDS) -> list[dict]:
    """Train every (architecture, seed) in fp32 and in bf16 autocast; the order of the two
    alternates from one pair to the next, so that drifting load on the CPU favours neither."""
    rows = []
    for i, (name, spec) in enumerate(archs):
        row = {"arch": name, "macs_per_image": macs(spec, budget.resolution), "runs": {p: {} for p in PRECISIONS}}
        for s in seeds:
            for prec in (PRECISIONS if (i + s) % 2 == 0 else PRECISIONS[::-1]):
                b = dataclasses.replace(budget, precision=prec, seed=s)
                data = load(b)
                cpu = time.process_time()
                r = train(spec, b, data)
                row["runs"][prec][str(s)] = {"status": r.status, "accuracy": r.accuracy, "images_per_sec": r.images_per_sec,
                                             "wall_s": round(r.wall_time, 2), "cpu_s": round(time.process_time() - cpu, 2)}
                print(f"  [{i + 1}/{len(archs)}] {name} seed {s} {prec}: {r.status} accuracy {r.accuracy} "
                      f"{r.images_per_sec or 0:.1f} images/s", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _finite(v: float) -> float | None:
    return round(float(v), 4) if v is not None and np.isfinite(v) else None


def _ci(samples: np.ndarray) -> list:
    return [_finite(v) for v in interval(samples)]


def speed_summary(rows: list[dict], peak: dict) -> dict:
    """Per architecture, per precision: the better images/s of its seeds (ok runs), the
    multiply-add rate that is (x 3 for forward + backward) and its fraction of the peak.

    Also, as a check that does not depend on how busy the CPU was, the ratio of CPU seconds
    (this process, all threads) of whole trials, fp32 over bf16: > 1 means bf16 did less work.
    """
    table, speedups, cpu = [], [], {p: 0.0 for p in PRECISIONS}
    for row in rows:
        entry = {"arch": row["arch"], "macs_per_image": row["macs_per_image"]}
        for prec in PRECISIONS:
            ips = [r["images_per_sec"] for r in row["runs"][prec].values() if r["status"] == "ok" and r["images_per_sec"]]
            if not ips:
                entry[prec] = None
                continue
            rate = 3 * row["macs_per_image"] * max(ips)  # multiply-adds per second
            entry[prec] = {"images_per_sec": round(max(ips), 1), "gmacs": round(rate / 1e9, 2),
                           "of_peak": round(rate / (peak[prec] * 1e9 / 2), 4)}  # peak MAC/s = FLOP/s / 2
        if entry["fp32"] and entry["bf16"]:
            entry["bf16_speedup"] = round(entry["bf16"]["images_per_sec"] / entry["fp32"]["images_per_sec"], 3)
            speedups.append(entry["bf16_speedup"])
            for prec in PRECISIONS:
                cpu[prec] += sum(r["cpu_s"] for r in row["runs"][prec].values())
        table.append(entry)
    geo = float(np.exp(np.mean(np.log(speedups)))) if speedups else float("nan")
    return {"table": table, "bf16_speedup_geomean": _finite(geo),
            "bf16_speedup_range": [min(speedups), max(speedups)] if speedups else None,
            "bf16_faster_archs": sum(v > 1 for v in speedups), "archs_compared": len(speedups),
            "cpu_seconds": {p: round(v, 1) for p, v in cpu.items()},
            "bf16_speedup_cpu_time": round(cpu["fp32"] / cpu["bf16"], 3) if cpu["bf16"] > 0 else None}


def fidelity_summary(rows: list[dict], seeds=SEEDS, n_boot: int = 2000) -> dict:
    """Kendall tau of bf16 accuracies against fp32 on the same seed (mean over the seeds),
    beside the seed noise tau (fp32 seed 0 against seed 1), over the architectures whose
    runs all finished; intervals by a paired bootstrap over architectures (`nas.proxy.stats`)."""
    ok = [r for r in rows if all(r["runs"][p][str(s)]["status"] == "ok" for p in PRECISIONS for s in seeds)]
    acc = {p: np.array([[r["runs"][p][str(s)]["accuracy"] for s in seeds] for r in ok], float).reshape(len(ok), -1)
           for p in PRECISIONS}
    out = {"archs": len(ok), "failed_archs": [r["arch"] for r in rows if r not in ok], "seeds": list(seeds),
           "level": LEVEL, "n_boot": n_boot}
    if len(ok) < 2:
        return {**out, "tau_fp32_bf16": None, "tau_seed_noise": None, "faithful": False}
    fp, bf = acc["fp32"], acc["bf16"]
    idx = resamples(len(ok), n_boot)
    per_seed = [kendall(fp[:, j], bf[:, j]) for j in range(len(seeds))]
    boot_prec = np.mean([bootstrap(fp[:, j], bf[:, j], index=idx) for j in range(len(seeds))], axis=0)
    tau_prec = float(np.mean(per_seed))
    tau_seed = kendall(fp[:, 0], fp[:, 1])
    boot_seed = bootstrap(fp[:, 0], fp[:, 1], index=idx)
    diff = interval(boot_prec - boot_seed)
    return {**out,
            "tau_fp32_bf16": _finite(tau_prec), "tau_fp32_bf16_ci": _ci(boot_prec),
            "tau_fp32_bf16_per_seed": [_finite(t) for t in per_seed],
            "tau_seed_noise": _finite(tau_seed), "tau_seed_noise_ci": _ci(boot_seed),
            "tau_diff": _finite(tau_prec - tau_seed), "tau_diff_ci": [_finite(v) for v in diff],
            "tau_seed_means": _finite(kendall(fp.mean(1), bf.mean(1))),
            "mean_abs_diff_fp32_bf16": _finite(np.abs(fp - bf).mean()),
            "mean_abs_diff_seed": _finite(np.abs(fp[:, 0] - fp[:, 1]).mean()),
            "mean_accuracy": {p: _finite(acc[p].mean()) for p in PRECISIONS},
            # faithful: the paired interval of tau(fp32, bf16) - tau(seed noise) reaches 0
            "faithful": bool(np.isfinite(diff[1]) and diff[1] >= 0)}


def precision_study(args, quick: bool) -> dict:
    """The fp32 / bf16 study of the module docstring; prints its tables, returns its figures."""
    load_before = os.getloadavg()
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    peak = gemm_peak(rounds=2 if quick else 5, per_round=1 if quick else 3)  # on the trainer's threads
    peak_all = peak if cores == threads else None if quick else gemm_peak(5, 3, threads=cores)
    if quick:  # a few tiny runs: the bench's code paths, not figures
        budget = ProxyBudget(resolution=args.resolution, steps=2, batch_size=32, max_images=400)
    else:      # the default run's proxy: mnist5k, 2 epochs, batch 128
        budget = ProxyBudget(resolution=args.resolution)
    archs = study_archs(args.archs or (3 if quick else 12))
    rows = precision_runs(archs, budget)
    speed, fidelity = speed_summary(rows, peak), fidelity_summary(rows)
    # faster: by images/s (wall clock, runs alternating) and by CPU seconds alike
    faster = all(v is not None and v >= CLEAR_MARGIN for v in (speed["bf16_speedup_geomean"], speed["bf16_speedup_cpu_time"]))
    figures = {"gemm_gflops": peak, "gemm_threads": threads, "gemm_gflops_all_cores": peak_all, "cores": cores,
               "gemm_size": PEAK_SIZE, "budget": {k: getattr(budget, k) for k in
               ("dataset", "resolution", "epochs", "steps", "batch_size", "max_images")},
               "speed": speed, "fidelity": fidelity, "faster": faster,
               "bf16_cpu_default": bool(faster and fidelity["faithful"]),
               "loadavg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}
    print(f"CPU  matmul {PEAK_SIZE}x{PEAK_SIZE}, {threads} thread(s) (the trainer's): fp32 {peak['fp32']:.1f} GFLOP/s, "
          f"bf16 {peak['bf16']:.1f} GFLOP/s (best of alternating rounds)")
    if peak_all is not None and peak_all is not peak:
        print(f"CPU  matmul on all {cores} cores: fp32 {peak_all['fp32']:.1f} GFLOP/s, bf16 {peak_all['bf16']:.1f} GFLOP/s")
    print(f"CPU  nas.evaluate.train, {budget.dataset} @ {budget.resolution}px, batch {budget.batch_size}, "
          f"{f'{budget.steps} steps' if budget.steps else f'{budget.epochs:g} epochs'}, seeds {list(SEEDS)} "
          f"(fp32 and bf16 alternating), images/s the better seed's; MAC rate = 3 x MACs/image x images/s, "
          f"against the same precision's peak:")
    print(f"  {'architecture':16} {'MMACs':>7} {'fp32 img/s':>10} {'of peak':>8} {'bf16 img/s':>10} {'of peak':>8} {'bf16/fp32':>9}")
    for e in speed["table"]:
        cells = []
        for prec in PRECISIONS:
            cells += ([f"{e[prec]['images_per_sec']:10.1f}", f"{100 * e[prec]['of_peak']:7.2f}%"] if e[prec]
                      else [f"{'failed':>10}", f"{'':>8}"])
        print(f"  {e['arch']:16} {e['macs_per_image'] / 1e6:7.1f} {' '.join(cells)} {e.get('bf16_speedup', float('nan')):9.2f}x")
    print(f"  bf16 / fp32 images/s: geometric mean {speed['bf16_speedup_geomean']}x, range {speed['bf16_speedup_range']}, "
          f"bf16 faster on {speed['bf16_faster_archs']} of {speed['archs_compared']}; by CPU seconds of whole trials "
          f"{speed['bf16_speedup_cpu_time']}x ({speed['cpu_seconds']['fp32']} s fp32, {speed['cpu_seconds']['bf16']} s bf16)")
    f = fidelity
    print(f"CPU  rank fidelity over {f['archs']} architectures x {len(SEEDS)} seeds ({int(100 * LEVEL)}% paired bootstrap "
          f"intervals over architectures):")
    if f["tau_fp32_bf16"] is not None:
        print(f"  tau fp32 vs bf16, same seed (mean of seeds {f['tau_fp32_bf16_per_seed']}): {f['tau_fp32_bf16']} "
              f"{f['tau_fp32_bf16_ci']}")
        print(f"  tau seed noise, fp32 seed 0 vs seed 1:  {f['tau_seed_noise']} {f['tau_seed_noise_ci']}; "
              f"tau of the seed means, fp32 vs bf16: {f['tau_seed_means']}")
        print(f"  difference: {f['tau_diff']} {f['tau_diff_ci']}; mean |accuracy change|: fp32->bf16 "
              f"{f['mean_abs_diff_fp32_bf16']}, seed 0->1 {f['mean_abs_diff_seed']}")
    print(f"  decision: bf16 as the CPU default: {'yes' if figures['bf16_cpu_default'] else 'no'} "
          f"(faster by >= {CLEAR_MARGIN}x: {'yes' if faster else 'no'}; faithful: {'yes' if f['faithful'] else 'no'}); "
          f"load average {figures['loadavg_1min'][0]} -> {figures['loadavg_1min'][1]} (other jobs on the CPU)")
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (under a minute on 2 cores)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--steps", type=int, default=None, help="training steps per measurement")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--archs", type=int, default=None,
                   help="architectures in the fp32/bf16 study: B0 and N-1 random specs (default 12; --quick 3)")
    args = p.parse_args(argv)
    if args.batch < 1 or args.resolution < 32 or (args.steps is not None and args.steps < 1):
        print("error: --batch and --steps must be positive and --resolution at least 32 (B0's total stride)", file=sys.stderr)
        return 2
    if args.archs is not None and args.archs < 3:
        print("error: --archs must be at least 3 (a rank correlation needs several architectures)", file=sys.stderr)
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
    figures["precision_study"] = precision_study(args, args.quick)

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
