"""One setup for every command: check the options, load the space, build the engine.

Nothing here writes: every option, file and folder is checked *before* `--out` is
created, so a bad invocation leaves nothing a later `--resume` could mistake for a run.
The search (`validate`) and the proxy check (`nas.cli.proxy`) share `load_space`,
`build_engine`, `check_evaluator` and `trial_device`; stage 2 (`nas.cli.final`) re-uses
the search's `validate` on the run's stored options.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from nas.errors import UserError

from .args import checked, int_at_least, log, member_phis, parse_phis, parse_window, positive_int
from .options import DEFAULT_WORKERS_CAP, DEFAULTS


@dataclass
class Setup:
    """Everything validated, nothing written yet."""

    opts: dict
    space: Any
    budget: Any                         # nas.evaluate.budget.ProxyBudget
    ctx: Any                            # nas.engines.protocol.EvalContext
    settings: Any                       # nas.search.settings.LoopSettings
    reference: Any
    recipe: Any = None                  # nas.search.recipe.ControllerRecipe
    engine: Any = None                  # built and checked once, used for the search, stage 2 and the grid
    slots: list = field(default_factory=list)
    phis: list = field(default_factory=list)


# -- pieces every command uses ------------------------------------------------------------
def load_space(opts: dict, given: set, stored: Optional[dict], what: str = "run") -> Any:
    """The search space: `--space FILE` when given (or on a new run), else the run's stored
    one, else the built-in. `opts["space_text"]` is set to its YAML; on resume it must equal
    the stored space (what is searched cannot change)."""
    from search_space.errors import SpecError
    from search_space.space import SearchSpace
    try:
        if opts.get("space") and (stored is None or "space" in given):
            path = Path(opts["space"])
            if not path.is_file():
                raise UserError(f"--space {opts['space']}: no such file")
            space = SearchSpace.from_yaml(path)
        elif stored is not None and stored.get("space_text"):
            space = SearchSpace.from_yaml_text(stored["space_text"], source=f"the {what}'s stored space")
        else:
            space = SearchSpace.default()
    except SpecError as exc:
        raise UserError(f"--space: {str(exc).splitlines()[0]}") from None
    text = space.to_yaml()
    if stored is not None and stored.get("space_text") and text != stored["space_text"]:
        raise UserError("--resume: --space differs from the run's search space; it cannot change on resume")
    opts["space_text"] = text
    return space


def check_resolutions(opts: dict, space: Any, names: tuple[str, ...]) -> None:
    """Each resolution option must be at least the networks' total stride."""
    stride = space.skeleton().total_stride
    for name in names:
        if opts.get(name) is not None and int(opts[name]) < stride:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} {opts[name]} is below the networks' total stride {stride}; use at least {stride}")


def trial_device(want: str) -> str:
    """`--device cpu|cuda|auto` as the trials use it: `cpu` or `cuda` (auto: CUDA when
    available; cuda on a machine without it is a one-line error)."""
    from nas.evaluate.device import resolve
    if want == "cpu":
        return "cpu"
    return resolve(want, "--device").split(":")[0]


