"""Benchmark: images/s of each JPEG decoding backend on one core, and how far their pixels are
from plain Pillow's, at the proxy resolutions.

Synthetic photo-like JPEGs of 300-500 px (bench/photos.py) are decoded, resized (shorter
side to R, bilinear, antialiased) and centre-cropped to R x R by:

  pillow              the baseline: open, convert to RGB, resize the whole frame with
                      Pillow, crop (the project's decoder before the proxy-data cache)
  pillow-draft        Pillow alone, JPEG reduced in the DCT domain (`Image.draft`) to a
                      shorter side >= 2R, then only the kept region resized by Pillow
  pillow+torch        `decode(..., backend="pillow")`: Pillow with `draft`, then PyTorch's
                      uint8 antialiased resize (what non-JPEG files and CMYK JPEGs get)
  simplejpeg+pillow   simplejpeg (libjpeg-turbo) reducing to >= 2R, then Pillow's resize
  simplejpeg+torch    `nas.evaluate.decode.decode`, the choice: simplejpeg reducing to
                      >= 2R, then PyTorch's resize
  simplejpeg-to-R     the same with the reduction all the way to >= R: faster, further off
  pillow-simd*        `pillow` and `pillow-draft` under Pillow-SIMD, when `--simd-python`
                      names a Python that has it (a separate virtual environment: it
                      replaces Pillow, and has no wheels: it compiles from source)

Every backend decodes the same JPEG bytes, alternating, best of `--repeats` rounds, timed
in CPU seconds of this process (`time.process_time`, one torch thread): other jobs on a
shared machine then slow no backend more than another. Ratios are against plain Pillow
measured in the same run. `mad` is the mean absolute difference to plain Pillow's output
in uint8 levels; `filter_yardstick` is the difference between Pillow's bilinear and
bicubic filters on the same images: the size of a mere choice of filter.

    python bench/decode.py [--quick] [--json] [--images N] [--repeats N] [--simd-python PATH]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._cli import OneLineParser  # noqa: E402
from bench.photos import jpeg_bytes  # noqa: E402
from nas.evaluate import decode as dec  # noqa: E402

RESOLUTIONS = (64, 128, 224)


def pillow_plain(data: bytes, resolution: int, resample: str = "BILINEAR") -> np.ndarray:
    """The baseline: the whole image decoded and resized, then cropped."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        img = img.resize(size, getattr(Image.Resampling, resample))
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        return np.asarray(img.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)


def _pillow_resize(pixels, width: int, height: int, resolution: int) -> np.ndarray:
    """Pillow's bilinear resize of the kept region of a (perhaps DCT-reduced) image."""
    from PIL import Image

    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    left, top, right, bottom = dec.crop_box(width, height, resolution)
    fx, fy = img.width / width, img.height / height
    out = img.resize((resolution, resolution), Image.Resampling.BILINEAR,
                     box=(left * fx, top * fy, right * fx, bottom * fy))
    return np.asarray(out, dtype=np.uint8)


def pillow_draft(data: bytes, resolution: int) -> np.ndarray:
    """Pillow alone: DCT-domain reduction to >= 2R, then Pillow's resize of the kept region."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        img.draft("RGB", (dec.GAP * resolution, dec.GAP * resolution))
        return _pillow_resize(img.convert("RGB"), width, height, resolution)


def simplejpeg_pillow(data: bytes, resolution: int) -> np.ndarray:
    """simplejpeg's reduction to >= 2R, then Pillow's resize (instead of PyTorch's)."""
    height, width, _, _ = dec.simplejpeg.decode_jpeg_header(data)
    k = dec.reduction(width, height, resolution)
    pixels = dec.simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // k), min_width=-(-width // k))
    return _pillow_resize(pixels, width, height, resolution)


def simplejpeg_to_r(data: bytes, resolution: int) -> np.ndarray:
    """The chosen decoder with the DCT-domain reduction going all the way to >= R."""
    dec.GAP = 1  # read by dec.reduction at each call; restored at once
    try:
        return dec.decode_bytes(data, resolution)
    finally:
        dec.GAP = 2


def backends(simd: bool = False) -> dict:
    """name -> decode(bytes, R); the simplejpeg ones only where simplejpeg is installed."""
    if simd:  # under another Python, without PyTorch: Pillow only
        return {"pillow-simd": pillow_plain, "pillow-simd-draft": pillow_draft}
    out = {"pillow": pillow_plain, "pillow-draft": pillow_draft,
           "pillow+torch": lambda d, r: dec.decode_bytes(d, r, backend="pillow")}
    if dec.simplejpeg is not None:
        out.update({"simplejpeg+pillow": simplejpeg_pillow, "simplejpeg+torch": dec.decode_bytes,
                    "simplejpeg-to-R": simplejpeg_to_r})
    return out


def measure(images: list[bytes], fns: dict, resolution: int, repeats: int) -> tuple[dict, dict]:
    """(best images/s per backend, outputs per backend), backends alternating each round."""
    best = {name: 0.0 for name in fns}
    outputs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            outputs[name] = [fn(d, resolution) for d in images]
            best[name] = max(best[name], len(images) / max(time.process_time() - start, 1e-9))
    return best, outputs


def photos(n: int) -> list[bytes]:
    return [jpeg_bytes(np.random.default_rng([11, i]), i % 100) for i in range(n)]


def mad(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(x.astype(np.int16) - y.astype(np.int16)).mean() for x, y in zip(a, b)]))


