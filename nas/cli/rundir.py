"""The one lifecycle of a run folder, for the search, stage 2, the proxy check and the grid.

`check_out_dir` says, before anything is written, whether `--out` may be used as asked.
`open_run` then takes the folder's lock (`nas.store.lock`: one owner at a time), removes
the outputs of a run being overwritten, creates or opens the store, and turns a full disk
or an unwritable folder into one line (`RunIOError`, exit 1) instead of a traceback; on the
way out it closes the store and releases the lock, however the command ends.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Iterator, Optional, Sequence

from nas.errors import RunIOError, UserError
from nas.store import lock
from nas.store.store import Store


def check_out_dir(out: str, resume: bool, overwrite: bool, what: str = "search run") -> None:
    """--out must be creatable/writable, and hold a run exactly when --resume is given
    (`what` names the kind of run in the messages: a search run, a proxy check)."""
    if not str(out).strip():
        raise UserError("--out must name a folder, got an empty string")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    broken = Store.unreadable(path) if path.is_dir() else None
    if broken and not (overwrite and not resume):
        raise UserError(f"{path / 'search.db'}: cannot be read as a run's store ({broken}); nothing was changed "
                        "(move it away, or pass --overwrite to replace it)")
    if resume:
        if not path.is_dir() or not Store.is_run(path):
            raise UserError(f"--resume: {out} is not a {what} (no search.db with a recorded configuration)")
    elif path.is_dir() and Store.is_run(path) and not overwrite:
        raise UserError(f"--out {out}: already holds a run; pass --resume to continue it, --overwrite to "
                        "replace it, or another --out")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK) or not _can_create_in(probe):
        raise UserError(f"--out {out}: {probe} is not writable")


def _can_create_in(folder: Path) -> bool:
    """A real probe (root ignores permission bits; read-only mounts do not)."""
    import tempfile
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".effnas-probe-"))
        return True
    except OSError:
        return False


@contextlib.contextmanager
def io_errors(out: str | Path, again: str) -> Iterator[None]:
    """A full disk, a read-only or unwritable folder: one line naming what failed where, and
    the way on (`again`, e.g. `continue with --resume --out RUN`), never a traceback. The
    store stays resumable: every write is one transaction, and the engines stop their
    workers on the way out."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or out
        raise RunIOError(f"cannot write {where}: {exc.strerror or exc}; the store is intact: fix it (free "
                         f"space, permissions) and {again}") from None
    except sqlite3.OperationalError as exc:
        raise RunIOError(f"cannot write {Store.db_path(out)}: {exc}; the store is intact: fix it (free "
                         f"space, permissions) and {again}") from None


@contextlib.contextmanager
def open_run(out: str | Path, what: str, again: str, config: Optional[dict] = None, create: bool = False,
             overwrite: Sequence[str] = ()) -> Iterator[Store]:
    """The run folder `out`, locked for this process, with its store open.

    `create`: a new store recording `config`, after removing the files and folders named in
    `overwrite` (a run being replaced). Otherwise the existing store; with a `config` (a
    resumed run) that config is recorded and the jobs that were running when the run
    stopped are re-queued (attempt + 1). `what` and `again` word the lock's and the I/O
    errors' messages.
    """
    lock.acquire(out, what)
    try:
        with io_errors(out, again):
            folder = Path(out)
            for name in overwrite:
                target = folder / name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                elif target.exists():
                    target.unlink()
            if create:
                store = Store.create(folder, config or {})
            else:
                store = Store.open(folder)
                if config is not None:
                    store.set_config(config)
                    store.requeue_pending()
            try:
                yield store
            finally:
                store.close()
    finally:
        lock.release(out)
