"""Proxy datasets: offline built-ins, CIFAR batches, ImageFolder, split, augmentation, the
uint8 feed (resident and streamed), errors."""
import pickle

import numpy as np
import pytest
import torch

from nas.evaluate import data as D
from nas.evaluate import sources, splits
from nas.evaluate.budget import ProxyBudget
from nas.errors import UserError


def images(d, part="train"):
    """Every image of a part as one float tensor (N, 3, R, R), in the part's order, un-augmented."""
    if part == "train":
        return torch.cat(list(d.calibration_batches(d.n_train, 512)))
    return torch.cat([x for x, _ in d.val_batches(512, part)])


def labels(d, part="train"):
    return d.train_labels() if part == "train" else torch.cat([y for _, y in d.val_batches(512, part)])


@pytest.fixture(scope="module")
def mnist():
    return D.load("mnist5k", resolution=32, seed=0)


def test_mnist5k_is_real_stratified_and_normalized(mnist):
    assert mnist.num_classes == 10 and not mnist.flip
    # 1,000 test images carved out first (never loaded here), then 3,200 train / 800 search-validation
    train, val = images(mnist), images(mnist, "val")
    assert train.shape == (3200, 3, 32, 32) and val.shape == (800, 3, 32, 32)
    assert not mnist.has_test
    # uint8 in the cache, one channel: replicated to three identical channels per batch
    assert mnist.search.images.dtype == torch.uint8 and mnist.search.images.shape == (4000, 32, 32, 1)
    assert torch.equal(train[:, 0], train[:, 1])
    # 500 images per digit -> 100 per digit to test, then 80 of the remaining 400 to validate.
    assert torch.bincount(labels(mnist, "val"), minlength=10).tolist() == [80] * 10
    # normalized by the train part's statistics (from the cache's per-image sums)
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-4
    # Real digits: the centre of an image is brighter than its border on average.
    assert float(train[:, 0, 12:20, 12:20].mean()) > float(train[:, 0, :3, :].mean()) + 0.5


def test_channel_stats_from_sums_equal_a_pass_over_the_pixels():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    flat = pixels.reshape(50, -1, 3).astype(np.float64)
    sums = np.stack([flat.sum(1), (flat ** 2).sum(1)], -1)
    rows = np.array([3, 7, 11, 40])
    mean, std = D.channel_stats(sums, rows, 36)
    picked = pixels[rows].reshape(-1, 3) / 255.0
    assert np.allclose(mean, picked.mean(0)) and np.allclose(std, picked.std(0, ddof=1))


def test_load_is_cached_per_key(mnist):
    assert D.load(ProxyBudget(dataset="mnist5k", resolution=32, seed=0)) is mnist
    other = D.load("mnist5k", resolution=32, seed=1)
    assert other is not mnist
    assert not torch.equal(other.val_index, mnist.val_index)
    assert torch.equal(other.search.images, mnist.search.images)   # the same cache rows, split otherwise


def test_split_is_disjoint_seeded_and_stratified():
    labels = np.repeat(np.arange(3), [10, 20, 1])
    train, val = splits.split(labels, 0.2, seed=5)
    assert set(train).isdisjoint(val) and sorted(np.concatenate([train, val])) == list(range(31))
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 4, 0]
    again = splits.split(labels, 0.2, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again))
    assert not np.array_equal(splits.split(labels, 0.2, seed=6)[1], val)


def test_subset_is_stratified_fixed_and_per_class():
    labels = np.repeat(np.arange(4), [100, 200, 50, 10])
    keep = splits.subsample(labels, max_images=72)
    assert np.bincount(labels[keep]).tolist() == [20, 40, 10, 2] and np.array_equal(keep, np.sort(keep))
    assert np.array_equal(keep, splits.subsample(labels, max_images=72))        # no seed: always the same subset
    assert np.bincount(labels[splits.subsample(labels, per_class=30)]).tolist() == [30, 30, 30, 10]
    search, test = splits.parts(labels, per_class=30)
    assert np.bincount(labels[search]).tolist() == [30, 30, 30, 8]
    assert np.bincount(labels[test]).tolist() == [6, 6, 6, 2] and not set(search) & set(test)


def test_training_part_is_mixed_even_when_the_file_is_sorted(mnist):
    # mnist_5k.csv.gz is ordered by digit; the first 200 training images must not be.
    assert len(torch.unique(mnist.train_labels()[:200])) == 10


def test_digits_from_sklearn_file():
    d = D.load("digits", resolution=16, seed=0, val_fraction=0.25)
    assert d.num_classes == 10 and images(d).shape[1:] == (3, 16, 16)
    assert d.n_train + d.n_val == 1797 - 359   # 20 % of every digit is the test part


