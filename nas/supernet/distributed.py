"""Supernet training on several processes (GPUs, or CPU processes with gloo).

Launched by the project (`launch(nproc, ...)`: spawned processes on this machine) or by
`torchrun` (`init_from_env`). Every rank draws the same sub-networks at each step (they
come from generators seeded by (seed, step)) and takes its own shard of each batch; after
the step's 2 + N backward passes the gradients are averaged across ranks in one
all-reduce, then each rank takes the same optimizer step, so all ranks hold identical
weights throughout. Rank 0 alone writes files and prints.

Why not the `DistributedDataParallel` wrapper: a sandwich step runs 2 + N backward passes
of different sub-networks before one optimizer step, each using a subset of the weights,
so DDP needs `no_sync` on all but the last pass and `find_unused_parameters=True`. Measured
on 2 gloo CPU processes (default space, 6 steps of batch 32 at 32 px; docs/supernet.md):
the same weights to the last bit and the same step time within the noise of a shared CPU,
while DDP warns that sliced weights' gradients do not match its buckets' strides. One flat
all-reduce of the gradients that exist, once per step, is the same computation without the
wrapper (no `module.` prefix in the checkpoint, nothing to keep in step with the model).
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, NoReturn

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", rank_world()[0]))


def env_world_size() -> int:
    """WORLD_SIZE as `torchrun` sets it (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(cuda: bool) -> bool:
    """Join the process group `torchrun` (or `launch`) describes in the environment; False
    when there is none (a single process)."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    global _joined
    _joined = True
    return True


_joined = False  # whether this process ever joined a process group (see `exit_process`)


def leave() -> None:
    """Leave the process group, if this process is in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a process that joined a process group without running the interpreter's teardown.

    Why: a gloo worker thread frees each finished collective's tensors after the caller has
    moved on, and freeing a tensor Python once held takes the GIL; when that happens while the
    interpreter is shutting down, the thread is killed inside C++ and the process aborts
    (SIGABRT, "terminate called without an active exception"), about 1 run in 25 on 2 CPU
    processes, after the training had ended and rank 0 had written its files. Everything this
    process writes is closed before it gets here, so skipping the teardown loses nothing.
    A process that never joined a group exits normally.
    """
    if not _joined:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def average_gradients(params: list[torch.nn.Parameter], flag: torch.Tensor | None = None) -> torch.Tensor | None:
    """Average `.grad` across ranks in one all-reduce (ranks use the same parameters: they
    ran the same sub-networks, so the same gradients exist everywhere).

    `flag` (a boolean scalar, e.g. "this rank's loss was not finite") rides in the same
    all-reduce; the result is True on every rank when it was True on any, so that all ranks
    stop together (a rank that stopped alone would leave the others waiting in the next
    all-reduce until its exit broke their connection, reported as a failure of the wrong
    kind). Returns that flag (`flag` itself with one process)."""
    rank, world = rank_world()
    if world == 1:
        return flag
    grads = [p.grad for p in params if p.grad is not None]
    parts = [g.reshape(-1) for g in grads]
    if flag is not None:
        parts.append(flag.reshape(1).to(grads[0].dtype if grads else torch.float32))
    if not parts:
        return flag
    flat = torch.cat(parts)
    dist.all_reduce(flat)
    if flag is not None:
        flag = flat[-1] > 0
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
    return flag


def agree(params: list[torch.Tensor]) -> bool:
    """Whether every rank holds the same values (per-tensor float64 sums and sums of
    squares compared across ranks: a cheap check of the invariant the training relies on)."""
    if rank_world()[1] == 1:
        return True
    stats = torch.stack([s for p in params for s in (p.detach().double().sum(), p.detach().double().square().sum())])
    high, low = stats.clone(), -stats
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return bool(torch.equal(high, -low))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, target: Callable[[Any], Any], payload: Any) -> None:
    """Run `target(payload)` in `nproc` spawned processes joined in one process group
    (`init_from_env` inside `target` joins it). A rank that raises ends the launch with
    `torch.multiprocessing.ProcessRaisedException` or `ProcessExitedException`."""
    import torch.multiprocessing as mp

    port = free_port()
    mp.start_processes(_child, args=(nproc, port, target, payload), nprocs=nproc, join=True, start_method="spawn")


def _child(rank: int, world: int, port: int, target: Callable[[Any], Any], payload: Any) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    target(payload)
    exit_process(0)  # a rank that raised exits through `torch.multiprocessing`, which reports it
