"""Benchmark: how fast images reach the trainer from the proxy-data cache, against the PIL +
DataLoader pipeline a first script would use, and whether a worker's memory grows with the
dataset.

On synthetic ImageFolders of photo-like JPEGs (bench/photos.py: 300-500 px, 100 classes;
10k and 100k images by default, generated once under `--data-root` and reused), prints:

  build     proxy-data cache build rate (images/s) at 64 px, in one process on one core
            (`workers=1`) and with a process per core, through `nas.evaluate.cache.open_entry`;
            also per CPU-second (the rate per core when no other job shares the machine)
  feed      images/s of `nas.evaluate.data.load(...).batches(128, ...)` at 64 and 128 px:
            uint8 rows gathered from the memory map, converted to float, normalized and
            augmented (random crop and flip) on the device, the trainer's own path
  baseline  the same batches from a `torch.utils.data.Dataset` that opens, decodes and
            resizes each JPEG with PIL every epoch, through a `DataLoader` with one worker
            per core (what a user's first script does)
  trainer   images/s that training EfficientNet-B0 consumes at 64 px (forward, backward and
            an SGD step on batches of 128, channels_last, fp32 and bf16 autocast): the feed
            must deliver several times that, since the trainer waits for each batch
  memory    a worker's USS (private memory: `psutil`'s `memory_full_info().uss`; RSS would
            count the shared pages of the memory map) after loading and one epoch, in a
            fresh process, at each size; and the same without the cache file's pages, which
            the kernel counts as private while one process alone maps them (`mapped_private`)
  cache hit the time of a second load in a fresh process, and how many image files it
            opened (a Python audit hook on `open` in that process, which sees every file the
            decoder reads: checked by one deliberate decode afterwards; the entry's manifest
            must not change, so no build ran in another process either)

Rates are wall-clock, steady state (from the second batch on), with one torch thread per
process (a local-engine worker's share of a machine with one worker per core; the
DataLoader's workers also run one thread each); other jobs may share the CPU. `--quick`
runs the same steps on tiny folders (for the tests).

    python bench/data.py [--quick] [--json] [--data-root DIR] [--sizes N N] [--keep-cache]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._cli import OneLineParser  # noqa: E402
from bench.decode import pillow_plain  # noqa: E402
from bench.photos import make_folder  # noqa: E402
from nas.evaluate import cache  # noqa: E402
from nas.evaluate.data import load  # noqa: E402
from nas.evaluate.sources import IMAGE_EXTS, Source  # noqa: E402
from search_space.latency import cpu_model  # noqa: E402

FULL = {"sizes": [10_000, 100_000], "classes": 100, "batch": 128, "batches": 60, "steps": 4}
QUICK = {"sizes": [100, 200], "classes": 10, "batch": 16, "batches": 3, "steps": 1}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# -- the cache and its feed ---------------------------------------------------------------
def build(folder: Path, resolution: int, cache_dir: Path, workers: int | None) -> dict:
    """Build the search part's entry (fresh `cache_dir`) and time it."""
    cpu = _cpu_seconds()
    start = time.perf_counter()
    entry = cache.open_entry(Source("imagefolder", "search", str(folder)), resolution, str(cache_dir), workers=workers)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    n = int(entry.manifest["images"])
    return {"images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
            "images_per_cpu_s": round(n / max(cpu, 1e-9), 1), "workers": workers or cores()}


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the build's pool): a rate per
    CPU-second is what the build reaches per core when no other job shares the machine."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def _steady(batches, limit: int) -> tuple[int, float]:
    """(images, seconds) of batches 2..limit+1 of an iterator (the first one starts it)."""
    it = iter(batches)
    next(it)
    n, start = 0, time.perf_counter()
    for i, (x, _) in enumerate(it):
        n += x.shape[0]
        if i + 1 >= limit:
            break
    return n, time.perf_counter() - start


def feed_rate(folder: Path, resolution: int, cache_dir: Path, batch: int, limit: int) -> float:
    data = load("imagefolder", data_dir=str(folder), resolution=resolution, cache_dir=str(cache_dir))
    n, seconds = _steady(data.batches(batch, torch.Generator().manual_seed(0)), limit)
    return n / seconds


