"""Benchmark: how well the per-layer latency table predicts measured end-to-end latency.

The search wants to rank candidates by real latency without timing each one. This draws
random networks of the default search space, times each end to end, predicts each as the
sum of its table entries (the table starts empty and is filled lazily, so every entry
is timed right before the network that needs it, under the same load), and reports:

  MAPE      mean |predicted - measured| / measured over the evaluation networks
  tau       Kendall's tau of predicted vs measured latency
  tau MACs  Kendall's tau of multiply-adds (search_space.cost.macs) vs measured latency

Calibration: one scale factor, the median of measured / sum-of-entries over a separate
calibration set (another seed, never an evaluation network), as LatencyTable.calibrate
fits it. The uncalibrated figures are reported as well. Goals: MAPE <= 10 %, tau >= 0.9.
Also reported from the minimum instead of the median of each timing (parts and networks),
the figure least disturbed when other processes share the cores.

    python bench/latency.py [--quick] [--json] [--samples 100] [--calibration 20]
                            [--resolution 224] [--batch 1] [--threads 1] [--device cpu] [--seed 0]
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cli import OneLineParser  # noqa: E402

from scipy.stats import kendalltau  # noqa: E402

from search_space import cost  # noqa: E402
from search_space.latency import LatencyError, layer_configs  # noqa: E402
from search_space.latency_table import LatencyTable, fit_calibration  # noqa: E402
from search_space.space import SearchSpace  # noqa: E402


def _specs(space: SearchSpace, n: int, seed: int, exclude: set[str], resolution: int) -> list:
    """`n` distinct decoded samples (by canonical key), none of them in `exclude`."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        spec = space.decode(space.sample(rng), resolution=resolution)
        if spec.key() not in seen:
            seen.add(spec.key())
            out.append(spec)
    return out


def _load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def _tau(x: list[float], y: list[float]) -> float:
    t = kendalltau(x, y)[0] if len(x) > 1 else float("nan")
    return float(t)


def _mape(pred: list[float], meas: list[float]) -> float:
    return 100 * statistics.fmean(abs(p - m) / m for p, m in zip(pred, meas))


def run(samples: int, calibration: int, resolution: int, batch: int, threads: int, device: str, seed: int,
        warmup: int, repeats: int, table_path: str | None, group: int = 20, steady: bool = True,
        verbose: bool = True) -> dict:
    space = SearchSpace.default()
    table = LatencyTable(table_path, device=device, threads=threads, batch=batch, warmup=warmup, repeats=repeats,
                         group=group, steady=steady)
    load_before = _load()
    start = time.monotonic()
    cal_specs = _specs(space, calibration, seed + 1000, set(), resolution)
    eval_specs = _specs(space, samples, seed, {s.key() for s in cal_specs}, resolution)
    rows = []
    for i, spec in enumerate(cal_specs + eval_specs):
        t0 = time.monotonic()
        measured_now = table.fill(layer_configs(spec, resolution))
        t1 = time.monotonic()
        lat = table.measure_spec(spec, resolution)
        t2 = time.monotonic()
        rows.append({"set": "calibration" if i < len(cal_specs) else "evaluation", "key": spec.key(),
                     "macs": cost.macs(spec, resolution), "measured_ms": lat.median_ms, "measured_min_ms": lat.min_ms,
                     "measured_iqr_ms": lat.iqr_ms, "sum_ms": table.predict_ms(spec, resolution, calibrated=False),
                     "sum_min_ms": table.sum_of_minimums(spec, resolution) / 1e3, "parts_measured": measured_now,
                     "fill_s": t1 - t0, "measure_s": t2 - t1})
        if verbose:
            r = rows[-1]
            print(f"[{i + 1}/{len(cal_specs) + len(eval_specs)}] {r['set']:<11} measured {r['measured_ms']:7.2f} ms "
                  f"(IQR {r['measured_iqr_ms']:5.2f})  sum of parts {r['sum_ms']:7.2f} ms  "
                  f"MACs {r['macs'] / 1e6:5.0f}M  {measured_now:2d} new parts", file=sys.stderr)
    cal = [r for r in rows if r["set"] == "calibration"]
    ev = [r for r in rows if r["set"] == "evaluation"]
    fit = fit_calibration([r["sum_ms"] for r in cal], [r["measured_ms"] for r in cal], "scale")
    fit_min = fit_calibration([r["sum_min_ms"] for r in cal], [r["measured_min_ms"] for r in cal], "scale")
    for r in ev:
        r["predicted_ms"] = fit.apply(r["sum_ms"])
    meas = [r["measured_ms"] for r in ev]
    pred = [r["predicted_ms"] for r in ev]
    meas_min = [r["measured_min_ms"] for r in ev]
    pred_min = [fit_min.apply(r["sum_min_ms"]) for r in ev]
    # what a prediction costs once the table holds every part (the search's use)
    t0 = time.perf_counter()
    for _ in range(20):
        for spec in eval_specs:
            table.predict(spec, resolution)
    predict_us = (time.perf_counter() - t0) / (20 * len(eval_specs)) * 1e6
    key = table.key
    result = {
        "machine": f"{platform.machine()} {platform.system()}, {key.device}, torch {key.torch}",
        "device": table.device, "threads": key.threads, "batch": batch, "resolution": resolution,
        "dtype": key.dtype, "allocator": key.allocator, "warmup": warmup, "repeats": repeats, "seed": seed,
        "group": group, "table": table_path,
        "evaluation_specs": len(ev), "calibration_specs": len(cal), "table_entries": len(table),
        "calibration_scale": fit.scale, "calibration_scale_min": fit_min.scale,
        "mape_pct": _mape(pred, meas), "mape_uncalibrated_pct": _mape([r["sum_ms"] for r in ev], meas),
        "tau": _tau(pred, meas), "tau_macs": _tau([r["macs"] for r in ev], meas),
        "mape_min_pct": _mape(pred_min, meas_min), "tau_min": _tau(pred_min, meas_min),
        "tau_macs_min": _tau([r["macs"] for r in ev], meas_min),
        "measured_ms_range": [min(meas), max(meas)] if meas else [],
        "predict_us": predict_us,
        "measure_s_per_spec": statistics.fmean(r["measure_s"] for r in rows) if rows else 0.0,
        "wall_s": time.monotonic() - start, "load_before": load_before, "load_after": _load(),
        "rows": rows,
    }
    result["goals_met"] = bool(result["mape_pct"] <= 10 and result["tau"] >= 0.9)
    return result


