"""One owner per run folder: an exclusive `flock` on `RUN/.lock`, held for the process's life.

Why flock: the kernel releases it when the process dies, however it dies (SIGKILL
included), so a killed owner never blocks a resume and there is no stale-lock cleanup
to get wrong. A second process on the same folder (two `--resume`s at once, two fresh
runs into one empty `--out`, a grid or `nas.final` while a search runs) stops at once
with one line naming the owner's pid and host. Processes that the owner itself starts
(workers, NNI's dispatcher) write through the owner's run and take no lock.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from ..errors import UserError

LOCK_NAME = ".lock"
_held: dict[str, int] = {}  # folder -> fd, kept open (and so locked) until release or exit


def acquire(out_dir: str | Path, what: str = "this run") -> None:
    """Lock `out_dir` (created if needed) for this process; `UserError` if another holds it.

    Re-entrant within a process (the search and its stage 2 share the lock).
    """
    folder = Path(out_dir)
    key = str(folder.resolve())
    if key in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        raise UserError(f"{folder}: in use by {owner} (another search, resume, grid or stage 2 on the same "
                        f"folder); wait for it to end or stop it, then retry {what}") from None
    except OSError as exc:
        os.close(fd)
        raise UserError(f"{folder}: cannot lock {path} ({exc.strerror or exc})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    _held[key] = fd


def release(out_dir: str | Path) -> None:
    """Give the lock up (the kernel does it anyway when the process ends)."""
    fd = _held.pop(str(Path(out_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


def _read_owner(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process"
