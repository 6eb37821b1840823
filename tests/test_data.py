"""Proxy datasets: offline built-ins, CIFAR batches, ImageFolder, split, augmentation, errors."""
import pickle

import numpy as np
import pytest
import torch

from nas.evaluate import data as D
from nas.evaluate.budget import ProxyBudget
from nas.errors import UserError


@pytest.fixture(scope="module")
def mnist():
    return D.load("mnist5k", resolution=32, seed=0)


def test_mnist5k_is_real_stratified_and_normalized(mnist):
    assert mnist.num_classes == 10 and not mnist.flip
    # 1,000 test images carved out first (never loaded here), then 3,200 train / 800 search-validation
    assert mnist.train_x.shape == (3200, 3, 32, 32) and mnist.val_x.shape == (800, 3, 32, 32)
    assert mnist.test_x is None
    # Grayscale replicated to three identical channels.
    assert torch.equal(mnist.train_x[:, 0], mnist.train_x[:, 1])
    # 500 images per digit -> 100 per digit to test, then 80 of the remaining 400 to validate.
    assert torch.bincount(mnist.val_y, minlength=10).tolist() == [80] * 10
    assert abs(float(mnist.train_x.mean())) < 0.05 and abs(float(mnist.train_x.std()) - 1) < 0.05
    # Real digits: the centre of an image is brighter than its border on average.
    assert float(mnist.train_x[:, 0, 12:20, 12:20].mean()) > float(mnist.train_x[:, 0, :3, :].mean()) + 0.5


def test_load_is_cached_per_key(mnist):
    assert D.load(ProxyBudget(dataset="mnist5k", resolution=32, seed=0)) is mnist
    other = D.load("mnist5k", resolution=32, seed=1)
    assert other is not mnist
    assert not torch.equal(other.val_y, mnist.val_y) or not torch.equal(other.val_x, mnist.val_x)


def test_split_is_disjoint_seeded_and_stratified():
    labels = np.repeat(np.arange(3), [10, 20, 1])
    train, val = D.split(labels, 0.2, seed=5)
    assert set(train).isdisjoint(val) and sorted(np.concatenate([train, val])) == list(range(31))
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 4, 0]
    again = D.split(labels, 0.2, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again))
    assert not np.array_equal(D.split(labels, 0.2, seed=6)[1], val)


def test_training_part_is_mixed_even_when_the_file_is_sorted(mnist):
    # mnist_5k.csv.gz is ordered by digit; the first 200 training images must not be.
    assert len(torch.unique(mnist.train_y[:200])) == 10


def test_digits_from_sklearn_file():
    d = D.load("digits", resolution=16, seed=0, val_fraction=0.25)
    assert d.num_classes == 10 and d.train_x.shape[1:] == (3, 16, 16)
    assert d.train_x.shape[0] + d.val_x.shape[0] == 1797 - 359   # 20 % of every digit is the test part


def test_batches_are_seeded_and_crops_are_translations(mnist):
    a = list(mnist.batches(256, torch.Generator().manual_seed(3)))
    b = list(mnist.batches(256, torch.Generator().manual_seed(3)))
    c = next(mnist.batches(256, torch.Generator().manual_seed(4)))
    assert len(a) == 3200 // 256
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[1])
    # Every augmented image is the replicate-padded original shifted by at most `pad` pixels.
    x = mnist.train_x[:8]
    out = mnist.augment(x, torch.Generator().manual_seed(0))
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
    x = cifar.train_x[:64]
    no_crop = D.ProxyData(**{**cifar.__dict__, "pad": 0})
    out = no_crop.augment(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) and not torch.equal(x[i], x[i].flip(2)) for i in range(len(x))]
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
    assert d.train_x.shape[0] + d.val_x.shape[0] == 100 and d.train_x.shape[1:] == (3, 16, 16)
    sub = tmp_path / "c100" / "cifar-100-python"
    sub.mkdir(parents=True)
    labels = [i % 5 for i in range(30)]
    (sub / "train").write_bytes(pickle.dumps({b"data": np.zeros((30, 3072), np.uint8), b"fine_labels": labels}))
    d100 = D.load("cifar100", data_dir=str(tmp_path / "c100"), resolution=32)
    assert d100.num_classes == 5 and d100.val_x.shape[0] == 5


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
    assert d.train_x.shape == (9, 3, 12, 12) and d.val_x.shape == (3, 3, 12, 12) and d.test_x is None
    t = D.load("imagefolder", data_dir=str(tmp_path), resolution=12, seed=0, test=True)
    assert t.test_x.shape == (3, 3, 12, 12) and sorted(t.test_y.tolist()) == [0, 1, 2]


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
    from PIL import Image

    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    d = D.load("imagefolder", data_dir=str(tmp_path), resolution=12, seed=0, max_images=6)
    assert len(opened) == 6                                   # not all 20 files
    assert d.train_x.shape[0] + d.val_x.shape[0] == 6
    assert sorted(torch.cat([d.train_y, d.val_y]).tolist()) == [0, 0, 0, 1, 1, 1]  # still stratified


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
    monkeypatch.setitem(D._CIFAR_MD5, "cifar-10-python.tar.gz", hashlib.md5(payload).hexdigest())
    root = tmp_path / "data"
    with pytest.raises(UserError, match="nothing was extracted"):
        D.load("cifar10", data_dir=str(root), download=True)
    assert not (tmp_path / "escaped.txt").exists() and list(root.iterdir()) == []
