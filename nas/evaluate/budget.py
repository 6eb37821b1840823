"""How much training a candidate gets on the proxy task, and how; and which of it is measured.

The identity of a measurement (`measurement_id`), one rule for stage 2 and the proxy
check: an (architecture, seed, budget, evaluator) run is the same measurement whenever
the budget fields in `MEASURED` agree. Not part of it: the seed (given on its own),
`device`, `time_limit` and `download` — where a run happens, how long it may take and
whether files may be fetched. So extending stage 2 with other `--workers`, another time
limit or another device trains nothing already stored. A run on another device *is*
taken as the same measurement: on the CPU a seed repeats exactly, on CUDA float rounding
(and bf16 under `precision: auto`) moves accuracies by about the seed noise; the record
keeps its worker, so mixed devices can be told apart afterwards.

The rule is frozen: stored runs hold these ids. A field added to the budget since then
either is not part of a measurement (`NOT_MEASURED`: `cache_dir`, where the proxy-data
cache lives; `skip_bad_images`, which only decides whether an unreadable file is an error)
or counts only when it is set (`ADDED_LATER`: `test_data_dir`, `images_per_class`): a
field that holds its default is left out of the hash, so every budget that leaves the
new fields alone keeps the id it had before they existed (`frozen_fields`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

# The proxy datasets (`nas.evaluate.data` loads them) and their class counts where fixed (an
# ImageFolder's comes from its folders). Kept here, free of torch, so that the CLI can
# check names without importing the training code.
DATASETS = ("mnist5k", "digits", "cifar10", "cifar100", "imagefolder")
NUM_CLASSES = {"mnist5k": 10, "digits": 10, "cifar10": 10, "cifar100": 100}


@dataclass
class ProxyBudget:
    """Everything `nas.evaluate.trial.evaluate` needs besides the spec and the cost target.

    `epochs` may be fractional; `steps`, when set, overrides it. Cost is always counted
    at `target_resolution`, training happens at `resolution` (the proxy resolution).
    """

    dataset: str = "mnist5k"          # built-in default, offline
    data_dir: str | None = None
    download: bool = False
    resolution: int = 32              # proxy resolution
    target_resolution: int = 224      # resolution at which MACs are counted
    epochs: float = 2.0               # the default proxy (its rank agreement: nas.proxy check, docs/proxy-check.md)
    steps: int | None = None
    batch_size: int = 128
    optimizer: str = "sgd"            # sgd | rmsprop
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    schedule: str = "cosine"          # cosine | linear
    warmup_epochs: float = 0.2
    label_smoothing: float = 0.1
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"               # cpu | cuda | cuda:N | auto
    time_limit: float | None = None   # seconds per trial
    num_classes: int | None = None    # filled from the dataset when None
    max_images: int | None = None     # stratified, fixed subset (--proxy-images N; nas.evaluate.splits); None = all
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    zero_init: bool = True            # zero classifier + last BN of residual branches (nas.evaluate.train)
    channels_last: bool | None = None  # None = auto (on: faster on CPU and CUDA)
    test: bool = False                # also score the held-out test part (stage 2 only; nas.evaluate.data)
    images_per_class: int | None = None  # stratified cap per class (--proxy-images N/class); None = no cap
    test_data_dir: str | None = None  # imagefolder: an official held-out folder as the test part (e.g. ImageNet val/)
    cache_dir: str | None = None      # the proxy-data cache folder; None = nas.evaluate.cache.default_cache_dir()
    skip_bad_images: bool = False     # leave unreadable image files out (counted, named) instead of stopping

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def at_resolution(self, resolution: int) -> "ProxyBudget":
        """This budget for a network run at `resolution` instead of `target_resolution`.

        Compound scaling's γ: the proxy resolution grows by the same factor (so γ changes
        what is learned, not only what is counted) and cost is counted at `resolution`.
        """
        proxy = max(1, int(round(self.resolution * resolution / self.target_resolution)))
        return dataclasses.replace(self, resolution=proxy, target_resolution=int(resolution))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProxyBudget":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown budget field {unknown[0]!r}")
        return cls(**data)


def parse_subset(value: Any, flag: str = "--proxy-images") -> tuple[int | None, int | None]:
    """`--proxy-images`: N (a stratified subset of N images in the dataset's class proportions;
    `20000`, `20k`), N/class (at most N of every class) or none -> (max_images, images_per_class).
    A `nas.errors.UserError` (one line) for anything else."""
    from nas.errors import UserError

    if value is None or str(value).strip().lower() in ("", "none", "all"):
        return None, None
    text = str(value).strip().lower().replace(" ", "")
    per_class = text.endswith("/class")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([km]?)", text.removesuffix("/class"))
    n = round(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2)]) if m else 0
    if n < 2:
        raise UserError(f"{flag} {value!r}: expected a number of images (at least 2) such as 20000 or 20k, "
                        "or a number per class such as 200/class")
    return (None, n) if per_class else (n, None)


def data_fields(opts: dict) -> dict[str, Any]:
    """The budget fields of a command's data options (--proxy-images, --test-data-dir,
    --cache-dir, --skip-bad-images): one reading for the search, stage 2, the proxy check and the grid."""
    max_images, per_class = parse_subset(opts.get("proxy_images"))
    return {"max_images": max_images, "images_per_class": per_class, "test_data_dir": opts.get("test_data_dir") or None,
            "cache_dir": opts.get("cache_dir") or None, "skip_bad_images": bool(opts.get("skip_bad_images"))}


NOT_MEASURED = ("seed", "device", "time_limit", "download", "cache_dir", "skip_bad_images")
MEASURED = tuple(f.name for f in dataclasses.fields(ProxyBudget) if f.name not in NOT_MEASURED)
# Fields added after the identity rule was frozen: left out of every hash while at their default.
ADDED_LATER = ("images_per_class", "test_data_dir", "cache_dir", "skip_bad_images")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ProxyBudget)}


def frozen_fields(budget: ProxyBudget) -> dict[str, Any]:
    """The budget as a dict, without the fields of `ADDED_LATER` that hold their default: what
    every identity hash of a budget reads, so ids and record kinds stored before those fields
    existed stay the same."""
    return {k: v for k, v in dataclasses.asdict(budget).items() if not (k in ADDED_LATER and v == _DEFAULTS[k])}


def measurement_id(key: str, seed: int, budget: ProxyBudget, evaluator: str) -> int:
    """A stable id (< 2**60) of one (architecture, seed, measured budget, evaluator) run
    (module docstring: which fields count). Stored runs hold these ids: never change the rule."""
    fields = {k: v for k, v in frozen_fields(budget).items() if k in MEASURED}
    ident = json.dumps([key, int(seed), fields, evaluator], sort_keys=True)
    return int(hashlib.sha1(ident.encode()).hexdigest()[:15], 16)
