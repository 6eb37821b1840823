"""Options of `python -m nas.search`: defaults, `--config` YAML merging, validation.

Why it is shaped this way:
- Every option is parsed with `argparse.SUPPRESS` as its default, so the parsed namespace
  holds exactly what the user *gave* (on the command line or in `--config`). Defaults
  are filled afterwards from `DEFAULTS`. That tells `--resume` which options the user
  wants changed, and lets the stored configuration supply everything else.
- A `--config` YAML is turned into command-line tokens and parsed by the same parser,
  so its values get exactly the same checks; the command line then overrides it.
- `validate` checks *everything* (files, folders, numbers, names) before `--out` is
  created, and raises `UserError` (one line naming the problem, exit status 2).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from nas.budget import ProxyBudget
from nas.errors import UserError
from search_space.fileio import yaml_line

DEFAULT_OUT = "runs/search"
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds
_B = ProxyBudget()  # proxy-training defaults come from the budget (tuned in nas/budget.py)

# name -> default. None means "unset" (computed later or optional).
DEFAULTS: dict[str, Any] = {
    "target_flops": None, "reward": "soft", "alpha": None, "beta": None,
    "controller": "predictor", "trials": 40, "workers": 0, "device": "auto",
    "workers_per_gpu": 1, "dataset": _B.dataset, "data_dir": None, "download": False,
    "proxy_epochs": float(_B.epochs), "proxy_resolution": _B.resolution, "target_resolution": _B.target_resolution,
    "batch_size": _B.batch_size,
    "space": None, "config": None, "out": DEFAULT_OUT, "seed": 0, "resume": False, "overwrite": False,
    "engine": "local", "trial_timeout": 300.0, "cost_window": "0.5,1.0", "evaluator": "nas.trial:evaluate",
    "reference": "efficientnet-b0", "no_scale": False, "scale_grid": False, "alpha_scale": 1.2,
    "beta_scale": 1.1, "gamma_scale": 1.15, "phis": "1-7", "grid_step": 0.05, "grid_tol": 0.1, "no_progress": False, "quiet": False,
    "no_tensorboard": False,
    "no_final": False, "final_top_k": 3, "final_seeds": 3, "final_epochs": 4.0, "final_resolution": None,
    "target_latency": None, "latency_device": "cpu", "latency_batch": 1, "latency_threads": 1, "latency_table": None,
    "early_stop": "off", "eta": 3, "min_fraction": "1/9", "prefilter": "none", "prefilter_ratio": 1, "max_epochs": 0.0,
}

# Options that define *what* is searched: a resumed run must keep them.
IDENTITY = ("target_flops", "reward", "alpha", "beta", "controller", "seed", "space_text", "dataset",
            "proxy_epochs", "proxy_resolution", "target_resolution", "batch_size", "cost_window",
            "evaluator", "reference", "target_latency", "latency_device", "latency_batch", "latency_threads",
            "early_stop", "eta", "min_fraction", "prefilter", "prefilter_ratio")

# Options that only steer *how* the run goes or what is written: may change on resume.
NOT_RECORDED = ("config", "resume", "overwrite")


class _Parser(argparse.ArgumentParser):
    """argparse that raises `UserError` (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # noqa: D401
        raise UserError(message)


def _count(text: str) -> int:
    from nas.reward import parse_count
    return parse_count(text, "--target-flops")


def _duration(text: str) -> float:
    from nas.latency_cost import parse_duration
    return parse_duration(text, "--target-latency")


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(str(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}")
        return value
    return parse


def checked(parse: Any, value: Any) -> Any:
    """`parse(value)` with one of the argparse types above, its error as a one-line
    `UserError`: for options checked outside the parser (a run's settings read back)."""
    try:
        return parse(value)
    except argparse.ArgumentTypeError as exc:
        raise UserError(str(exc)) from None


def _int_at_least(name: str, low: int, high: int | None = None):
    def parse(text: str) -> int:
        want = f"an integer >= {low}" + ("" if high is None else f" and <= {high}")
        try:
            value = int(str(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {want}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{name} must be {want}, got {text!r}")
        return value
    return parse


def _float(name: str, low: float | None = None, strict: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(str(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if strict else value < low)):
            bound = "" if low is None else (f" > {low:g}" if strict else f" >= {low:g}")
            raise argparse.ArgumentTypeError(f"{name} must be a finite number{bound}, got {text!r}")
        return value
    return parse


def parse_window(text: str) -> tuple[float, float]:
    """`LO,HI` relative to the target (e.g. `0.5,1.0`); HI may be `inf`."""
    parts = str(text).replace(" ", "").split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise UserError(f"--cost-window {text!r}: expected LO,HI relative to the target, e.g. 0.5,1.0") from None
    if not (0 <= lo < hi) or math.isnan(hi) or not math.isfinite(lo):
        raise UserError(f"--cost-window {text!r}: need 0 <= LO < HI")
    return lo, hi


def build_parser(with_nni: bool = True) -> argparse.ArgumentParser:
    d = DEFAULTS
    p = _Parser(prog="python -m nas.search", argument_default=argparse.SUPPRESS,
                description="MnasNet-style architecture search for a B0 under a multiply-add target, then "
                            "EfficientNet compound scaling to B1-B7. Every option may also be given in a "
                            "--config YAML file by its long name (dashes or underscores); the command line wins.")
    g = p.add_argument_group("the search")
    g.add_argument("--target-flops", type=_count, metavar="COUNT",
                   help="multiply-add target T: 400M, 0.4G, 4e8, ... counted at --target-resolution "
                        "with 1000 classes, as EfficientNet counts 'FLOPS' (this and/or --target-latency)")
    g.add_argument("--target-latency", type=_duration, metavar="TIME",
                   help="latency target: 20ms, 1.5s, 800us, predicted per architecture from a latency table "
                        "at --target-resolution (this and/or --target-flops; one reward term per target)")
    g.add_argument("--latency-device", metavar="D",
                   help=f"where latency counts: cpu, cuda, cuda:N (measured here), or 'table': the device "
                        f"--latency-table was measured on (default: {d['latency_device']})")
    g.add_argument("--latency-batch", type=_positive_int("--latency-batch"), metavar="B",
                   help=f"batch size of the latency target (default: {d['latency_batch']})")
    g.add_argument("--latency-threads", type=_positive_int("--latency-threads"), metavar="N",
                   help=f"CPU threads of the latency target (default: {d['latency_threads']})")
    g.add_argument("--latency-table", metavar="FILE",
                   help="latency table (python -m search_space latency build), e.g. built on the deployment "
                        "device (default: --out/latency_table.json, filled as the search goes)")
    g.add_argument("--reward", choices=("soft", "hard"),
                   help=f"reward preset ACC x (MACs/T)^w: soft alpha=beta=-0.07 (EfficientNet), hard alpha=0, "
                        f"beta=-1 (default: {d['reward']})")
    g.add_argument("--alpha", type=_float("--alpha"), help="exponent w when MACs <= T (default: from --reward)")
    g.add_argument("--beta", type=_float("--beta"), help="exponent w when MACs > T (default: from --reward)")
    g.add_argument("--controller", choices=("evolution", "rl", "random", "predictor"),
                   help=f"who proposes architectures: regularized evolution, MnasNet's RL (LSTM + PPO), "
                        f"random, or predictor (an MLP ensemble fitted on the results so far; "
                        f"BANANAS-style) (default: {d['controller']}; see README, Controllers)")
    g.add_argument("--trials", type=_positive_int("--trials"),
                   help=f"architectures to train (cost-only and cached proposals do not count) "
                        f"(default: {d['trials']})")
    g.add_argument("--cost-window", metavar="LO,HI",
                   help=f"train only architectures with LO*T <= MACs <= HI*T; the others get a reward from cost "
                        f"alone, recorded as 'skipped' (default: {d['cost_window']}: nothing above the target)")
    g.add_argument("--space", metavar="FILE", help="search space YAML (default: the built-in MnasNet space)")
    g.add_argument("--seed", type=_int_at_least("--seed", 0, MAX_SEED), help=f"random seed (default: {d['seed']})")
    g.add_argument("--reference", metavar="NAME",
                   help=f"zoo network trained once under the same budget for comparison, or 'none' "
                        f"(default: {d['reference']})")
    g = p.add_argument_group("proxy training")
    g.add_argument("--dataset", help=f"mnist5k (built-in), digits, cifar10, cifar100, imagefolder "
                                     f"(default: {d['dataset']})")
    g.add_argument("--data-dir", metavar="DIR", help="where cifar*/imagefolder data live (default: none)")
    g.add_argument("--download", action="store_true", help="fetch cifar10/cifar100 into --data-dir if missing")
    g.add_argument("--proxy-epochs", type=_float("--proxy-epochs", 0, strict=True),
                   help=f"epochs per trial, may be fractional (default: {d['proxy_epochs']:g})")
    g.add_argument("--proxy-resolution", type=_int_at_least("--proxy-resolution", 8),
                   help=f"image size during proxy training (default: {d['proxy_resolution']})")
    g.add_argument("--target-resolution", type=_int_at_least("--target-resolution", 32),
                   help=f"resolution at which MACs are counted and of best.yaml (default: {d['target_resolution']})")
    g.add_argument("--batch-size", type=_positive_int("--batch-size"),
                   help=f"proxy training batch size (default: {d['batch_size']})")
    g.add_argument("--evaluator", metavar="MODULE:FUNC",
                   help=f"the function that trains one architecture (default: {d['evaluator']}); "
                        f"nas.trial:hash_evaluate trains nothing (tests, benchmarks)")
    g = p.add_argument_group("where and how it runs")
    g.add_argument("--engine", choices=("local", "nni"), help=f"local worker processes or an NNI experiment "
                                                              f"(default: {d['engine']})")
    g.add_argument("--workers", type=_int_at_least("--workers", 0),
                   help="trials at once: on CPU that many processes with cores/workers threads each; on CUDA "
                        "GPUs x --workers-per-gpu; 0 = automatic (default: 0 = one per core, at most 4, or per GPU)")
    g.add_argument("--workers-per-gpu", type=_positive_int("--workers-per-gpu"),
                   help=f"worker processes sharing each GPU (default: {d['workers_per_gpu']})")
    g.add_argument("--device", choices=("cpu", "cuda", "auto"),
                   help=f"training device; auto = cuda when available (default: {d['device']})")
    g.add_argument("--trial-timeout", type=_float("--trial-timeout", 0, strict=True), metavar="SECONDS",
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
    g.add_argument("--max-epochs", type=_float("--max-epochs", 0), metavar="E",
                   help="stop starting trials once E epochs are trained across the search's trials (stopped "
                        "trials count their fraction; 0 = no limit, the default)")
    g = p.add_argument_group("stage 2: retrain the best on fresh seeds, judge on the test part")
    g.add_argument("--no-final", action="store_true", help="skip stage 2 (B0 is then the search's best)")
    g.add_argument("--final-top-k", type=_positive_int("--final-top-k"),
                   help=f"architectures retrained, best by search reward, besides the reference "
                        f"(default: {d['final_top_k']})")
    g.add_argument("--final-seeds", type=_positive_int("--final-seeds"),
                   help=f"fresh training seeds for each, none equal to --seed (default: {d['final_seeds']})")
    g.add_argument("--final-epochs", type=_float("--final-epochs", 0, strict=True),
                   help=f"epochs of the final budget (default: {d['final_epochs']:g})")
    g.add_argument("--final-resolution", type=_int_at_least("--final-resolution", 8),
                   help="image size of the final budget (default: --proxy-resolution)")
    g = p.add_argument_group("hand-off to compound scaling")
    g.add_argument("--no-scale", action="store_true", help="do not derive B1-B7 from the B0 found")
    g.add_argument("--scale-grid", action="store_true",
                   help="run the alpha/beta/gamma grid search at phi=1 first (same budget and engine)")
    g.add_argument("--alpha-scale", type=_float("--alpha-scale", 1), help=f"depth coefficient (default: {d['alpha_scale']})")
    g.add_argument("--beta-scale", type=_float("--beta-scale", 1), help=f"width coefficient (default: {d['beta_scale']})")
    g.add_argument("--gamma-scale", type=_float("--gamma-scale", 1),
                   help=f"resolution coefficient (default: {d['gamma_scale']})")
    g.add_argument("--grid-step", type=_float("--grid-step", 0, strict=True),
                   help=f"--scale-grid: grid step of alpha, beta, gamma (default: {d['grid_step']})")
    g.add_argument("--grid-tol", type=_float("--grid-tol", 0),
                   help=f"--scale-grid: keep points with |alpha*beta^2*gamma^2 - 2| <= this (default: {d['grid_tol']})")
    g.add_argument("--phis", help=f"which members to derive, e.g. 1-7, 1,2,5 or 0.5-3 (default: {d['phis']})")
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
    return opts, names


def check_out_dir(out: str, resume: bool, overwrite: bool, what: str = "search run") -> None:
    """--out must be creatable/writable, and hold a run exactly when --resume is given
    (`what` names the kind of run in the messages: a search run, a proxy check)."""
    from nas.store import Store
    if not str(out).strip():
        raise UserError("--out must name a folder, got an empty string")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    broken = Store.unreadable(path) if path.is_dir() else None
    if broken and not (overwrite and not resume):
        raise UserError(f"{path / 'search.db'}: cannot be read as a run's store ({broken}); nothing was changed "
                        "(move it away, or pass --overwrite to replace it)")
    if resume:
        if not path.is_dir() or not Store.is_run(path):
            raise UserError(f"--resume: {out} is not a {what} (no search.db with a recorded configuration)")
    elif path.is_dir() and Store.is_run(path) and not overwrite:
        raise UserError(f"--out {out}: already holds a run; pass --resume to continue it, --overwrite to "
                        "replace it, or another --out")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK) or not _can_create_in(probe):
        raise UserError(f"--out {out}: {probe} is not writable")


def _can_create_in(folder: Path) -> bool:
    """A real probe (root ignores permission bits; read-only mounts do not)."""
    import tempfile
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".effnas-probe-"))
        return True
    except OSError:
        return False


def device_option(want: str) -> str:
    """`--device cpu|cuda|auto` as the device trials use: auto is CUDA when available;
    cuda on a machine without it is a one-line error."""
    if want == "cpu":
        return "cpu"
    try:
        import torch
        ok = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no usable torch: CPU
        ok = False
    if want == "cuda" and not ok:
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return "cuda" if ok else "cpu"


def parse_phis(text: str) -> list[float]:
    """The family's φ values, in the grammar of `python -m scaling derive --phis` (one parser)."""
    from scaling.compound import parse_phis as parse
    from scaling.errors import ScalingError
    try:
        return parse(str(text))
    except ScalingError as exc:
        raise UserError(f"--phis {text!r}: {exc}") from None


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
    if key in ("dataset", "reference", "latency_device") and isinstance(v, str):
        return v.lower()
    if isinstance(v, (list, tuple)):
        return [_norm(key, x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
