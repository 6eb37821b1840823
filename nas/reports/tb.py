"""TensorBoard event files for a search, under `--out/tb`.

Per trial (step = trial id): reward, accuracy, MACs, params, wall time; the best reward
and accuracy so far; at the end the run's hyper-parameters with the best results
(TensorBoard's HParams tab). Uses torch's SummaryWriter (tensorboard is a dependency).
A failure to write events never stops the search: the writer disables itself.
Its cost per record does not grow with the run (events are appended; the best so far
is kept, not recomputed; measured by bench/scale.py, BENCHMARKS.md).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


class TBLogger:
    """A SearchLoop listener; call `close(hparams, metrics)` at the end."""

    def __init__(self, out_dir: str | Path) -> None:
        self.writer = None
        self.best_reward: float | None = None
        self.best_acc: float | None = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))
        except Exception as exc:  # noqa: BLE001 - reports are optional
            print(f"warning: TensorBoard disabled ({exc})", file=sys.stderr)

    def __call__(self, rec: dict) -> None:
        if self.writer is None or rec.get("source") != "trained":
            return
        try:
            step = int(rec.get("id") or 0)
            prefix = "reference" if rec.get("kind") == "reference" else "trial"
            w = self.writer
            if rec.get("reward") is not None:
                w.add_scalar(f"{prefix}/reward", rec["reward"], step)
            if rec.get("accuracy") is not None:
                w.add_scalar(f"{prefix}/accuracy", rec["accuracy"], step)
            w.add_scalar(f"{prefix}/macs_millions", (rec.get("macs") or 0) / 1e6, step)
            w.add_scalar(f"{prefix}/params_millions", (rec.get("params") or 0) / 1e6, step)
            w.add_scalar(f"{prefix}/wall_time_s", rec.get("wall_time") or 0.0, step)
            w.add_scalar(f"{prefix}/failed", 0.0 if rec.get("status") == "ok" else 1.0, step)
            if prefix == "trial" and rec.get("status") == "ok" and rec.get("reward") is not None:
                if self.best_reward is None or rec["reward"] > self.best_reward:
                    self.best_reward, self.best_acc = rec["reward"], rec.get("accuracy")
            if self.best_reward is not None:
                w.add_scalar("best/reward", self.best_reward, step)
                if self.best_acc is not None:
                    w.add_scalar("best/accuracy", self.best_acc, step)
            w.flush()
        except Exception as exc:  # noqa: BLE001
            print(f"warning: TensorBoard disabled ({exc})", file=sys.stderr)
            self.writer = None

    def close(self, hparams: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> None:
        if self.writer is None:
            return
        try:
            if hparams is not None:
                clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                         for k, v in hparams.items() if v is not None}
                self.writer.add_hparams(clean, {k: float(v) for k, v in (metrics or {}).items() if v is not None},
                                        run_name="hparams")
            self.writer.close()
        except Exception as exc:  # noqa: BLE001
            print(f"warning: TensorBoard hparams not written ({exc})", file=sys.stderr)
        self.writer = None
