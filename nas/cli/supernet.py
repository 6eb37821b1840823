"""`python -m nas.supernet train --out RUN`: train a weight-sharing supernet over a space.

Writes RUN/supernet/ (`nas.supernet.checkpoint`: the checkpoint, the trained weights, a
manifest) and prints progress on stderr. `--nproc N` trains on N processes of this
machine (one per GPU with `--device cuda`, gloo on the CPU); under `torchrun` each rank
runs this command and rank 0 writes. Exit status 0 when trained, 1 when training failed
(the message says why; the last checkpoint stays for `--resume`), 2 for bad input.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from nas.errors import UserError

from .args import MAX_SEED, Parser, cli_main, int_at_least, log, number, positive_int

PROG = "nas.supernet"
SUBDIR = "supernet"


def build_parser() -> Parser:
    from nas.evaluate.budget import DATASETS, ProxyBudget
    from nas.supernet.model import KERNEL_MODES
    from nas.supernet.train import Settings

    b, s = ProxyBudget(), Settings()
    p = Parser(prog=f"python -m {PROG}", description="Train a weight-sharing supernet over a search space "
               "(sandwich rule, in-place distillation), resumable, on one or several processes.")
    sub = p.add_subparsers(dest="command", metavar="train", required=True, parser_class=Parser)
    t = sub.add_parser("train", help="train the supernet of a space into RUN/supernet/")
    t.add_argument("--space", metavar="FILE",
                   help="the search space YAML (default: the built-in one-shot space, search_space/oneshot_space.yaml: "
                        "the default space with conv_op mbconv and skip identity; docs/supernet.md says why)")
    t.add_argument("--out", metavar="RUN", required=True, help="run folder; the supernet goes to RUN/supernet/")
    t.add_argument("--epochs", type=number("--epochs", 0, strict=True), default=s.epochs,
                   help=f"training epochs (default: {s.epochs:g}, about 2-3 minutes on mnist5k at 32 px on 2 CPU cores)")
    t.add_argument("--resume", action="store_true", help="continue from RUN/supernet/'s last checkpoint")
    t.add_argument("--nproc", type=positive_int("--nproc"), default=1,
                   help="processes on this machine (one per GPU with --device cuda; gloo on the CPU)")
    t.add_argument("--seed", type=int_at_least("--seed", 0, MAX_SEED), default=0)
    t.add_argument("--dataset", default=b.dataset, help=f"{', '.join(DATASETS)} (default: {b.dataset})")
    t.add_argument("--data-dir", help="the dataset's folder (cifar10, cifar100, imagefolder)")
    t.add_argument("--resolution", type=int_at_least("--resolution", 8), default=b.resolution,
                   help=f"training image size (default: {b.resolution})")
    t.add_argument("--batch-size", type=positive_int("--batch-size"), default=b.batch_size,
                   help=f"global batch size, split over the processes (default: {b.batch_size})")
    t.add_argument("--random-subnets", type=int_at_least("--random-subnets", 0), default=s.random_subnets,
                   help=f"sub-networks drawn per step besides the largest and smallest (default: {s.random_subnets})")
    t.add_argument("--no-distill", action="store_true", help="train every sub-network on the labels")
    t.add_argument("--kernel-mode", choices=KERNEL_MODES, default=s.kernel_mode,
                   help="smaller kernels: the largest's centre times a learned transform, or separate weights")
    t.add_argument("--checkpoint-every", type=int_at_least("--checkpoint-every", 0), default=s.checkpoint_every,
                   metavar="STEPS", help="steps between checkpoints (default: 0 = once per epoch)")
    t.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="training device (default: cpu)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train the supernet (see the module doc)."""
    return cli_main(PROG, lambda: _main(build_parser().parse_args(argv)),
                    "interrupted; continue with --resume (from the last checkpoint)")


def _main(args: Any) -> int:
    from nas.supernet import distributed as D
    from nas.supernet.checkpoint import CHECKPOINT, read_manifest

    space = _space(args.space)
    opts = {"quiet": args.quiet}
    payload = _payload(args, space)
    folder = Path(payload["folder"])
    _check_out(args.out, folder, args.resume, CHECKPOINT)
    torchrun = D.env_world_size() > 1
    if args.nproc > 1 and torchrun:
        raise UserError("--nproc: this process was started by torchrun, which sets the processes; drop --nproc")
    device = payload["budget"]["device"]
    if args.nproc > 1 and device == "cuda":
        import torch
        if args.nproc > torch.cuda.device_count():
            raise UserError(f"--nproc {args.nproc}: this machine has {torch.cuda.device_count()} GPUs")
    rank = int(os.environ.get("RANK", "0")) if torchrun else 0
    if rank != 0:
        return 0 if run_worker(payload).status == "ok" else 1
    from nas.store import lock
    lock.acquire(args.out, "the supernet training")
    try:
        where = f"{args.nproc} processes" if args.nproc > 1 else ("torchrun" if torchrun else device)
        log(opts, f"{PROG}: training the supernet of {space.source} for {args.epochs:g} epochs on {where} "
                  f"into {folder}")
        if args.nproc > 1:
            from torch.multiprocessing import ProcessExitedException, ProcessRaisedException
            try:
                D.launch(args.nproc, run_worker, payload)
            except (ProcessRaisedException, ProcessExitedException) as exc:
                print(f"{PROG}: a training process failed: {' '.join(str(exc).split())[-300:]}", file=sys.stderr)
                return 1
            result = (read_manifest(folder) or {}).get("result", {"status": "failed",
                                                                 "message": "no manifest written"})
        else:
            result = run_worker(payload).to_dict()
        return _report(result, folder, opts)
    finally:
        lock.release(args.out)


