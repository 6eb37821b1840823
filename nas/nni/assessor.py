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
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor
from nni.assessor import AssessResult

_ended = threading.local()


def take_ended_identity() -> Optional[tuple[Any, Any, Any]]:
    """(kind, proposal id, session) of the trial whose end NNI is reporting in this thread, once."""
    ident = getattr(_ended, "ident", None)
    _ended.ident = None
    return ident


class TrackingAssessor(MedianstopAssessor):
    """Medianstop when asked; always records which job each NNI trial reports about."""

    def __init__(self, medianstop: bool = False, optimize_mode: str = "maximize", start_step: int = 0) -> None:
        super().__init__(optimize_mode=optimize_mode, start_step=start_step)
        self.medianstop = bool(medianstop)
        self.jobs: dict[str, tuple[Any, Any, Any]] = {}  # NNI trial job id -> identity

    def assess_trial(self, trial_job_id: str, trial_history: list) -> AssessResult:
        first = trial_history[0] if trial_history else None
        if isinstance(first, dict) and "proposal_id" in first:
            self.jobs[trial_job_id] = (first.get("kind"), first.get("proposal_id"), first.get("session"))
        # the trial's first report is its identity alone (no "default"): not a point of the curve
        curve = [h for h in trial_history if not (isinstance(h, dict) and "default" not in h)]
        if not self.medianstop or not curve:
            return AssessResult.Good
        return super().assess_trial(trial_job_id, curve)

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        _ended.ident = self.jobs.pop(trial_job_id, None)
        if self.medianstop:
            super().trial_end(trial_job_id, success)
