"""Benchmark: the analytic cost model against counting on a built module.

The search prices thousands of candidates, so `search_space.cost` must be far cheaper
than building each network. Three ways to get the same numbers, timed in one run:

  analytic      cost.macs(spec, r) + cost.params(spec)          (no module)
  build+hooks   model.build(spec) + forward-hook count at r     (the test oracle)
  flop_counter  model.build(spec) + forward under torch.utils.flop_counter.FlopCounterMode

It also checks that all three agree: hooks give the same MACs and params, and
FlopCounterMode's FLOPs are exactly 2 x MACs (it counts a multiply-add as 2 FLOPs).

    python bench/cost_model.py [--quick] [--json] [--resolution 224] [--samples N] [--threads 1]
"""
from __future__ import annotations

import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cli import OneLineParser  # noqa: E402

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from search_space import cost, zoo  # noqa: E402
from search_space.model import build, count_by_hooks  # noqa: E402


def _specs(samples: int, seed: int) -> list:
    """The zoo plus `samples` decoded specs of the default search space (if it is available)."""
    specs = [zoo.get(n) for n in zoo.names()]
    try:
        from search_space.space import SearchSpace
    except ImportError:  # the space is optional for this benchmark
        return specs
    space, rng = SearchSpace.default(), random.Random(seed)
    return specs + [space.decode(space.sample(rng)) for _ in range(samples)]


def _per_call(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def _flop_counter(spec, resolution: int) -> int:
    module = build(spec).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(torch.zeros(1, 3, resolution, resolution))
    return counter.get_total_flops()


def run(resolution: int, samples: int, analytic_reps: int, module_reps: int, seed: int = 0) -> dict:
    specs = _specs(samples, seed)
    rows, consistent = [], True
    t_analytic = t_hooks = t_flops = 0.0
    for spec in specs:
        macs, params = cost.macs(spec, resolution), cost.params(spec)
        hook_macs, hook_params = count_by_hooks(build(spec), resolution)  # also warms up
        flops = _flop_counter(spec, resolution)
        ok = (hook_macs, hook_params) == (macs, params) and flops == 2 * macs
        consistent &= ok
        a = _per_call(lambda spec=spec: (cost.macs(spec, resolution), cost.params(spec)), analytic_reps)
        h = _per_call(lambda spec=spec: count_by_hooks(build(spec), resolution), module_reps)
        f = _per_call(lambda spec=spec: _flop_counter(spec, resolution), module_reps)
        t_analytic, t_hooks, t_flops = t_analytic + a, t_hooks + h, t_flops + f
        rows.append({"spec": spec.name or f"space sample {len(rows) - len(zoo.names())}", "macs": macs, "params": params, "flops": flops,
                     "consistent": ok, "analytic_us": a * 1e6, "build_hooks_ms": h * 1e3,
                     "flop_counter_ms": f * 1e3})
    n = len(specs)
    return {
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "resolution": resolution, "specs": n, "consistent": bool(consistent),
        "analytic_us": t_analytic / n * 1e6, "build_hooks_ms": t_hooks / n * 1e3,
        "flop_counter_ms": t_flops / n * 1e3,
        "speedup_vs_build_hooks": t_hooks / t_analytic, "speedup_vs_flop_counter": t_flops / t_analytic,
        "rows": rows,
    }


def _report(r: dict) -> str:
    lines = [f"cost model benchmark at {r['resolution']}x{r['resolution']}, {r['specs']} specs ({r['machine']})",
             f"{'spec':<18} {'MACs':>12} {'params':>10} {'analytic':>10} {'build+hooks':>12} {'FlopCounter':>12}"]
    for row in r["rows"]:
        lines.append(f"{row['spec']:<18} {row['macs']:>12,} {row['params']:>10,} {row['analytic_us']:>8.1f}us "
                     f"{row['build_hooks_ms']:>10.1f}ms {row['flop_counter_ms']:>10.1f}ms"
                     + ("" if row["consistent"] else "  MISMATCH"))
    lines += [
        f"mean per spec: analytic {r['analytic_us']:.1f} us, build+hooks {r['build_hooks_ms']:.1f} ms, "
        f"build+FlopCounterMode {r['flop_counter_ms']:.1f} ms",
        f"ratio: analytic is {r['speedup_vs_build_hooks']:,.0f}x faster than build+hooks, "
        f"{r['speedup_vs_flop_counter']:,.0f}x faster than build+FlopCounterMode (goal >= 100x)",
        f"consistent (hooks MACs/params == analytic, FlopCounterMode FLOPs == 2 x MACs): {r['consistent']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser("cost_model", __doc__.split("\n\n")[0], "fewer repetitions and specs (well under a minute)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--samples", type=int, default=None, help="search-space samples besides the zoo")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for the module-based counts (default 1: the analytic count is one core)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    if args.resolution < 1:
        p.error("--resolution must be a positive integer")
    samples = args.samples if args.samples is not None else (0 if args.quick else 6)
    if samples < 0:
        p.error("--samples must be >= 0")
    result = run(args.resolution, samples, analytic_reps=200 if args.quick else 2000,
                 module_reps=1 if args.quick else 3)
    print(_report(result))
    if args.json:
        print(json.dumps(result))
    return 0 if result["consistent"] else 1


if __name__ == "__main__":
    sys.exit(main())