# -- the baseline -------------------------------------------------------------------------
class FolderDataset(torch.utils.data.Dataset):
    """A first script's dataset: each item opened, decoded, resized, cropped and flipped
    with PIL on every access, then normalized."""

    def __init__(self, folder: Path, resolution: int) -> None:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        self.items = [(str(f), c) for c, name in enumerate(classes) for f in sorted((folder / name).iterdir())
                      if f.suffix.lower() in IMAGE_EXTS]
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        pixels = np.array(pillow_plain(Path(path).read_bytes(), self.resolution))
        if np.random.random() < 0.5:
            pixels = pixels[:, ::-1].copy()
        x = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255).sub_(0.5).div_(0.25)
        return x, label


def baseline_rate(folder: Path, resolution: int, batch: int, limit: int, workers: int) -> float:
    loader = torch.utils.data.DataLoader(FolderDataset(folder, resolution), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True)
    n, seconds = _steady(loader, limit)
    return n / seconds


# -- the trainer --------------------------------------------------------------------------
def trainer_rate(resolution: int, classes: int, batch: int, steps: int, bf16: bool) -> float:
    """Images/s of EfficientNet-B0 training steps (forward, backward, SGD) on this CPU."""
    from search_space import zoo
    from search_space.model import build as build_model

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(zoo.get("efficientnet-b0"), num_classes=classes))
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


# -- fresh processes: a worker's memory, a second run ---------------------------------------
def _child(*args: str) -> dict:
    env = dict(os.environ)
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"bench/data.py: child {' '.join(args[:1])} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_uss(folder: Path, resolution: int, cache_dir: Path, batch: int,
               rendezvous: Path | None = None, peers: int = 1) -> dict:
    """In this process (a fresh one): load, one epoch of batches, then memory in MB: USS, RSS,
    and the part of USS that is the cache's memory map (see `mapped_private`).

    With `peers` > 1 (several workers started at once, as a search runs them), every worker
    waits at `rendezvous` until all have read their epoch and measures while the others still
    map the cache, then waits again until all have measured: the cache pages are then shared
    and leave every worker's USS, which is what a worker of a search really holds."""
    import psutil

    torch.set_num_threads(1)
    data = load("imagefolder", data_dir=str(folder), resolution=resolution, cache_dir=str(cache_dir))
    images = 0
    for x, _ in data.batches(batch, torch.Generator().manual_seed(0)):
        images += x.shape[0]
    _meet(rendezvous, "read", peers)
    info = psutil.Process().memory_full_info()
    mapped = mapped_private(str(Path(cache_dir).resolve()))
    _meet(rendezvous, "measured", peers)
    return {"uss_mb": round(info.uss / 2**20, 1), "rss_mb": round(info.rss / 2**20, 1),
            "cache_map_mb": round(mapped / 2**20, 1), "uss_without_cache_map_mb": round((info.uss - mapped) / 2**20, 1),
            "epoch_images": images, "train_images": data.n_train}


def _meet(folder: Path | None, stage: str, peers: int, timeout: float = 600.0) -> None:
    """Wait until `peers` processes have reached `stage` (a file each under `folder`)."""
    if folder is None or peers <= 1:
        return
    (folder / f"{stage}-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob(f"{stage}-*"))) < peers:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/data.py: {stage}: the other workers did not arrive in {timeout:.0f} s")
        time.sleep(0.05)