def test_batches_are_seeded_and_crops_are_translations(mnist):
    a = list(mnist.batches(256, torch.Generator().manual_seed(3)))
    b = list(mnist.batches(256, torch.Generator().manual_seed(3)))
    c = next(mnist.batches(256, torch.Generator().manual_seed(4)))
    assert len(a) == 3200 // 256
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[1])
    # Every augmented image is the replicate-padded original shifted by at most `pad` pixels.
    x = images(mnist)[:8]
    out = mnist.augment(x.permute(0, 2, 3, 1), torch.Generator().manual_seed(0)).permute(0, 3, 1, 2)
    p = mnist.pad
    padded = torch.nn.functional.pad(x, (p, p, p, p), mode="replicate")
    shifts = []
    for i in range(8):
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert found, "augmented image is not a crop of the padded original"
        shifts.append(found[0])
    assert len(set(shifts)) > 1


def test_flip_only_where_labels_survive(tmp_path):
    _write_cifar10(tmp_path, per_batch=8)
    cifar = D.load("cifar10", data_dir=str(tmp_path), resolution=8, seed=0)
    assert cifar.flip and not D.load("digits", resolution=8).flip
    x = images(cifar)[:64].permute(0, 2, 3, 1)   # NHWC, as batches are augmented
    no_crop = D.ProxyData(**{**cifar.__dict__, "pad": 0})
    out = no_crop.augment(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(1)) and not torch.equal(x[i], x[i].flip(1)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


def _write_cifar10(root, per_batch=4):
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch))


def test_cifar10_and_cifar100_python_batches(tmp_path):
    _write_cifar10(tmp_path, per_batch=20)
    d = D.load("cifar10", data_dir=str(tmp_path), resolution=16, seed=0)
    assert d.n_train + d.n_val == 100 and images(d).shape[1:] == (3, 16, 16)
    sub = tmp_path / "c100" / "cifar-100-python"
    sub.mkdir(parents=True)
    labels = [i % 5 for i in range(30)]
    (sub / "train").write_bytes(pickle.dumps({b"data": np.zeros((30, 3072), np.uint8), b"fine_labels": labels}))
    d100 = D.load("cifar100", data_dir=str(tmp_path / "c100"), resolution=32)
    assert d100.num_classes == 5 and d100.n_val == 5


def _png_folder(root, classes, n=5):
    Image = pytest.importorskip("PIL.Image")
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            size = (20 + 3 * i, 14 + i)
            Image.new("RGB", size, (200 * c, 30 * i, 100)).save(root / name / f"{i}.png")


def test_imagefolder(tmp_path):
    _png_folder(tmp_path, ["cat", "dog", "eel"])
    (tmp_path / "notes.txt").write_text("ignored")
    d = D.load("imagefolder", data_dir=str(tmp_path), resolution=12, seed=0)
    assert d.num_classes == 3 and d.flip
    # 15 images: one per class to test, then one of the remaining four per class to validate
    assert images(d).shape == (9, 3, 12, 12) and images(d, "val").shape == (3, 3, 12, 12) and not d.has_test
    t = D.load("imagefolder", data_dir=str(tmp_path), resolution=12, seed=0, test=True)
    assert images(t, "test").shape == (3, 3, 12, 12) and sorted(labels(t, "test").tolist()) == [0, 1, 2]


@pytest.mark.parametrize("name, setup, message", [
    ("cifar10", None, "--data-dir is required"),
    ("cifar10", "missing", "no such folder"),
    ("cifar10", "empty", "folder is empty"),
    ("cifar10", "junk", "not a cifar10 python-batches folder"),
    ("cifar100", "junk", "not a cifar100 python-batches folder"),
    ("imagefolder", "junk", "not an ImageFolder layout"),
    ("imagefolder", "one", "only one class"),
    ("imagefolder", "empty", "folder is empty"),
    ("svhn", None, "expected one of"),
])
def test_bad_input_is_one_line(tmp_path, name, setup, message):
    data_dir = None
    if setup == "missing":
        data_dir = str(tmp_path / "nope")
    elif setup == "empty":
        data_dir = str(tmp_path)
    elif setup == "junk":
        (tmp_path / "readme.txt").write_text("x")
        data_dir = str(tmp_path)
    elif setup == "one":
        _png_folder(tmp_path, ["only"])
        data_dir = str(tmp_path)
    with pytest.raises(UserError) as info:
        D.load(name, data_dir=data_dir)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_numbers_and_device():
    with pytest.raises(UserError, match="val_fraction"):
        D.load("mnist5k", val_fraction=1.0)
    with pytest.raises(UserError, match="resolution"):
        D.load("mnist5k", resolution=0)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            D.load("mnist5k", device="cuda")


def test_cifar_batch_that_is_not_a_dict_is_one_line(tmp_path):
    import pickle

    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UserError, match="not a readable cifar10 batch") as info:
        D.load("cifar10", data_dir=str(tmp_path))
    assert "\n" not in str(info.value)


