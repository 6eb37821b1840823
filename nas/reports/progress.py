"""The progress line of a long run on stderr: done/total, failures, best reward, ETA."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from nas.evaluate.result import FAILED_STATUSES


class Progress:
    """`trials 7/24 | failed 1 | best reward 0.8123 | ETA 4m10s` on stderr.

    On a terminal the line is rewritten in place; otherwise one line per finished trial,
    or for runs of more than 100 (a one-shot search's thousands of scores) one per
    hundredth of the total, besides every failure and the last. Listens to trial records:
    only trained ones of its `kind` move it (`search` and `oneshot`, ranked by reward;
    `grid`, ranked by accuracy, as the grid search chooses).
    """

    LINES = 100  # at most about this many lines (plus failures) when not on a terminal

    def __init__(self, total: int, done: int = 0, failed: int = 0, best: float | None = None,
                 stream: TextIO | None = None, enabled: bool = True, kind: str = "search") -> None:
        self.total, self.done, self.failed, self.best = total, done, failed, best
        self.kind = kind
        self.metric = "reward" if kind in ("search", "oneshot") else "accuracy"
        self.every = max(1, -(-total // self.LINES))
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.time()
        self.start_done = done
        self.dirty = False

    def __call__(self, rec: dict) -> None:
        if rec.get("kind") != self.kind or rec.get("source") != "trained":
            return
        self.done += 1
        if rec.get("status") in FAILED_STATUSES:  # stopped (ASHA) is not a failure
            self.failed += 1
        value = rec.get(self.metric)
        if value is not None and rec.get("status") == "ok":
            self.best = value if self.best is None else max(self.best, value)
        self.show(rec)

    def line(self) -> str:
        rate_n = self.done - self.start_done
        eta = "?"
        if rate_n > 0:
            left = (time.time() - self.t0) / rate_n * max(0, self.total - self.done)
            eta = f"{int(left // 60)}m{int(left % 60):02d}s"
        best = "-" if self.best is None else f"{self.best:.4f}"
        what = {"search": "trials", "oneshot": "scored", "final": "stage-2 runs"}.get(self.kind, f"{self.kind} candidates")
        return f"{what} {self.done}/{self.total} | failed {self.failed} | best {self.metric} {best} | ETA {eta}"

    def show(self, rec: dict | None = None) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + self.line().ljust(78))
            self.dirty = True
        else:
            failed = rec is not None and rec.get("status") in FAILED_STATUSES
            if not failed and self.done < self.total and (self.done - self.start_done) % self.every:
                return
            extra = ""
            if rec is not None:
                acc = rec.get("accuracy")
                extra = (f" | trial {rec.get('id')}: {rec.get('status')}"
                         f"{'' if acc is None else f' acc {acc:.4f}'} {rec.get('macs', 0) / 1e6:.0f}M")
            self.stream.write(self.line() + extra + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.dirty:
            self.stream.write("\n")
            self.stream.flush()
