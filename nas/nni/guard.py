"""`python -m nas.nni.guard LAUNCHER MANAGER`: NNI's processes never outlive their launcher.

NNI's manager is a Node.js process in its own process group; when the process that
started it is SIGKILLed nothing stops it, and it goes on running (and recording) trials
that a later `--resume` hands out again. This small watcher, started in its own session
by `nas.nni.engine`, polls the launcher; when the launcher is gone it kills the manager
and every process below it (the dispatcher with our tuner, the trials), then exits. It
exits by itself when the manager ends first.
"""
from __future__ import annotations

import sys
import time

POLL = 0.5


def _alive(proc) -> bool:
    import psutil
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch(launcher: int, manager: int, poll: float = POLL) -> None:
    import psutil

    try:
        parent, root = psutil.Process(launcher), psutil.Process(manager)
    except psutil.Error:
        return
    tree: dict[int, psutil.Process] = {}
    while _alive(root):
        try:  # remember the tree while it is whole: orphans are re-parented once it breaks
            tree.update({p.pid: p for p in root.children(recursive=True)})
        except psutil.Error:
            pass
        if not _alive(parent):
            procs = [p for p in [root, *tree.values()] if _alive(p)]
            for p in procs:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=10)
            return
        time.sleep(poll)


def main(argv: list[str]) -> int:
    try:
        launcher, manager = int(argv[0]), int(argv[1])
    except (IndexError, ValueError):
        print("usage: python -m nas.nni.guard LAUNCHER_PID MANAGER_PID", file=sys.stderr)
        return 2
    watch(launcher, manager)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