def test_imagefolder_max_images_decodes_only_the_kept_files(tmp_path, monkeypatch):
    _png_folder(tmp_path, ["cat", "dog"], n=10)
    from nas.evaluate import decode

    opened = []
    real = decode.decode
    monkeypatch.setattr(decode, "decode", lambda path, r, *a: opened.append(path) or real(path, r, *a))
    d = D.load("imagefolder", data_dir=str(tmp_path), resolution=12, seed=0, max_images=6)
    assert len(opened) == 6                                   # not all 20 files
    assert d.n_train + d.n_val == 6
    assert sorted(torch.cat([labels(d), labels(d, "val")]).tolist()) == [0, 0, 0, 1, 1, 1]  # still stratified
    # the subset is fixed: another search seed reads the same 6 images (and decodes nothing)
    other = D.load("imagefolder", data_dir=str(tmp_path), resolution=12, seed=5, max_images=6)
    assert len(opened) == 6 and torch.equal(other.search.images, d.search.images)


def test_cache_keeps_the_four_most_recently_used_and_clears():
    D.clear_cache()
    first = {seed: D.load("mnist5k", resolution=8, seed=seed) for seed in range(4)}
    assert D.load("mnist5k", resolution=8, seed=0) is first[0]   # a hit, now the most recent
    D.load("mnist5k", resolution=8, seed=4)                      # evicts seed 1, the least recent
    assert D.load("mnist5k", resolution=8, seed=0) is first[0]
    assert D.load("mnist5k", resolution=8, seed=3) is first[3]
    assert D.load("mnist5k", resolution=8, seed=1) is not first[1]
    D.clear_cache()
    assert D.load("mnist5k", resolution=8, seed=0) is not first[0]


def _serve(monkeypatch, payload: bytes) -> None:
    """`urllib.request.urlopen` answering every URL with `payload` (no network in tests)."""
    import io
    import urllib.request

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=60: Response(payload))


def test_download_is_checked_against_the_published_checksum(tmp_path, monkeypatch):
    _serve(monkeypatch, b"a page saying 'moved' instead of the archive")
    root = tmp_path / "data"
    with pytest.raises(UserError, match="checksum [0-9a-f]+ is not the published c58f3010") as info:
        D.load("cifar10", data_dir=str(root), download=True)
    assert "\n" not in str(info.value) and list(root.iterdir()) == []


def test_download_refuses_archive_members_outside_the_data_dir(tmp_path, monkeypatch):
    import hashlib
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("cifar-10-batches-py/readme.html", "../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    payload = buf.getvalue()
    _serve(monkeypatch, payload)
    monkeypatch.setitem(sources.CIFAR_MD5, "cifar-10-python.tar.gz", hashlib.md5(payload).hexdigest())
    root = tmp_path / "data"
    with pytest.raises(UserError, match="nothing was extracted"):
        D.load("cifar10", data_dir=str(root), download=True)
    assert not (tmp_path / "escaped.txt").exists() and list(root.iterdir()) == []


def test_streamed_feed_gives_the_same_batches_in_the_same_order(mnist):
    """The prefetching path (a thread gathering batches ahead from the memory map; pinned
    memory on CUDA) against the resident one, here on the CPU."""
    streamed = D.load("mnist5k", resolution=32, seed=0, feed="stream")
    assert streamed.search.stream and not mnist.search.stream
    for augment in (True, False):
        a = list(mnist.batches(300, torch.Generator().manual_seed(9), augment=augment))
        b = list(streamed.batches(300, torch.Generator().manual_seed(9), augment=augment))
        assert len(a) == len(b) == 3200 // 300
        assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2)
               for (x1, y1), (x2, y2) in zip(mnist.val_batches(256), streamed.val_batches(256)))
    first = next(streamed.batches(64, torch.Generator().manual_seed(1)))   # a consumer stopping early
    assert first[0].shape == (64, 3, 32, 32)
    import threading
    assert not [t for t in threading.enumerate() if t.name == "proxy-data-prefetch" and t.is_alive()]


def test_test_data_dir_is_the_test_part_and_the_whole_data_dir_is_searched(tmp_path):
    _png_folder(tmp_path / "train", ["cat", "dog"], n=5)
    _png_folder(tmp_path / "val", ["cat", "dog"], n=2)
    d = D.load("imagefolder", data_dir=str(tmp_path / "train"), test_data_dir=str(tmp_path / "val"), resolution=12,
               test=True)
    assert d.n_train + d.n_val == 10 and d.part_size("test") == 4   # nothing carved out of train/
    assert sorted(labels(d, "test").tolist()) == [0, 0, 1, 1]
    with pytest.raises(UserError, match="for --dataset imagefolder"):
        D.load("mnist5k", test_data_dir=str(tmp_path / "val"))


