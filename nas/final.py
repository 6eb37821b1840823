"""Stage 2: retrain the search's best candidates and the reference on fresh seeds, choose
on search-validation, judge on test.

Why: the search picks the best of many on its own validation part, from one seed each,
so its numbers are biased by that selection. Stage 2 retrains the top-k architectures
(by search reward) and the reference network with a final budget on S seeds that the
search never used, scores each on the search-validation part *and* on the test part
that no search or selection has read (`nas.data`), then

1. chooses B0 among the candidates by mean stage-2 reward on search-validation, from
   records stripped of their test scores (`choose` never sees them), and only then
2. judges B0 against the reference on test: mean ± sd over seeds, the difference with
   its 95 % confidence interval and Welch's t-test (`scipy.stats`), in the words the
   numbers allow ("better", "no significant difference", "worse").

Jobs are kind 'final' in the run's store with ids derived from (architecture, seed,
final budget), so stage 2 resumes after a kill and can be extended later (more seeds,
other candidates, another budget: `python -m nas.final RUN`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from nas.budget import ProxyBudget
from nas.engine import EvalContext
from nas.loop import BatchSource
from nas.records import Objective

KIND = "final"
DEFAULT_TOP_K = 3
DEFAULT_SEEDS = 3
DEFAULT_EPOCHS = 4.0
ALPHA = 0.05  # the significance level of the verdict's words
POWER = 0.8   # "seeds to tell": the chance of detecting a difference the size of the one seen
SEEDS_CAP = 64  # ... searched up to this many seeds per architecture
CSV_COLUMNS = ("label", "trial", "key", "macs", "params", "seed", "status", "val_accuracy", "test_accuracy",
               "val_reward", "test_reward", "latency_ms", "measured_latency_ms")


@dataclass(frozen=True)
class Candidate:
    """One architecture of stage 2: a search trial (`trial` its id) or the reference (None)."""

    label: str
    spec: Any                   # search_space.ArchSpec, as the search recorded it
    trial: Optional[int] = None

    @property
    def is_reference(self) -> bool:
        return self.trial is None


def final_budget(search: ProxyBudget, epochs: float = DEFAULT_EPOCHS, resolution: int | None = None) -> ProxyBudget:
    """The search's budget with the final epochs and resolution, scoring the test part too."""
    return dataclasses.replace(search, epochs=float(epochs), steps=None, resolution=int(resolution or search.resolution),
                               test=True)


def fresh_seeds(search_seed: int, n: int, taken: Sequence[int] = ()) -> list[int]:
    """`n` seeds after the search seed, none equal to it (nor to any in `taken`)."""
    seeds, s = [], int(search_seed)
    while len(seeds) < n:
        s += 1
        if s not in taken:
            seeds.append(s)
    return seeds


def top_candidates(rows: Sequence[dict], k: int, trial_ids: Sequence[int] | None = None) -> list[Candidate]:
    """The k best distinct architectures by search reward (ties as `best_trial`), or the
    trials named by id; only trained, ok search trials qualify."""
    from search_space.spec import ArchSpec

    ok = [r for r in rows if r.get("kind") == "search" and r.get("source") == "trained"
          and r.get("status") == "ok" and r.get("reward") is not None]
    if trial_ids:
        by_id = {r["id"]: r for r in ok}
        missing = [i for i in trial_ids if i not in by_id]
        if missing:
            raise ValueError(f"trial {missing[0]} is not a trained, ok search trial of this run")
        chosen = [by_id[i] for i in dict.fromkeys(trial_ids)]
    else:
        chosen, keys = [], set()
        for r in sorted(ok, key=lambda r: (-r["reward"], r.get("macs") or 0, r["id"])):
            if r["key"] not in keys:
                keys.add(r["key"])
                chosen.append(r)
            if len(chosen) == k:
                break
    return [Candidate(f"trial {r['id']}", ArchSpec.from_dict(r["spec"]), r["id"]) for r in chosen]


def job_id(key: str, seed: int, budget: ProxyBudget, evaluator: str) -> int:
    """A stable id (< 2**62) for one (architecture, seed, final budget, evaluator) job."""
    ident = json.dumps([key, int(seed), dataclasses.asdict(budget) | {"seed": 0}, evaluator], sort_keys=True)
    return int(hashlib.sha1(ident.encode()).hexdigest()[:15], 16)