def check_evaluator(ref: str) -> None:
    from nas.engines.evaluator import load_evaluator
    try:
        load_evaluator(ref)
    except Exception as exc:  # noqa: BLE001 - any failure to import it is the user's to fix
        raise UserError(f"--evaluator {ref}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def build_engine(opts: dict, device: str, elsewhere: bool = False, nni_cfg: Optional[dict] = None) -> tuple[Any, list]:
    """(engine, slots): NNI with `--engine nni` (its options checked now), else local worker
    processes, one per slot: `--workers` (0: one per core, at most `DEFAULT_WORKERS_CAP`)
    on the CPU, per GPU × `--workers-per-gpu` on CUDA."""
    from nas.engines.local import LocalEngine, device_slots

    if device == "cuda" and not elsewhere:
        slots = device_slots("cuda", int(opts["workers"]), int(opts.get("workers_per_gpu") or 1))
    else:
        n = int(opts["workers"]) or max(1, min(DEFAULT_WORKERS_CAP, os.cpu_count() or 1))
        slots = device_slots("cpu", n)
    if opts["engine"] == "nni":
        from nas.nni.engine import NniEngine
        if nni_cfg is None:
            nni_cfg = load_nni(opts)[0]
        return NniEngine.from_args({**opts, "workers": len(slots)}, nni_cfg, log=lambda m: log(opts, m)), slots
    timeout = float(opts["trial_timeout"])
    return LocalEngine(slots, trial_timeout=timeout + min(30.0, 0.25 * timeout)), slots


def load_nni(opts: dict) -> tuple[dict, bool]:
    """(the NNI configuration, whether its trials run on other machines), read once."""
    try:
        from nas.nni import config as nni_config
        from nas.nni.engine import NniEngine  # noqa: F401 - the experiment API must import
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--engine nni: NNI cannot be used here ({type(exc).__name__}: {exc})") from None
    cfg = nni_config.load_nni_config(opts.get("nni_config"))
    return cfg, nni_config.trials_run_elsewhere(cfg)


def check_data_options(budget: Any) -> None:
    """The folders of the data options, each a one-line error: --test-data-dir only for an
    imagefolder, present, with the class folders of --data-dir; --cache-dir creatable."""
    if budget.test_data_dir:
        if budget.dataset != "imagefolder":
            raise UserError(f"--test-data-dir is for --dataset imagefolder ({budget.dataset} has its own test part)")
        from nas.evaluate.sources import check_same_classes
        check_same_classes(budget.data_dir, budget.test_data_dir)
    from nas.evaluate.cache import cache_root
    cache_root(budget.cache_dir)


def check_dataset(budget: Any, opts: dict, elsewhere: bool = False, stage2_resolution: int | None = None) -> int:
    """Number of classes; with the real evaluator the dataset is loaded once here (so a
    missing or broken dataset is one clear error, and a download happens once), which
    builds its proxy-data cache entry (a progress bar unless --no-progress or --quiet); with
    `stage2_resolution` the test part's entry at that resolution too, so that stage 2's
    workers find it built. A `--data-dir` that is not on this machine is the workers' path
    when trials run elsewhere (and their cache is theirs)."""
    import dataclasses

    from nas.evaluate.budget import DATASETS, NUM_CLASSES
    if budget.dataset not in DATASETS:
        raise UserError(f"--dataset {budget.dataset!r}: expected one of {', '.join(DATASETS)}")
    if budget.data_dir and not Path(budget.data_dir).is_dir():
        if elsewhere:
            log(opts, f"note: --data-dir {budget.data_dir} is not on this machine; the trials read it on theirs")
            return NUM_CLASSES.get(budget.dataset, 10)
        raise UserError(f"--data-dir {budget.data_dir}: no such folder")
    if budget.test_data_dir and elsewhere and not Path(budget.test_data_dir).is_dir():
        return NUM_CLASSES.get(budget.dataset, 10)
    check_data_options(budget)
    if opts["evaluator"] != DEFAULTS["evaluator"]:
        return NUM_CLASSES.get(budget.dataset, 10)
    from nas.evaluate import data
    progress = not (opts.get("no_progress") or opts.get("quiet"))
    n = int(data.load_checked(budget, progress=progress).num_classes)
    if stage2_resolution is not None and not elsewhere:
        data.load_checked(dataclasses.replace(budget, resolution=int(stage2_resolution), test=True), progress=progress)
    data.clear_cache()
    return max(2, n)


# -- the search -------------------------------------------------------------------------
def controller_recipe(opts: dict, space: Any) -> Any:
    """The controller named in opts, sized for the run; built once here so that a bad
    setting is a one-line error before `--out` exists."""
    from nas.search.recipe import ControllerRecipe
    recipe = ControllerRecipe.for_run(opts["controller"], int(opts["seed"]), int(opts["trials"]),
                                      target=None if opts.get("target_flops") is None else int(opts["target_flops"]),
                                      cost_window=parse_window(opts["cost_window"]),
                                      target_resolution=int(opts["target_resolution"]))
    try:
        recipe.build(space)
    except ValueError as exc:
        raise UserError(f"--controller {recipe.name}: {exc}") from None
    return recipe


def cheaper_trials(opts: dict, budget: Any) -> dict:
    """The ASHA and prefilter policies' settings (None = off) of --early-stop/--eta/
    --min-fraction and --prefilter/--prefilter-ratio, checked (one-line UserError); `opts`
    normalised."""
    from nas.evaluate.zero_cost import SCORES
    from nas.search.asha import MODES, AshaSettings, parse_fraction
    from nas.search.prefilter import PrefilterSettings

    mode = str(opts.get("early_stop") or "off").lower()
    if mode not in MODES:
        raise UserError(f"--early-stop {mode!r}: expected one of {', '.join(MODES)}")
    eta = checked(int_at_least("--eta", 2), opts.get("eta", DEFAULTS["eta"]))
    fraction = parse_fraction(opts.get("min_fraction", DEFAULTS["min_fraction"]))
    score = str(opts.get("prefilter") or "").strip().lower().replace("-", "_")
    if score in ("", "none", "off"):
        score = ""
    elif score not in SCORES:
        raise UserError(f"--prefilter {opts.get('prefilter')!r}: expected one of {', '.join(SCORES)} (or none)")
    ratio = checked(positive_int("--prefilter-ratio"), opts.get("prefilter_ratio", DEFAULTS["prefilter_ratio"]))
    opts.update(early_stop=mode, eta=eta, prefilter=score or "none", prefilter_ratio=ratio)
    return {"asha": AshaSettings(eta, fraction) if mode == "asha" else None,
            "prefilter": PrefilterSettings(score, ratio, budget.to_dict()) if score else None}


def validate(opts: dict, given: set, stored: Optional[dict] = None,
             check_out: Callable[[dict], None] | None = None) -> Setup:
    """Check every option, file and folder of a search; build (but do not start) the pieces.
    `check_out(opts)` checks `--out` (default: as a search run, new or resumed)."""
    from nas.engines.protocol import EvalContext
    from nas.evaluate.budget import ProxyBudget, data_fields
    from nas.search.latency import settings_from
    from nas.search.objective import Objective, preset
    from nas.search.settings import ONESHOT_KIND, SEARCH_KIND, CostWindow, LoopSettings, StopRule

    from .oneshot import check as check_oneshot
    from .oneshot import is_oneshot
    from .rundir import check_out_dir

    if opts.get("target_flops") is None and opts.get("target_latency") is None:
        raise UserError("a target is required: --target-flops (e.g. 400M) and/or --target-latency (e.g. 20ms)")
    target = None if opts.get("target_flops") is None else int(opts["target_flops"])
    alpha0, beta0 = preset(opts["reward"])
    opts["alpha"] = alpha0 if opts.get("alpha") is None else float(opts["alpha"])
    opts["beta"] = beta0 if opts.get("beta") is None else float(opts["beta"])
    low, high = parse_window(opts["cost_window"])
    phis = parse_phis(opts["phis"])
    for k in ("alpha_scale", "beta_scale", "gamma_scale"):
        if float(opts[k]) < 1:
            raise UserError(f"--{k.replace('_', '-')} must be >= 1, got {opts[k]}")
    if opts.get("verify_scaling"):
        if opts.get("no_scale"):
            raise UserError("--verify-scaling needs the family: drop --no-scale")
        member_phis(opts["verify_phi"], phis, "--verify-phi")
    if opts.get("scale_grid") and not opts.get("no_scale"):
        from scaling.grid import grid_candidates
        try:
            grid_candidates(float(opts["grid_step"]), tol=float(opts["grid_tol"]))
        except Exception as exc:  # noqa: BLE001 - ScalingError: e.g. no point under the tolerance
            raise UserError(f"--scale-grid: {str(exc).splitlines()[0]}") from None
    if check_out is None:
        check_out_dir(opts["out"], bool(opts.get("resume")), bool(opts.get("overwrite")))
    else:
        check_out(opts)
    elsewhere, nni_cfg = False, None  # trials on other machines (NNI remote/cluster): their GPUs and folders
    if opts["engine"] == "nni":
        nni_cfg, elsewhere = load_nni(opts)
    if is_oneshot(opts) and not opts.get("space"):  # the one-shot sub-space (nas.supernet.oneshot)
        from nas.supernet.oneshot import oneshot_space_file
        opts["space"] = str(oneshot_space_file())
    space = load_space(opts, given, stored)
    recipe = controller_recipe(opts, space)  # its errors, too, before --out exists
    check_resolutions(opts, space, ("proxy_resolution",))
    # elsewhere, `auto` and `cuda` are resolved by each trial on its own machine
    device = opts["device"] if elsewhere and opts["device"] != "cpu" else trial_device(opts["device"])
    engine, slots = build_engine(opts, device, elsewhere, nni_cfg)
    check_evaluator(opts["evaluator"])
    ref = None
    if str(opts.get("reference") or "none").lower() != "none":
        from search_space import zoo
        try:
            ref = zoo.get(opts["reference"])
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"--reference {opts['reference']}: {str(exc).splitlines()[0]}") from None
    budget = ProxyBudget(dataset=str(opts["dataset"]).lower(), data_dir=opts.get("data_dir"),
                         download=bool(opts.get("download")), resolution=int(opts["proxy_resolution"]),
                         target_resolution=int(opts["target_resolution"]), epochs=float(opts["proxy_epochs"]),
                         batch_size=int(opts["batch_size"]), seed=int(opts["seed"]), device=device,
                         time_limit=float(opts["trial_timeout"]), **data_fields(opts))
    stage2 = None if opts.get("no_final") else int(opts.get("final_resolution") or opts["proxy_resolution"])
    num_classes = check_dataset(budget, opts, elsewhere, stage2)
    latency = settings_from(opts, given, space, ref)  # the table opened and checked here, in this process
    settings = LoopSettings(objective=Objective(target, opts["alpha"], opts["beta"], **latency),
                            window=CostWindow(low, high, chance=1.0 / num_classes),
                            stop=StopRule(trials=int(opts["trials"]), max_epochs=float(opts.get("max_epochs") or 0),
                                          epochs=float(budget.epochs)),
                            target_resolution=int(opts["target_resolution"]), **cheaper_trials(opts, budget),
                            kind=ONESHOT_KIND if is_oneshot(opts) else SEARCH_KIND)
    check_oneshot(opts, given, space, budget)
    ctx = EvalContext(budget=budget, evaluator=opts["evaluator"])
    return Setup(opts=opts, space=space, budget=budget, ctx=ctx, settings=settings, reference=ref,
                 recipe=recipe, engine=engine, slots=slots, phis=phis)
