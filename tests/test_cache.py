"""The proxy-data cache: built once, read by everyone; rebuilt when the source changes;
resumable, atomic, concurrency-safe, one line for a bad file or a full disk."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nas.errors import UserError
from nas.evaluate import cache, decode, sources

ROOT = Path(__file__).resolve().parents[1]


def png_folder(root: Path, classes=("cat", "dog"), n=10, size=(20, 14)) -> Path:
    Image = pytest.importorskip("PIL.Image")
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size[0] + i, size[1] + 2 * i), (120 * c, 20 * i, 90)).save(root / name / f"{i}.png")
    return root


def folder_source(root: Path, part="search", **kw) -> sources.Source:
    return sources.Source("imagefolder", part, str(root), **kw)


@pytest.fixture
def counted(monkeypatch):
    """Every file decoded, in order (in this process)."""
    seen = []
    real = decode.decode
    monkeypatch.setattr(decode, "decode", lambda path, r, *a: seen.append(path) or real(path, r, *a))
    return seen


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(cache, "CHUNK_MIN", 2)
    monkeypatch.setattr(cache, "CHUNK_MAX", 2)


def test_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFNAS_CACHE_DIR", str(tmp_path / "a"))
    assert cache.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("EFFNAS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "effnas" / "proxy-data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "effnas" / "proxy-data"


def test_an_entry_holds_uint8_labels_sums_and_a_manifest_and_is_built_once(tmp_path, counted):
    data = png_folder(tmp_path / "data")
    entry = cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"))
    assert entry.images.dtype == np.uint8 and entry.images.shape == (16, 12, 12, 3)   # 20 % of each class is the test part
    assert len(counted) == 16 and entry.labels.tolist() == [0] * 8 + [1] * 8
    flat = np.asarray(entry.images, dtype=np.float64).reshape(16, -1, 3)
    assert np.array_equal(entry.sums[..., 0], flat.sum(1)) and np.array_equal(entry.sums[..., 1], (flat ** 2).sum(1))
    m = entry.manifest
    assert (m["dataset"], m["part"], m["resolution"], m["images"], m["classes"]) == ("imagefolder", "search", 12, 16,
                                                                                     ["cat", "dog"])
    assert m["data_dir"] == str(data.resolve()) and m["decoder"] == decode.decoder_name() and m["skipped"] == []
    assert len(m["fingerprint"]) == 40 and m["format"] == cache.FORMAT
    # decoded as the decoder does it
    assert np.array_equal(entry.images[0], decode.decode(data / "cat" / "0.png", 12))
    counted.clear()
    again = cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"))
    assert counted == [] and np.array_equal(again.images, entry.images)   # the second open decodes nothing
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(names) == 2 and names[1] == names[0] + ".lock"               # no partial build left behind


def test_array_datasets_are_resized_then_rounded_to_uint8(tmp_path):
    entry = cache.open_entry(sources.Source("digits", "search"), 16, cache_dir=str(tmp_path))
    assert entry.images.shape == (1797 - 359, 16, 16, 1) and entry.manifest["decoder"] == cache.ARRAY_DECODER
    import torch
    images, labels = sources.read_digits()
    keep = np.sort(sources.splits.parts(labels)[0])
    x = torch.from_numpy(images[keep[:5]]).permute(0, 3, 1, 2).float() / 255
    want = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    assert np.abs(np.asarray(entry.images[:5], dtype=np.float64) / 255 -
                  want.permute(0, 2, 3, 1).numpy()).max() <= 0.5 / 255 + 1e-6


def test_a_changed_source_is_rebuilt_with_a_line_saying_why(tmp_path, counted, capsys):
    data = png_folder(tmp_path / "data")
    cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"))
    capsys.readouterr()
    counted.clear()
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (30, 30), (255, 0, 0)).save(data / "dog" / "new.png")
    entry = cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rebuilding" in err[0] and "source changed" in err[0]
    assert len(counted) == entry.manifest["images"] == 17
    # nothing left of the old entry
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [entry.path.name, entry.path.name + ".lock"]


def test_an_interrupted_build_is_never_read_and_resumes_checking_what_it_kept(tmp_path, small_chunks, monkeypatch):
    data = png_folder(tmp_path / "data")
    clean = cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "clean"))
    calls = []
    real = decode.decode

    def interrupted(path, r, *a):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(path)
        return real(path, r, *a)

    monkeypatch.setattr(decode, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"), workers=1)
    name = cache.entry_name(folder_source(data), 12)
    partial = tmp_path / "c" / f"{name}.partial"
    assert not (tmp_path / "c" / name).exists() and partial.is_dir()
    records = [json.loads(line) for line in (partial / "done.jsonl").read_text().splitlines()]
    assert [r["start"] for r in records] == [0, 2, 4]                        # 3 chunks of 2 finished, the 4th cut
    # a recorded chunk whose bytes were lost is built again, not trusted
    with open(partial / "images.u8", "r+b") as fh:
        fh.seek(2 * 12 * 12 * 3)
        fh.write(b"\x07" * 10)
    calls.clear()
    monkeypatch.setattr(decode, "decode", lambda path, r, *a: calls.append(path) or real(path, r, *a))
    entry = cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"), workers=1)
    assert len(calls) == 16 - 4 and np.array_equal(entry.images, clean.images)
    assert np.array_equal(entry.sums, clean.sums) and not partial.exists()


SLOW_BUILD = """
import json, os, sys, time
from nas.evaluate import cache, decode, sources
cache.CHUNK_MIN = cache.CHUNK_MAX = 2
real, built = decode.decode, []
decode.decode = lambda path, r, *a: time.sleep(float(sys.argv[3])) or real(path, r, *a)
build = cache.Builder.build
cache.Builder.build = lambda self: built.append(1) or build(self)
entry = cache.open_entry(sources.Source("imagefolder", "search", sys.argv[1]), 12, cache_dir=sys.argv[2], workers=1)
print(json.dumps({"built": len(built), "images": int(entry.images.shape[0]), "sum": int(entry.sums.sum())}))
"""


def _slow_build(data: Path, where: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(SLOW_BUILD), str(data), str(where), str(delay)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_build_killed_at_any_moment_is_never_complete_and_a_restart_resumes(tmp_path, counted, small_chunks):
    data = png_folder(tmp_path / "data")
    where = tmp_path / "c"
    proc = _slow_build(data, where, 0.1)
    name = cache.entry_name(folder_source(data), 12)
    done = where / f"{name}.partial" / "done.jsonl"
    deadline = time.time() + 60
    while (not done.exists() or len(done.read_text().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (where / name).exists()                                        # never read as complete
    kept = len(done.read_text().splitlines())
    entry = cache.open_entry(folder_source(data), 12, cache_dir=str(where), workers=1)
    assert 2 <= kept < 8 and len(counted) == 16 - 2 * kept                     # the finished chunks were kept
    assert entry.images.shape[0] == 16


def test_concurrent_requests_build_once_and_all_read(tmp_path):
    data = png_folder(tmp_path / "data")
    procs = [_slow_build(data, tmp_path / "c", 0.03) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert sorted(o["built"] for o in outs) == [0, 1]
    assert outs[0]["images"] == outs[1]["images"] == 16 and outs[0]["sum"] == outs[1]["sum"]


def test_a_pool_of_workers_builds_the_same_entry(tmp_path, small_chunks):
    data = png_folder(tmp_path / "data")
    one = cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "one"), workers=1)
    pool = cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "pool"), workers=2)
    assert np.array_equal(one.images, pool.images) and np.array_equal(one.sums, pool.sums)


def test_inside_a_daemonic_worker_threads_decode(tmp_path, small_chunks, monkeypatch):
    import multiprocessing

    class Daemon:
        daemon = True

    monkeypatch.setattr(multiprocessing, "current_process", lambda: Daemon())
    data = png_folder(tmp_path / "data")
    entry = cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"), workers=2)
    assert entry.images.shape[0] == 16


def _break(path: Path, how: str) -> None:
    path.write_bytes(b"" if how == "empty" else path.read_bytes()[:40])


def test_unreadable_files_stop_with_one_line_or_are_skipped_and_named(tmp_path, capsys):
    data = png_folder(tmp_path / "data", n=12)
    bad = [data / "cat" / f"{i}.png" for i in range(7)]
    for i, path in enumerate(bad):
        _break(path, "empty" if i % 2 else "truncated")
    source = folder_source(data)
    search = set(folder_source(data).plan().files)   # the files of the search part (listed, not decoded)
    bad_in_search = [p for p in bad if str(p.resolve()) in search]
    with pytest.raises(UserError) as info:
        cache.open_entry(source, 12, cache_dir=str(tmp_path / "c"))
    message = str(info.value)
    assert "\n" not in message and "cannot read image" in message and "--skip-bad-images" in message
    assert any(str(p.resolve()) in message for p in bad_in_search)
    capsys.readouterr()
    entry = cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"), skip_bad=True)
    err = capsys.readouterr().err.strip().splitlines()
    n = len(bad_in_search)
    assert entry.images.shape[0] == len(search) - n and len(entry.manifest["skipped"]) == n
    assert len(err) == 1 and err[0].startswith(f"proxy-data cache: skipped {n} unreadable images: ")
    assert (f"and {n - 5} more" in err[0]) == (n > 5)
    kept = [f for f in folder_source(data).plan().files if Path(f) not in {p.resolve() for p in bad_in_search}]
    assert all(np.array_equal(entry.images[k], decode.decode(f, 12)) for k, f in enumerate(kept))
    assert entry.labels.tolist() == [0 if "/cat/" in f else 1 for f in kept]
    # the entry left them out: without --skip-bad-images that is still an error, not a silent subset
    with pytest.raises(UserError, match="--skip-bad-images"):
        cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"))


def test_a_full_disk_is_one_line(tmp_path, monkeypatch):
    data = png_folder(tmp_path / "data")
    real = cache.shutil.disk_usage
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(UserError) as info:
        cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"))
    assert "not enough free space" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setattr(cache.shutil, "disk_usage", real)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", full)
    with pytest.raises(UserError) as info:
        cache.open_entry(folder_source(data), 12, cache_dir=str(tmp_path / "c"))
    assert "disk full" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "c" / cache.entry_name(folder_source(data), 12)).exists()


def test_a_cache_folder_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as info:
        cache.open_entry(sources.Source("digits"), 8, cache_dir=str(tmp_path / "file" / "cache"))
    assert str(info.value).startswith(f"--cache-dir {tmp_path / 'file' / 'cache'}: cannot create it")


def test_the_data_options_reach_the_budget_of_every_command(tmp_path):
    """--proxy-images, --test-data-dir, --cache-dir and --skip-bad-images: the search (and so
    stage 2 and verify, which rebuild its setup from the stored options), the proxy check and
    the grid put them in the budget that the workers and NNI trials receive."""
    from nas.cli import options, proxy, setup
    from nas.engines.protocol import EvalContext
    from nas.proxy.check import budgets
    from scaling.__main__ import build_parser as scaling_parser

    train = png_folder(tmp_path / "train", n=3)
    val = png_folder(tmp_path / "val", n=2)
    flags = ["--dataset", "imagefolder", "--data-dir", str(train), "--proxy-images", "2/class", "--test-data-dir",
             str(val), "--cache-dir", str(tmp_path / "c"), "--skip-bad-images"]
    want = {"max_images": None, "images_per_class": 2, "test_data_dir": str(val), "cache_dir": str(tmp_path / "c"),
            "skip_bad_images": True}
    opts, given = options.parse(["--target-flops", "400M", "--evaluator", "tests.fake_evaluators:ok", "--device",
                                 "cpu", "--no-final", "--out", str(tmp_path / "run"), *flags])
    assert opts["proxy_images"] == "2/class"
    budget = setup.validate(opts, given).budget
    assert {k: getattr(budget, k) for k in want} == want
    assert EvalContext.from_dict(EvalContext(budget, "e").to_dict()).budget == budget   # as an NNI trial gets it
    opts, _ = proxy.parse(["check", "--target-flops", "400M", *flags])
    assert {k: getattr(budgets(opts)[0], k) for k in want} == want
    args = scaling_parser().parse_args(["grid", "efficientnet-b0", "--out", str(tmp_path / "g"), *flags])
    from nas.evaluate.budget import data_fields
    assert data_fields(vars(args)) == want
    assert options.parse(["--proxy-images", "20k"])[0]["proxy_images"] == "20000"


def test_progress_bar_is_silent_for_a_build_under_a_second_and_ends_at_100_percent(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr(cache.time, "time", lambda: clock[0])
    quick = cache.Bar("proxy-data cache: quick", 1000)
    for _ in range(10):
        clock[0] += 0.05
        quick.advance(100)
    quick.close()
    assert capsys.readouterr().err == ""
    slow = cache.Bar("proxy-data cache: slow", 1000)
    for _ in range(10):
        clock[0] += 0.5
        slow.advance(100)
    slow.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("proxy-data cache: slow: ") for line in lines)
    assert "1,000/1,000 images (100%)" in lines[-1] and len(lines) <= 10
