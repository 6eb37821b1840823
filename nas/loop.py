"""The job sources engines drive: the search loop, and a fixed batch of specs.

`SearchLoop` asks the controller, filters (cost window, cache, a twin in flight),
hands out jobs, tells results and records them; `BatchSource` trains a fixed list
once each (the scaling grid). Both write every record through one path (`_Records`),
built by `nas.records.trial_record`, so search, reference and grid records agree.

Resume protocol (exact, see nas/store.py): the controller is checkpointed in the same
transaction as each pending job (after ask) and each finished trial (after tell).

Handing a source to another process (the NNI tuner runs in NNI's dispatcher): a source
describes itself as plain data (`handover()`: the space as YAML, the controller as a
`ControllerRecipe`, the settings), and `source_from_handover` builds an equal one
there on the same store; the controller's state comes from the store's checkpoint.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

from nas.engine import Job
from nas.errors import UserError
from nas.records import Objective, best_trial, new_job, result_of, trial_record
from nas.result import FAILED_STATUSES, TrialResult
from nas.store import Checkpoint, Store

CHECKPOINT_NAME = "controller"
CAP_REASON = "stopped after"  # how the max_proposals stop reason starts
COMPUTE_REASON = "compute budget reached:"  # how the max_epochs stop reason starts


@dataclass
class LoopSettings:
    """The parts of the configuration the loop needs (see nas/config.py for the rest).

    trials: trained trials to run (source 'trained', any status); cost-only and cached
    proposals are recorded and told but do not count. max_proposals caps all asks
    (a controller stuck proposing untrainable or known architectures ends the run).
    """

    target: Optional[int]           # multiply-add target (None: latency only)
    alpha: float = -0.07
    beta: float = -0.07
    trials: int = 24
    cost_window: tuple[float, float] = (0.5, 1.0)
    max_proposals: int = 0          # 0: 50 x trials + 100
    target_resolution: int = 224
    chance: float = 0.1             # accuracy of a model that learned nothing (1/classes)
    latency_ms: Optional[float] = None  # latency target; where it is predicted (nas.latency_cost):
    latency_device: str = "cpu"
    latency_batch: int = 1
    latency_threads: int = 1
    latency_table: Optional[str] = None
    # cheaper trials (README "Early stopping and the prefilter"): nas.asha, nas.prefilter
    early_stop: str = "off"           # 'asha': stop trials at rungs (nas.asha)
    eta: int = 3
    min_fraction: float = 1 / 9
    prefilter: str = ""               # a nas.zero_cost score: train the best 1 in prefilter_ratio
    prefilter_ratio: int = 1
    prefilter_budget: Optional[dict] = None  # the proxy budget: the scoring batch's dataset
    max_epochs: float = 0.0           # start no trial once this many epochs are trained (0: no limit)
    epochs: float = 0.0               # one trial's budget in epochs (what --max-epochs counts)

    def __post_init__(self) -> None:
        self.cost_window = (float(self.cost_window[0]), float(self.cost_window[1]))
        if not self.max_proposals:
            self.max_proposals = 50 * self.trials + 100

    @property
    def objective(self) -> Objective:
        return Objective(self.target, self.alpha, self.beta, self.latency_ms, self.latency_device,
                         self.latency_batch, self.latency_threads, self.latency_table)


def cost_only_reward(macs: int, target: int, chance: float) -> float:
    """The reward told for an architecture outside the cost window (no training).

    `chance × min(m, 1/m)` with m = MACs / target: never above chance accuracy (so below
    any model that learned something), and rising toward the target from both sides, so
    a learning controller is pulled back into the window rather than just pushed away.
    """
    return Objective(int(target)).cost_only_reward(max(macs, 1), None, chance)


@dataclass
class ControllerRecipe:
    """How to build a controller, as plain data (a controller object cannot travel)."""

    name: str
    seed: int = 0
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def for_run(cls, name: str, seed: int, trials: int, target: int | None = None,
                cost_window: Sequence[float] | None = None, target_resolution: int = 224) -> "ControllerRecipe":
        """The search's sizing: evolution's population ~ trials/3, tournament ~ population/3;
        the predictor's random start ~ trials/4 (5 to 20), and the cost window in
        multiply-adds (when `target` and `cost_window` are given) so that it can skip
        candidates the search would not train."""
        kwargs: dict[str, Any] = {}
        if name == "evolution":
            pop = max(4, min(50, trials // 3))
            kwargs = dict(population_size=pop, sample_size=max(2, min(10, pop // 3)))
        elif name == "predictor":
            kwargs = dict(initial_random=max(5, min(20, trials // 4)))
            if target is not None and cost_window is not None:
                kwargs.update(cost_window_macs=[float(cost_window[0]) * target, float(cost_window[1]) * target],
                              target_resolution=int(target_resolution))
        return cls(name, int(seed), kwargs)

    def build(self, space: Any) -> Any:
        """The controller over `space`'s decisions; de-duplicating by the space's key where
        the controller supports it (and, for the predictor, costing candidates with the
        analytic multiply-adds at the target resolution). ValueError for an unknown name
        or bad kwargs."""
        import controllers
        kwargs = dict(self.kwargs)
        if self.name in ("evolution", "random", "predictor"):
            kwargs["key_fn"] = space.key
        if self.name == "predictor" and "cost_window_macs" in kwargs:
            from search_space import cost
            res = int(kwargs.pop("target_resolution", 224))
            kwargs["window"] = tuple(kwargs.pop("cost_window_macs"))
            kwargs["cost_fn"] = lambda c: cost.macs(space.decode(list(c), num_classes=1000, resolution=res), res)
        return controllers.make(self.name, space.decisions, seed=self.seed, **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ControllerRecipe":
        return cls(str(data["name"]), int(data.get("seed", 0)), dict(data.get("kwargs") or {}))


class _Records:
    """The one path that writes a record and tells the listeners (a broken listener —
    a report, TensorBoard — must never break the run)."""

    store: Store
    listeners: list

    def _write(self, rec: dict, ckpt: Checkpoint | None = None) -> dict:
        rec["id"] = self.store.add_trial(rec, ckpt)
        for listener in self.listeners:
            try:
                listener(rec)
            except OSError as exc:  # a full disk, a file made read-only: say so, go on (the store has it)
                print(f"warning: a report was not updated ({exc.filename or ''}: {exc.strerror or exc})",
                      file=sys.stderr)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        return rec


class SearchLoop(_Records):
    """Ask, filter (cost window, cache), hand out jobs, tell, record, checkpoint.

    `space` needs `.decode(choices, num_classes=, resolution=)`; `controller` is a
    `controllers.base.Controller` or a `ControllerRecipe` (needed to hand the loop to
    another process, as the NNI engine does). `reference` (an ArchSpec or None) is
    trained once under the same budget, recorded as kind 'reference' and never told.
    `listeners` get every new trial record (dict, as stored): progress, TensorBoard.
    Cheaper trials hook in at three points, their logic kept in their modules: `rung`
    (ASHA's decision, asked by the engines: nas.asha), the proposal about to be trained
    (held for a prefilter batch: nas.prefilter) and `_compute_full` (--max-epochs).
    """

    def __init__(self, store: Store, space: Any, controller: Any, settings: LoopSettings,
                 reference: Any = None, listeners: Sequence[Callable[[dict], None]] = ()) -> None:
        self.recipe = controller if isinstance(controller, ControllerRecipe) else None
        self.controller = controller.build(space) if self.recipe else controller
        self.store, self.space, self.s = store, space, settings
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
        from nas.asha import Asha, epochs_of
        from nas.prefilter import Prefilter
        s = settings
        self.asha = Asha(store, s.eta, s.min_fraction) if s.early_stop == "asha" else None
        self.prefilter = Prefilter(s.prefilter, s.prefilter_ratio, s.prefilter_budget) \
            if s.prefilter and s.prefilter_ratio > 1 else None
        # --max-epochs: the epochs trained so far, read once, then kept by `complete`
        self.epochs_trained = sum(epochs_of(r, s.epochs) for r in store.trials("search", "trained")) \
            if s.max_epochs else 0.0
        self._restore()

    # -- handing over, restoring -----------------------------------------------------------
    def handover(self) -> dict:
        if self.recipe is None:
            raise ValueError("this SearchLoop was given a controller object; give it a ControllerRecipe "
                             "to run it where the loop is rebuilt in another process (NNI)")
        return {"type": "search", "space": self.space.to_yaml(), "controller": self.recipe.to_dict(),
                "settings": asdict(self.s), "reference": self.reference and self.reference.to_dict()}

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
        if self.stop_reason.startswith(CAP_REASON) and self._asks < self.s.max_proposals:
            self._stop("")  # resumed with more --trials: the cap on proposals has risen
        if self.stop_reason.startswith(COMPUTE_REASON) and not (
                self.s.max_epochs and self.epochs_trained >= self.s.max_epochs):
            self._stop("")  # resumed with a higher (or no) --max-epochs

    def refresh(self) -> None:
        """Re-read the controller checkpoint and stop reason (another process drove the loop)."""
        with self.lock:
            self._restore()

    def _replay_history(self) -> None:
        """Give the controller the history its checkpoint leaves out. Keys come from the
        store's key column when the controller's key function is the space's (checked on
        one proposal: ~0.25 ms a decode, 5 s for 20,000), else from the choices."""
        rows, self._history_last = self.store.proposal_history("search", self._history_last)
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
        return self.store.count("search", ("trained",))

    def _in_flight(self, kind: str = "search") -> int:
        return sum(1 for j in self.in_flight.values() if j.kind == kind)

    @property
    def done(self) -> bool:
        with self.lock:
            if self.in_flight or self._reference_missing():
                return False
            return bool(self.stop_reason) or self.trained >= self.s.trials

    def max_jobs(self) -> int:
        return max(1, self.s.trials - self.trained + len(self.store.pending()) + 1)

    def _compute_full(self) -> bool:
        """--max-epochs: no new trial once the epochs trained plus those in flight (each
        counted in full) reach the limit; the run stops when nothing is in flight."""
        if not self.s.max_epochs or self.epochs_trained + self._in_flight() * self.s.epochs < self.s.max_epochs:
            return False
        if not self._in_flight():
            self._stop(f"{COMPUTE_REASON} {self.epochs_trained:g} epochs trained (--max-epochs {self.s.max_epochs:g})")
        return True

    def rung(self, job: Job, rung: int, accuracy: float) -> bool:
        """ASHA: whether a search trial reporting `accuracy` at `rung` goes on (engines ask)."""
        with self.lock:
            if self.asha is None or job.kind != "search":
                return True
            return self.asha.decide(job.proposal_id, rung, accuracy)

    def _decide_held(self) -> Optional[Job]:
        """A stop with a prefilter batch half full: the best of it is still trained."""
        job = self.prefilter.decide(self) if self.prefilter is not None else None
        if job is not None:
            self.in_flight[job.name] = job
        return job

    def _reference_missing(self) -> bool:
        return self.reference is not None and self.store.trial("reference", 0) is None

    # -- jobs --------------------------------------------------------------------------
    def initial_jobs(self) -> list[Job]:
        """Jobs pending in the store (running when the run stopped), then the reference."""
        with self.lock:
            jobs, followers, held = [], [], []
            for d in self.store.pending():
                if d["kind"] not in ("search", "reference"):
                    continue  # e.g. grid jobs: their own BatchSource re-queues them
                if self.prefilter is not None and (d.get("prefilter") or {}).get("held"):
                    held.append(d)  # collected for a prefilter batch (nas.prefilter)
                    continue
                job = Job.from_dict({**d, "attempt": d.get("attempt", 1)})
                (followers if d.get("follows") else jobs).append(job)
            winner = self.prefilter.restore(self, held) if held else None
            if winner is not None:
                jobs.append(winner)
            for f in followers:  # waiting for a twin: told from its record, or wait again
                cached = self.store.find_key(f.key, "search")
                if cached is not None:
                    self._tell_cached(self._proposal(f), f, cached)
                elif any(j.key == f.key for j in jobs):
                    self._followers.setdefault(f.key, []).append(f)
                else:
                    jobs.append(f)
            if self._reference_missing() and not any(j.kind == "reference" for j in jobs):
                job = new_job("reference", 0, self.reference, self.s.target_resolution, objective=self.objective)
                self.store.add_pending(job.kind, job.proposal_id, _job_row(job))
                jobs.insert(0, job)
            for j in jobs:
                self.in_flight[j.name] = j
            return jobs

    def next_job(self) -> Optional[Job]:
        """The next architecture to train, or None (nothing to start now)."""
        from controllers import SpaceExhausted
        with self.lock:
            while not self.stop_reason and self.trained + self._in_flight() < self.s.trials:
                if self._compute_full():
                    return None
                if self._asks >= self.s.max_proposals:
                    self._stop(f"{CAP_REASON} {self._asks} proposals: the controller keeps proposing "
                               "architectures outside the cost window or already evaluated")
                    return self._decide_held()
                try:
                    proposal = self.controller.ask()
                except SpaceExhausted as exc:
                    self._stop(f"search space exhausted ({exc})")
                    return self._decide_held()
                self._asks += 1
                job = self._make_job(proposal)
                if job is not None:
                    self._proposals[proposal.id] = proposal
                    if self.asha is not None:
                        job.rungs = self.asha.decision_fractions
                    if self.prefilter is not None:
                        job = self.prefilter.offer(self, job)  # None: held until its batch is full
                        if job is None:
                            continue
                    else:
                        self.store.add_pending(job.kind, job.proposal_id, _job_row(job), self._ckpt())
                    self.in_flight[job.name] = job
                    return job
            return None

    def _make_job(self, proposal: Any) -> Optional[Job]:
        """A Job to train, or None after telling and recording a cost-only/cached result (or
        parking the proposal until the same architecture, in flight now, has finished)."""
        spec = self.space.decode(list(proposal.choices), num_classes=1000, resolution=self.s.target_resolution)
        job = new_job("search", proposal.id, spec, self.s.target_resolution, list(proposal.choices), self.objective)
        lo, hi = self.s.cost_window
        ratios = self.objective.ratios(job.macs, job.latency_ms)  # the window applies to each target
        outside = [f"{name} {m:.2f}x target" for name, m in ratios.items() if not lo <= m <= hi]
        if outside:
            r = self.objective.cost_only_reward(job.macs, job.latency_ms, self.s.chance)
            self.controller.tell(proposal, r)
            self._tells += 1
            note = (f"{', '.join(outside)}, outside the cost window [{lo:g}, {hi:g}]: "
                    "reward from cost alone, not trained")
            self._write(trial_record(job, TrialResult(status="skipped", message=note), self.objective, told=True,
                                     source="cost-only", reward=r), self._ckpt())
            return None
        cached = self.store.find_key(job.key, "search")
        if cached is not None:
            self._tell_cached(proposal, job, cached)
            return None
        twin = next((j for j in self.in_flight.values() if j.kind == "search" and j.key == job.key), None)
        if twin is not None:  # being trained now: never train it twice, wait for that result
            self._proposals[proposal.id] = proposal
            self._followers.setdefault(job.key, []).append(job)
            self.store.add_pending(job.kind, job.proposal_id, {**_job_row(job), "follows": twin.name}, self._ckpt())
            return None
        return job

    def _proposal(self, job: Job) -> Any:
        proposal = self._proposals.pop(job.proposal_id, None)
        if proposal is None:  # asked before a restart
            from controllers.base import Proposal
            proposal = Proposal(job.proposal_id, tuple(job.choices or ()))
        return proposal

    def _tell(self, proposal: Any, status: str, reward: float | None) -> Checkpoint:
        if status in FAILED_STATUSES or reward is None:
            self.controller.tell_failure(proposal, status)
        else:
            self.controller.tell(proposal, reward)
        self._tells += 1
        return self._ckpt()

    def _tell_cached(self, proposal: Any, job: Job, cached: dict) -> dict:
        """Tell and record a proposal whose architecture has a trained record already."""
        ckpt = self._tell(proposal, cached["status"], cached["reward"])
        result = result_of(cached)
        result.message = f"same architecture as trial {cached['id']}: result reused"
        rec = trial_record(job, result, self.objective, told=True, source="cache", reward=cached["reward"])
        return self._write(rec, ckpt)

    def complete(self, job: Job, result: TrialResult, worker: str = "", started_at: float | None = None,
                 finished_at: float | None = None, extra: dict | None = None) -> dict:
        """Record a trained job's result (and tell the controller, for 'search' jobs)."""
        with self.lock:
            search = job.kind == "search"
            rec = trial_record(job, result, self.objective, told=search, worker=worker, started_at=started_at,
                               finished_at=finished_at, extra=extra)
            ckpt = self._tell(self._proposal(job), rec["status"], rec["reward"]) if search else None
            self.in_flight.pop(job.name, None)
            rec = self._write(rec, ckpt)
            if search and self.s.max_epochs:
                from nas.asha import epochs_of
                self.epochs_trained += epochs_of(rec, self.s.epochs)
            for f in self._followers.pop(job.key, []) if search else []:
                self._tell_cached(self._proposal(f), f, rec)
            return rec

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.store.set_meta("stop_reason", reason)

    # -- results ------------------------------------------------------------------------
    def best(self) -> Optional[dict]:
        return best_trial(self.store.trials("search", "trained"))


