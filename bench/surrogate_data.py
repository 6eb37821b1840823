"""Training data for the surrogate benchmark: real proxy runs of the default space.

Why: `bench/controllers.py` compares controllers on an objective; the honest one is the
search's own objective, the proxy accuracy × the MnasNet cost term. Training every
proposal of every method on many seeds is out of reach, so (after NAS-Bench-301) a
surrogate is fitted on a table of real proxy runs (`bench/surrogate.py`), and this
script makes that table:

1. samples architectures uniformly within the cost window (uniform choices of the
   space, kept when LO·T ≤ MACs ≤ HI·T at `--target-resolution`, de-duplicated by
   canonical key, in draw order: the first N of a bigger sample are the same N);
   `--specs FILE` adds given architectures (trajectories of the compared methods:
   one JSON list of choices per line) after them;
2. trains each under the default search's proxy budget (`nas.evaluate.budget.ProxyBudget()`:
   mnist5k, 2 epochs, 32 px; accuracy on the search-validation part, never the test
   part) on `--seeds` seeds (1 ... R, as `nas.proxy check`), through the local engine
   into a store in `--out` (`nas.proxy.check.batch_source`): an architecture's seeds are
   consecutive jobs, so with 2 workers both seeds of one architecture train together
   and the table holds whole architectures, in random order, whenever it stops.
   Rerunning the same command continues (a SIGKILL loses no finished run);
3. exports the table (`--export`, default `bench/data/surrogate.csv.gz`) after every
   run and with `--export-only`: index, key, choices, MACs, params, accuracy and wall
   time per seed; the budget, torch version and CPU model in the header comment.

    python -m bench.surrogate_data --archs 400 --out runs/surrogate [--workers 2]
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.errors import UserError  # noqa: E402

PROG = "bench.surrogate_data"
KIND = "surrogate"
TOOL = "bench.surrogate_data"
DEFAULT_EXPORT = Path(__file__).resolve().parent / "data" / "surrogate.csv.gz"
# What defines the table: a store made with other values cannot be continued.
IDENTITY = ("target", "window", "target_resolution", "budget", "sample_seed", "evaluator", "space", "known")


def sample_uniform(space: Any, target: int, window: tuple[float, float], n: int, seed: int = 0,
                   target_resolution: int = 224, max_draws: int | None = None) -> list:
    """The first `n` distinct in-window architectures of a seeded uniform draw, in draw
    order: [(choices, spec)] with specs decoded at `target_resolution` with 1000 classes
    (as the search counts cost). Fewer when `max_draws` (default 200·n + 10,000) runs out."""
    import numpy as np

    from search_space import cost

    lo, hi = window[0] * target, window[1] * target
    rng = np.random.default_rng(int(seed))
    seen: set[str] = set()
    out = []
    for _ in range(int(max_draws or 200 * n + 10_000)):
        if len(out) >= n:
            break
        choices = space.sample(rng)
        spec = space.decode(choices, num_classes=1000, resolution=int(target_resolution))
        key = spec.key()
        if key in seen:
            continue
        seen.add(key)
        if lo <= cost.macs(spec, int(target_resolution)) <= hi:
            out.append((list(choices), spec))
    return out


def read_specs(path: str, space: Any, target_resolution: int) -> list:
    """[(choices, spec, origin)] from a file of JSON lines, each a choice list or an object
    {"choices": [...], "origin": "trajectory:METHOD"} (what `bench/controllers.py
    --trajectories` writes; origin "specs" when not given); blank lines and '#' comments
    skipped; a bad line is a UserError naming it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--specs {path}: no such file")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            item = json.loads(line)
            origin = str(item.get("origin") or "specs") if isinstance(item, dict) else "specs"
            choices = [int(c) for c in (item["choices"] if isinstance(item, dict) else item)]
            spec = space.decode(choices, num_classes=1000, resolution=int(target_resolution))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"--specs {path}, line {n}: not a choice list of the space "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        out.append((choices, spec, origin))
    return out


