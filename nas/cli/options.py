"""Options of `python -m nas.search`: defaults, the parser, `--config` YAML merging, resume.

Why it is shaped this way:
- Every option is parsed with `argparse.SUPPRESS` as its default, so the parsed namespace
  holds exactly what the user *gave* (on the command line or in `--config`). Defaults
  are filled afterwards from `DEFAULTS`. That tells `--resume` which options the user
  wants changed, and lets the stored configuration supply everything else.
- A `--config` YAML is turned into command-line tokens and parsed by the same parser,
  so its values get exactly the same checks; the command line then overrides it.
- `nas.cli.setup.validate` then checks *everything* (files, folders, numbers, names)
  before `--out` is created, and raises `UserError` (one line naming the problem, exit 2).
- Every default is read from where it is decided (the budget, the settings and policies,
  stage 2's plan, the reward presets), so each is stated once.
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

from nas.engines.protocol import DEFAULT_EVALUATOR
from nas.errors import UserError
from nas.evaluate.budget import ProxyBudget, parse_subset
from nas.final import plan as final_plan
from nas.final import sequential
from nas.search.asha import AshaSettings
from nas.search.objective import DEFAULT_PRESET
from nas.search.settings import CostWindow, StopRule
from nas.supernet import oneshot as oneshot_defaults
from scaling import grid as scaling_grid
from scaling import verify as scaling_verify
from search_space.fileio import yaml_line

from .args import (MAX_SEED, Parser, count, duration, int_at_least, number, parse_window, positive_int,
                   seed_count)

DEFAULT_OUT = "runs/search"
DEFAULT_WORKERS_CAP = 4   # --workers 0 on CPU: one per core, at most this many
DEFAULT_TRIAL_TIMEOUT = 300.0
_B = ProxyBudget()  # proxy-training defaults come from the budget (nas/evaluate/budget.py)
_ASHA = AshaSettings()

# name -> default. None means "unset" (computed later or optional).
DEFAULTS: dict[str, Any] = {
    "target_flops": None, "reward": DEFAULT_PRESET, "alpha": None, "beta": None,
    "controller": "predictor", "trials": StopRule.trials, "workers": 0, "device": "auto",
    "workers_per_gpu": 1, "dataset": _B.dataset, "data_dir": None, "download": False,
    "proxy_images": None, "test_data_dir": None, "cache_dir": None, "skip_bad_images": False,
    "proxy_epochs": float(_B.epochs), "proxy_resolution": _B.resolution, "target_resolution": _B.target_resolution,
    "batch_size": _B.batch_size,
    "space": None, "config": None, "out": DEFAULT_OUT, "seed": 0, "resume": False, "overwrite": False,
    "engine": "local", "trial_timeout": DEFAULT_TRIAL_TIMEOUT, "cost_window": CostWindow().text(),
    "evaluator": DEFAULT_EVALUATOR,
    "reference": "efficientnet-b0", "no_scale": False, "scale_grid": False, "alpha_scale": 1.2,
    "beta_scale": 1.1, "gamma_scale": 1.15, "phis": "1-7", "grid_step": 0.05, "grid_tol": 0.1,
    "grid_seeds": scaling_grid.DEFAULT_SEEDS, "measure_family_latency": False, "verify_scaling": False, "verify_phi": scaling_verify.DEFAULT_PHIS,
    "verify_seeds": scaling_verify.DEFAULT_SEEDS, "no_progress": False, "quiet": False,
    "no_tensorboard": False,
    "no_final": False, "final_top_k": final_plan.DEFAULT_TOP_K, "final_seeds": final_plan.DEFAULT_SEEDS,
    "final_epochs": final_plan.DEFAULT_EPOCHS, "final_resolution": None, "final_max_seeds": sequential.DEFAULT_MAX_SEEDS,
    "target_latency": None, "latency_device": "cpu", "latency_batch": 1, "latency_threads": 1, "latency_table": None,
    "early_stop": "off", "eta": _ASHA.eta, "min_fraction": str(Fraction(_ASHA.min_fraction).limit_denominator(1000)), "prefilter": "none", "prefilter_ratio": 1,
    "max_epochs": StopRule.max_epochs,
    "strategy": "pertrial", "supernet": None, "supernet_epochs": oneshot_defaults.SUPERNET_EPOCHS,
    "score_images": oneshot_defaults.SCORE_IMAGES,
}
STRATEGIES = ("pertrial", "oneshot")

# Options that define *what* is searched: a resumed run must keep them.
IDENTITY = ("target_flops", "reward", "alpha", "beta", "controller", "seed", "space_text", "dataset",
            "proxy_images", "test_data_dir",
            "proxy_epochs", "proxy_resolution", "target_resolution", "batch_size", "cost_window",
            "evaluator", "reference", "target_latency", "latency_device", "latency_batch", "latency_threads",
            "early_stop", "eta", "min_fraction", "prefilter", "prefilter_ratio",
            "strategy", "supernet", "supernet_epochs", "score_images")

# Options that only steer *how* the run goes or what is written: may change on resume.
NOT_RECORDED = ("config", "resume", "overwrite")


def proxy_images(text: str) -> str:
    """The argparse type of `--proxy-images`: checked, kept as text (`20000`, `200/class`)."""
    try:
        max_images, per_class = parse_subset(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return "all" if max_images is None and per_class is None else (f"{per_class}/class" if per_class else str(max_images))


def add_data_options(group: Any) -> None:
    """--proxy-images, --test-data-dir, --cache-dir, --skip-bad-images: which images, and the
    proxy-data cache (every command that trains has them)."""
    group.add_argument("--proxy-images", type=proxy_images, metavar="N",
                       help="a stratified, fixed subset of the dataset for the search: N images in its class "
                            "proportions (e.g. 20000 or 20k), or N/class; the test part is capped at 20%% of it "
                            "(default: all)")
    group.add_argument("--test-data-dir", metavar="DIR",
                       help="imagefolder: a held-out folder with the same class subfolders (e.g. ImageNet val/) "
                            "as the test part; --data-dir is then searched whole (default: 20%% of --data-dir)")
    group.add_argument("--cache-dir", metavar="DIR",
                       help="the proxy-data cache (decoded, resized images shared by every run on this machine) "
                            "(default: $EFFNAS_CACHE_DIR, else $XDG_CACHE_HOME/effnas/proxy-data, else "
                            "~/.cache/effnas/proxy-data)")
    group.add_argument("--skip-bad-images", action="store_true",
                       help="leave unreadable or truncated image files out, counted and named in one line "
                            "(default: the first one is an error)")


def add_final_budget(group: Any, what: str) -> None:
    """--final-epochs and --final-resolution: stage 2's budget (the proxy check's reference)."""
    group.add_argument("--final-epochs", type=number("--final-epochs", 0, strict=True),
                       help=f"epochs of {what} (default: {DEFAULTS['final_epochs']:g})")
    group.add_argument("--final-resolution", type=int_at_least("--final-resolution", 8),
                       help=f"image size of {what} (default: --proxy-resolution)")


def build_parser(with_nni: bool = True) -> argparse.ArgumentParser:
    d = DEFAULTS
    p = Parser(prog="python -m nas.search", argument_default=argparse.SUPPRESS,
                description="MnasNet-style architecture search for a B0 under a multiply-add target, then "
                            "EfficientNet compound scaling to B1-B7. Every option may also be given in a "
                            "--config YAML file by its long name (dashes or underscores); the command line wins.")
    g = p.add_argument_group("the search")
    g.add_argument("--target-flops", type=count, metavar="COUNT",
                   help="multiply-add target T: 400M, 0.4G, 4e8, ... counted at --target-resolution "
                        "with 1000 classes, as EfficientNet counts 'FLOPS' (this and/or --target-latency)")
    g.add_argument("--target-latency", type=duration, metavar="TIME",
                   help="latency target: 20ms, 1.5s, 800us, predicted per architecture from a latency table "
                        "at --target-resolution (this and/or --target-flops; one reward term per target)")
    g.add_argument("--latency-device", metavar="D",
                   help=f"where latency counts: cpu, cuda, cuda:N (measured here), or 'table': the device "
                        f"--latency-table was measured on (default: {d['latency_device']})")
    g.add_argument("--latency-batch", type=positive_int("--latency-batch"), metavar="B",
                   help=f"batch size of the latency target (default: {d['latency_batch']})")
    g.add_argument("--latency-threads", type=positive_int("--latency-threads"), metavar="N",
                   help=f"CPU threads of the latency target (default: {d['latency_threads']})")
    g.add_argument("--latency-table", metavar="FILE",
                   help="latency table (python -m search_space latency build), e.g. built on the deployment "
                        "device (default: --out/latency_table.json, filled as the search goes)")
    g.add_argument("--reward", choices=("soft", "hard"),
                   help=f"reward preset ACC x (MACs/T)^w: soft alpha=beta=-0.07 (EfficientNet), hard alpha=0, "
                        f"beta=-1 (default: {d['reward']})")
    g.add_argument("--alpha", type=number("--alpha"), help="exponent w when MACs <= T (default: from --reward)")
    g.add_argument("--beta", type=number("--beta"), help="exponent w when MACs > T (default: from --reward)")
    g.add_argument("--controller", choices=("evolution", "rl", "random", "predictor"),
                   help=f"who proposes architectures: regularized evolution, MnasNet's RL (LSTM + PPO), "
                        f"random, or predictor (an MLP ensemble fitted on the results so far; "
                        f"BANANAS-style) (default: {d['controller']}; see docs/controllers.md)")
    g.add_argument("--trials", type=positive_int("--trials"),
                   help=f"architectures to train, or with --strategy oneshot to score (cost-only and cached "
                        f"proposals do not count) (default: {d['trials']}; oneshot: "
                        f"{oneshot_defaults.TRIALS})")
    g.add_argument("--cost-window", metavar="LO,HI",
                   help=f"train only architectures with LO*T <= MACs <= HI*T; the others get a reward from cost "
                        f"alone, recorded as 'skipped' (default: {d['cost_window']}: nothing above the target)")
    g.add_argument("--space", metavar="FILE", help="search space YAML (default: the built-in MnasNet space)")
    g.add_argument("--seed", type=int_at_least("--seed", 0, MAX_SEED), help=f"random seed (default: {d['seed']})")
    g.add_argument("--reference", metavar="NAME",
                   help=f"zoo network trained once under the same budget for comparison, or 'none' "
                        f"(default: {d['reference']})")
    g = p.add_argument_group("proxy training")
    g.add_argument("--dataset", help=f"mnist5k (built-in), digits, cifar10, cifar100, imagefolder "
                                     f"(default: {d['dataset']})")
    g.add_argument("--data-dir", metavar="DIR", help="where cifar*/imagefolder data live (default: none)")
    g.add_argument("--download", action="store_true", help="fetch cifar10/cifar100 into --data-dir if missing")
    add_data_options(g)
    g.add_argument("--proxy-epochs", type=number("--proxy-epochs", 0, strict=True),
                   help=f"epochs per trial, may be fractional (default: {d['proxy_epochs']:g})")
    g.add_argument("--proxy-resolution", type=int_at_least("--proxy-resolution", 8),
                   help=f"image size during proxy training (default: {d['proxy_resolution']})")
    g.add_argument("--target-resolution", type=int_at_least("--target-resolution", 32),
                   help=f"resolution at which MACs are counted and of best.yaml (default: {d['target_resolution']})")
    g.add_argument("--batch-size", type=positive_int("--batch-size"),
                   help=f"proxy training batch size (default: {d['batch_size']})")
    g.add_argument("--evaluator", metavar="MODULE:FUNC",
                   help=f"the function that trains one architecture (default: {d['evaluator']}); "
                        f"nas.trial:hash_evaluate trains nothing (tests, benchmarks)")
    g = p.add_argument_group("where and how it runs")
    g.add_argument("--engine", choices=("local", "nni"), help=f"local worker processes or an NNI experiment "
                                                              f"(default: {d['engine']})")
    g.add_argument("--workers", type=int_at_least("--workers", 0),
                   help="trials at once: on CPU that many processes with cores/workers threads each; on CUDA "
                        "GPUs x --workers-per-gpu; 0 = automatic (default: 0 = one per core, at most 4, or per GPU)")
    g.add_argument("--workers-per-gpu", type=positive_int("--workers-per-gpu"),
                   help=f"worker processes sharing each GPU (default: {d['workers_per_gpu']})")
    g.add_argument("--device", choices=("cpu", "cuda", "auto"),
                   help=f"training device; auto = cuda when available (default: {d['device']})")
    g.add_argument("--trial-timeout", type=number("--trial-timeout", 0, strict=True), metavar="SECONDS",
                   help=f"a trial running longer is killed and recorded as 'timeout' (default: {d['trial_timeout']:g})")
    g = p.add_argument_group("files")
    g.add_argument("--config", metavar="YAML", help="YAML file holding any of these options")
    g.add_argument("--out", metavar="DIR", help=f"run folder (default: {d['out']})")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out (options not given are taken from the run)")
    g.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    g.add_argument("--quiet", action="store_true", help="print only the closing summary")
    g.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard event files")
    g = p.add_argument_group("cheaper trials: early stopping, a training-free prefilter, a compute budget")
    g.add_argument("--early-stop", choices=("off", "asha"),
                   help=f"asha: stop trials below the top 1/--eta of their rung (default: {d['early_stop']})")
    g.add_argument("--eta", metavar="N", help=f"--early-stop asha: keep the top 1/N at each rung, and rungs "
                                              f"N times apart (default: {d['eta']})")
    g.add_argument("--min-fraction", metavar="F", help=f"--early-stop asha: the first rung, a fraction of the "
                                                       f"budget (default: {d['min_fraction']}: rungs 1/9, 1/3, 1)")
    g.add_argument("--prefilter", metavar="SCORE",
                   help=f"score proposals training-free (naswot, synflow, grad_norm, snip, params, macs) and train "
                        f"only the best 1 in --prefilter-ratio (default: {d['prefilter']}); run nas.proxy check first")
    g.add_argument("--prefilter-ratio", metavar="N", help=f"--prefilter: train 1 in N (default: {d['prefilter_ratio']})")
    g.add_argument("--max-epochs", type=number("--max-epochs", 0), metavar="E",
                   help="stop starting trials once E epochs are trained across the search's trials (stopped "
                        "trials count their fraction; 0 = no limit, the default)")
    g = p.add_argument_group("one-shot search: one weight-sharing supernet, sub-networks scored with its weights")
    g.add_argument("--strategy", choices=STRATEGIES,
                   help=f"pertrial: train every architecture (the proxy); oneshot: train one supernet (phase 1, "
                        f"into --out/supernet), then score --trials sub-networks with inherited weights; stage 2 "
                        f"trains the top-k from scratch either way (default: {d['strategy']}; docs/supernet.md)")
    g.add_argument("--supernet", metavar="DIR",
                   help="--strategy oneshot: a trained supernet folder to reuse instead of phase 1 (e.g. "
                        "RUN/supernet): its space must be the search's and its data the proxy's")
    g.add_argument("--supernet-epochs", type=number("--supernet-epochs", 0, strict=True), metavar="E",
                   help=f"--strategy oneshot: epochs of phase 1's supernet training (default: {d['supernet_epochs']:g})")
    g.add_argument("--score-images", type=positive_int("--score-images"), metavar="N",
                   help=f"--strategy oneshot: search-validation images each sub-network is scored on "
                        f"(default: {d['score_images']})")
    g = p.add_argument_group("stage 2: retrain the best on fresh seeds, judge on the test part")
    g.add_argument("--no-final", action="store_true", help="skip stage 2 (B0 is then the search's best)")
    g.add_argument("--final-top-k", type=positive_int("--final-top-k"),
                   help=f"architectures retrained, best by search reward, besides the reference "
                        f"(default: {d['final_top_k']})")
    g.add_argument("--final-seeds", type=seed_count("--final-seeds"),
                   help=f"fresh training seeds, none equal to --seed: a number for each architecture (a fixed "
                        f"design), or auto: {sequential.INITIAL} for each, then more for B0 and the reference "
                        f"only while the verdict is undecided (default: {d['final_seeds']})")
    g.add_argument("--final-max-seeds", type=int_at_least("--final-max-seeds", sequential.INITIAL),
                   help=f"--final-seeds auto: at most this many seeds for B0 and the reference "
                        f"(default: {d['final_max_seeds']})")
    add_final_budget(g, "the final budget")
    g = p.add_argument_group("hand-off to compound scaling")
    g.add_argument("--no-scale", action="store_true", help="do not derive B1-B7 from the B0 found")
    g.add_argument("--scale-grid", action="store_true",
                   help="run the alpha/beta/gamma grid search at phi=1 first (same budget and engine)")
    g.add_argument("--alpha-scale", type=number("--alpha-scale", 1), help=f"depth coefficient (default: {d['alpha_scale']})")
    g.add_argument("--beta-scale", type=number("--beta-scale", 1), help=f"width coefficient (default: {d['beta_scale']})")
    g.add_argument("--gamma-scale", type=number("--gamma-scale", 1),
                   help=f"resolution coefficient (default: {d['gamma_scale']})")
    g.add_argument("--grid-step", type=number("--grid-step", 0, strict=True),
                   help=f"--scale-grid: grid step of alpha, beta, gamma (default: {d['grid_step']})")
    g.add_argument("--grid-tol", type=number("--grid-tol", 0),
                   help=f"--scale-grid: keep points with |alpha*beta^2*gamma^2 - 2| <= this (default: {d['grid_tol']})")
    g.add_argument("--grid-seeds", type=positive_int("--grid-seeds"),
                   help=f"--scale-grid: runs per candidate; a candidate other than the paper's (1.2, 1.1, 1.15) is "
                        f"adopted only when it beats it with Welch p < 0.05 (default: {d['grid_seeds']})")
    g.add_argument("--phis", help=f"which members to derive, e.g. 1-7, 1,2,5 or 0.5-3 (default: {d['phis']})")
    g.add_argument("--measure-family-latency", action="store_true",
                   help="with --target-latency: measure each family member's latency end to end on this machine, "
                        "beside the latency table's prediction in family.md (slow for large members)")
    g.add_argument("--verify-scaling", action="store_true",
                   help="at the end: train the family's B_phi against width-, depth- and resolution-only scalings "
                        "of B0 at matched multiply-adds on fresh seeds (python -m scaling verify; off by default)")
    g.add_argument("--verify-phi", metavar="PHIS",
                   help=f"--verify-scaling: which members, among --phis (default: {d['verify_phi']})")
    g.add_argument("--verify-seeds", type=positive_int("--verify-seeds"),
                   help=f"--verify-scaling: fresh seeds per network (default: {d['verify_seeds']})")
    if with_nni:
        try:
            from nas.nni.config import add_cli_options
            add_cli_options(p)
        except Exception:  # NNI not importable: --engine nni reports it when used
            pass
    return p


def config_tokens(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """A `--config` YAML as command-line tokens; unknown keys and bad YAML are UserErrors."""
    import yaml
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        line = yaml_line(exc)
        where = "" if line is None else f" (line {line})"
        raise UserError(f"--config {path}: not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--config {path}: cannot read ({exc})") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option names to values")
    flags = {}
    for action in parser._actions:
        for s in action.option_strings:
            if s.startswith("--"):
                flags[s[2:].replace("-", "_")] = (s, action)
    tokens: list[str] = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in ("config", "help") or name not in flags:
            raise UserError(f"--config {path}: unknown option {key!r}")
        flag, action = flags[name]
        if action.nargs == 0:  # store_true
            if not isinstance(value, bool):
                raise UserError(f"--config {path}: {key} must be true or false")
            if value:
                tokens.append(flag)
            continue
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        tokens += [flag, str(value)]
    return tokens


def parse(argv: Sequence[str] | None = None) -> tuple[dict[str, Any], set[str]]:
    """(options with defaults filled in, names the user gave). Raises UserError."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    given_ns = parser.parse_args(argv)
    given = vars(given_ns)
    merged: dict[str, Any] = {}
    if given.get("config"):
        merged.update(vars(parser.parse_args(config_tokens(given["config"], parser))))
    merged.update(given)
    names = set(merged)
    opts = dict(DEFAULTS)
    for action in parser._actions:  # options of other modules (NNI) and their defaults
        if action.dest not in opts and action.dest != "help" and action.default is not argparse.SUPPRESS:
            opts[action.dest] = action.default
    opts.update(merged)
    if opts.get("strategy") == "oneshot" and "trials" not in names:
        opts["trials"] = oneshot_defaults.TRIALS  # scoring is cheap: thousands (docs/supernet.md)
    return opts, names


