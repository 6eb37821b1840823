"""`python -m nas.proxy check`: does the proxy task rank architectures like a longer training does?

The command: its options (`build_parser`, `parse`), `validate` (nothing written), and `run`:
sample K architectures of the cost window (`nas.proxy.sampling`), train each under the
proxy budget on R seeds and once under the reference budget (`nas.proxy.check`: the jobs
and the zero-cost scores), then the statistics (`nas.proxy.stats`) and the report
(`nas.proxy.report`). The folder is a run folder like a search's: locked while the check
runs, resumable (`--resume`), one-line errors.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from nas.errors import UserError
from nas.evaluate.budget import ProxyBudget
from nas.proxy.check import (INHERITED, KIND, REF_KIND, batch_source, budgets, collect, cost_of, inherited_scores,
                             proxy_seeds, zero_cost_scores)
from nas.proxy.report import markdown, summary_words, to_json, write_outputs
from nas.proxy.sampling import sample_architectures
from nas.proxy.stats import analyze

from .args import MAX_SEED, Parser, cli_main, count, int_at_least, log, number, parse_window, positive_int
from .options import DEFAULTS, add_data_options, add_final_budget
from .rundir import check_out_dir, open_run
from .setup import build_engine, check_data_options, check_evaluator, check_resolutions, load_space, trial_device

AGAIN = "continue with --resume --out {out}"
PROG = "nas.proxy"
TOOL = "nas.proxy check"          # marks a store as a proxy-check run (not a search run)
DEFAULT_OUT = "runs/proxy"
DB_FILES = ("search.db", "search.db-wal", "search.db-shm")



def _defaults() -> dict[str, Any]:
    b = ProxyBudget()
    return {"target_flops": None, "space": None, "dataset": b.dataset, "data_dir": None, "proxy_images": None,
            "test_data_dir": None, "cache_dir": None, "skip_bad_images": False,
            "proxy_epochs": float(b.epochs), "proxy_resolution": b.resolution, "batch_size": b.batch_size,
            "target_resolution": b.target_resolution, "cost_window": DEFAULTS["cost_window"], "seed": 0,
            "final_epochs": DEFAULTS["final_epochs"], "final_resolution": None, "device": "auto", "workers": 0,
            "engine": "local", "evaluator": DEFAULTS["evaluator"], "trial_timeout": DEFAULTS["trial_timeout"], "k": 24,
            "seeds": 2,
            "scores": "all", "bootstrap": 2000, "out": DEFAULT_OUT, "resume": False, "overwrite": False,
            "quick": False, "json": False, "no_progress": False, "quiet": False, "proxy": "trial", "supernet": None}


# --quick: a smoke test that finishes in about a minute on 2 cores (CI); its τ decides nothing.
QUICK = {"k": 6, "seeds": 2, "proxy_epochs": 0.25, "final_epochs": 0.5, "dataset": "mnist5k",
         "proxy_resolution": 32, "bootstrap": 500}
# What is not recorded in the store (how this invocation runs, not what it measures).
NOT_RECORDED = ("resume", "overwrite", "json", "no_progress", "quiet", "quick")


def build_parser() -> argparse.ArgumentParser:
    """`check` and its options (defaults applied after parsing, so --resume knows what was given)."""
    d = _defaults()
    p = Parser(prog=f"python -m {PROG}", argument_default=argparse.SUPPRESS,
                description="Check the proxy task: rank correlation of proxy accuracy (and of training-free "
                            "scores) with accuracy under a longer reference budget, on architectures sampled "
                            "from the cost window.")
    p.add_argument("command", choices=("check",), help="check: run (or resume) the proxy check")
    g = p.add_argument_group("what is checked (as in nas.search)")
    g.add_argument("--target-flops", type=count, metavar="COUNT",
                   help="multiply-add target T (required, unless --resume): 400M, 0.4G, 4e8")
    g.add_argument("--space", metavar="FILE", help="search space YAML (default: the built-in MnasNet space)")
    g.add_argument("--cost-window", metavar="LO,HI", help=f"sample LO*T <= MACs <= HI*T (default: {d['cost_window']})")
    g.add_argument("--target-resolution", type=int_at_least("--target-resolution", 32),
                   help=f"resolution at which MACs are counted (default: {d['target_resolution']})")
    g.add_argument("--dataset", help=f"mnist5k, digits, cifar10, cifar100, imagefolder (default: {d['dataset']})")
    g.add_argument("--data-dir", metavar="DIR", help="where cifar*/imagefolder data live (default: none)")
    add_data_options(g)
    g.add_argument("--proxy-epochs", type=number("--proxy-epochs", 0, strict=True),
                   help=f"epochs of the proxy budget (default: {d['proxy_epochs']:g})")
    g.add_argument("--proxy-resolution", type=int_at_least("--proxy-resolution", 8),
                   help=f"image size of the proxy budget (default: {d['proxy_resolution']})")
    g.add_argument("--batch-size", type=positive_int("--batch-size"),
                   help=f"training batch size (default: {d['batch_size']})")
    add_final_budget(g, "the reference budget, the stage-2 final budget")
    g.add_argument("--seed", type=int_at_least("--seed", 0, MAX_SEED),
                   help=f"sampling seed; the reference trains on it, the proxy on seed+1..seed+R "
                        f"(default: {d['seed']})")
    g.add_argument("--k", type=int_at_least("--k", 3), help=f"architectures (default: {d['k']})")
    g.add_argument("--seeds", type=positive_int("--seeds"), help=f"proxy seeds R (default: {d['seeds']})")
    g.add_argument("--scores", metavar="LIST",
                   help="zero-cost scores: all, none or a comma list of naswot, synflow, grad_norm, snip, params, "
                        f"macs (default: {d['scores']})")
    g.add_argument("--proxy", choices=("trial", "supernet"),
                   help="trial: the per-trial proxy alone; supernet: also the one-shot search's score (accuracy "
                        "with a supernet's inherited weights, --supernet) of every architecture, sampled from the "
                        f"supernet's space (default: {d['proxy']})")
    g.add_argument("--supernet", metavar="DIR",
                   help="--proxy supernet: the trained supernet folder (e.g. RUN/supernet of a one-shot search)")
    g.add_argument("--bootstrap", type=int_at_least("--bootstrap", 100),
                   help=f"bootstrap resamples of the intervals (default: {d['bootstrap']})")
    g.add_argument("--evaluator", metavar="MODULE:FUNC", help=f"the trainer (default: {d['evaluator']})")
    g = p.add_argument_group("where and how it runs")
    g.add_argument("--engine", choices=("local", "nni"), help=f"where runs train (default: {d['engine']})")
    g.add_argument("--workers", type=int_at_least("--workers", 0),
                   help="runs at once (default: 0 = one per core, at most 4, or one per GPU)")
    g.add_argument("--device", choices=("cpu", "cuda", "auto"), help=f"training device (default: {d['device']})")
    g.add_argument("--trial-timeout", type=number("--trial-timeout", 0, strict=True), metavar="SECONDS",
                   help=f"a run longer than this is recorded as 'timeout' (default: {d['trial_timeout']:g})")
    g.add_argument("--out", metavar="DIR", help=f"folder of the check (default: {d['out']})")
    g.add_argument("--resume", action="store_true", help="continue the check in --out (other options from it)")
    g.add_argument("--overwrite", action="store_true", help="replace a check in --out")
    g.add_argument("--quick", action="store_true",
                   help="smoke test: K=6, R=2, proxy 0.25 and reference 0.5 epochs on mnist5k at 32 px "
                        "(about a minute on 2 cores; explicit options win)")
    g.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")
    g.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    g.add_argument("--quiet", action="store_true", help="no progress or log lines on stderr")
    try:
        from nas.nni.config import add_cli_options
        add_cli_options(p)
    except Exception:  # NNI not importable: --engine nni says so when used
        pass
    return p


def parse(argv: Sequence[str] | None) -> tuple[dict, set]:
    """(options: defaults < --quick < the stored check on --resume < given; names given)."""
    p = build_parser()
    given = vars(p.parse_args(list(sys.argv[1:] if argv is None else argv)))
    given.pop("command", None)
    opts = _defaults()
    for action in p._actions:  # NNI's options and their defaults
        if action.dest not in opts and action.dest not in ("help", "command") and \
                action.default is not argparse.SUPPRESS:
            opts[action.dest] = action.default
    if given.get("quick"):
        opts.update(QUICK)
    opts.update(given)
    return opts, set(given)


def _check_out(out: str, resume: bool, overwrite: bool) -> None:
    """--out must hold a proxy check exactly when --resume is given, and be writable."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    check_out_dir(out, resume, overwrite, what="proxy check")


