"""SIGKILL a process at an exact store write: the crash points of the resume tests.

Test-only, so it lives here and the package reads no switch from the environment. It
wraps `nas.store.Store._commit`, the one place every successful write transaction
passes (after its statements, before COMMIT). Writes are counted per `Store` object
(1-based), as a run's store is one object from creation to the end.

In a subprocess::

    python -m tests.kill_hooks in-write 9 -- ARGS...     # nas.search ARGS, killed inside
                                                          # its 9th write, before COMMIT
    python -m tests.kill_hooks after-write 14 -- ARGS... # killed right after commit 14

or from code: `import tests.kill_hooks as k; k.install(in_write=1)`.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import Sequence

from nas.store import Store

_original = Store._commit
POINTS = ("in-write", "after-write")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # SIGKILL is asynchronous: never return into the caller meanwhile


def install(in_write: int = 0, after_write: int = 0) -> None:
    """SIGKILL this process inside its `in_write`-th write transaction (statements run,
    COMMIT not) and/or right after its `after_write`-th commit; 0 means never."""

    def _commit(store: Store) -> None:
        n = store.__dict__.get("_kill_hooks_writes", 0) + 1
        store._kill_hooks_writes = n
        if n == in_write:
            _die()
        _original(store)
        if n == after_write:
            _die()

    Store._commit = _commit


def uninstall() -> None:
    Store._commit = _original


def main(argv: Sequence[str]) -> int:
    """`POINT N [--] ARGS...`: install the hook, then run `nas.search` with ARGS."""
    argv = list(argv)
    if len(argv) < 2 or argv[0] not in POINTS or not argv[1].isdigit():
        print(f"usage: python -m tests.kill_hooks {{{','.join(POINTS)}}} N [--] ARGS...", file=sys.stderr)
        return 2
    point, n, rest = argv[0], int(argv[1]), argv[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    install(**{point.replace("-", "_"): n})
    from nas.cli.search import main as search
    return search(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