def final_source(store: Any, candidates: Sequence[Candidate], seeds: Sequence[int], ctx: EvalContext,
                 objective: Objective, target_resolution: int,
                 listeners: Sequence[Callable[[dict], None]] = ()) -> BatchSource:
    """Every candidate on every seed, as one batch of kind 'final'."""
    specs, overrides, ids = [], [], []
    for c in candidates:
        for s in seeds:
            specs.append(c.spec)
            overrides.append({"seed": int(s)})
            ids.append(job_id(c.spec.key(), s, ctx.budget, ctx.evaluator))
    return BatchSource(store, specs, objective, kind=KIND, target_resolution=target_resolution, listeners=listeners,
                       overrides=overrides, ids=ids)


def run_final(store: Any, candidates: Sequence[Candidate], seeds: Sequence[int], engine: Any, ctx: EvalContext,
              objective: Objective, target_resolution: int,
              listeners: Sequence[Callable[[dict], None]] = ()) -> dict:
    """Train what is missing of stage 2 on `engine`, then choose and judge (`summarize`)."""
    source = final_source(store, candidates, seeds, ctx, objective, target_resolution, listeners)
    engine.run(source, ctx)
    return summarize(candidates, seeds, source.records(), objective)


# -- choosing (search-validation only) and judging (test) -----------------------------------
def _stats(values: Sequence[float]) -> dict:
    n = len(values)
    mean = sum(values) / n if n else None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else (0.0 if n else None)
    return {"n": n, "mean": mean, "sd": sd}


def choose(candidates: Sequence[Candidate], val_rows: Sequence[Sequence[dict]], objective: Objective) -> int:
    """Index of B0: the non-reference candidate with the best mean reward on search-validation.

    `val_rows[i]` holds candidate i's stage-2 records *without* test scores (the caller
    strips them): the choice cannot depend on test data. Ties: fewer multiply-adds.
    """
    best, best_key = -1, None
    for i, (c, rows) in enumerate(zip(candidates, val_rows)):
        if c.is_reference:
            continue
        assert all("test_accuracy" not in r for r in rows), "the choice must not see test scores"
        accs = [r["accuracy"] for r in rows if r.get("status") == "ok" and r.get("accuracy") is not None]
        if not accs:
            continue
        macs = rows[0]["macs"]
        key = (objective.reward(sum(accs) / len(accs), macs, rows[0].get("latency_ms")), -macs)
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """mean(a) − mean(b), its `level` confidence interval and Welch's two-sided p-value."""
    from scipy import stats

    sa, sb = _stats(a), _stats(b)
    diff = sa["mean"] - sb["mean"]
    va, vb = sa["sd"] ** 2 / sa["n"], sb["sd"] ** 2 / sb["n"]
    se = math.sqrt(va + vb)
    if se == 0.0:  # no spread at all: equal means are no difference, unequal ones are certain
        return {"diff": diff, "low": diff, "high": diff, "p": 1.0 if diff == 0 else 0.0, "df": float("inf")}
    df = (va + vb) ** 2 / ((va ** 2 / (sa["n"] - 1) if sa["n"] > 1 else 0) + (vb ** 2 / (sb["n"] - 1) if sb["n"] > 1 else 0))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return {"diff": diff, "low": diff - half, "high": diff + half, "p": p, "df": df}


def seeds_to_tell(diff: float, sd_a: float, sd_b: float, power: float = POWER, alpha: float = ALPHA,
                  cap: int = SEEDS_CAP) -> Optional[int]:
    """Seeds per architecture at which Welch's test would call a true difference of `diff`
    significant with probability `power`, given these seed sds (noncentral t, equal seeds
    per side); None beyond `cap` or with no difference. Why: with 3 seeds a gap of two
    seed sds is found about half the time, so "no significant difference" needs to say
    how many seeds would have been enough to see this gap, were it real."""
    from scipy import stats

    var = sd_a ** 2 + sd_b ** 2
    if diff == 0 or not math.isfinite(diff) or var <= 0:
        return None
    for n in range(2, cap + 1):
        se = math.sqrt(var / n)
        df = (n - 1) * var ** 2 / (sd_a ** 4 + sd_b ** 4)  # Welch's df at equal n
        crit = float(stats.t.ppf(1 - alpha / 2, df))
        nc = abs(diff) / se
        if float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)) >= power:
            return n
    return None


