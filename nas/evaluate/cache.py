"""The proxy-data cache: each dataset part decoded and resized once per machine into an
on-disk uint8 array, opened read-only (memory-mapped) by every process that trains.

An entry is one (dataset, source, resolution, subset, part) (`nas.evaluate.sources.Source`
names all but the resolution). Its folder holds

    images.u8      uint8 (N, R, R, C), C = 1 for mnist5k and digits, else 3 (raw, memory-mapped)
    labels.npy     int64 (N,), indexes the manifest's class names
    sums.npy       float64 (N, C, 2): per image and channel the sum and the sum of squares of
                   the pixel values, so a split's mean and std cost O(N), not a pass over pixels
    manifest.json  what it was built from (dataset, folders, resolution, subset, part, source
                   fingerprint, decoder, counts, skipped files, format); written last

Why each piece:
- Built once: workers, stage-2 runs, the grid and NNI trials on one machine open the same
  files; the kernel shares their pages, so no process keeps a private copy.
- Safe under concurrency: an `fcntl` lock per entry (`NAME.lock`); readers take it shared
  and find the entry complete or wait; one builder takes it exclusive, the others wait and
  then read. A build happens in `NAME.partial/` and becomes the entry by one rename after
  its manifest is written and the files synced, so a build killed at any moment is never
  read as complete.
- Resumable: the partial build keeps a record of finished chunks (`done.jsonl`, with a
  CRC32 of each chunk's bytes); a restart of the same build checks every recorded chunk
  against its CRC (a chunk whose bytes do not match is built again) and goes on.
- Rebuilt when the source changed (another fingerprint or decoder), with one line saying why.
- A full disk is one line: free space is checked first and the files are allocated
  (`posix_fallocate`) before anything is written into the memory map, where a full disk
  would be a crash instead of an error.
- In parallel: image files are decoded by a pool of processes (one per core this process
  may use), each writing its chunk straight into the memory map; array datasets are resized
  by torch in this process (already multi-threaded).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import UserError
from . import decode as decoder
from .sources import Plan, Source

FORMAT = 1
ENV = "EFFNAS_CACHE_DIR"
ARRAY_DECODER = "torch-bilinear-antialias-round"   # how the array datasets are resized (see `resize_rows`)
CHUNK_BYTES = 8 << 20                              # images per chunk: about this many bytes, within:
CHUNK_MIN, CHUNK_MAX = 16, 1024
NAMED = 5                                           # unreadable files named in the summary line
POOL_MIN_IMAGES = 4096  # fewer files to decode: this process alone (starting a pool of decoding processes,
                        # each importing torch, takes 2-4 s here; one process decodes ~500 images/s at 64 px)


def default_cache_dir() -> Path:
    """`$EFFNAS_CACHE_DIR`, else `$XDG_CACHE_HOME/effnas/proxy-data`, else
    `~/.cache/effnas/proxy-data`: outside any run folder on purpose, shared by every run."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "effnas" / "proxy-data"