def simd_child(folder: Path, resolutions: list[int], repeats: int) -> None:
    """Run under Pillow-SIMD's Python: time its backends on the parent's JPEGs (the same
    bytes: another Pillow would encode them differently), save the outputs for the parent."""
    images = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    rows = {}
    arrays = {}
    for r in resolutions:
        rates, outputs = measure(images, backends(simd=True), r, repeats)
        rows[str(r)] = rates
        for name, outs in outputs.items():
            arrays[f"{name}@{r}"] = np.stack(outs)
    np.savez(folder / "out.npz", **arrays)
    import PIL

    print(json.dumps({"rates": rows, "version": PIL.__version__}))


def main(argv=None) -> int:
    parser = OneLineParser("bench/decode.py", __doc__.splitlines()[0], "30 images, 1 round (for the tests)")
    parser.add_argument("--images", type=int, default=200, help="JPEGs decoded per backend per round (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best of each backend counts (default 3)")
    parser.add_argument("--simd-python", default=None, help="a Python with pillow-simd installed, to compare it")
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # folder: the parent's JPEGs in, outputs out
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1 or min(args.resolutions) < 1:
        parser.error("--images, --repeats and --resolutions must be positive")
    if args.quick:
        args.images, args.repeats = min(args.images, 30), 1
    if args.child:
        simd_child(Path(args.child), args.resolutions, args.repeats)
        return 0

    import torch
    from PIL import __version__ as pil_version

    from search_space.latency import cpu_model

    torch.set_num_threads(1)
    images = photos(args.images)
    kb = np.mean([len(d) for d in images]) / 1024
    print(f"{len(images)} synthetic JPEGs, 300-500 px, mean {kb:.0f} KB; images per CPU-second of one process; "
          f"Pillow {pil_version}, decoder {dec.decoder_name()}")
    simd = _run_simd(args.simd_python, images, args.resolutions, args.repeats) if args.simd_python else None
    figures: dict = {"images": len(images), "mean_kb": round(float(kb), 1), "decoder": dec.decoder_name(),
                     "machine": {"cpu": cpu_model(), "load_avg_1m": round(os.getloadavg()[0], 2)}, "resolutions": {}}
    for r in args.resolutions:
        rates, outputs = measure(images, backends(), r, args.repeats)
        ref = outputs["pillow"]
        row = {name: {"images_per_s": round(rate, 1), "vs_pillow": round(rate / rates["pillow"], 2),
                      "mad": round(mad(outputs[name], ref), 3)} for name, rate in rates.items()}
        if simd is not None:
            for name, rate in simd["rates"][str(r)].items():
                row[name] = {"images_per_s": round(rate, 1), "vs_pillow": round(rate / rates["pillow"], 2),
                             "mad": round(mad(list(simd["arrays"][f"{name}@{r}"]), ref), 3)}
        yardstick = round(mad([pillow_plain(d, r, "BICUBIC") for d in images], ref), 3)
        figures["resolutions"][str(r)] = {"backends": row, "filter_yardstick": yardstick}
        print(f"\nR = {r} px (bilinear vs bicubic differ by {yardstick:.2f} levels)")
        print(f"  {'backend':<22}{'images/s':>10}{'vs pillow':>11}{'mad':>8}")
        for name, f in row.items():
            print(f"  {name:<22}{f['images_per_s']:>10.0f}{f['vs_pillow']:>10.2f}x{f['mad']:>8.2f}")
    if simd is not None:
        figures["pillow_simd_version"] = simd["version"]
    if args.json:
        print(json.dumps(figures))
    return 0


def _run_simd(python: str, images: list[bytes], resolutions: list[int], repeats: int) -> dict:
    """This script under `python` (which has Pillow-SIMD), on the same JPEG bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(images):
            Path(tmp, f"{i:05d}.jpg").write_bytes(data)
        cmd = [python, __file__, "--child", tmp, "--repeats", str(repeats), "--resolutions", *map(str, resolutions)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise SystemExit(f"bench/decode.py: --simd-python {python}: {exc.strerror}") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise SystemExit(f"bench/decode.py: --simd-python {python} failed: {last}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        with np.load(Path(tmp, "out.npz")) as arrays:
            result["arrays"] = {k: arrays[k] for k in arrays.files}
    return result


if __name__ == "__main__":
    sys.exit(main())