def words(test: dict) -> str:
    if test["p"] < ALPHA:
        return "better" if test["diff"] > 0 else "worse"
    return "no significant difference"


def summarize(candidates: Sequence[Candidate], seeds: Sequence[int], records: Sequence[Optional[dict]],
              objective: Objective) -> dict:
    """Per candidate mean ± sd on validation and test, the choice, and the verdict."""
    per = [records[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(candidates))]
    per = [[r for r in rows if r is not None] for rows in per]
    stripped = [[{k: v for k, v in r.items() if k != "test_accuracy"} for r in rows] for rows in per]
    chosen = choose(candidates, stripped, objective)   # before any test score is read
    table = []
    for c, rows in zip(candidates, per):
        ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
        val = _stats([r["accuracy"] for r in ok])
        test = _stats([r["test_accuracy"] for r in ok if r.get("test_accuracy") is not None])
        macs = rows[0]["macs"] if rows else None
        lat = rows[0].get("latency_ms") if rows else None  # predicted
        table.append({"label": c.label, "trial": c.trial, "reference": c.is_reference, "key": c.spec.key(),
                      "macs": macs, "params": rows[0]["params"] if rows else None, "runs": len(rows),
                      "ok": len(ok), "val": val, "test": test, "latency_ms": lat, "measured_latency_ms": None,
                      "val_reward": objective.reward(val["mean"], macs, lat) if val["mean"] is not None else None,
                      "test_reward": objective.reward(test["mean"], macs, lat) if test["mean"] is not None else None,
                      "test_values": [r["test_accuracy"] for r in ok if r.get("test_accuracy") is not None]})
    verdict = None
    ref = next((i for i, c in enumerate(candidates) if c.is_reference), None)
    if chosen >= 0 and ref is not None:
        a, b = table[chosen]["test_values"], table[ref]["test_values"]
        if len(a) >= 2 and len(b) >= 2:
            test = welch(a, b)
            verdict = {**test, "words": words(test), "b0": table[chosen]["label"], "reference": table[ref]["label"],
                       "macs_ratio": table[chosen]["macs"] / table[ref]["macs"],
                       "seeds_to_tell": seeds_to_tell(test["diff"], table[chosen]["test"]["sd"],
                                                      table[ref]["test"]["sd"])}
    return {"seeds": list(seeds), "candidates": table, "chosen": chosen, "verdict": verdict,
            "records": [r for rows in per for r in rows]}


def measure_latency(summary: dict, candidates: Sequence[Candidate], objective: Objective, resolution: int,
                    log: Callable[[str], None] = lambda m: None) -> None:
    """With a latency target: B0's and the reference's latency measured end to end (not
    predicted) on the target device, here in the search's process, after training; put in
    `summary` (`measured_latency_ms` of their rows, `measured`: key -> ms). Nothing is
    measured when the target device is another machine's (`--latency-device table`)."""
    from nas.latency_cost import measured_ms
    if not objective.latency_ms:
        return
    chosen = [i for i, c in enumerate(summary["candidates"]) if i == summary["chosen"] or c["reference"]]
    summary["measured"] = {}
    for i in chosen:
        row = summary["candidates"][i]
        spec = dataclasses.replace(candidates[i].spec, num_classes=1000)
        ms = measured_ms(objective.latency_device, objective.latency_batch, objective.latency_threads, spec,
                         resolution)
        if ms is None:
            continue
        row["measured_latency_ms"] = ms
        summary["measured"][row["key"]] = ms
        log(f"latency of {row['label']}{' (B0)' if i == summary['chosen'] else ''} at {resolution}x{resolution}: "
            f"measured {ms:.2f} ms, predicted {row['latency_ms']:.2f} ms, target {objective.latency_ms:g} ms")


# -- outputs ----------------------------------------------------------------------------------
def _pm(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.4f} ± {stat['sd']:.4f}"