def cache_root(cache_dir: str | None = None) -> Path:
    """The cache folder (created when missing); a one-line error when it cannot be used."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    flag = "--cache-dir" if cache_dir else f"the proxy-data cache folder ({ENV} or the default)"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {root}: cannot create it ({exc.strerror or exc})") from None
    if not root.is_dir() or not os.access(root, os.R_OK | os.W_OK | os.X_OK):
        raise UserError(f"{flag} {root}: not a writable folder")
    return root


@dataclass
class Entry:
    """A complete cache entry, opened read-only; see the module docstring."""

    path: Path
    manifest: dict
    images: np.ndarray      # uint8 (N, R, R, C), a memory map
    labels: np.ndarray      # int64 (N,)
    sums: np.ndarray        # float64 (N, C, 2)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])


def entry_name(source: Source, resolution: int) -> str:
    ident = json.dumps({**source.identity(), "resolution": int(resolution), "format": FORMAT}, sort_keys=True)
    return f"{source.dataset}-{int(resolution)}px-{source.part}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


def decoder_of(source: Source) -> str:
    return ARRAY_DECODER if source.dataset != "imagefolder" else decoder.decoder_name()


def open_entry(source: Source, resolution: int, cache_dir: str | None = None, skip_bad: bool = False,
               progress: bool = False, workers: int | None = None) -> Entry:
    """The entry of `source` at `resolution`, built first when missing or stale (see the module
    docstring). `workers`: decoding processes (default: the cores this process may use when
    there are `POOL_MIN_IMAGES` files or more to decode, else this process alone)."""
    root = cache_root(cache_dir)
    name = entry_name(source, resolution)
    final = root / name
    fingerprint, used = source.fingerprint(), decoder_of(source)
    with _locked(root / f"{name}.lock", exclusive=False):
        if _stale(final, fingerprint, used) is None:
            return _open(final, skip_bad)
    with _locked(root / f"{name}.lock", exclusive=True, waiting=f"{name} (another process is building it)"
                 if progress else None):
        why = _stale(final, fingerprint, used)  # another process may have built it while we waited
        if why is not None:
            if why != "missing":
                print(f"proxy-data cache: rebuilding {final} ({why})", file=sys.stderr)
            Builder(source, resolution, final, fingerprint, used, skip_bad, progress, workers).build()
        return _open(final, skip_bad)


def _stale(final: Path, fingerprint: str, used: str) -> str | None:
    """None when `final` is a complete entry of this source and decoder, else why not."""
    try:
        manifest = json.loads((final / "manifest.json").read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):
        return "its manifest is unreadable"
    if manifest.get("format") != FORMAT:
        return f"cache format {manifest.get('format')}, now {FORMAT}"
    if manifest.get("fingerprint") != fingerprint:
        return f"the source changed since it was built: {manifest.get('source')}"
    if manifest.get("decoder") != used:
        return f"built by decoder {manifest.get('decoder')}, now {used}"
    return None


def _open(final: Path, skip_bad: bool) -> Entry:
    manifest = json.loads((final / "manifest.json").read_text())
    skipped = manifest.get("skipped") or []
    if skipped and not skip_bad:
        path, reason = skipped[0]
        raise UserError(f"{path}: cannot read image ({reason}); the cache left it out under --skip-bad-images "
                        f"({len(skipped)} such files): pass --skip-bad-images, or fix or remove them")
    n, r, c = int(manifest["images"]), int(manifest["resolution"]), int(manifest["channels"])
    # copy-on-write: pages stay the shared file pages unless written (nothing writes them); a
    # writeable array lets torch.from_numpy wrap it without a warning
    images = np.memmap(final / "images.u8", dtype=np.uint8, mode="c", shape=(n, r, r, c)) if n else \
        np.zeros((0, r, r, c), np.uint8)
    return Entry(final, manifest, images, np.load(final / "labels.npy", mmap_mode="r"),
                 np.load(final / "sums.npy", mmap_mode="r"))


@contextmanager
def _locked(path: Path, exclusive: bool, waiting: str | None = None) -> Iterator[None]:
    """An `fcntl.flock` on `path` (released when the process dies, so a killed builder
    never blocks the others)."""
    try:
        fh = open(path, "a+")
    except OSError as exc:
        raise UserError(f"{path}: cannot open the cache's lock file ({exc.strerror or exc})") from None
    try:
        kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fh, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(f"proxy-data cache: waiting for {waiting}", file=sys.stderr, flush=True)
            fcntl.flock(fh, kind)
        yield
    finally:
        fh.close()  # releases the lock


# -- building ----------------------------------------------------------------------------------
def chunk_size(row_bytes: int) -> int:
    return int(min(CHUNK_MAX, max(CHUNK_MIN, CHUNK_BYTES // max(1, row_bytes))))


def resize_rows(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (n, H, W, C) -> uint8 (n, R, R, C): torch bilinear on [0, 1] floats (antialiased
    when shrinking), rounded back to uint8."""
    if images.shape[1:3] == (resolution, resolution):
        return np.ascontiguousarray(images)
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    down = resolution < min(x.shape[-2:])
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=down)
    return x.mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _sums(rows: np.ndarray) -> np.ndarray:
    """(n, C, 2) float64: per image and channel the sum and the sum of squares (exact integers)."""
    n, c = rows.shape[0], rows.shape[-1]
    flat = rows.reshape(n, -1, c).astype(np.uint32)
    return np.stack([flat.sum(1, dtype=np.uint64), (flat * flat).sum(1, dtype=np.uint64)], -1).astype(np.float64)