def _children(peers: int, *args: str) -> list[dict]:
    """`peers` children with the same arguments, started at once (see `worker_uss`)."""
    procs = [subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(peers)]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            last = (err.strip().splitlines() or ["no message"])[-1]
            raise SystemExit(f"bench/data.py: child {args[0]} failed: {last}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def mapped_private(prefix: str) -> int:
    """Bytes of this process's USS that are pages of files under `prefix` (the cache).

    The kernel counts a page of a file mapping as private while one process alone maps
    it, so a lone worker's USS includes the cache pages it has read: page cache, clean,
    droppable, and shared (leaving every USS) as soon as a second worker maps the file.
    """
    total, inside = 0, False
    try:
        with open("/proc/self/smaps") as fh:
            for line in fh:
                head = line.split()
                if not head:
                    continue
                if "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
                    inside = len(head) >= 6 and head[5].startswith(prefix)
                elif inside and head[0] in ("Private_Clean:", "Private_Dirty:"):
                    total += int(head[1]) * 1024
    except OSError:
        return 0
    return total


def second_run(folder: Path, resolution: int, cache_dir: Path) -> dict:
    """In this process (a fresh one): time `load` of an entry that exists, counting the
    image files opened (audit events 'open' on a path inside `folder` with an image suffix)."""
    root = os.path.join(os.path.realpath(folder), "")
    opened: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if Path(path).suffix.lower() in IMAGE_EXTS and os.path.realpath(path).startswith(root):
                opened.append(path)

    sys.addaudithook(hook)
    start = time.perf_counter()
    data = load("imagefolder", data_dir=str(folder), resolution=resolution, cache_dir=str(cache_dir))
    seconds = time.perf_counter() - start
    during = len(opened)
    from nas.evaluate.decode import decode

    decode(next(p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_EXTS), resolution)
    return {"seconds": round(seconds, 2), "image_files_opened": during, "train_images": data.n_train,
            "hook_sees_a_decode": len(opened) == during + 1}  # the counter works: one deliberate open


def _manifest(cache_dir: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in cache_dir.glob("*/manifest.json")}


# -- the run --------------------------------------------------------------------------------
def run(args) -> dict:
    cfg = dict(QUICK if args.quick else FULL)
    sizes = args.sizes or cfg["sizes"]
    batch, limit, workers = cfg["batch"], cfg["batches"], cores()
    root = Path(args.data_root)
    tag = "quick" if args.quick else "photos"
    # One torch thread, as each of the local engine's workers gets on a machine with as many
    # workers as cores: the feed and the trainer of one worker share its core.
    torch.set_num_threads(1)
    print(f"machine: {cpu_model()}, {workers} cores, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          "1 thread per process")
    folders = {}
    for n in sizes:
        t = time.perf_counter()
        folders[n] = make_folder(root / f"{tag}-{n}-c{cfg['classes']}", n, cfg["classes"], workers=workers,
                                 progress=not args.quick)
        print(f"folder: {n:,} JPEGs in {cfg['classes']} classes at {folders[n]} ({time.perf_counter() - t:.0f} s)")
    small, big = folders[min(sizes)], folders[max(sizes)]
    runs = Path(tempfile.mkdtemp(prefix="caches-", dir=root))
    figures: dict = {"machine": {"cpu": cpu_model(), "cores": workers, "load_avg_1m": round(os.getloadavg()[0], 2)}, "sizes": sizes, "batch": batch}
    try:
        # build: one core, all cores (the smaller folder), then every folder at 64 px with all cores
        one = build(small, 64, runs / "one-core", workers=1)
        every = {n: build(folders[n], 64, runs / "shared", workers=None) for n in sizes}
        figures["build_64px"] = {"one_core": one, "all_cores": every[min(sizes)],
                                 "all_cores_by_size": {str(n): every[n] for n in sizes}}
        print(f"build at 64 px: one core {one['images_per_s']:,.0f} images/s ({one['images_per_cpu_s']:,.0f} per "
              f"CPU-second); {workers} cores " + ", ".join(
                  f"{every[n]['images_per_s']:,.0f} images/s ({every[n]['images']:,} images, {every[n]['seconds']:.0f} s; "
                  f"{every[n]['images_per_cpu_s']:,.0f} per CPU-second)" for n in sizes))
        # feed against the baseline and the trainer
        figures["feed"], figures["baseline"], figures["trainer"] = {}, {}, {}
        for r, folder in ((64, big), (128, small)):
            figures["feed"][str(r)] = round(feed_rate(folder, r, runs / "shared", batch, limit), 1)
            figures["baseline"][str(r)] = round(baseline_rate(small, r, batch, limit, workers), 1)
        for bf16 in (False, True):
            key = "bf16" if bf16 else "fp32"
            figures["trainer"][key] = round(trainer_rate(64, cfg["classes"], batch, cfg["steps"], bf16), 1)
        fastest = max(figures["trainer"].values())
        figures["ratios"] = {"feed_over_trainer_64": round(figures["feed"]["64"] / fastest, 1),
                             **{f"feed_over_dataloader_{r}": round(figures["feed"][r] / figures["baseline"][r], 1)
                                for r in figures["feed"]}}
        for r in ("64", "128"):
            print(f"feed at {r} px: {figures['feed'][r]:,.0f} images/s; PIL + DataLoader({workers} workers) "
                  f"{figures['baseline'][r]:,.0f} images/s: {figures['ratios'][f'feed_over_dataloader_{r}']}x")
        print(f"trainer (EfficientNet-B0, 64 px, batch {batch}): fp32 {figures['trainer']['fp32']:,.0f} images/s, "
              f"bf16 {figures['trainer']['bf16']:,.0f} images/s; feed / fastest trainer "
              f"{figures['ratios']['feed_over_trainer_64']}x")
        # memory and the second run, each in a fresh process
        figures["uss"] = {str(n): _child("--uss", str(folders[n]), str(runs / "shared"), str(batch)) for n in sizes}
        u = figures["uss"]
        big_u, small_u = u[str(max(sizes))], u[str(min(sizes))]
        figures["ratios"]["uss_largest_over_smallest"] = round(big_u["uss_mb"] / small_u["uss_mb"], 3)
        figures["ratios"]["uss_without_cache_map_largest_over_smallest"] = round(
            big_u["uss_without_cache_map_mb"] / small_u["uss_without_cache_map_mb"], 3)
        print("worker after load + one epoch at 64 px: " + ", ".join(
            f"{n:,} images USS {u[str(n)]['uss_mb']:.0f} MB of which {u[str(n)]['cache_map_mb']:.0f} MB cache map "
            f"(RSS {u[str(n)]['rss_mb']:.0f} MB)" for n in sizes)
            + f"; USS ratio {figures['ratios']['uss_largest_over_smallest']}x, without the cache map "
            f"{figures['ratios']['uss_without_cache_map_largest_over_smallest']}x")
        peers = max(2, workers)
        shared = {}
        for n in sizes:
            meet = runs / f"meet-{n}"
            meet.mkdir(parents=True, exist_ok=True)
            got = _children(peers, "--uss", str(folders[n]), str(runs / "shared"), str(batch),
                            "--rendezvous", str(meet), "--peers", str(peers))
            shared[str(n)] = max(got, key=lambda g: g["uss_mb"])
        figures["uss_peers"] = {"workers": peers, **shared}
        figures["ratios"]["uss_peers_largest_over_smallest"] = round(
            shared[str(max(sizes))]["uss_mb"] / shared[str(min(sizes))]["uss_mb"], 3)
        print(f"{peers} workers at once, the larger USS: " + ", ".join(
            f"{n:,} images {shared[str(n)]['uss_mb']:.0f} MB" for n in sizes)
            + f"; ratio {figures['ratios']['uss_peers_largest_over_smallest']}x")
        before = _manifest(runs / "shared")
        hit = _child("--second-run", str(big), str(runs / "shared"))
        hit["rebuilt"] = _manifest(runs / "shared") != before
        hit["first_run_seconds"] = every[max(sizes)]["seconds"]
        figures["cache_hit"] = hit
        if not hit["hook_sees_a_decode"]:
            print("warning: the audit hook did not see a deliberate decode: its count of 0 proves nothing")
        print(f"second run ({max(sizes):,} images, 64 px, fresh process): load {hit['seconds']:.2f} s "
              f"(first run built it in {hit['first_run_seconds']:.0f} s); image files opened: "
              f"{hit['image_files_opened']}; rebuilt: {hit['rebuilt']}")
    finally:
        if not args.keep_cache:
            shutil.rmtree(runs, ignore_errors=True)
    return figures


def main(argv=None) -> int:
    parser = OneLineParser("bench/data.py", __doc__.splitlines()[0], "tiny folders, a few batches (for the tests)")
    parser.add_argument("--data-root", default=str(Path(tempfile.gettempdir()) / "effnas-bench-data"),
                        help="where the synthetic folders are generated (and reused) and caches built")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="images per folder (default 10000 100000)")
    parser.add_argument("--keep-cache", action="store_true", help="keep the cache entries built (under --data-root)")
    parser.add_argument("--uss", nargs=3, metavar=("FOLDER", "CACHE", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--rendezvous", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--second-run", nargs=2, metavar=("FOLDER", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.uss:
        meet = Path(args.rendezvous) if args.rendezvous else None
        print(json.dumps(worker_uss(Path(args.uss[0]), 64, Path(args.uss[1]), int(args.uss[2]), meet, args.peers)))
        return 0
    if args.second_run:
        print(json.dumps(second_run(Path(args.second_run[0]), 64, Path(args.second_run[1]))))
        return 0
    if args.sizes is not None and (len(args.sizes) < 2 or min(args.sizes) < 100):
        parser.error("--sizes: give at least two sizes of at least 100 images")
    try:
        Path(args.data_root).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--data-root {args.data_root}: {exc.strerror}")
    figures = run(args)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
