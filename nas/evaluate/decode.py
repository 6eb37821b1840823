"""One image file to a uint8 (R, R, 3) array: what the proxy-data cache stores per image.

Geometry: the shorter side is resized to R and the centre R x R is kept (the crop offset
rounded down in resized pixels, then to whole decoded pixels), with a bilinear filter
that is antialiased when shrinking (PyTorch's uint8 `interpolate(..., antialias=True)`,
made to match Pillow's; after simplejpeg it makes the whole decode 1.3x faster than
Pillow's resize at 128 and 224 px, the same at 64). Only the kept region is resampled,
and every format goes through the same resize.

Backend, chosen by measurement (bench/decode.py, figures in the README's dependency
table): a JPEG in YCbCr or grayscale goes through simplejpeg (libjpeg-turbo), which
decodes in the DCT domain straight to 1/2, 1/4 or 1/8 scale, the smallest whose shorter
side is still >= 2R, then the resize above. Stopping at 2R keeps the result within
about one grey level of a full decode and resize (less than the difference between a
bilinear and a bicubic filter); reducing all the way to R was faster but twice as far
off. Every other file (PNG, WebP, CMYK JPEG, ...) and every JPEG that simplejpeg refuses
goes through Pillow, with the same DCT-domain reduction (`Image.draft`) for JPEGs.
Without simplejpeg installed, Pillow does everything; `decoder_name()` says which, so a
cache records what built it.

Conversions: grayscale, CMYK, palette, YCbCr and 1-bit to RGB; 16-bit grayscale (Pillow's
modes I;16 and I) scaled from 0..65535 to 0..255 (Pillow's own conversion would clip);
transparency (alpha, or a palette's or PNG's transparent colour) composited onto white,
as a viewer shows it (dropping the alpha instead would expose whatever colour happens
to sit under transparent pixels). EXIF orientation is applied, so a phone photo stored
sideways is used upright, as every viewer shows it (torchvision's ImageFolder ignores it).

Unreadable files raise `BadImage` with a short reason: empty, not an image, truncated
(Pillow's check is kept: `ImageFile.LOAD_TRUNCATED_IMAGES` stays False, so a cut file is
an error, never grey padding; simplejpeg is stricter still, and what it rejects is
judged again by Pillow, whose verdict stands).

Callers decoding in several processes should give each one torch thread
(`torch.set_num_threads(1)`): the resize is too small to gain from more.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError

try:  # optional: without it Pillow decodes JPEGs too, about 1.4x slower (bench/decode.py)
    import simplejpeg
except ImportError:  # pragma: no cover - exercised only where simplejpeg is absent
    simplejpeg = None

GAP = 2          # DCT-domain reduction stops at a shorter side of GAP x R (then the exact resize)
_METHOD = 1      # bump when the geometry or filters change: cached images must be rebuilt
_ORIENTATION = 0x0112
_SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class BadImage(Exception):
    """A file that is not a readable image; `str(exc)` is a short reason."""


def decoder_name() -> str:
    """The libraries that decode and resize, with versions, and this module's method (e.g.
    'simplejpeg-1.9.0+pillow-13.0.0+torch-2.13.0+decode1'): another decoder gives slightly
    different pixels, so a cache records which one built it."""
    import torch

    parts = [f"simplejpeg-{simplejpeg.__version__}"] if simplejpeg is not None else []
    torch_version = torch.__version__.split("+")[0]
    return "+".join(parts + [f"pillow-{PIL.__version__}", f"torch-{torch_version}", f"decode{_METHOD}"])


def crop_box(width: int, height: int, resolution: int) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom) of a width x height image that becomes the
    R x R output: the shorter side scaled to R, then the centre crop (offsets rounded
    down in resized pixels, as the project's decoder always did)."""
    scale = resolution / min(width, height)
    rw, rh = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    left, top = (rw - resolution) // 2, (rh - resolution) // 2
    fx, fy = width / rw, height / rh
    return left * fx, top * fy, (left + resolution) * fx, (top + resolution) * fy


