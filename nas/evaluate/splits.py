"""Which images a proxy task uses: the fixed test part, the fixed subset, the seeded split.

One module for every index choice, used by the cache (what to decode) and by the data
(what to train on), so the two can never disagree:

- `parts`: the test part of a dataset without official test files, a stratified
  `TEST_FRACTION` drawn with `TEST_SEED`; then the subset (`--proxy-images`), drawn with
  `SUBSET_SEED`. Neither depends on the search seed: every seed of a search, of stage 2
  and of the proxy check reads the same images, and one cache entry serves them all.
- `split`: the search part into train and search-validation, seeded by the search seed.
"""
from __future__ import annotations

import numpy as np

TEST_FRACTION = 0.2      # of mnist5k, digits and imagefolder: the test part
TEST_SEED = 20190528     # fixed: the test part never depends on a search seed
SUBSET_SEED = 1905       # fixed: nor does the subset of --proxy-images


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


def subsample(labels: np.ndarray, max_images: int | None = None, per_class: int | None = None,
              seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of a stratified subset: at most `max_images` in the dataset's class
    proportions (at least one per class), and/or at most `per_class` of every class."""
    rng = np.random.default_rng(seed + 1)
    n = len(labels)
    if (max_images is None or n <= max_images) and per_class is None:
        return np.arange(n)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = len(idx)
        if max_images is not None and n > max_images:
            k = max(1, round(max_images * len(idx) / n))
        if per_class is not None:
            k = min(k, per_class)
        keep.append(idx if k >= len(idx) else rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def held_cap(max_images: int | None, per_class: int | None = None) -> tuple[int | None, int | None]:
    """The test part's share of a subset: `TEST_FRACTION` of it (at least 2 images, 1 per class)."""
    return (None if max_images is None else max(2, round(TEST_FRACTION * max_images)),
            None if per_class is None else max(1, round(TEST_FRACTION * per_class)))


def parts(labels: np.ndarray, max_images: int | None = None, per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(search indices, test indices), both sorted, of a dataset without official test files.

    The test part is a stratified `TEST_FRACTION` drawn with `TEST_SEED`; a subset then
    caps the search part at `max_images` / `per_class` and the test part at `held_cap`
    of them. Nothing here depends on a search seed.
    """
    search, held = split(labels, TEST_FRACTION, TEST_SEED)
    search, held = np.sort(search), np.sort(held)
    if max_images is not None or per_class is not None:
        search = search[subsample(labels[search], max_images, per_class)]
        held = held[subsample(labels[held], *held_cap(max_images, per_class), seed=TEST_SEED)]
    return search, held


def capped(labels: np.ndarray, max_images: int | None = None, per_class: int | None = None,
           test: bool = False) -> np.ndarray:
    """Sorted indices of an official part (CIFAR's files, a `--test-data-dir`) under the subset:
    the search part's subset, or with `test` the test part's share of it."""
    if test:
        return subsample(labels, *held_cap(max_images, per_class), seed=TEST_SEED)
    return subsample(labels, max_images, per_class)