def _space(path: str | None):
    from search_space.errors import SpecError
    from search_space.space import SearchSpace
    try:
        if path is None:  # what `nas.search --strategy oneshot` searches by default
            from nas.supernet.oneshot import oneshot_space_file
            return SearchSpace.from_yaml(oneshot_space_file())
        if not Path(path).is_file():
            raise UserError(f"--space {path}: no such file")
        return SearchSpace.from_yaml(path)
    except SpecError as exc:
        raise UserError(f"--space: {str(exc).splitlines()[0]}") from None


def _payload(args: Any, space) -> dict:
    """Everything a training process needs, as plain data (it crosses a process spawn)."""
    from nas.evaluate.budget import DATASETS, ProxyBudget
    from nas.evaluate.device import resolve
    from nas.evaluate.train import check_budget
    from nas.supernet.train import Settings, check_settings

    dataset = str(args.dataset).lower()
    if dataset not in DATASETS:
        raise UserError(f"--dataset {args.dataset}: expected one of {', '.join(DATASETS)}")
    stride = space.skeleton().total_stride
    if args.resolution < stride:
        raise UserError(f"--resolution {args.resolution} is below the networks' total stride {stride}")
    device = "cpu" if args.device == "cpu" else resolve(args.device, "--device").split(":")[0]
    settings = Settings(epochs=args.epochs, random_subnets=args.random_subnets, distill=not args.no_distill,
                        kernel_mode=args.kernel_mode, checkpoint_every=args.checkpoint_every)
    budget = ProxyBudget(dataset=dataset, data_dir=args.data_dir, resolution=args.resolution, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed, device=device)
    check_budget(budget)
    check_settings(settings)
    return {"space": space.to_yaml(), "source": space.source, "budget": budget.to_dict(),
            "settings": settings.to_dict(), "folder": str(Path(args.out) / SUBDIR), "resume": args.resume,
            "quiet": args.quiet, "nproc": args.nproc}


def _check_out(out: str, folder: Path, resume: bool, checkpoint: str) -> None:
    if not str(out).strip():
        raise UserError("--out must name a folder, got an empty string")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out}: {folder} exists and is not a folder")
    has = (folder / checkpoint).is_file()
    if resume and not has:
        raise UserError(f"--resume: {folder} holds no supernet checkpoint to continue")
    if not resume and has:
        raise UserError(f"--out {out}: {folder} already holds a supernet; pass --resume to continue it or "
                        "choose another --out")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable")


def run_worker(payload: dict):
    """One training process: join the process group if there is one, train, leave it."""
    import torch

    from nas.evaluate.budget import ProxyBudget
    from nas.supernet import distributed as D
    from nas.supernet.train import Settings, train
    from search_space.space import SearchSpace

    budget = ProxyBudget.from_dict(payload["budget"])
    cuda = budget.device.startswith("cuda")
    joined = D.init_from_env(cuda)
    if joined and not cuda and payload["nproc"] > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // payload["nproc"]))
    try:
        if cuda and joined:
            budget = dataclasses.replace(budget, device=f"cuda:{D.local_rank()}")
        space = SearchSpace.from_yaml_text(payload["space"], source=payload["source"])
        quiet = payload["quiet"]
        return train(space, budget, payload["folder"], Settings.from_dict(payload["settings"]),
                     resume=payload["resume"], log=None if quiet else (lambda m: log({}, f"{PROG}: {m}")))
    finally:
        if joined:
            D.leave()


def _report(result: dict, folder: Path, opts: dict) -> int:
    if result["status"] != "ok":
        print(f"{PROG}: training {result['status']}: {result.get('message', '')} (the last checkpoint in "
              f"{folder} can be continued with --resume)", file=sys.stderr)
        return 1
    loss = result.get("loss")
    ips = result.get("images_per_sec")
    log(opts, f"{PROG}: done: {result['steps']} steps in {result['wall_time']:.1f} s"
              + (f", final loss {loss:.4f}" if loss is not None else "")
              + (f", {ips:.0f} training images/s" if ips else "") + f"; weights in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