def budget_for(seed: int = 0, time_limit: float | None = None) -> Any:
    """The default search's proxy budget (what `nas.search --target-flops 400M` trains with).
    `time_limit` is no part of what a run measures (`nas.evaluate.budget.measurement_id` leaves it out):
    on a loaded machine a longer one keeps slow runs from being cut off as 'timeout'."""
    from nas.evaluate.budget import ProxyBudget
    from nas.cli.options import DEFAULTS

    return ProxyBudget(dataset=DEFAULTS["dataset"], resolution=int(DEFAULTS["proxy_resolution"]),
                       target_resolution=int(DEFAULTS["target_resolution"]), epochs=float(DEFAULTS["proxy_epochs"]),
                       batch_size=int(DEFAULTS["batch_size"]), seed=int(seed), device="cpu",
                       time_limit=float(DEFAULTS["trial_timeout"] if time_limit is None else time_limit))


def machine() -> dict:
    import torch

    from search_space.latency import cpu_model
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        isa = ""
    return {"torch": torch.__version__, "cpu": cpu_model(), "isa": isa, "python": platform.python_version()}


def known_rows(path: str, items: Sequence[tuple], seeds: Sequence[int], meta: dict) -> dict[int, dict]:
    """Architectures of an earlier table (`--known`) measured under this identity on every
    seed: index -> row. Why: a collection takes hours; a new store (another machine, a
    lost /tmp) should not train again what a table already holds."""
    from bench.surrogate import read_table

    if not Path(path).is_file():
        raise UserError(f"--known {path}: no such file")
    try:
        rows, old = read_table(path)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise UserError(f"--known {path}: not a table of this script ({type(exc).__name__})") from None
    for k in ("target", "window", "target_resolution", "sample_seed", "evaluator", "seeds"):
        if old.get(k) != meta[k]:
            raise UserError(f"--known {path}: measured with another {k} ({old.get(k)!r}, here {meta[k]!r})")
    drop = ("seed", "device", "time_limit")
    if {k: v for k, v in (old.get("budget") or {}).items() if k not in drop} != \
            {k: v for k, v in meta["budget"].items() if k not in drop}:
        raise UserError(f"--known {path}: measured with another proxy budget")
    known = {}
    for r in rows:
        i = int(r["index"])
        if i < len(items) and r["key"] == items[i][1].key() and all(r.get(f"acc_seed{s}") for s in seeds):
            known[i] = r
    return known


def table_rows(items: Sequence[tuple], source: Any, seeds: Sequence[int], todo: Sequence[int] | None = None,
               known: dict[int, dict] | None = None) -> list[dict]:
    """One row per architecture that has at least one finished run (the store's runs of
    `todo`, the item indices it trains, plus the `known` rows), in item order."""
    recs = source.records()
    todo = list(range(len(items))) if todo is None else list(todo)
    rows = list((known or {}).values())
    for j, i in enumerate(todo):
        choices, spec, origin = items[i]
        runs = recs[j * len(seeds):(j + 1) * len(seeds)]
        if all(r is None for r in runs):
            continue
        row = {"index": i, "origin": origin, "key": spec.key(), "choices": json.dumps(list(choices)),
               "macs": None, "params": None}
        for s, r in zip(seeds, runs):
            ok = r is not None and r["status"] == "ok" and r["accuracy"] is not None
            row[f"acc_seed{s}"] = r["accuracy"] if ok else None
            row[f"status_seed{s}"] = "" if r is None else r["status"]
            row[f"wall_s_seed{s}"] = None if r is None or r.get("wall_time") is None else round(r["wall_time"], 2)
            if r is not None:
                row["macs"], row["params"] = r["macs"], r["params"]
        rows.append(row)
    return sorted(rows, key=lambda r: int(r["index"]))