def for_record(opts: dict[str, Any]) -> dict[str, Any]:
    """The options as stored in the run (JSON-able, without per-invocation flags)."""
    return {k: v for k, v in opts.items() if k not in NOT_RECORDED and _jsonable(v)}


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list, tuple, dict))


def merge_resume(stored: dict[str, Any], opts: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """Options of a resumed run: the stored ones, overridden by those the user gave.

    Changing an identity option (what is searched) is an error; --trials, --workers,
    --device, --trial-timeout, --engine, output and scaling options may change.
    """
    out = dict(opts)
    for k, v in stored.items():
        if k not in given:
            out[k] = v
    for k in IDENTITY:
        if k in given and k in stored and _norm(k, stored[k]) != _norm(k, out.get(k)):
            flag = "--" + k.replace("_", "-")
            raise UserError(f"--resume: {flag} {out.get(k)} differs from the run's {stored[k]}; "
                            "it cannot change on resume (start a new --out instead)")
    return out


def _norm(key: str, v: Any) -> Any:
    """A value as the run uses it, so `0.5,1` equals `0.5,1.0` and `MNIST5K` equals `mnist5k`."""
    if key == "cost_window":
        try:
            return parse_window(",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
        except UserError:
            return v
    if key == "min_fraction":
        from fractions import Fraction
        try:
            return round(float(Fraction(str(v))), 12)
        except (ValueError, ZeroDivisionError):
            return v
    if key == "proxy_images":
        try:
            return parse_subset(v)
        except UserError:
            return v
    if key in ("test_data_dir", "supernet") and v:
        return str(Path(v).resolve())
    if key in ("dataset", "reference", "latency_device") and isinstance(v, str):
        return v.lower()
    if isinstance(v, (list, tuple)):
        return [_norm(key, x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