def _job_row(job: Job) -> dict:
    """A job as stored in the pending table (kind, id and attempt are columns there)."""
    d = job.to_dict()
    for k in ("kind", "proposal_id", "attempt"):
        d.pop(k)
    return d


class BatchSource(_Records):
    """Train a fixed list of specs once each, recorded as `kind` in the store.

    Resumable: specs already recorded are not trained again; pending ones re-run. Cost
    is counted at `target_resolution` (default: each spec's own). `overrides` (one dict
    or None per spec) changes budget fields of single jobs (stage 2: the seed); `ids`
    gives each job a stable proposal id (default: its index), so that batches that
    differ can share a kind in one store. `results()` returns one TrialResult per spec,
    in the given order.
    """

    def __init__(self, store: Store, specs: Sequence[Any], objective: Objective, kind: str = "grid",
                 target_resolution: int | None = None, listeners: Sequence[Callable[[dict], None]] = (),
                 overrides: Sequence[dict | None] | None = None, ids: Sequence[int] | None = None) -> None:
        self.store, self.kind, self.objective, self.listeners = store, kind, objective, list(listeners)
        self.target_resolution = target_resolution
        self.specs = list(specs)
        self.overrides = list(overrides) if overrides is not None else [None] * len(self.specs)
        self.ids = [int(i) for i in ids] if ids is not None else list(range(len(self.specs)))
        if len(self.overrides) != len(self.specs) or len(set(self.ids)) != len(self.specs):
            raise ValueError("BatchSource needs one override and one distinct id per spec")
        self.jobs = []
        for pid, spec, extra in zip(self.ids, self.specs, self.overrides):
            job = new_job(kind, pid, spec, target_resolution, objective=objective)
            job.overrides = dict(extra) if extra else None
            self.jobs.append(job)
        for job in self.jobs:
            row = store.trial(kind, job.proposal_id)
            if row is not None and row["key"] != job.key:
                raise UserError(f"the run's {kind!r} records were made for other networks (record "
                                f"{job.proposal_id} is another architecture): use another --out")
        self.lock = threading.RLock()
        self.in_flight: dict[str, Job] = {}

    def handover(self) -> dict:
        return {"type": "batch", "kind": self.kind, "specs": [s.to_dict() for s in self.specs],
                "objective": asdict(self.objective), "target_resolution": self.target_resolution,
                "overrides": self.overrides, "ids": self.ids}

    def refresh(self) -> None:
        """Nothing to re-read: what is done is read from the store each time."""

    def max_jobs(self) -> int:
        return max(1, len(self.jobs) + 1)

    @property
    def done(self) -> bool:
        return not self.in_flight and all(self.store.trial(self.kind, j.proposal_id) for j in self.jobs)

    def initial_jobs(self) -> list[Job]:
        """Jobs of this batch left pending by a previous run (same proposal ids)."""
        with self.lock:
            pending = {d["proposal_id"]: d.get("attempt", 1) for d in self.store.pending(self.kind)}
            jobs = []
            for job in self.jobs:
                if job.proposal_id in pending and not self.store.trial(self.kind, job.proposal_id):
                    job.attempt = pending[job.proposal_id]
                    self.in_flight[job.name] = job
                    jobs.append(job)
            return jobs

    def next_job(self) -> Optional[Job]:
        with self.lock:
            for job in self.jobs:
                if job.name in self.in_flight or self.store.trial(self.kind, job.proposal_id):
                    continue
                self.in_flight[job.name] = job
                self.store.add_pending(job.kind, job.proposal_id, _job_row(job))
                return job
            return None

    def complete(self, job: Job, result: TrialResult, worker: str = "", started_at: float | None = None,
                 finished_at: float | None = None, extra: dict | None = None) -> dict:
        with self.lock:
            rec = trial_record(job, result, self.objective, told=False, worker=worker, started_at=started_at,
                               finished_at=finished_at or time.time(), extra=extra)
            self.in_flight.pop(job.name, None)
            return self._write(rec)

    def results(self) -> list[TrialResult]:
        out = []
        for row in self.records():
            out.append(TrialResult(status="failed", message="not evaluated") if row is None else result_of(row))
        return out

    def records(self) -> list[Optional[dict]]:
        """The stored record of each job (None where it has none), in the given order."""
        return [self.store.trial(self.kind, job.proposal_id) for job in self.jobs]


def source_from_handover(state: dict, store: Store) -> Any:
    """The source a `handover()` describes, on `store` (no listeners: this process's
    records reach the launching process's listeners through the store)."""
    from search_space.space import SearchSpace
    from search_space.spec import ArchSpec

    if not isinstance(state, dict) or state.get("type") not in ("search", "batch"):
        raise ValueError(f"not a job-source handover: {str(state)[:80]!r}")
    if state["type"] == "batch":
        return BatchSource(store, [ArchSpec.from_dict(s) for s in state["specs"]], Objective(**state["objective"]),
                           kind=state["kind"], target_resolution=state.get("target_resolution"),
                           overrides=state.get("overrides"), ids=state.get("ids"))
    space = SearchSpace.from_yaml_text(state["space"], source="the handed-over search space")
    settings = LoopSettings(**{**state["settings"], "cost_window": tuple(state["settings"]["cost_window"])})
    reference = ArchSpec.from_dict(state["reference"]) if state.get("reference") else None
    return SearchLoop(store, space, ControllerRecipe.from_dict(state["controller"]), settings, reference=reference)
