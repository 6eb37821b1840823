"""nas.evaluate.decode: one image file to uint8 (R, R, 3), whatever its format or mode;
the backends agree; damaged files are `BadImage`, never grey padding."""
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from bench.photos import jpeg_bytes
from nas.evaluate import decode as dec


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _baseline(img: Image.Image, r: int) -> np.ndarray:
    """The project's old decoder: whole image resized with Pillow, then cropped."""
    img = img.convert("RGB")
    w, h = img.size
    s = r / min(w, h)
    size = (max(r, round(w * s)), max(r, round(h * s)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - r) // 2, (size[1] - r) // 2
    return np.asarray(img.crop((left, top, left + r, top + r)))


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def photos():
    return [jpeg_bytes(np.random.default_rng([5, i]), i) for i in range(6)]


@pytest.mark.parametrize("r", [32, 64, 128])
def test_backends_agree_with_each_other_and_with_a_full_decode(photos, r):
    for data in photos:
        auto = dec.decode_bytes(data, r)
        pil = dec.decode_bytes(data, r, backend="pillow")
        assert auto.shape == pil.shape == (r, r, 3) and auto.dtype == pil.dtype == np.uint8
        assert _mad(auto, pil) <= 0.5  # same reduction rule, both libjpeg-turbo
        # within two grey levels of decoding everything and resizing with Pillow
        assert _mad(auto, _baseline(Image.open(io.BytesIO(data)), r)) < 2.0


def test_decode_reads_a_path_and_decoder_name_names_the_backends(tmp_path, photos):
    path = tmp_path / "a.jpg"
    path.write_bytes(photos[0])
    assert np.array_equal(dec.decode(path, 48), dec.decode_bytes(photos[0], 48))
    name = dec.decoder_name()
    assert "pillow-" in name and "torch-" in name
    assert ("simplejpeg-" in name) == (dec.simplejpeg is not None)


def test_without_simplejpeg_pillow_decodes_everything(monkeypatch, photos):
    with_it = dec.decode_bytes(photos[1], 64)
    monkeypatch.setattr(dec, "simplejpeg", None)
    assert "simplejpeg" not in dec.decoder_name()
    assert _mad(dec.decode_bytes(photos[1], 64), with_it) <= 0.5


@pytest.mark.parametrize("size", [(400, 200), (200, 400), (50, 30)])
def test_geometry_is_the_centre_square_of_the_shorter_side(size):
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)  # white centre square, black margins on the long side
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    a[y0:y0 + s, x0:x0 + s] = 255
    for fmt in ("PNG", "JPEG"):
        out = dec.decode_bytes(_encode(Image.fromarray(a), fmt, **({"quality": 95} if fmt == "JPEG" else {})), 32)
        assert out.shape == (32, 32, 3)
        assert out[:, 1:-1].min() > 200 and out.mean() > 240  # no black margin inside the crop