@dataclasses.dataclass
class Setup:
    """Everything validated, nothing written yet."""

    opts: dict
    specs: list
    proxy: Any
    reference: Any
    seeds: list
    scores: list
    engine: Any
    data: Any = None


def validate(opts: dict, given: set, stored: Optional[dict] = None) -> Setup:
    """Check every option, file and folder, sample the architectures; write nothing."""
    from nas.evaluate import zero_cost
    from nas.evaluate.budget import DATASETS

    if opts.get("target_flops") is None:
        raise UserError("--target-flops is required (e.g. --target-flops 400M)")
    target = int(opts["target_flops"])
    window = parse_window(opts["cost_window"])
    _check_out(opts["out"], bool(opts.get("resume")), bool(opts.get("overwrite")))
    if opts.get("proxy") == "supernet":
        if not opts.get("supernet"):
            raise UserError("--proxy supernet needs --supernet DIR (a trained supernet folder)")
    elif opts.get("supernet"):
        raise UserError("--supernet goes with --proxy supernet")
    if opts.get("proxy") == "supernet" and not opts.get("space") and stored is None:
        space = _supernet_space(opts["supernet"])  # the supernet's own: its architectures are the sample
        opts["space_text"] = space.to_yaml()
    else:
        space = load_space(opts, given, stored, what="check")
    check_resolutions(opts, space, ("proxy_resolution", "final_resolution"))
    try:
        scores = zero_cost.parse_names(opts["scores"])
    except ValueError as exc:
        raise UserError(f"--scores: {exc}") from None
    dataset = str(opts["dataset"]).lower()
    if dataset not in DATASETS:
        raise UserError(f"--dataset {opts['dataset']!r}: expected one of {', '.join(DATASETS)}")
    if opts.get("data_dir") and not Path(opts["data_dir"]).is_dir():
        raise UserError(f"--data-dir {opts['data_dir']}: no such folder")
    check_evaluator(opts["evaluator"])
    opts["_device"] = trial_device(opts["device"])
    engine, _ = build_engine(opts, opts["_device"])
    try:
        specs = sample_architectures(space, target, window, int(opts["k"]), int(opts["seed"]),
                                     int(opts["target_resolution"]))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    proxy, reference = budgets(opts)
    check_data_options(proxy)
    if opts.get("proxy") == "supernet":
        from nas.supernet.oneshot import check_reuse
        check_reuse(opts["supernet"], space, proxy)
        scores = [s for s in scores if s != INHERITED] + [INHERITED]
    data = None
    if opts["evaluator"] == _defaults()["evaluator"] or any(s in zero_cost.NEEDS_DATA or s == "synflow"
                                                             for s in scores):
        from nas.evaluate import data as D
        data = D.load_checked(proxy, progress=not (opts.get("no_progress") or opts.get("quiet")))
    return Setup(opts=opts, specs=specs, proxy=proxy, reference=reference, seeds=proxy_seeds(opts), scores=scores,
                 engine=engine, data=data)