def export(path: Path, rows: list[dict], seeds: Sequence[int], meta: dict) -> None:
    """The table as CSV (gzip when the name ends in .gz), metadata in one '# ' JSON line
    (read with pandas.read_csv(path, comment='#')); written atomically."""
    import csv

    from search_space.fileio import write_atomic

    head = ["index", "origin", "key", "macs", "params"] + [f"acc_seed{s}" for s in seeds] + \
        [f"status_seed{s}" for s in seeds] + [f"wall_s_seed{s}" for s in seeds] + ["choices"]
    buf = io.StringIO()
    buf.write("# " + json.dumps(meta, sort_keys=True) + "\n")
    w = csv.DictWriter(buf, fieldnames=head, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)) for k, v in r.items()})
    data = buf.getvalue().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


class _Exporter:
    """Rewrites the table every `every` finished runs, so it is current while the data grow."""

    def __init__(self, write: Any, every: int = 10) -> None:
        self.write, self.every, self.n = write, every, 0

    def __call__(self, rec: dict) -> None:
        self.n += 1
        if self.n % self.every == 0:
            self.write()


def build_parser() -> argparse.ArgumentParser:
    from nas.cli.args import Parser, count, int_at_least, number

    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int_at_least("--archs", 1), default=400,
                   help="architectures sampled uniformly in the cost window (default 400)")
    p.add_argument("--seeds", type=int_at_least("--seeds", 1, 10), default=2,
                   help="training seeds 1..R per architecture (default 2)")
    p.add_argument("--target-flops", type=count, default=400_000_000, help="cost target T (default 400M)")
    p.add_argument("--cost-window", default="0.5,1.0", help="LO,HI relative to T (default 0.5,1.0)")
    p.add_argument("--sample-seed", type=int_at_least("--sample-seed", 0), default=0,
                   help="seed of the uniform draw (default 0)")
    p.add_argument("--specs", metavar="FILE", help="more architectures: one JSON line each, a choice list or {\"choices\": [...], \"origin\": ...} (bench/controllers.py --trajectories)")
    p.add_argument("--workers", type=int_at_least("--workers", 1), default=2, help="runs at once (default 2)")
    p.add_argument("--trial-timeout", type=number("--trial-timeout", 0, strict=True), default=3600.0,
                   metavar="SECONDS", help="a run longer than this is recorded as 'timeout' (default 3600: the "
                                           "collection runs at low priority beside other work)")
    p.add_argument("--evaluator", default="nas.trial:evaluate", help="the trainer (default nas.trial:evaluate)")
    p.add_argument("--out", default="runs/surrogate", help="the store's folder (default runs/surrogate)")
    p.add_argument("--export", default=str(DEFAULT_EXPORT), help="the table written (default bench/data/surrogate.csv.gz)")
    p.add_argument("--export-only", action="store_true", help="write the table from the store, train nothing")
    p.add_argument("--known", metavar="TABLE", help="an earlier table of the same collection (e.g. the shipped "
                                                    "bench/data/surrogate_v2.csv.gz): its architectures measured on every "
                                                    "seed are kept, not trained again")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    from nas.reports.progress import Progress
    from nas.cli.args import parse_window
    from nas.engines.evaluator import load_evaluator
    from nas.engines.protocol import EvalContext, sigterm_as_interrupt
    from nas.engines.local import LocalEngine, device_slots
    from nas.proxy.check import batch_source
    from nas.store import Store
    from search_space import cost  # noqa: F401 - fail early if the space cannot be costed
    from search_space.space import SearchSpace

    a = build_parser().parse_args(argv)
    window = parse_window(a.cost_window)
    space = SearchSpace.default()
    tres = 224
    budget = budget_for(0, a.trial_timeout)
    try:
        load_evaluator(a.evaluator)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--evaluator {a.evaluator}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    ident = {"target": int(a.target_flops), "window": list(window), "target_resolution": tres,
             "budget": {k: v for k, v in budget.to_dict().items() if k not in ("seed", "device", "time_limit")},
             "sample_seed": int(a.sample_seed), "evaluator": a.evaluator, "space": space.to_yaml()}
    extra = read_specs(a.specs, space, tres) if a.specs else []
    sampled = sample_uniform(space, int(a.target_flops), window, int(a.archs), int(a.sample_seed), tres)
    if len(sampled) < a.archs:
        raise UserError(f"only {len(sampled)} distinct architectures fall in the cost window in the draws allowed")
    keys = {sp.key() for _, sp in sampled}
    items = [(c, sp, "uniform") for c, sp in sampled]
    for c, sp, origin in extra:  # trajectories: each architecture once, after the uniform sample
        if sp.key() not in keys:
            keys.add(sp.key())
            items.append((c, sp, origin))
    seeds = list(range(1, int(a.seeds) + 1))
    meta = {"budget": budget.to_dict(), "seeds": seeds, "target": int(a.target_flops), "window": list(window),
            "target_resolution": tres, "sample_seed": int(a.sample_seed), "evaluator": a.evaluator,
            "space": "SearchSpace.default()", "accuracy": "search-validation part (nas.evaluate.data), never the test part",
            **machine()}
    known = known_rows(a.known, items, seeds, meta) if a.known else {}
    todo = [i for i in range(len(items)) if i not in known]
    ident["known"] = sorted(known) or None
    out = Path(a.out)
    export_path = Path(a.export)
    if Store.is_run(out):
        store = Store.open(out)
        old = store.config
        if old.get("tool") != TOOL or any(old.get(k) != ident[k] for k in IDENTITY):
            store.close()
            raise UserError(f"--out {out}: holds another table's runs (other budget, window, space or tool); "
                            "use another --out")
        store.requeue_pending()
    else:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"--out {out}: exists and is not a surrogate-data store; use another --out")
        if export_path.is_file() and not a.known:
            raise UserError(f"--export {export_path}: holds the table of an earlier collection; continue it with "
                            f"--known {export_path} (what it holds is not trained again), or write elsewhere "
                            "with --export")
        store = Store.create(out, {**ident, "tool": TOOL})
    try:
        source = batch_source(store, [items[i][1] for i in todo], seeds, budget, a.evaluator, KIND,
                              int(a.target_flops), tres)
        done = sum(r is not None for r in source.records())
        from_known = f"{len(known) * len(seeds)} known from {a.known}, " if known else ""
        print(f"{PROG}: {len(items)} architectures x seeds {seeds} = {len(items) * len(seeds)} runs, "
              f"{from_known}{done} stored; store {out}", file=sys.stderr, flush=True)
        if not a.export_only and done < len(source.jobs):
            progress = Progress(len(source.jobs), done=done, kind=KIND)
            source.listeners.append(progress)
            source.listeners.append(_Exporter(lambda: export(export_path, table_rows(items, source, seeds, todo, known),
                                                             seeds, meta)))
            engine = LocalEngine(device_slots("cpu", int(a.workers)), trial_timeout=budget.time_limit + 30.0)
            try:
                with sigterm_as_interrupt():
                    engine.run(source, EvalContext(budget=budget, evaluator=a.evaluator))
            finally:
                progress.close()
                rows = table_rows(items, source, seeds, todo, known)
                export(export_path, rows, seeds, meta)
        rows = table_rows(items, source, seeds, todo, known)
        export(export_path, rows, seeds, meta)
        full = sum(all(r[f"acc_seed{s}"] is not None for s in seeds) for r in rows)
        print(f"{PROG}: {len(rows)} architectures in {a.export} ({full} with every seed ok)", file=sys.stderr)
        return 0
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    from nas.cli.args import cli_main
    return cli_main(PROG, lambda: run(argv), "interrupted; finished runs are stored, rerun the command to go on")


if __name__ == "__main__":
    sys.exit(main())