def _crc(rows: np.ndarray, sums: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(sums).tobytes(), zlib.crc32(np.ascontiguousarray(rows).tobytes()))


def _maps(folder: str, n: int, r: int, c: int, start: int, stop: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory maps of rows [start, stop) of a build's images and sums."""
    k = stop - start
    images = np.memmap(Path(folder) / "images.u8", dtype=np.uint8, mode=mode, offset=start * r * r * c,
                       shape=(k, r, r, c))
    sums = np.memmap(Path(folder) / "sums.f8", dtype=np.float64, mode=mode, offset=start * c * 2 * 8, shape=(k, c, 2))
    return images, sums


def decode_chunk(task: tuple) -> dict:
    """Decode one chunk of image files into the build's memory maps (a pool worker's job).

    An unreadable file leaves a zero row and is reported; without `skip` the chunk stops
    at the first one. Returns the chunk's record: start, stop, CRC, unreadable files.
    """
    folder, n, r, c, start, paths, skip = task
    images, sums = _maps(folder, n, r, c, start, start + len(paths), "r+")
    bad = []
    for i, path in enumerate(paths):
        try:
            images[i] = decoder.decode(path, r)
        except decoder.BadImage as exc:
            images[i] = 0
            bad.append([start + i, str(exc)])
            if not skip:
                break
    sums[:] = _sums(images)
    record = {"start": start, "stop": start + len(paths), "crc": _crc(images, sums), "bad": bad}
    del images, sums
    return record


class Builder:
    """One build of one entry, under its exclusive lock; see the module docstring."""

    def __init__(self, source: Source, resolution: int, final: Path, fingerprint: str, used: str,
                 skip_bad: bool, progress: bool, workers: int | None) -> None:
        self.source, self.r, self.final = source, int(resolution), final
        self.fingerprint, self.used, self.skip = fingerprint, used, bool(skip_bad)
        self.progress, self.workers = progress, workers
        self.partial = final.with_name(final.name + ".partial")

    def build(self) -> None:
        try:
            self._build()
        except OSError as exc:
            raise UserError(self._io_message(exc)) from None

    def _io_message(self, exc: OSError) -> str:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"{self.final.parent}: disk full while building the proxy-data cache "
                    f"({self.final.name}); free space or point --cache-dir elsewhere, then rerun (it resumes)")
        return f"{getattr(exc, 'filename', None) or self.final.parent}: cannot write the proxy-data cache ({exc.strerror or exc})"

    def _build(self) -> None:
        t0 = time.time()
        plan = self.source.plan()
        n, c = len(plan.labels), plan.channels
        if n == 0:
            raise UserError(f"dataset {self.source.dataset}: no images in its {self.source.part} part")
        row = self.r * self.r * c
        size = chunk_size(row)
        meta = {"format": FORMAT, "identity": self.source.identity(), "resolution": self.r, "fingerprint": self.fingerprint,
                "decoder": self.used, "n": n, "channels": c, "chunk": size}
        done = self._resume(meta, n, c, row)
        todo = [(s, min(n, s + size)) for s in range(0, n, size) if s not in done]
        bar = Bar(f"proxy-data cache: {self.source.dataset} {self.source.part} part at {self.r}px", n,
                  sum(r["stop"] - r["start"] for r in done.values()), self.progress)
        if todo:
            records = self._run(plan, todo, n, c)
            try:
                with open(self.partial / "done.jsonl", "a") as log:
                    for record in records:
                        if record["bad"] and not self.skip:  # the chunk stopped there: not recorded as done
                            self._unreadable(plan, record["bad"][0])
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        done[record["start"]] = record
                        bar.advance(record["stop"] - record["start"])
            finally:
                records.close()  # stops the pool at once when a file was unreadable
        bar.close()
        bad = sorted((i, reason) for r in done.values() for i, reason in r["bad"])
        if bad and not self.skip:  # recorded by an earlier build with --skip-bad-images
            self._unreadable(plan, bad[0])
        keep = np.setdiff1d(np.arange(n), np.asarray([i for i, _ in bad], dtype=np.int64))
        if not len(keep):
            raise UserError(f"dataset {self.source.dataset}: none of the {n} images of its {self.source.part} "
                            f"part is readable ({self._name(plan, bad[0][0])}: {bad[0][1]})")
        self._finish(plan, meta, keep, bad, n, c, row, time.time() - t0)

    def _resume(self, meta: dict, n: int, c: int, row: int) -> dict[int, dict]:
        """Records of the chunks already built and still intact, or a fresh partial build."""
        try:
            same = json.loads((self.partial / "build.json").read_text()) == meta
        except (OSError, ValueError):
            same = False
        if same:
            done = {}
            for line in (self.partial / "done.jsonl").read_text().splitlines() if (self.partial / "done.jsonl").exists() else []:
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut by a kill
                    continue
                images, sums = _maps(str(self.partial), n, self.r, c, record["start"], record["stop"], "r")
                if _crc(images, sums) == record["crc"]:  # resumed, not trusted blindly
                    done[record["start"]] = record
                del images, sums
            if done and self.progress:
                print(f"proxy-data cache: resuming {self.final.name} ({sum(r['stop'] - r['start'] for r in done.values())}"
                      f" of {n} images already built)", file=sys.stderr)
            return done
        if self.partial.exists():
            shutil.rmtree(self.partial)
        need = n * row + n * c * 16
        free = shutil.disk_usage(self.final.parent).free
        if free < need + (1 << 20):
            raise UserError(f"{self.final.parent}: not enough free space for the proxy-data cache of "
                            f"{self.source.dataset} at {self.r}px ({n} images need {_size(need)}, {_size(free)} "
                            "free); free space or point --cache-dir elsewhere")
        self.partial.mkdir()
        for name, nbytes in (("images.u8", n * row), ("sums.f8", n * c * 16)):
            with open(self.partial / name, "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, nbytes)
        (self.partial / "build.json").write_text(json.dumps(meta))
        return {}

    def _run(self, plan: Plan, todo: list[tuple[int, int]], n: int, c: int) -> Iterator[dict]:
        """The records of the chunks in `todo`, built in this process (arrays, or one chunk)
        or by a pool (image files)."""
        folder = str(self.partial)
        if plan.files is None:
            images = plan.images()
            for start, stop in todo:
                rows = resize_rows(images[start:stop], self.r)
                out, sums = _maps(folder, n, self.r, c, start, stop, "r+")
                out[:] = rows
                sums[:] = _sums(rows)
                yield {"start": start, "stop": stop, "crc": _crc(out, sums), "bad": []}
                del out, sums
            return
        tasks = [(folder, n, self.r, c, start, plan.files[start:stop], self.skip) for start, stop in todo]
        auto = _cores() if sum(len(t[5]) for t in tasks) >= POOL_MIN_IMAGES else 1
        workers = min(len(tasks), self.workers or auto)
        if workers <= 1:
            for task in tasks:
                yield decode_chunk(task)
            return
        # A daemonic process (a local engine's worker) may not start processes: decode in
        # threads there (the decoders release the GIL while they work).
        if multiprocessing.current_process().daemon:
            from multiprocessing.pool import ThreadPool
            pool: Any = ThreadPool(workers)
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_one_thread)
        try:
            yield from pool.imap_unordered(decode_chunk, tasks)
            pool.close()
        finally:
            pool.terminate()
            pool.join()

    def _finish(self, plan: Plan, meta: dict, keep: np.ndarray, bad: list, n: int, c: int, row: int,
                seconds: float) -> None:
        """Leave out unreadable rows, write labels, sums and the manifest (last), sync, rename."""
        folder = self.partial
        if len(keep) < n:
            images, sums = _maps(str(folder), n, self.r, c, 0, n, "r+")
            step = chunk_size(row)
            for j in range(0, len(keep), step):  # rows move down only: each source is read before it is overwritten
                src = keep[j:j + step]
                images[j:j + len(src)] = images[src]
                sums[j:j + len(src)] = sums[src]
            images.flush()
            del images, sums
            os.truncate(folder / "images.u8", len(keep) * row)
        _, sums = _maps(str(folder), n, self.r, c, 0, len(keep), "r")
        np.save(folder / "sums.npy", np.array(sums))
        del sums
        (folder / "sums.f8").unlink()
        np.save(folder / "labels.npy", plan.labels[keep].astype(np.int64))
        for name in ("images.u8", "sums.npy", "labels.npy"):
            _fsync(folder / name)
        names = [self._name(plan, i) for i, _ in bad]
        manifest = {**meta["identity"], "format": FORMAT, "resolution": self.r, "channels": c,
                    "fingerprint": self.fingerprint, "decoder": self.used, "source": self.source.describe(),
                    "images": int(len(keep)), "planned": n, "classes": plan.classes,
                    "skipped": [[name, reason] for name, (_, reason) in zip(names, bad)],
                    "built_by": os.getpid(), "build_seconds": round(seconds, 2), "built_at": time.time()}
        with open(folder / "manifest.json", "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        for name in ("build.json", "done.jsonl"):
            (folder / name).unlink(missing_ok=True)
        old = self.final.with_name(f"{self.final.name}.old-{os.getpid()}")
        if self.final.exists():
            self.final.rename(old)
        folder.rename(self.final)
        _fsync(self.final.parent)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        if bad:
            root = self.source.describe()
            short = [os.path.relpath(name, Path(root).resolve()) for name in names[:NAMED]]
            more = f" and {len(bad) - NAMED} more" if len(bad) > NAMED else ""
            print(f"proxy-data cache: skipped {len(bad)} unreadable image{'s' if len(bad) > 1 else ''}: "
                  f"{', '.join(short)}{more} (in {root}; listed in {self.final / 'manifest.json'})", file=sys.stderr)

    def _unreadable(self, plan: Plan, bad: list) -> None:
        index, reason = bad
        raise UserError(f"{self._name(plan, index)}: cannot read image ({reason}); "
                        "--skip-bad-images leaves unreadable files out")

    def _name(self, plan: Plan, index: int) -> str:
        return plan.files[index] if plan.files is not None else f"image {index}"


def _one_thread() -> None:
    """A decoding process uses one thread for everything (the pool has a process per core;
    more threads each would oversubscribe the cores)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import torch
    torch.set_num_threads(1)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


class Bar:
    """`proxy-data cache NAME: 1,024/4,000 images (25%) 3,500/s ETA 0m01s` on stderr: rewritten
    in place on a terminal, else a line at most every 10 % (and at the end). Silent during
    its first `QUIET_S` seconds: a build that ends sooner (mnist5k's) prints nothing."""

    QUIET_S = 1.0

    def __init__(self, what: str, total: int, done: int = 0, enabled: bool = True) -> None:
        self.what, self.total, self.done, self.start = what, total, done, done
        self.enabled = enabled and done < total
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.t0 = time.time()
        self.shown = -1

    def advance(self, k: int) -> None:
        self.done += k
        if not self.enabled or time.time() - self.t0 < self.QUIET_S:
            return
        tenth = int(10 * self.done / max(1, self.total))
        if self.tty or tenth > self.shown:
            self.shown = tenth
            self._show()

    def _show(self) -> None:
        elapsed = max(1e-9, time.time() - self.t0)
        rate = (self.done - self.start) / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0
        line = (f"{self.what}: {self.done:,}/{self.total:,} images ({100 * self.done / self.total:.0f}%) "
                f"{rate:,.0f}/s ETA {int(left // 60)}m{int(left % 60):02d}s")
        sys.stderr.write(("\r" + line.ljust(78)) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.shown >= 0:
            if self.shown < 10:  # the last advances fell in the quiet second: show the end
                self.shown = 10
                self._show()
            if self.tty:
                sys.stderr.write("\n")
                sys.stderr.flush()