def _supernet_space(folder: str) -> Any:
    """The search space a trained supernet was trained over (`--proxy supernet` without --space)."""
    from nas.supernet.checkpoint import read_config
    from search_space.space import SearchSpace
    if not Path(folder).is_dir():
        raise UserError(f"--supernet {folder}: no such folder")
    return SearchSpace.from_yaml_text(read_config(Path(folder))["space"], source=f"the supernet's space ({folder})")


def _record(opts: dict) -> dict:
    keep = {k: v for k, v in opts.items() if not k.startswith("_") and k not in NOT_RECORDED}
    return {**{k: v for k, v in keep.items() if v is None or isinstance(v, (str, int, float, bool, list))},
            "tool": TOOL}


def _train(setup: Setup, store: Any, kind: str, budget: Any, seeds: Sequence[int], label: str) -> tuple[Any, int]:
    """Train what is missing of one budget; (the source, runs trained now)."""
    from nas.engines.protocol import EvalContext
    from nas.reports.progress import Progress

    opts = setup.opts
    show = not (opts.get("no_progress") or opts.get("quiet"))
    source = batch_source(store, setup.specs, seeds, budget, opts["evaluator"], kind, int(opts["target_flops"]),
                          int(opts["target_resolution"]))
    stored = sum(r is not None for r in source.records())
    todo = len(source.jobs) - stored
    log(opts, f"{label}: {len(setup.specs)} architectures x seeds {list(seeds)}, {budget.epochs:g} epochs at "
               f"{budget.resolution}px" + (f" ({stored} of {len(source.jobs)} runs already stored)" if stored else ""))
    if todo:
        progress = Progress(len(source.jobs), done=stored, kind=kind, enabled=show)
        source.listeners.append(progress)
        try:
            setup.engine.run(source, EvalContext(budget=budget, evaluator=opts["evaluator"]))
        finally:
            progress.close()
    return source, sum(r is not None for r in source.records()) - stored