def verdict_line(summary: dict) -> str:
    v = summary["verdict"]
    if v is None:
        return "stage 2: no verdict (B0 or the reference has fewer than 2 test scores)"
    line = (f"verdict on test ({len(summary['seeds'])} fresh seeds): B0 ({v['b0']}) vs {v['reference']}: "
            f"{v['diff']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}] 95% CI, Welch p = {v['p']:.3g}: "
            f"{v['words']}, at {v['macs_ratio']:.0%} of its multiply-adds{_latency_ratio(summary)}")
    if v["words"] == "no significant difference" and v["diff"] != 0:
        n = v.get("seeds_to_tell")
        line += (f"; a true gap of {abs(v['diff']):.4f} would be found {POWER:.0%} of the time with "
                 + (f"{n} seeds each (python -m nas.final RUN --seeds {n})" if n else f"more than {SEEDS_CAP} seeds each"))
    return line


def _latency_ratio(summary: dict) -> str:
    """`, 27% of its measured latency` (predicted where nothing was measured), with a latency target."""
    rows = {c["label"]: c for c in summary["candidates"]}
    b0, ref = rows[summary["verdict"]["b0"]], rows[summary["verdict"]["reference"]]
    for key, word in (("measured_latency_ms", "measured"), ("latency_ms", "predicted")):
        if b0.get(key) and ref.get(key):
            return f" and {b0[key] / ref[key]:.0%} of its {word} latency"
    return ""


def markdown(summary: dict, budget: ProxyBudget) -> str:
    lines = [f"# Stage 2: {len(summary['candidates'])} architectures x seeds {summary['seeds']}",
             "",
             f"Final budget: {budget.dataset}, {budget.epochs:g} epochs at {budget.resolution} px, batch "
             f"{budget.batch_size}. B0 is chosen by mean reward on search-validation; test accuracy is read "
             "only for the verdict.",
             "",
             "| architecture | MACs | params | runs ok | search-val accuracy | val reward | test accuracy | "
             "test reward |",
             "|---|---|---|---|---|---|---|---|"]
    latency = any(c.get("latency_ms") is not None for c in summary["candidates"])
    if latency:  # beside MACs: predicted (the table) / measured end to end (B0 and the reference)
        lines[-2] = lines[-2].replace("| MACs |", "| MACs | latency predicted / measured |")
        lines[-1] += "---|"
    for i, c in enumerate(summary["candidates"]):
        mark = " (B0)" if i == summary["chosen"] else ""
        lat = f" {_ms(c.get('latency_ms'))} / {_ms(c.get('measured_latency_ms'))} |" if latency else ""
        lines.append(f"| {c['label']}{mark} | {_m(c['macs'])} |{lat} {_m(c['params'])} | {c['ok']}/{c['runs']} | "
                     f"{_pm(c['val'])} | {_f(c['val_reward'])} | {_pm(c['test'])} | {_f(c['test_reward'])} |")
    lines += ["", verdict_line(summary), ""]
    return "\n".join(lines)


def _m(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.1f}M"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def write_outputs(summary: dict, out: str | Path, budget: ProxyBudget, objective: Objective) -> None:
    """final.csv (one row per run) and final.md (the table and the verdict), atomically."""
    import csv
    import io

    from search_space.fileio import write_atomic

    by_key = {c["key"]: c for c in summary["candidates"]}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in summary["records"]:
        c = by_key[r["key"]]
        val, test, lat = r["accuracy"], r.get("test_accuracy"), r.get("latency_ms")
        w.writerow([c["label"], "" if c["trial"] is None else c["trial"], r["key"], r["macs"], r["params"],
                    seed_of(r), r["status"], _cell(val), _cell(test),
                    _cell(objective.reward(val, r["macs"], lat) if val is not None else None),
                    _cell(objective.reward(test, r["macs"], lat) if test is not None else None),
                    _cell(lat), _cell(c.get("measured_latency_ms"))])
    write_atomic(Path(out) / "final.csv", buf.getvalue())
    write_atomic(Path(out) / "final.md", markdown(summary, budget))


def seed_of(record: dict) -> Any:
    """The training seed of a stage-2 record (kept with the job's budget overrides)."""
    return ((record.get("extra") or {}).get("overrides") or {}).get("seed", "")


def _cell(v: Any) -> str:
    return "" if v is None else f"{v:.6g}"


# -- `python -m nas.final RUN`: run or extend stage 2 of an existing run ------------------------
PROG = "nas.final"


