"""Proxy datasets behind one `load()`: uint8 images from the proxy-data cache, batches made
on the training device.

No DataLoader and no float copy of a dataset: `load` opens the dataset's entry of the
proxy-data cache (`nas.evaluate.cache`: decoded and resized once per machine, memory-mapped
read-only, so every worker shares the same file pages) and splits its search part
(stratified, by the search seed) into train and search-validation index lists. A batch is
gathered from the uint8 rows, moved to the device as uint8, and converted, normalized
and augmented there. On CUDA the uint8 search part is copied to the GPU once per worker
when it fits `RESIDENT_SHARE` of the GPU's free memory; otherwise batches stream from the
memory map, gathered by a background thread into pinned memory `PREFETCH` batches ahead.

Three parts, and why: the search *selects* on its validation part, so a number measured
there is biased by the selection. Every dataset therefore also has a test part that no
search, grid or selection ever reads; only stage 2 (`nas.final`) scores on it, after its
choice is made. The test part is fixed by the dataset alone (`nas.evaluate.splits`: a
constant seed, not the search seed): mnist5k, digits and imagefolder carve a stratified
20 % out first (mnist5k: 1,000 of 5,000 images, leaving 3,200 train / 800
search-validation; digits: 360 of 1,797); cifar10/cifar100 use their official test files,
an imagefolder with `test_data_dir` that folder. A `ProxyData` holds the test part only
when loaded with `test=True` (a budget with `test=True`), which only stage 2 does.

Normalization: the train part's per-channel mean and std, from the cache's per-image
channel sums (no pass over pixels). Augmentation (seeded by the budget's seed, on the
device): a random crop after replicate-padding by resolution/8 pixels, and a horizontal
flip only where it preserves the label (never for digits).
"""
from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import UserError
from . import cache as proxy_cache
from .budget import DATASETS
from .device import resolve
from .sources import Source, check_same_classes
from .splits import split

# Labels that a horizontal flip would change (a mirrored 2 is not a 2).
_NO_FLIP = {"mnist5k", "digits"}
_CACHE_SIZE = 4
RESIDENT_SHARE = 0.25    # on CUDA: the uint8 search part goes onto the GPU when it fits this share of its free memory
PREFETCH = 3             # batches gathered ahead when streaming from the memory map
FEEDS = ("auto", "resident", "stream")


class Rows:
    """uint8 images (N, R, R, C) and their labels (class positions, -1 = unknown), on the CPU
    over the cache's memory map or on the device, and how batches of them reach the device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device, stream: bool) -> None:
        self.images, self.labels, self.device, self.stream = images, labels, device, stream

    def take(self, index_lists: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 NHWC images, labels) on the device for each CPU index tensor, in order."""
        if self.stream:
            yield from _prefetched(self.images, self.labels, index_lists, self.device)
            return
        for idx in index_lists:
            idx = idx.to(self.images.device, non_blocking=True)
            x = self.images.index_select(0, idx)
            yield x.to(self.device, non_blocking=True), self.labels.index_select(0, idx).to(self.device)