def _report(r: dict) -> str:
    f = r
    lines = [
        f"latency table vs end-to-end latency: {f['evaluation_specs']} random networks of the default space "
        f"(+{f['calibration_specs']} for calibration), {f['resolution']}x{f['resolution']}, batch {f['batch']}, "
        f"{f['device']}, {f['threads']} thread{'s' if f['threads'] != 1 else ''}, {f['dtype']}, "
        f"{f['allocator']} allocator, {f['warmup']} warm-up + {f['repeats']} timed calls, parts timed "
        f"{'alone' if f['group'] == 1 else 'round-robin in groups of %d' % f['group']}"
        f"{'' if not f['table'] else ', table ' + f['table']}",
        f"machine: {f['machine']}",
        f"measured: {f['measured_ms_range'][0]:.2f} .. {f['measured_ms_range'][1]:.2f} ms; table: "
        f"{f['table_entries']} entries; calibration: predicted = {f['calibration_scale']:.4f} x sum of parts",
        f"median timings: MAPE {f['mape_pct']:.1f} % (uncalibrated {f['mape_uncalibrated_pct']:.1f} %), "
        f"Kendall tau {f['tau']:.3f}; multiply-adds: tau {f['tau_macs']:.3f}   (goals: MAPE <= 10 %, tau >= 0.9: "
        f"{'met' if f['goals_met'] else 'NOT met'})",
        f"minimum timings: MAPE {f['mape_min_pct']:.1f} % (scale {f['calibration_scale_min']:.4f}), "
        f"Kendall tau {f['tau_min']:.3f}; multiply-adds: tau {f['tau_macs_min']:.3f}",
        f"a prediction from a filled table: {f['predict_us']:.0f} us; timing one network: "
        f"{f['measure_s_per_spec']:.2f} s; whole run {f['wall_s']:.0f} s",
        f"{f['load_before']} before, {f['load_after']} after",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser("latency", __doc__.split("\n\n")[0], "24 + 8 networks, 10 timed calls (under a minute on a quiet 2-core machine)")
    p.add_argument("--samples", type=int, default=None, help="evaluation networks (default 100; quick 24)")
    p.add_argument("--calibration", type=int, default=None, help="calibration networks (default 20; quick 8)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: least noise)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=None, help="timed calls per part and network (default 30; quick 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 10; quick 5)")
    p.add_argument("--table", default=None, help="latency table file to use and fill (default: a fresh in-memory table)")
    p.add_argument("--system-allocator", action="store_true",
                   help="time with glibc's own malloc settings (default: freed memory kept while timing)")
    p.add_argument("--group", type=int, default=20,
                   help="parts timed round-robin together (default 20; 1 times each part alone, back to back)")
    args = p.parse_args(argv)
    samples = args.samples if args.samples is not None else (24 if args.quick else 100)
    calibration = args.calibration if args.calibration is not None else (8 if args.quick else 20)
    repeats = args.repeats if args.repeats is not None else (10 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (5 if args.quick else 10)
    for name, value, least in (("--samples", samples, 2), ("--calibration", calibration, 1),
                               ("--resolution", args.resolution, 1), ("--batch", args.batch, 1),
                               ("--threads", args.threads, 1), ("--repeats", repeats, 1), ("--warmup", warmup, 0),
                               ("--group", args.group, 1)):
        if value < least:
            p.error(f"{name} must be >= {least}, got {value}")
    try:
        result = run(samples, calibration, args.resolution, args.batch, args.threads, args.device, args.seed,
                     warmup, repeats, args.table, args.group, not args.system_allocator)
    except LatencyError as exc:
        p.error(" ".join(str(exc).split()))
    print(_report(result))
    if args.json:
        print(json.dumps(result))
    return 0 if all(math.isfinite(result[k]) for k in ("mape_pct", "tau", "tau_macs")) else 1


if __name__ == "__main__":
    sys.exit(main())