def run(argv: Sequence[str] | None = None) -> dict:
    """The whole check (validate, train what is missing, score, report); its summary."""
    from nas.engines.protocol import sigterm_as_interrupt
    from nas.store.store import Store

    t0 = time.time()
    opts, given = parse(argv)
    stored = None
    if opts.get("resume"):
        _check_out(opts["out"], True, False)
        with Store.open(opts["out"]) as st:
            stored = st.config
        if stored.get("tool") != TOOL:
            raise UserError(f"--resume: {opts['out']} holds a search run, not a proxy check; use another --out")
        fresh, _ = parse(["check"])  # defaults (NNI's too), then the check's options, then the given ones
        opts = {**fresh, **{k: v for k, v in stored.items() if k != "tool"}, **{k: opts[k] for k in given}}
        opts["resume"] = True
    setup = validate(opts, given, stored)
    out = Path(opts["out"])
    overwrite = DB_FILES if opts.get("overwrite") and not opts.get("resume") else ()
    with open_run(out, "the proxy check", AGAIN.format(out=out), config=_record(opts), create=stored is None,
                  overwrite=overwrite) as store:
        with sigterm_as_interrupt():
            return _check(setup, store, out, t0)


def _check(setup: Setup, store: Any, out: Path, t0: float) -> dict:
    from search_space import cost

    opts = setup.opts
    lo, hi = cost.macs(setup.specs[0]), cost.macs(setup.specs[-1])
    log(opts, f"proxy check: {len(setup.specs)} architectures of {lo / 1e6:.0f}M-{hi / 1e6:.0f}M MACs "
               f"(target {int(opts['target_flops']) / 1e6:g}M), {len(setup.seeds)} proxy seeds, "
               f"{opts['engine']} engine; out: {out}")
    zc, zc_s, zc_batch = zero_cost_scores(store, setup.specs, [s for s in setup.scores if s != INHERITED],
                                          setup.data, int(opts["seed"]), log=lambda m: log(opts, m))
    if INHERITED in setup.scores:
        zc[INHERITED], zc_s[INHERITED] = inherited_scores(store, setup.specs, opts["supernet"], setup.proxy.device,
                                                          log=lambda m: log(opts, m))
    prox, n1 = _train(setup, store, KIND, setup.proxy, setup.seeds, "proxy budget")
    ref, n2 = _train(setup, store, REF_KIND, setup.reference, [int(opts["seed"])], "reference budget")
    rows = collect(setup.specs, prox, ref, setup.seeds, zc)
    analysis = analyze(rows, setup.seeds, setup.scores, int(opts["bootstrap"]), int(opts["seed"]))
    summary = {"analysis": analysis, "seeds": setup.seeds, "reference_seed": int(opts["seed"]),
               "scores": setup.scores, "target": int(opts["target_flops"]),
               "window": list(parse_window(opts["cost_window"])),
               "target_resolution": int(opts["target_resolution"]),
               "proxy_budget": dataclasses.asdict(setup.proxy), "reference_budget": dataclasses.asdict(setup.reference),
               "cost": {"proxy": cost_of(prox.records(), setup.proxy), "reference": cost_of(ref.records(), setup.reference),
                        "zero_cost_s": zc_s},
               "out": str(out), "trained_now": n1 + n2, "files": [], "zc_batch": zc_batch,
               "supernet": opts.get("supernet")}
    summary["words"] = summary_words(summary)
    summary["files"] = write_outputs(summary, rows, out)
    summary["wall_s"] = time.time() - t0
    summary["rows"] = rows
    summary["json"] = bool(opts.get("json"))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m nas.proxy check ...`; 0 with statistics, 1 without (fewer than 3
    architectures have both accuracies; or the engine stopped), 2 for bad input, 130 when
    interrupted (finished runs stay in the store: `--resume` goes on)."""
    return cli_main(PROG, lambda: _report(run(argv)),
                    "interrupted; finished runs are stored, rerun with --resume to go on")


def _report(summary: dict) -> int:
    text = markdown(summary)
    print("\n".join(text.splitlines()[2:]).rstrip())
    if summary["json"]:
        print(json.dumps(to_json(summary), sort_keys=True))
    if summary["analysis"]["n"] < 3:
        print(f"{PROG}: only {summary['analysis']['n']} architectures have both accuracies; the statistics "
              "are undefined", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