def test_per_class_subset_and_a_224_pixel_cache(tmp_path):
    _png_folder(tmp_path, ["a", "b", "c"], n=6)
    d = D.load("imagefolder", data_dir=str(tmp_path), resolution=224, images_per_class=3, test=True)
    assert d.search.images.shape == (9, 224, 224, 3) and d.part_size("test") == 3
    x, _ = next(d.val_batches(8))
    assert x.shape == (3, 3, 224, 224) and x.is_contiguous(memory_format=torch.channels_last)


USS = """
import json, sys
import psutil, torch
torch.set_num_threads(1)
from nas.evaluate import data as D

d = D.load("cifar10", data_dir=sys.argv[1], resolution=32)
for x, y in d.batches(128, torch.Generator().manual_seed(0)):
    pass
for x, y in d.val_batches(256):
    pass
print(json.dumps(psutil.Process().memory_full_info().uss))
"""


def test_a_workers_private_memory_does_not_grow_with_the_dataset(tmp_path):
    """A worker's USS (pages only it maps) after loading and one epoch of train and
    validation batches, at 1x and 10x the images (2,000 and 20,000 CIFAR-shaped images),
    each in a fresh process. The cache's file pages are mapped by this (parent) process too,
    as by the other workers of a run: shared, so not in USS. A float32 copy of the 10x train
    part would add about 180 MB, a private uint8 copy 45 MB.

    glibc's malloc moves its mmap threshold with the sizes it has freed, and then keeps
    freed batch buffers in its heap: 5-10 MB that depend on how many batches ran, not on the
    data. A fixed threshold (MALLOC_MMAP_THRESHOLD_) takes that noise out of the figure.
    """
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    folders = []
    for n in (400, 4000):
        folder = tmp_path / str(n)
        folder.mkdir()
        _write_cifar10(folder, per_batch=n)
        folders.append(folder)
    mapped = [D.load("cifar10", data_dir=str(f), resolution=32).search.images for f in folders]
    assert all(int(m.sum(dtype=torch.int64)) > 0 for m in mapped)   # every page read here: in the page cache, shared
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    uss = []
    for folder in folders:
        run = subprocess.run([sys.executable, "-c", USS, str(folder)], cwd=root, capture_output=True, text=True,
                             timeout=300, env=env)
        assert run.returncode == 0, run.stderr
        uss.append(json.loads(run.stdout.strip().splitlines()[-1]))
    small, large = uss
    assert large - small < 10 * 2**20, (f"USS {small / 2**20:.1f} MB at 2,000 images, {large / 2**20:.1f} MB at "
                                        "20,000")


OLD_FIELDS = ("dataset", "data_dir", "download", "resolution", "target_resolution", "epochs", "steps", "batch_size",
              "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "label_smoothing",
              "val_fraction", "seed", "device", "time_limit", "num_classes", "max_images", "precision", "zero_init",
              "channels_last", "test")   # the budget when the identity rule was frozen


def test_measurement_ids_stay_those_stored_before_the_data_fields_existed():
    import dataclasses
    import hashlib
    import json

    from nas.evaluate.budget import measurement_id
    from nas.final.plan import legacy_id

    def old_id(key, seed, budget, evaluator):
        fields = {k: getattr(budget, k) for k in OLD_FIELDS if k not in ("seed", "device", "time_limit", "download")}
        return int(hashlib.sha1(json.dumps([key, seed, fields, evaluator], sort_keys=True).encode()).hexdigest()[:15], 16)

    def old_legacy(key, seed, budget, evaluator):
        fields = {k: getattr(budget, k) for k in OLD_FIELDS} | {"seed": 0}
        return int(hashlib.sha1(json.dumps([key, seed, fields, evaluator], sort_keys=True).encode()).hexdigest()[:15], 16)

    for budget in (ProxyBudget(), ProxyBudget(dataset="digits", resolution=16, test=True, max_images=500),
                   ProxyBudget(cache_dir="/elsewhere", skip_bad_images=True, device="cuda", seed=4)):
        assert measurement_id("k", 3, budget, "nas.trial:evaluate") == old_id("k", 3, budget, "nas.trial:evaluate")
    assert legacy_id("k", 3, ProxyBudget(), "e") == old_legacy("k", 3, ProxyBudget(), "e")
    base = measurement_id("k", 3, ProxyBudget(dataset="imagefolder", data_dir="/d"), "e")
    for changed in ({"test_data_dir": "/val"}, {"images_per_class": 200}, {"max_images": 2000}):
        budget = dataclasses.replace(ProxyBudget(dataset="imagefolder", data_dir="/d"), **changed)
        assert measurement_id("k", 3, budget, "e") != base     # set, a new data field is part of the measurement