def parse_seeds(text: str, search_seed: int) -> tuple[int, list[int] | None]:
    """`3` (that many fresh seeds) or `4,5,6` (these); the search seed is never one of them."""
    from nas.errors import UserError

    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected a count such as 3 or a list such as 4,5,6") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"--seeds {text!r}: expected a count such as 3 or a list such as 4,5,6")
    if len(values) == 1:
        if values[0] < 1:
            raise UserError(f"--seeds {text!r}: need at least one seed")
        return values[0], None
    if int(search_seed) in values:
        raise UserError(f"--seeds {text!r}: {search_seed} is the search seed; stage 2 needs fresh ones")
    if len(set(values)) != len(values):
        raise UserError(f"--seeds {text!r}: a seed is repeated")
    return len(values), values


def main(argv: Sequence[str] | None = None) -> int:
    """Stage 2 of the run in RUN with other seeds, candidates, budget or device."""
    import argparse

    from nas.errors import UserError

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # one line, exit 2
            raise UserError(message)

    p = Parser(prog=f"python -m {PROG}", description="Run or extend stage 2 (retrain the best on fresh seeds, "
               "choose on search-validation, judge on test) of an existing search run.")
    p.add_argument("run", metavar="RUN", help="the run folder (--out of nas.search)")
    p.add_argument("--top-k", type=int, help="the K best search architectures (default: the run's, 3)")
    p.add_argument("--seeds", help="a count (default: the run's, 3) or a list such as 4,5,6")
    p.add_argument("--candidates", help="trial ids (trials.csv 'id') instead of the top K, e.g. 12,30")
    p.add_argument("--final-epochs", type=float, help="epochs of the final budget (default: the run's, 4)")
    p.add_argument("--final-resolution", type=int, help="image size of the final budget (default: the run's)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="training device (default: the run's)")
    p.add_argument("--workers", type=int, help="trials at once (default: the run's)")
    p.add_argument("--engine", choices=("local", "nni"), help="where the runs train (default: the run's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quiet", action="store_true", help="print only the table and the verdict")
    from nas.errors import cli_main
    return cli_main(PROG, lambda: _main(p.parse_args(argv)),
                    "interrupted; finished runs are stored, rerun the same command to go on")


def _main(args: Any) -> int:
    from nas import config as cfg
    from nas import search
    from nas.errors import UserError
    from nas.store import Store

    cfg.check_out_dir(args.run, True, False)
    with Store.open(args.run) as st:
        stored = st.config
        if not st.count("search"):
            raise UserError(f"{args.run}: the run has no trained search trial yet; finish the search first")
    given = {"out": args.run, "resume": True, "quiet": args.quiet, "no_progress": args.no_progress}
    for name in ("device", "workers", "engine", "final_epochs", "final_resolution"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    if args.top_k is not None:
        if args.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {args.top_k}")
        given["final_top_k"] = args.top_k
    if args.final_epochs is not None and not (math.isfinite(args.final_epochs) and args.final_epochs > 0):
        raise UserError(f"--final-epochs must be a positive number, got {args.final_epochs:g}")
    if args.final_resolution is not None and args.final_resolution < 8:
        raise UserError(f"--final-resolution must be at least 8, got {args.final_resolution}")
    opts = {**cfg.DEFAULTS, **stored, **given}
    if args.seeds is not None:
        opts["final_seeds"], opts["_final_seed_list"] = parse_seeds(args.seeds, int(opts["seed"]))
    if args.candidates is not None:
        try:
            opts["_final_candidates"] = [int(x) for x in args.candidates.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--candidates {args.candidates!r}: expected trial ids such as 12,30") from None
    setup = search.validate(opts, set(given), stored)
    from nas import lock
    lock.acquire(args.run, "stage 2")
    store = Store.open(args.run)
    try:
        out = Path(args.run)
        summary = search._stage2(setup, store, out)
        if summary["chosen"] >= 0:
            chosen = summary["candidates"][summary["chosen"]]
            best = next(r for r in store.trials("search", "trained") if r["id"] == chosen["trial"])
            search._write_outputs(store, out, setup, best, store.trial("reference", 0), summary)
        print(search._final_text(summary, setup))
    finally:
        store.close()
    return 0 if summary["verdict"] is not None else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
