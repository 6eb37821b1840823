"""The NNI engine's assessor: Medianstop (optional) plus the identity of ending trials.

NNI 3.0 calls the tuner's `trial_end(parameter_id, success)` with the parameter id its
manager linked to the trial by submission order, which is not always the parameters the
trial read (see `nas.nni.tuner`). The assessor, on the other hand, is called with NNI's
own trial job id and the trial's intermediate reports; the first one a trial sends, right
after reading its parameters, is the job's (kind, proposal id, session) alone, and the
per-epoch ones repeat it. So it knows which job an ending trial really ran, and
hands that to the tuner: NNI's dispatcher calls `assessor.trial_end` and then
`tuner.trial_end` one after the other in the same thread (`handle_trial_end`), so a
thread-local slot is the hand-off. The engine installs this assessor on every NNI run;
with `medianstop=False` it never stops a trial.

ASHA (`--early-stop asha`, nas.search.asha): a trial's rung reports carry `"rung"`; the
assessor asks the tuner's search loop (registered with `set_rung_decider`, same process)
and answers Bad for a trial to stop, keeping (rung, accuracy) for `trial_end`, where the
tuner records the trial as `stopped`. Rung reports are not points of Medianstop's curve.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor
from nni.assessor import AssessResult

_ended = threading.local()


_decider: list = [None]  # ASHA: fn(identity, rung, accuracy) -> continue? (the tuner's)


def take_ended_identity() -> Optional[tuple[Any, Any, Any]]:
    """(kind, proposal id, session) of the trial whose end NNI is reporting in this thread, once."""
    ident = getattr(_ended, "ident", None)
    _ended.ident = None
    return ident


def take_ended_stop() -> Optional[tuple[int, float]]:
    """(rung, accuracy) when the ending trial was stopped by ASHA, once."""
    stop = getattr(_ended, "stop", None)
    _ended.stop = None
    return stop


def set_rung_decider(fn: Any) -> None:
    """Where ASHA's decisions come from (`nas.nni.tuner` registers its loop's)."""
    _decider[0] = fn


class TrackingAssessor(MedianstopAssessor):
    """Medianstop when asked; always records which job each NNI trial reports about."""

    def __init__(self, medianstop: bool = False, optimize_mode: str = "maximize", start_step: int = 0) -> None:
        super().__init__(optimize_mode=optimize_mode, start_step=start_step)
        self.medianstop = bool(medianstop)
        self.jobs: dict[str, tuple[Any, Any, Any]] = {}  # NNI trial job id -> identity
        self.stopped: dict[str, tuple[int, float]] = {}  # NNI trial job id -> ASHA's (rung, accuracy)

    def assess_trial(self, trial_job_id: str, trial_history: list) -> AssessResult:
        first = trial_history[0] if trial_history else None
        if isinstance(first, dict) and "proposal_id" in first:
            self.jobs[trial_job_id] = (first.get("kind"), first.get("proposal_id"), first.get("session"))
        last = trial_history[-1] if trial_history else None
        ident = self.jobs.get(trial_job_id)
        if isinstance(last, dict) and "rung" in last and _decider[0] is not None and ident is not None:
            if not _decider[0](ident, int(last["rung"]), float(last["default"])):
                self.stopped[trial_job_id] = (int(last["rung"]), float(last["default"]))
                return AssessResult.Bad
        # the trial's first report is its identity alone (no "default"), a rung report (ASHA)
        # is not an epoch: neither is a point of the curve
        curve = [h for h in trial_history if not (isinstance(h, dict) and ("default" not in h or "rung" in h))]
        if not self.medianstop or not curve:
            return AssessResult.Good
        return super().assess_trial(trial_job_id, curve)

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        _ended.ident = self.jobs.pop(trial_job_id, None)
        _ended.stop = self.stopped.pop(trial_job_id, None)
        if self.medianstop:
            super().trial_end(trial_job_id, success)