def _marked() -> Image.Image:
    """120 x 80 with coloured blocks placed so that any turn or mirror moves one of them."""
    a = np.full((80, 120, 3), 40, np.uint8)
    a[:30, :40] = (230, 20, 20)
    a[:25, 60:90] = (20, 230, 20)
    a[50:, 90:] = (20, 20, 230)
    return Image.fromarray(a)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(orientation, fmt):
    img = _marked()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(img, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    want = _baseline(upright, 40)
    got = dec.decode_bytes(data, 40)
    assert _mad(got, want) < 3, orientation
    # and it is not the unturned picture (the block moves for every orientation but 1)
    if orientation != 1:
        assert _mad(got, _baseline(Image.open(io.BytesIO(data)), 40)) > 10


def test_colour_modes_become_rgb():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    cases = {
        "L png": _encode(rgb.convert("L"), "PNG"),
        "L jpeg": _encode(rgb.convert("L"), "JPEG"),
        "CMYK jpeg": _encode(rgb.convert("CMYK"), "JPEG"),
        "P png": _encode(rgb.convert("P"), "PNG"),
        "1 png": _encode(rgb.convert("1"), "PNG"),
        "RGBA png": _encode(rgb.convert("RGBA"), "PNG"),
        "LA png": _encode(rgb.convert("LA"), "PNG"),
        "gif": _encode(rgb, "GIF"),
        "webp": _encode(rgb, "WEBP"),
        "I;16 png": _encode(Image.fromarray((rng.integers(0, 65536, (40, 60))).astype(np.uint16)), "PNG"),
        "tiff": _encode(rgb, "TIFF"),
    }
    for name, data in cases.items():
        out = dec.decode_bytes(data, 24)
        assert out.shape == (24, 24, 3) and out.dtype == np.uint8, name
    # grey stays grey; CMYK comes back near the RGB it was made from
    grey = dec.decode_bytes(cases["L png"], 24)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert _mad(dec.decode_bytes(cases["CMYK jpeg"], 24), _baseline(rgb, 24)) < 12


def test_sixteen_bit_grey_is_scaled_not_clipped():
    a = np.zeros((20, 20), np.uint16)
    a[:, :10], a[:, 10:] = 65535, 32768
    out = dec.decode_bytes(_encode(Image.fromarray(a), "PNG"), 20)
    assert out[:, :8].min() == 255 and abs(int(out[:, 12:].mean()) - 128) <= 1


def test_transparency_is_composited_onto_white():
    a = np.zeros((20, 20, 4), np.uint8)
    a[:, :10] = (0, 0, 0, 0)          # fully transparent black
    a[:, 10:] = (255, 0, 0, 128)      # half-transparent red
    out = dec.decode_bytes(_encode(Image.fromarray(a, "RGBA"), "PNG"), 20)
    assert out[:, :8].min() == 255
    assert np.abs(out[:, 12:].reshape(-1, 3).mean(0) - (255, 127, 127)).max() <= 2
    p = Image.new("P", (20, 20), 0)
    p.putpalette([0, 0, 0, 10, 200, 10])
    p.paste(1, (10, 0, 20, 20))
    out = dec.decode_bytes(_encode(p, "PNG", transparency=0), 20)
    assert out[:, :8].min() == 255 and tuple(out[5, 15]) == (10, 200, 10)


def test_a_small_image_is_enlarged():
    out = dec.decode_bytes(_encode(Image.new("RGB", (10, 20), (9, 99, 199)), "PNG"), 32)
    assert out.shape == (32, 32, 3) and np.array_equal(out[16, 16], (9, 99, 199))


@pytest.mark.parametrize("backend", ["auto", "pillow"])
def test_damaged_files_are_bad_images_never_grey(tmp_path, photos, backend):
    data = photos[2]
    for cut in (len(data) // 4, len(data) // 2, len(data) * 9 // 10, 300):
        with pytest.raises(dec.BadImage, match="truncated|damaged"):
            dec.decode_bytes(data[:cut], 64, backend=backend)
    png = _encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(dec.BadImage, match="truncated|damaged"):
        dec.decode_bytes(png[: len(png) // 2], 32, backend=backend)
    with pytest.raises(dec.BadImage, match="empty"):
        dec.decode_bytes(b"", 32, backend=backend)
    with pytest.raises(dec.BadImage, match="not an image"):
        dec.decode_bytes(b"class,label\n1,2\n" * 10, 32, backend=backend)
    with pytest.raises(dec.BadImage, match="cannot read"):
        dec.decode(tmp_path / "missing.jpg", 32, backend=backend)


def test_reasons_are_one_short_line(photos):
    for data in (photos[0][:500], b"\xff\xd8\xff" + b"\0" * 100, b"GIF89a" + b"\1" * 40):
        with pytest.raises(dec.BadImage) as info:
            dec.decode_bytes(data, 32)
        assert "\n" not in str(info.value) and 0 < len(str(info.value)) < 200


def test_bad_arguments_are_value_errors(photos):
    with pytest.raises(ValueError):
        dec.decode_bytes(photos[0], 0)
    with pytest.raises(ValueError):
        dec.decode_bytes(photos[0], 32, backend="opencv")


def test_reduction_follows_pillows_draft_rule():
    for w, h in [(500, 400), (1000, 700), (4000, 3000), (300, 300), (90, 200)]:
        for r in (32, 64, 224):
            k = dec.reduction(w, h, r)
            img = Image.new("RGB", (w, h))
            jpeg = Image.open(io.BytesIO(_encode(img, "JPEG")))
            jpeg.draft("RGB", (dec.GAP * r, dec.GAP * r))
            assert jpeg.size == (-(-w // k), -(-h // k)), (w, h, r)
            assert min(w, h) // k >= min(min(w, h), dec.GAP * r)


def test_progressive_and_unsubsampled_jpegs_agree_across_backends(photos):
    img = Image.open(io.BytesIO(photos[3]))
    for kw in ({"progressive": True}, {"subsampling": 0}, {"optimize": True, "subsampling": 1}):
        data = _encode(img, "JPEG", quality=90, **kw)
        auto, pil = dec.decode_bytes(data, 64), dec.decode_bytes(data, 64, backend="pillow")
        assert auto.shape == (64, 64, 3) and _mad(auto, pil) <= 0.5, kw