def reduction(width: int, height: int, resolution: int) -> int:
    """The DCT-domain reduction (1, 2, 4 or 8) for a JPEG: the largest that keeps the
    shorter side >= GAP x R (the rule Pillow's `Image.draft` applies too)."""
    k = 1
    while k < 8 and min(width, height) >= 2 * k * GAP * resolution:
        k *= 2
    return k


def decode(path: str | Path, resolution: int, backend: str = "auto") -> np.ndarray:
    """The image at `path` as uint8 (R, R, 3); `BadImage` when it cannot be read.

    `backend`: "auto" (simplejpeg for JPEGs it handles, when installed) or "pillow"
    (Pillow for everything; for comparisons)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    return decode_bytes(data, resolution, backend)


def decode_bytes(data: bytes, resolution: int, backend: str = "auto") -> np.ndarray:
    """`decode` of a file's contents."""
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution {resolution!r}: expected a positive integer")
    if backend not in ("auto", "pillow"):
        raise ValueError(f"backend {backend!r}: expected 'auto' or 'pillow'")
    if not data:
        raise BadImage("empty file")
    if backend == "auto" and simplejpeg is not None and data[:2] == b"\xff\xd8":
        out = _turbo(data, resolution)
        if out is not None:
            return out
    return _pillow(data, resolution)


def _turbo(data: bytes, resolution: int) -> np.ndarray | None:
    """simplejpeg's decode, or None to let Pillow decide (CMYK, or anything it refuses)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray"):
            return None
        k = reduction(width, height, resolution)
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // k), min_width=-(-width // k))
    except ValueError:
        return None
    return _resize(pixels, width, height, _exif_orientation(data), resolution)


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation of a JPEG's bytes (1 when absent); Pillow reads only headers."""
    if data.find(b"Exif\x00\x00", 0, 1 << 16) < 0:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - damaged EXIF: use the pixels as stored
        return 1


def _resize(pixels: np.ndarray, width: int, height: int, orientation: int, resolution: int) -> np.ndarray:
    """uint8 (h, w, 3) `pixels`, decoded (perhaps reduced) from a width x height image
    stored with EXIF `orientation`, turned upright and resized to the R x R crop."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(pixels).permute(2, 0, 1)  # a channels-last view: no copy
    if orientation in (2, 3, 7):
        x = x.flip(-1)
    if orientation in (3, 4, 7):
        x = x.flip(-2)
    if orientation in (5, 6, 7, 8):
        x = x.transpose(-1, -2)
        width, height = height, width
        if orientation == 6:
            x = x.flip(-1)
        elif orientation == 8:
            x = x.flip(-2)
    left, top, right, bottom = crop_box(width, height, resolution)
    fx, fy = x.shape[-1] / width, x.shape[-2] / height
    x = x[:, round(top * fy):round(bottom * fy), round(left * fx):round(right * fx)]
    out = F.interpolate(x[None], size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


def _pillow(data: bytes, resolution: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            orientation = int(img.getexif().get(_ORIENTATION, 1))
            if img.format == "JPEG":
                least = GAP * resolution
                img.draft(None, (least, least))
            img.load()
            rgb = _to_rgb(img)
    except UnidentifiedImageError:
        raise BadImage("not an image file (or in a format Pillow cannot read)") from None
    except Image.DecompressionBombError:
        raise BadImage("too many pixels to decode safely (Pillow's decompression-bomb limit)") from None
    except BadImage:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes Pillow raise is the file's fault
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadImage(f"damaged or truncated ({reason})") from None
    return _resize(rgb, width, height, orientation, resolution)


def _to_rgb(img) -> np.ndarray:
    """uint8 (h, w, 3) of a loaded Pillow image of any mode (see the module docstring)."""
    transparent = img.mode in ("LA", "PA", "RGBA", "RGBa", "La") or "transparency" in img.info
    if img.mode in _SIXTEEN_BIT:
        grey = np.asarray(img).astype(np.float32) * (255.0 / 65535.0)
        grey = np.clip(grey.round(), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.asarray(img).round(), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if transparent:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        white.alpha_composite(img.convert("RGBA"))
        img = white
    try:
        return np.array(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    except ValueError:
        raise BadImage(f"colour mode {img.mode} cannot be converted to RGB") from None
