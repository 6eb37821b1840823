"""The one-shot search's supernet: its defaults, its space, phase 1 (train or reuse, checked).

`python -m nas.search --strategy oneshot` trains one supernet into `--out/supernet/`
(phase 1, `train_phase`: the training code and files of `python -m nas.supernet train`,
resumable), or reuses a trained one (`--supernet DIR`, `check_reuse`), then scores
sub-networks with its inherited weights (`nas.supernet.score.InheritedWeights`).

Why a sub-space by default (`oneshot_space_file`): over the full default space a supernet
trained for minutes scores random sub-networks near chance; with `conv_op` fixed to
`mbconv` and `skip` to `identity` they score where they should (docs/supernet.md has the
probe tables). The defaults below were chosen so that the default one-shot run (phase 1,
scoring, stage 2) takes no longer than the default per-trial run on a 2-core CPU
(docs/supernet.md, "One-shot search").

Nothing here imports torch at module level: the search's option parser reads the defaults.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

from nas.errors import UserError

TRIALS = 1000            # sub-networks scored by default (the per-trial default trains 40)
SUPERNET_EPOCHS = 3.0    # phase 1's training epochs
SCORE_IMAGES = 256       # search-validation images per score (of 800 on mnist5k)
CALIBRATION_IMAGES = 128  # training images that recalibrate BatchNorm per score
SUBDIR = "supernet"      # phase 1's folder inside --out
# budget fields that must agree between a reused supernet and the search: which images, at what size
DATA_FIELDS = ("dataset", "data_dir", "resolution", "val_fraction", "max_images", "images_per_class",
               "test_data_dir")


def oneshot_space_file() -> Path:
    """The packaged one-shot sub-space (the default space, `conv_op: [mbconv]`, `skip: [identity]`)."""
    import search_space
    return Path(search_space.__file__).with_name("oneshot_space.yaml")


def is_trained(folder: str | Path) -> bool:
    """Whether `folder` holds a finished supernet (weights written, training status ok)."""
    from .checkpoint import WEIGHTS, read_manifest
    folder = Path(folder)
    manifest = read_manifest(folder) if folder.is_dir() else None
    return (folder / WEIGHTS).is_file() and bool(manifest) and (manifest.get("result") or {}).get("status") == "ok"


def check_reuse(folder: str | Path, space: Any, budget: Any, flag: str = "--supernet") -> dict:
    """The config of the trained supernet in `folder`, checked against the search: the same
    space and the same images (`DATA_FIELDS`) at the same size, and as many classes as the
    data. One-line `UserError` otherwise. Its seed may differ: scores use the supernet's own
    train/search-validation split (`InheritedWeights`)."""
    from .checkpoint import read_config
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such folder")
    if not is_trained(folder):
        raise UserError(f"{flag} {folder}: holds no finished supernet (train one with python -m nas.supernet "
                        "train, or let --strategy oneshot train it)")
    config = read_config(folder)
    if config.get("space") != space.to_yaml():
        raise UserError(f"{flag} {folder}: its supernet was trained over another search space than the search's "
                        f"({getattr(space, 'source', 'the space')}); pass --space with the file it was trained on")
    stored = config.get("budget") or {}
    for name in DATA_FIELDS:
        mine, theirs = getattr(budget, name), stored.get(name)
        if name == "dataset":
            mine, theirs = str(mine).lower(), str(theirs).lower()
        if mine != theirs:
            option = {"resolution": "--proxy-resolution", "max_images": "--proxy-images",
                      "images_per_class": "--proxy-images"}.get(name, "--" + name.replace("_", "-"))
            raise UserError(f"{flag} {folder}: its supernet was trained with {name} {theirs!r}, the search "
                            f"uses {mine!r} ({option}); the scores would be of other data")
    return config


def train_phase(space: Any, budget: Any, folder: str | Path, epochs: float,
                log: Callable[[str], None] = lambda m: None) -> Optional[Any]:
    """Phase 1: train the supernet of `space` on the search's proxy data into `folder`, or
    continue its checkpoint (a run killed in phase 1); None when it is trained already.
    The search's budget with `epochs` and no per-trial time limit; every other setting is
    `python -m nas.supernet train`'s default. Returns the `TrainResult`."""
    import dataclasses

    from .checkpoint import CHECKPOINT
    from .train import Settings, train
    folder = Path(folder)
    if is_trained(folder):
        return None
    settings = Settings(epochs=float(epochs))
    train_budget = dataclasses.replace(budget, epochs=float(epochs), time_limit=None, test=False)
    resume = (folder / CHECKPOINT).is_file()
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise UserError(f"--supernet-epochs {epochs!r}: expected a positive number")
    log(f"phase 1: training the supernet for {epochs:g} epochs on {budget.dataset} at {budget.resolution}px "
        f"into {folder}" + (" (resumed from its checkpoint)" if resume else ""))
    return train(space, train_budget, folder, settings, resume=resume, log=lambda m: log(f"phase 1: {m}"))
