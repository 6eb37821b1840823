"""A custom NNI tuner that drives the project's search loop (the NNI engine's brain).

NNI's dispatcher process (started by NNI's manager on the machine that runs
`nas.search`) builds `ControllerTuner(session=PATH)`. The session file, written by
`nas.nni.engine`, is plain JSON (validated; nothing in it is executed): the job
source's `handover()` (a `SearchLoop`: space YAML, controller recipe, settings; or a
`BatchSource`), the evaluation context and the run folder. The tuner opens the run's
SQLite store under `--out`, rebuilds the source on it (`nas.search.handover.source_from_handover`;
the controller state comes from the store's checkpoint) and drives it exactly as the
local engine does, so *what* is searched (ask, cost window, cache, reward, tell,
records, checkpoints) is the same code:

    generate_parameters  -> pending jobs first (resume), then source.next_job()
                            (controller.ask() behind it)
    receive_trial_result -> source.complete(job, result)   (tell + record + checkpoint)
    trial_end(False)     -> source.complete(job, failed)    (tell_failure; the job is
                            the one the trial named, via nas.nni.assessor)

Misattribution guard: NNI may pair one trial's parameters with another trial's
result. A result is matched to its job by the (kind, proposal id) the trial reports
about itself, never by NNI's parameter id, and refused when its choices/key differ
from that job's. `import_data` (NNI's possibly mis-paired history) is ignored: the
store and its controller checkpoint are the record of truth.
Calls arrive on several threads: one lock serialises them.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import nni
from nni.tuner import Tuner

from nas.evaluate.result import TrialResult, stopped_result
from nas.nni.assessor import set_rung_decider, take_ended_identity, take_ended_stop
from nas.nni.engine import read_session
from nas.nni.trial import RESULT_FIELDS
from nas.search.handover import source_from_handover
from nas.store.store import Store

_log = logging.getLogger("nas.nni.tuner")


class ControllerTuner(Tuner):
    """Adapter: NNI tuner calls -> the engine-neutral job source -> controller + store."""

    def __init__(self, session: str) -> None:
        super().__init__()
        self.session = read_session(session)  # validated now: a bad file fails the start, loudly
        self.ctx = self.session["ctx"]
        self.token = self.session["token"]
        self.lock = threading.RLock()
        self._source: Any = None
        self.store: Any = None
        self.queue: list = []
        self.inflight: dict[tuple[str, int], Any] = {}  # (kind, proposal id) -> job handed to NNI
        self.started: dict[tuple[str, int], float] = {}
        set_rung_decider(self.rung)  # ASHA's decisions, asked by nas.nni.assessor

    def rung(self, ident: Any, rung: int, accuracy: float) -> bool:
        """ASHA (nas.search.asha): whether the trial holding job `ident` goes on after `rung`."""
        with self.lock:
            job = self.inflight.get((ident[0], ident[1])) if ident[2] == self.token else None
            return True if job is None else bool(self.source.rung(job, rung, accuracy))

    @property
    def source(self) -> Any:
        """The job source, rebuilt on first use rather than in `__init__`: NNI's manager
        gives the dispatcher 10 s to connect, and building a controller (torch for RL)
        on a busy machine can take longer."""
        with self.lock:
            if self._source is None:
                self.store = Store.open(self.session["out_dir"])
                self._source = source_from_handover(self.session["source"], self.store)
                self.queue = list(self._source.initial_jobs())   # pending (re-queued) jobs first
            return self._source

    # -- NNI calls ------------------------------------------------------------------------
    def update_search_space(self, search_space: Any) -> None:
        """NNI's search space is a placeholder: our controller owns the real one."""

    def import_data(self, data: Any) -> None:
        """Ignored on purpose: NNI's history may pair parameters and results wrongly."""
        _log.info("import_data ignored (%d rows): the store is the record of truth", len(data or []))

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict:
        with self.lock:
            source = self.source
            job = self.queue.pop(0) if self.queue else source.next_job()
            if job is None:
                raise nni.NoMoreTrialError("no job to start now")
            ident = (job.kind, int(job.proposal_id))
            self.inflight[ident] = job
            self.started[ident] = time.time()
            return {"job": job.to_dict(), "ctx": self.ctx, "session": self.token}

    def receive_trial_result(self, parameter_id: int, parameters: Any, value: Any, **kwargs: Any) -> None:
        with self.lock:
            if not isinstance(value, dict) or "proposal_id" not in value:
                _log.error("result without our fields (parameter %s) ignored: %r", parameter_id, value)
                return
            if value.get("session") != self.token:
                _log.error("result from another session ignored: %r", value.get("session"))
                return
            ident = (value.get("kind"), value.get("proposal_id"))
            job = self.inflight.get(ident)
            if job is None:
                _log.error("result for %s, which is not in flight (duplicate or stale): ignored", ident)
                return
            if list(value.get("choices") or []) != list(job.choices or []) or value.get("key") != job.key:
                _log.error("trial reported another architecture than job %s: recorded as failed", ident)
                self._complete(job, TrialResult(status="failed", message=f"trial reported another "
                                                f"architecture than job {ident}"), value)
                return
            fields = {k: value.get(k) for k in RESULT_FIELDS if value.get(k) is not None}
            try:
                result = TrialResult.from_dict(fields)
            except ValueError as exc:  # unknown status
                result = TrialResult(status="failed", message=str(exc))
            self._complete(job, result, value)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        """A trial that ended without a result (assessor stop, cancel, kill).

        NNI's `parameter_id` here may name another trial's job (it pairs by submission
        order), so it is not used. The job is the one the trial itself named in its first
        intermediate report, sent right after it read its parameters (handed over by
        `nas.nni.assessor`). A trial that named none never held a job. A job already
        completed from its own report is never completed twice.
        """
        reported = take_ended_identity()
        stop = take_ended_stop()
        if success or reported is None:
            return
        with self.lock:
            if reported[2] != self.token:
                _log.error("end of a trial from another session ignored: %r", reported)
                return
            ident = (reported[0], reported[1])
            job = self.inflight.get(ident)
            if job is not None and stop is not None and job.rungs and 0 <= stop[0] < len(job.rungs):
                rung, acc = stop  # ASHA stopped it at a rung the job carries
                self._complete(job, stopped_result(rung, job.rungs[rung], acc), {})
            elif job is not None:
                self._complete(job, TrialResult(status="failed", message="trial ended without a result "
                                                "(early-stopped by the assessor, cancelled or killed)"), {})

    def _complete(self, job: Any, result: TrialResult, value: dict) -> None:
        ident = (job.kind, int(job.proposal_id))
        self.inflight.pop(ident, None)
        trial_id = value.get("trial_id")
        worker = f"nni:{trial_id}@{value.get('host')}" if trial_id else "nni"
        wall = float(value.get("wall_time") or 0.0)
        finished = time.time()
        handed_out = self.started.pop(ident, None)
        self.source.complete(job, result, worker=worker,
                             started_at=(finished - wall) if wall else handed_out,
                             finished_at=finished, extra={"nni_trial_id": trial_id, "host": value.get("host")})

    def _on_exit(self) -> None:
        if self.store is not None:
            self.store.close()