def _prefetched(images: torch.Tensor, labels: torch.Tensor, index_lists: list[torch.Tensor],
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches gathered from CPU `images` by a background thread, `PREFETCH` ahead, into
    pinned memory on CUDA, then copied without blocking. Stops the thread when the consumer
    stops early."""
    pin = device.type == "cuda"
    q: queue.Queue = queue.Queue(PREFETCH)
    stop = threading.Event()

    def work() -> None:
        try:
            for idx in index_lists:
                if stop.is_set():
                    return
                x = torch.empty((len(idx), *images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
                torch.index_select(images, 0, idx, out=x)
                y = labels.index_select(0, idx)
                q.put((x, y.pin_memory() if pin else y))
            q.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            q.put(exc)

    thread = threading.Thread(target=work, name="proxy-data-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            x, y = item
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


@dataclass(eq=False)
class ProxyData:
    """The search part's uint8 rows with train and search-validation index lists, and the
    test part's only when loaded with `test=True` (stage 2); see the module docstring.

    Batches come from `batches` (train, shuffled, augmented), `val_batches` (search-validation
    or test), `calibration_batches` (the first train images, un-augmented) and `train_rows`;
    each yields float32 images (N, 3, R, R) normalized, in channels_last memory, on `device`.
    """

    name: str
    search: Rows
    train_index: torch.Tensor      # int64 rows of the search part, in the seeded train order (CPU)
    val_index: torch.Tensor        # int64 rows of the search part: search-validation (CPU)
    num_classes: int
    resolution: int
    flip: bool
    pad: int
    scale: torch.Tensor            # (1, 3, 1, 1) on the device: 1 / (255 std)
    shift: torch.Tensor            # (1, 3, 1, 1) on the device: -mean / std
    device: torch.device
    test: Rows | None = None
    test_index: torch.Tensor | None = None
    classes: tuple = ()

    @property
    def n_train(self) -> int:
        return int(self.train_index.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_index.shape[0])

    @property
    def has_test(self) -> bool:
        return self.test is not None

    def part_size(self, part: str = "val") -> int:
        return self.n_val if part == "val" else int(self._part(part)[1].shape[0])

    def _part(self, part: str) -> tuple[Rows, torch.Tensor]:
        if part == "val":
            return self.search, self.val_index
        if part == "train":
            return self.search, self.train_index
        if self.test is None:
            raise ValueError("this ProxyData has no test part (load it with test=True)")
        return self.test, self.test_index

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, R, R, C) on the device -> float32 (B, 3, R, R) normalized, channels_last."""
        x = x.permute(0, 3, 1, 2).float()           # NHWC memory seen as NCHW: channels_last already
        if x.shape[1] == 1:                           # grayscale: three identical channels
            return (x * self.scale + self.shift).contiguous(memory_format=torch.channels_last)
        return x.mul_(self.scale).add_(self.shift)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop after replicate-padding by `pad` pixels, plus a flip where allowed, of
        (B, H, W, C) images: the clamped indices of the crop *are* the replicate padding."""
        b, h, w = x.shape[:3]
        if self.pad > 0:
            p = self.pad
            offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device) - p
            rows = (offsets[0, :, None] + torch.arange(h, device=x.device)).clamp_(0, h - 1)
            cols = (offsets[1, :, None] + torch.arange(w, device=x.device)).clamp_(0, w - 1)
            x = x[torch.arange(b, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
        if self.flip:
            mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(2), x)
        return x

    def batches(self, batch_size: int, generator: torch.Generator, augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled training batches (the last partial batch is dropped).

        Randomness comes only from `generator` (a CPU generator; small index tensors are
        moved to the device), so the same seed gives the same batches on any device and
        through either feed (resident or streamed).
        """
        n = self.n_train
        batch_size = min(batch_size, n)
        order = torch.randperm(n, generator=generator)
        rows = [self.train_index[order[s:s + batch_size]] for s in range(0, n - batch_size + 1, batch_size)]
        for x, y in self.search.take(rows):
            if augment:
                x = self.augment(x, generator)
            yield self.normalize(x), y

    def val_batches(self, batch_size: int = 1024, part: str = "val") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the search-validation part, or of the test part with `part='test'`."""
        rows, index = self._part(part)
        for x, y in rows.take(list(torch.split(index, batch_size))):
            yield self.normalize(x), y

    def calibration_batches(self, n_images: int, batch_size: int) -> Iterator[torch.Tensor]:
        """The first `n_images` of the train order, un-augmented (BatchNorm recalibration)."""
        for x, _ in self.search.take(list(torch.split(self.train_index[:n_images], batch_size))):
            yield self.normalize(x)

    def train_labels(self) -> torch.Tensor:
        """Labels of the train part in its order (CPU)."""
        return self.search.labels.index_select(0, self.train_index.to(self.search.labels.device)).cpu()

    def train_rows(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train images at `positions` of the train order, un-augmented: (float32 (N, 3, R, R)
        normalized, contiguous NCHW, labels), on the CPU (the zero-cost scores' batch)."""
        x, y = next(self.search.take([self.train_index[positions]]))
        return self.normalize(x).cpu().contiguous(), y.cpu()


_cache: "OrderedDict[tuple, ProxyData]" = OrderedDict()


def _cached(key: tuple, make: Callable[[], ProxyData]) -> ProxyData:
    """`make()` once per key, keeping the `_CACHE_SIZE` most recently used.

    Not functools.lru_cache: the key is the *resolved* data folder and device, while
    reading (and its error messages) uses the folder as given, and `download` is no
    part of the key. What it holds are memory maps (and, on CUDA, GPU copies).
    """
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    _cache[key] = value = make()
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return value


def _resolved(folder: str | None) -> str | None:
    return str(Path(folder).resolve()) if folder else None


def load(budget_or_name, data_dir: str | None = None, resolution: int = 32, device: str | torch.device = "cpu",
         seed: int = 0, val_fraction: float = 0.2, download: bool = False, max_images: int | None = None,
         test: bool = False, images_per_class: int | None = None, test_data_dir: str | None = None,
         cache_dir: str | None = None, skip_bad_images: bool = False, progress: bool = False,
         feed: str = "auto") -> ProxyData:
    """The proxy dataset; `budget_or_name` is a ProxyBudget or a dataset name.

    With a budget, its dataset, data_dir, resolution, device, seed, val_fraction, download,
    max_images, images_per_class, test, test_data_dir, cache_dir and skip_bad_images are
    used and those arguments are ignored. `seed` splits the search part into train and
    search-validation; the test part (`test=True` only) is fixed by the dataset. `progress`:
    a progress bar on stderr while a cache entry is built. `feed`: `auto` (on CUDA resident
    when it fits, else streamed; on the CPU rows are gathered from the memory map),
    `resident` or `stream` (a background thread gathers batches ahead; for tests and big
    data). Results are kept in-process (LRU of 4), so many trials in one worker open the
    cache once.
    """
    if not isinstance(budget_or_name, str):
        b = budget_or_name
        name, data_dir, resolution, device = b.dataset, b.data_dir, b.resolution, b.device
        seed, val_fraction, download = b.seed, b.val_fraction, b.download
        max_images, test = getattr(b, "max_images", None), bool(getattr(b, "test", False))
        images_per_class, test_data_dir = getattr(b, "images_per_class", None), getattr(b, "test_data_dir", None)
        cache_dir, skip_bad_images = getattr(b, "cache_dir", None), bool(getattr(b, "skip_bad_images", False))
    else:
        name = budget_or_name
    name = str(name).lower()
    if name not in DATASETS:
        raise UserError(f"dataset {name!r}: expected one of {', '.join(DATASETS)}")
    if not isinstance(resolution, int) or resolution < 1:
        raise UserError(f"resolution {resolution!r}: expected a positive integer")
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction {val_fraction!r}: expected a number between 0 and 1")
    if max_images is not None and max_images < 2:
        raise UserError(f"max_images {max_images!r}: expected at least 2")
    if images_per_class is not None and images_per_class < 2:
        raise UserError(f"images_per_class {images_per_class!r}: expected at least 2")
    if test_data_dir and name != "imagefolder":
        raise UserError(f"--test-data-dir is for --dataset imagefolder (dataset {name} has its own test part)")
    if feed not in FEEDS:
        raise ValueError(f"feed {feed!r}: expected one of {', '.join(FEEDS)}")
    device = torch.device(resolve(device))
    key = (name, _resolved(data_dir), resolution, str(device), seed, val_fraction, max_images, images_per_class,
           test, _resolved(test_data_dir), _resolved(cache_dir), skip_bad_images, feed)

    def open_part(part: str) -> proxy_cache.Entry:
        source = Source(name, part, data_dir, test_data_dir, max_images, images_per_class, download)
        return proxy_cache.open_entry(source, resolution, cache_dir, skip_bad_images, progress)

    def make() -> ProxyData:
        return _prepare(name, open_part("search"), open_part("test") if test else None, resolution, device, seed,
                        val_fraction, feed)

    return _cached(key, make)


def load_checked(budget, progress: bool = False) -> ProxyData:
    """`load(budget)` on the CPU, for checking a dataset before anything trains (and building
    its cache entry): any failure is a one-line `UserError` naming the dataset. A
    `test_data_dir`'s classes are checked against the training folder's too."""
    import dataclasses

    try:
        if getattr(budget, "test_data_dir", None) and budget.dataset == "imagefolder":
            check_same_classes(budget.data_dir, budget.test_data_dir)
        return load(dataclasses.replace(budget, device="cpu"), progress=progress)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--dataset {budget.dataset}: cannot load it ({str(exc).splitlines()[0]})") from None


def clear_cache() -> None:
    """Forget the in-process data (the on-disk cache stays)."""
    _cache.clear()


# -- preparing -----------------------------------------------------------------------
def channel_stats(sums: np.ndarray, rows: np.ndarray, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (unbiased) in [0, 1] units of the images `rows`, from the
    cache's per-image sums and sums of squares (`sums`: (N, C, 2))."""
    total = sums[rows].sum(0)
    n = len(rows) * pixels
    mean = total[:, 0] / n
    var = np.maximum(total[:, 1] - n * mean * mean, 0.0) / max(1, n - 1)
    return mean / 255.0, np.sqrt(var) / 255.0


def _rows(images: np.ndarray, labels: np.ndarray, device: torch.device, feed: str) -> Rows:
    """The uint8 rows where they will be read from: the memory map (CPU; streamed on CUDA
    when they do not fit `RESIDENT_SHARE` of the GPU's free memory) or a copy on the GPU."""
    cpu = torch.from_numpy(images) if len(images) else torch.zeros(images.shape, dtype=torch.uint8)
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    if device.type == "cpu":
        return Rows(cpu, y, device, stream=feed == "stream")
    if feed == "auto":
        free = torch.cuda.mem_get_info(device)[0]
        feed = "resident" if cpu.numel() <= RESIDENT_SHARE * free else "stream"
    if feed == "stream":
        return Rows(cpu, y, device, stream=True)
    return Rows(cpu.to(device), y.to(device), device, stream=False)


def _prepare(name: str, entry: proxy_cache.Entry, held: proxy_cache.Entry | None, resolution: int,
             device: torch.device, seed: int, val_fraction: float, feed: str) -> ProxyData:
    present, labels = np.unique(entry.labels, return_inverse=True)
    if len(present) < 2:
        raise UserError(f"dataset {name}: only one class present; need at least 2")
    names = [entry.classes[i] for i in present]
    train_idx, val_idx = split(labels, val_fraction, seed)
    mean, std = channel_stats(entry.sums, train_idx, resolution * resolution)
    if len(mean) == 1:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    std = np.maximum(std, 1e-3)
    scale = torch.tensor(1.0 / (255.0 * std), dtype=torch.float32).view(1, 3, 1, 1).to(device)
    shift = torch.tensor(-mean / std, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    test = test_index = None
    if held is not None:  # labels in the search part's class order; classes it lacks are left out
        position = {c: i for i, c in enumerate(names)}
        mapped = np.asarray([position.get(held.classes[c], -1) for c in held.labels], dtype=np.int64)
        test = _rows(held.images, mapped, device, feed)
        test_index = torch.from_numpy(np.flatnonzero(mapped >= 0).astype(np.int64))
    return ProxyData(name=name, search=_rows(entry.images, labels, device, feed),
                     train_index=torch.from_numpy(train_idx.astype(np.int64)),
                     val_index=torch.from_numpy(val_idx.astype(np.int64)), num_classes=len(present),
                     resolution=resolution, flip=name not in _NO_FLIP, pad=max(1, resolution // 8), scale=scale,
                     shift=shift, device=device, test=test, test_index=test_index, classes=tuple(names))
