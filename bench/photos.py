"""Synthetic photo-like JPEGs and ImageFolders of them, for the data benchmarks and tests.

A decoder's speed depends on how much entropy-coded data a file holds, so flat colours
would flatter every backend: each image is a smooth gradient (a few random colours
interpolated across the frame), a handful of blurred shapes and sensor-like noise,
encoded at a photo-like JPEG quality, giving files of a few bits per pixel like camera
pictures. The class sets the dominant hue and the kind of shape, so a network can learn
something from them. Everything is seeded: the same (seed, index) gives the same file.
"""
from __future__ import annotations

import colorsys
import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SIZES = (300, 500)        # each side drawn uniformly in this range, like downsized photos
QUALITIES = (75, 95)      # JPEG quality drawn in this range
_MARKER = "synthetic.json"  # written last: a folder without it is incomplete


def photo(rng: np.random.Generator, label: int = 0, classes: int = 100, size: tuple[int, int] | None = None) -> "Image":  # noqa: F821
    """One photo-like RGB Pillow image (width, height from `SIZES` unless `size` given)."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = size or (int(rng.integers(SIZES[0], SIZES[1] + 1)), int(rng.integers(SIZES[0], SIZES[1] + 1)))
    hue = (label / max(1, classes) + rng.normal(0, 0.03)) % 1.0
    corners = np.empty((3, 3, 3), np.float32)
    for i in range(3):
        for j in range(3):
            r, g, b = colorsys.hsv_to_rgb((hue + rng.normal(0, 0.08)) % 1.0, rng.uniform(0.2, 0.9), rng.uniform(0.25, 1.0))
            corners[i, j] = (r * 255, g * 255, b * 255)
    base = Image.fromarray(corners.round().astype(np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(base)
    kind = label % 3
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.1, 0.6) * h
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x0, y0), (x1, y0 + rng.uniform(-0.3, 0.3) * h), ((x0 + x1) / 2, y1)], fill=colour)
    base = base.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    pixels = np.asarray(base, dtype=np.float32)
    # Noise with some spatial correlation (texture), plus fine per-pixel grain.
    coarse = rng.normal(0, 1, (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    coarse = np.repeat(np.repeat(coarse, 4, 0), 4, 1)[:h, :w]
    pixels += coarse * rng.uniform(4, 12) + rng.normal(0, rng.uniform(3, 10), pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def jpeg_bytes(rng: np.random.Generator, label: int = 0, classes: int = 100, size: tuple[int, int] | None = None) -> bytes:
    """A photo-like image encoded as a baseline JPEG (4:2:0, quality from `QUALITIES`)."""
    buf = io.BytesIO()
    photo(rng, label, classes, size).save(buf, "JPEG", quality=int(rng.integers(QUALITIES[0], QUALITIES[1] + 1)))
    return buf.getvalue()


def _write_range(args: tuple[str, int, int, int, int]) -> int:
    root, start, stop, classes, seed = args
    for i in range(start, stop):
        label = i % classes
        path = Path(root, f"class{label:03d}", f"img{i:07d}.jpg")
        if path.exists() and path.stat().st_size > 0:
            continue  # resumed: written by an earlier, interrupted call
        data = jpeg_bytes(np.random.default_rng([seed, i]), label, classes)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return stop - start


def make_folder(root: str | Path, images: int, classes: int = 100, seed: int = 0, workers: int = 1,
                progress: bool = False) -> Path:
    """An ImageFolder of `images` photo-like JPEGs in `classes` class folders under `root`.

    Reused when `root` already holds a complete folder made with the same arguments (a
    marker file written last says so); an interrupted generation resumes where it stopped.
    """
    root = Path(root)
    want = {"images": images, "classes": classes, "seed": seed, "sizes": list(SIZES), "qualities": list(QUALITIES)}
    marker = root / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == want:
                return root
        except ValueError:
            pass
        marker.unlink()
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    chunk = 500
    jobs = [(str(root), s, min(images, s + chunk), classes, seed) for s in range(0, images, chunk)]
    done = 0
    if workers <= 1:
        for job in jobs:
            done += _write_range(job)
            if progress:
                print(f"\r  generated {done}/{images}", end="", flush=True)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for n in pool.map(_write_range, jobs):
                done += n
                if progress:
                    print(f"\r  generated {done}/{images}", end="", flush=True)
    if progress:
        print()
    marker.write_text(json.dumps(want))
    return root
