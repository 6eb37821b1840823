"""The search loop: ask, filter, hand out jobs, tell, record, checkpoint.

`SearchLoop` is the `JobSource` of the search (`nas.engines.protocol`): it asks the
controller, filters (cost window, cache, a twin in flight), hands out jobs, tells results
and records them. It alone writes the search's records and counts the controller's tells;
the policies for cheaper trials (`nas.search.asha`, `nas.search.prefilter`) only return
decisions. Every record goes through `RecordWriter.write` (`nas.search.records`), built by
`trial_record`, so search, reference, stage-2 and grid records agree.

Resume protocol (exact, see nas/store/store.py): the controller is checkpointed in the same
transaction as each pending job (after ask) and each finished trial (after tell).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Sequence

from nas.engines.protocol import Job
from nas.errors import UserError
from nas.evaluate.result import FAILED_STATUSES, TrialResult
from nas.store.store import Checkpoint, Store

from .asha import Asha, epochs_of
from .prefilter import Prefilter, Verdict
from .recipe import ControllerRecipe
from .records import RecordWriter, best_trial, job_row, new_job, result_of, trial_record
from .settings import LoopSettings

CHECKPOINT_NAME = "controller"
CAP_REASON = "stopped after"  # how the proposal-cap stop reason starts
COMPUTE_REASON = "compute budget reached:"  # how the max_epochs stop reason starts


class SearchLoop(RecordWriter):
    """Ask, filter (cost window, cache), hand out jobs, tell, record, checkpoint.

    `space` needs `.decode(choices, num_classes=, resolution=)`; `controller` is a
    `controllers.base.Controller` or a `ControllerRecipe` (needed to hand the loop to
    another process, as the NNI engine does). `reference` (an ArchSpec or None) is
    trained once under the same budget, recorded as kind 'reference' and never told.
    `listeners` get every new trial record (dict, as stored): progress, TensorBoard.
    The policies are built from `settings` (they must be rebuilt from plain data in
    NNI's dispatcher too): ASHA answers `rung`, the prefilter judges each proposal about
    to be trained; `--max-epochs` is `StopRule.max_epochs`.
    """

    def __init__(self, store: Store, space: Any, controller: Any, settings: LoopSettings,
                 reference: Any = None, listeners: Sequence[Callable[[dict], None]] = ()) -> None:
        self.recipe = controller if isinstance(controller, ControllerRecipe) else None
        self.controller = controller.build(space) if self.recipe else controller
        self.store, self.space, self.s = store, space, settings
        self.kind = settings.kind  # what its proposals are recorded as ('search', 'oneshot')
        self.objective = settings.objective
        self.reference = reference
        self.listeners = list(listeners)
        self.lock = threading.RLock()
        self.in_flight: dict[str, Job] = {}
        self.stop_reason = ""
        self._proposals: dict[int, Any] = {}
        # proposals of an architecture being trained right now: told its result when it ends
        self._followers: dict[str, list[Job]] = {}
        self._tells = 0
        self._asks = 0
        self._restored = False           # the checkpoint has been loaded once (refresh: only when it moved)
        self._history: dict[int, Any] = {}  # proposal id -> key (or choices) of the replayed history
        self._history_last = 0           # the last trial id read into it
        self._history_keys: Optional[bool] = None  # whether the store's keys are the controller's
        self.asha = Asha(settings.asha, store.rungs(settings.kind)) if settings.asha is not None else None
        pf = settings.prefilter
        self.prefilter = Prefilter(pf) if pf is not None and pf.ratio > 1 else None
        stop = settings.stop
        # --max-epochs: the epochs trained so far, read once, then kept by `complete`
        self.epochs_trained = sum(epochs_of(r, stop.epochs) for r in store.trials(settings.kind, "trained")) \
            if stop.max_epochs else 0.0
        self._restore()

    # -- handing over, restoring -----------------------------------------------------------
    def handover(self) -> dict:
        if self.recipe is None:
            raise ValueError("this SearchLoop was given a controller object; give it a ControllerRecipe "
                             "to run it where the loop is rebuilt in another process (NNI)")
        return {"type": "search", "space": self.space.to_yaml(), "controller": self.recipe.to_dict(),
                "settings": self.s.to_dict(), "reference": self.reference and self.reference.to_dict()}

    def _restore(self) -> None:
        """Load the controller checkpoint (and the stop reason).

        A controller that `replays_history` is checkpointed without its history (every
        proposal's key, which grows with the run: controllers/base.py, "History"), so the
        checkpoint written with every trial stays the same size; its history is rebuilt
        here from the proposals the store holds (`Store.proposal_history`), exactly those
        the checkpoint had made. A refresh loads the checkpoint only when it has moved
        (another process drove the loop) and reads the store from the last trial read on.
        """
        counts = self.store.checkpoint_counts(CHECKPOINT_NAME)
        if counts is not None and not (self._restored and counts == (self._tells, self._asks)):
            state, self._tells, self._asks = self.store.checkpoint(CHECKPOINT_NAME)
            self.controller.load_state_dict(state)
            if getattr(self.controller, "replays_history", False):
                self._replay_history()
        self._restored = True
        self.stop_reason = self.store.get_meta("stop_reason", "") or ""
        stop = self.s.stop
        if self.stop_reason.startswith(CAP_REASON) and self._asks < stop.proposal_cap:
            self._stop("")  # resumed with more --trials: the cap on proposals has risen
        if self.stop_reason.startswith(COMPUTE_REASON) and not (
                stop.max_epochs and self.epochs_trained >= stop.max_epochs):
            self._stop("")  # resumed with a higher (or no) --max-epochs

    def refresh(self) -> None:
        """Re-read the controller checkpoint and stop reason (another process drove the loop)."""
        with self.lock:
            self._restore()

    def _replay_history(self) -> None:
        """Give the controller the history its checkpoint leaves out. Keys come from the
        store's key column when the controller's key function is the space's (checked on
        one proposal), else from the choices (decoding every proposal is the slow way)."""
        rows, self._history_last = self.store.proposal_history(self.kind, self._history_last)
        if self._history_keys is None and rows:
            pid, choices, key = rows[0]
            self._history_keys = (getattr(self.controller, "key_fn", None) == self.space.key
                                  and choices is not None and self.space.key(choices) == key)
        for pid, choices, key in rows:
            self._history[pid] = key if self._history_keys else tuple(choices or ())
        try:
            if self._history_keys:
                self.controller.replay_history((), keys=list(self._history.values()))
            else:
                self.controller.replay_history(list(self._history.values()))
        except ValueError as exc:
            raise UserError(f"{self.store.path.parent}: the controller checkpoint does not match the proposals "
                            f"in the store ({exc}): the store was changed outside effnas") from None

    def _ckpt(self) -> Checkpoint:
        """The controller's state after an ask or a tell; without its history where the
        controller can replay it (see `_restore`): a bounded size, however long the run."""
        ctl = self.controller
        state = ctl.state_dict(history=False) if getattr(ctl, "replays_history", False) else ctl.state_dict()
        return Checkpoint(CHECKPOINT_NAME, state, self._tells, self._asks)

    # -- counts ----------------------------------------------------------------------------
    @property
    def trained(self) -> int:
        return self.store.count(self.kind, ("trained",))

    def _in_flight(self) -> int:
        return sum(1 for j in self.in_flight.values() if j.kind == self.kind)

    @property
    def done(self) -> bool:
        with self.lock:
            if self.in_flight or self._reference_missing():
                return False
            return bool(self.stop_reason) or self.trained >= self.s.stop.trials

    def max_jobs(self) -> int:
        return max(1, self.s.stop.trials - self.trained + len(self.store.pending()) + 1)

    def _compute_full(self) -> bool:
        """--max-epochs: no new trial once the epochs trained plus those in flight (each
        counted in full) reach the limit; the run stops when nothing is in flight."""
        stop = self.s.stop
        if not stop.max_epochs or self.epochs_trained + self._in_flight() * stop.epochs < stop.max_epochs:
            return False
        if not self._in_flight():
            self._stop(f"{COMPUTE_REASON} {self.epochs_trained:g} epochs trained (--max-epochs {stop.max_epochs:g})")
        return True

    def rung(self, job: Job, rung: int, accuracy: float) -> bool:
        """ASHA: whether a search trial reporting `accuracy` at `rung` goes on (engines ask).
        The accuracy is stored before the policy counts it, so a resume keeps it."""
        with self.lock:
            if self.asha is None or job.kind != self.kind or not self.asha.is_decision(rung, accuracy):
                return True
            self.store.add_rung(job.kind, job.proposal_id, int(rung), float(accuracy))
            return self.asha.decide(job.proposal_id, rung, accuracy)

    def _reference_missing(self) -> bool:
        return self.reference is not None and self.store.trial("reference", 0) is None

    # -- jobs --------------------------------------------------------------------------
    def initial_jobs(self) -> list[Job]:
        """Jobs pending in the store (running when the run stopped), then the reference."""
        with self.lock:
            jobs, followers, held, chosen = [], [], [], []
            for d in self.store.pending():
                if d["kind"] not in (self.kind, "reference"):
                    continue  # e.g. grid jobs: their own BatchSource re-queues them
                mark = d.get("prefilter") or {}
                if self.prefilter is not None and mark.get("held"):
                    held.append(d)  # collected for a prefilter batch
                    continue
                if mark.get("chosen"):
                    chosen.append(d)
                job = Job.from_dict({**d, "attempt": d.get("attempt", 1)})
                (followers if d.get("follows") else jobs).append(job)
            if held:
                for verdict in self.prefilter.restore(held, chosen):
                    self._record_losers(verdict)
                if self.prefilter.full:  # killed with the batch full: judge it now
                    jobs.append(self._judge())
            for f in followers:  # waiting for a twin: told from its record, or wait again
                cached = self.store.find_key(f.key, self.kind)
                if cached is not None:
                    self._record_cached(f, cached)
                elif any(j.key == f.key for j in jobs):
                    self._followers.setdefault(f.key, []).append(f)
                else:
                    jobs.append(f)
            if self._reference_missing() and not any(j.kind == "reference" for j in jobs):
                job = new_job("reference", 0, self.reference, self.s.target_resolution, objective=self.objective)
                self.store.add_pending(job.kind, job.proposal_id, job_row(job))
                jobs.insert(0, job)
            for j in jobs:
                self.in_flight[j.name] = j
            return jobs

    def next_job(self) -> Optional[Job]:
        """The next architecture to train, or None (nothing to start now)."""
        from controllers import SpaceExhausted
        with self.lock:
            while not self.stop_reason and self.trained + self._in_flight() < self.s.stop.trials:
                if self._compute_full():
                    return None
                if self._asks >= self.s.stop.proposal_cap:
                    self._stop(f"{CAP_REASON} {self._asks} proposals: the controller keeps proposing "
                               "architectures outside the cost window or already evaluated")
                    return self._judge_rest()
                try:
                    proposal = self.controller.ask()
                except SpaceExhausted as exc:
                    self._stop(f"search space exhausted ({exc})")
                    return self._judge_rest()
                self._asks += 1
                job = self._make_job(proposal)
                if job is None:
                    continue
                self._proposals[proposal.id] = proposal
                if self.asha is not None:
                    job.rungs = self.asha.decision_fractions
                if self.prefilter is not None:
                    mark = self.prefilter.hold(job)
                    self.store.add_pending(job.kind, job.proposal_id, {**job_row(job), "prefilter": mark},
                                           self._ckpt())
                    if not self.prefilter.full:
                        continue  # held until its batch is full
                    job = self._judge()
                else:
                    self.store.add_pending(job.kind, job.proposal_id, job_row(job), self._ckpt())
                self.in_flight[job.name] = job
                return job
            return None

    def _judge(self) -> Job:
        """The prefilter's verdict on its batch: the winner is marked chosen (pending, to
        train), then each loser is told and recorded. Returns the winner."""
        verdict = self.prefilter.decide()
        winner = verdict.winner
        self.store.add_pending(winner.kind, winner.proposal_id, {**job_row(winner), "prefilter": verdict.mark()})
        self._record_losers(verdict)
        return winner

    def _judge_rest(self) -> Optional[Job]:
        """A stop with a prefilter batch half full: the best of it is still trained."""
        if self.prefilter is None or not self.prefilter.held:
            return None
        job = self._judge()
        self.in_flight[job.name] = job
        return job

    def _record_losers(self, verdict: Verdict) -> None:
        for loser in verdict.losers:
            job = loser.job
            note = self.prefilter.note(loser, verdict)
            self._record_untrained(job, TrialResult(status="skipped", message=note), self._cost_only(job),
                                   "prefilter", extra={"prefilter": loser.extra()})

    def _cost_only(self, job: Job) -> float:
        return self.objective.cost_only_reward(job.macs, job.latency_ms, self.s.window.chance)

    def _make_job(self, proposal: Any) -> Optional[Job]:
        """A Job to train, or None after telling and recording a cost-only/cached result (or
        parking the proposal until the same architecture, in flight now, has finished)."""
        res = self.s.target_resolution
        spec = self.space.decode(list(proposal.choices), num_classes=1000, resolution=res)
        job = new_job(self.kind, proposal.id, spec, res, list(proposal.choices), self.objective)
        window = self.s.window
        ratios = self.objective.ratios(job.macs, job.latency_ms)  # the window applies to each target
        outside = [f"{name} {m:.2f}x target" for name, m in ratios.items() if not window.low <= m <= window.high]
        if outside:
            note = (f"{', '.join(outside)}, outside the cost window [{window.low:g}, {window.high:g}]: "
                    "reward from cost alone, not trained")
            self._record_untrained(job, TrialResult(status="skipped", message=note), self._cost_only(job),
                                   "cost-only", proposal=proposal)
            return None
        cached = self.store.find_key(job.key, self.kind)
        if cached is not None:
            self._record_cached(job, cached, proposal)
            return None
        twin = next((j for j in self.in_flight.values() if j.kind == self.kind and j.key == job.key), None)
        if twin is not None:  # being trained now: never train it twice, wait for that result
            self._proposals[proposal.id] = proposal
            self._followers.setdefault(job.key, []).append(job)
            self.store.add_pending(job.kind, job.proposal_id, {**job_row(job), "follows": twin.name}, self._ckpt())
            return None
        return job

    # -- telling and recording -------------------------------------------------------------
    def _proposal(self, job: Job) -> Any:
        proposal = self._proposals.pop(job.proposal_id, None)
        if proposal is None:  # asked before a restart
            from controllers.base import Proposal
            proposal = Proposal(job.proposal_id, tuple(job.choices or ()))
        return proposal

    def _tell(self, proposal: Any, status: str, reward: float | None) -> Checkpoint:
        """The one place the controller is told (and its tells counted)."""
        if status in FAILED_STATUSES or reward is None:
            self.controller.tell_failure(proposal, status)
        else:
            self.controller.tell(proposal, reward)
        self._tells += 1
        return self._ckpt()

    def _record_untrained(self, job: Job, result: TrialResult, reward: float | None, source: str,
                          extra: dict | None = None, proposal: Any = None) -> dict:
        """Tell and record a proposal that is not trained: outside the cost window
        ('cost-only'), judged worse by the prefilter ('prefilter'), or an architecture
        with a record already ('cache')."""
        ckpt = self._tell(proposal if proposal is not None else self._proposal(job), result.status, reward)
        rec = trial_record(job, result, self.objective, told=True, source=source, reward=reward, extra=extra)
        return self.write(rec, ckpt)

    def _record_cached(self, job: Job, cached: dict, proposal: Any = None) -> dict:
        """Tell and record a proposal whose architecture has a trained record already."""
        result = result_of(cached)
        result.message = f"same architecture as trial {cached['id']}: result reused"
        return self._record_untrained(job, result, cached["reward"], "cache", proposal=proposal)

    def complete(self, job: Job, result: TrialResult, worker: str = "", started_at: float | None = None,
                 finished_at: float | None = None, extra: dict | None = None) -> dict:
        """Record a trained job's result (and tell the controller, for 'search' jobs)."""
        with self.lock:
            search = job.kind == self.kind
            rec = trial_record(job, result, self.objective, told=search, worker=worker, started_at=started_at,
                               finished_at=finished_at, extra=extra)
            ckpt = self._tell(self._proposal(job), rec["status"], rec["reward"]) if search else None
            self.in_flight.pop(job.name, None)
            rec = self.write(rec, ckpt)
            if search and self.s.stop.max_epochs:
                self.epochs_trained += epochs_of(rec, self.s.stop.epochs)
            for f in self._followers.pop(job.key, []) if search else []:
                self._record_cached(f, rec)
            return rec

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.store.set_meta("stop_reason", reason)

    # -- results ------------------------------------------------------------------------
    def best(self) -> Optional[dict]:
        return best_trial(self.store.trials(self.kind, "trained"))
