"""The engine-neutral search loop, and the one small interface every engine implements.

Why this split: *what* is searched (ask, the cost window, the cache, rewards, tells,
records, checkpoints) must be identical whether trials run in local worker processes
or as NNI trials on remote machines. So all of it lives in `SearchLoop`; an engine only
decides *where* a `Job` is trained and hands the `TrialResult` back:

    jobs = source.initial_jobs()              # re-queued after a kill, the reference
    while not source.done:
        job = jobs.pop(0) if jobs else source.next_job()   # None: nothing to start now
        ... train `job` somewhere with `evaluate_job(job, ctx)` ...
        source.complete(job, result, worker=..., started_at=..., finished_at=...)

`next_job()` returning None means "nothing to start now" (budget reached with trials
in flight, the controller's space exhausted, or too many proposals that could not be
trained); `done` is True when nothing is in flight and nothing more will come.
`complete` may be called in any order (completion order) and from any thread, but not
concurrently (engines serialise calls; `SearchLoop` also holds a lock).

Resume protocol (exact, see nas/store.py): the controller is checkpointed in the same
transaction as each pending job (after ask) and each finished trial (after tell).
"""
from __future__ import annotations

import importlib
import inspect
import math
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

from nas.budget import ProxyBudget
from nas.result import FAILED_STATUSES, TrialResult
from nas.store import Checkpoint, Store

DEFAULT_EVALUATOR = "nas.trial:evaluate"
CHECKPOINT_NAME = "controller"
CAP_REASON = "stopped after"  # how the max_proposals stop reason starts


class EngineError(RuntimeError):
    """An engine cannot go on (e.g. workers die at start-up); the store stays resumable."""


# --------------------------------------------------------------------------------------
# What a job is, and how one is evaluated (the same code in every engine)
# --------------------------------------------------------------------------------------
@dataclass
class Job:
    """One architecture to train. `kind` + `proposal_id` identify it across restarts.

    `spec` is the deliverable spec (as a dict: num_classes 1000, target resolution);
    `macs`/`params` are counted on it. kinds: 'search' (told to the controller),
    'reference' (EfficientNet-B0 under the same budget; never told), 'grid' (scaling).
    """

    kind: str
    proposal_id: int
    spec: dict
    key: str
    macs: int
    params: int
    choices: Optional[list] = None
    attempt: int = 1
    queued_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.proposal_id}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class EvalContext:
    """Everything a worker needs besides the job: picklable and JSON-able (NNI params)."""

    budget: ProxyBudget
    target: int
    alpha: float = -0.07
    beta: float = -0.07
    evaluator: str = DEFAULT_EVALUATOR   # 'module:function'
    per_spec_resolution: bool = False    # grid: each spec trains and is costed at its own resolution

    def to_dict(self) -> dict:
        return {"budget": self.budget.to_dict(), "target": self.target, "alpha": self.alpha,
                "beta": self.beta, "evaluator": self.evaluator, "per_spec_resolution": self.per_spec_resolution}

    @classmethod
    def from_dict(cls, data: dict) -> "EvalContext":
        return cls(budget=ProxyBudget.from_dict(data["budget"]), target=int(data["target"]),
                   alpha=float(data["alpha"]), beta=float(data["beta"]),
                   evaluator=data.get("evaluator") or DEFAULT_EVALUATOR,
                   per_spec_resolution=bool(data.get("per_spec_resolution", False)))


def load_evaluator(ref: str | Callable | None) -> Callable[..., Any]:
    """`'module:function'` (or `module.function`), a callable, or None for `nas.trial:evaluate`."""
    if callable(ref):
        return ref
    ref = ref or DEFAULT_EVALUATOR
    module, sep, attr = ref.partition(":")
    if not sep:
        module, _, attr = ref.rpartition(".")
    if not module or not attr:
        raise ValueError(f"evaluator {ref!r}: expected 'module:function'")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ValueError(f"evaluator {ref!r}: {module} has no function {attr!r}")
    return fn


def evaluate_job(job: Job, ctx: EvalContext, evaluator: Callable | None = None) -> TrialResult:
    """Train `job` with the context's evaluator; never raises.

    Exceptions become status 'failed' (message: the exception's first line); a
    non-finite accuracy becomes 'diverged'; anything not a TrialResult becomes 'failed'.
    """
    from search_space.spec import ArchSpec

    t0 = time.time()
    try:
        fn = evaluator or load_evaluator(ctx.evaluator)
        spec = ArchSpec.from_dict(job.spec)
        budget = ctx.budget.at_resolution(spec.resolution) if ctx.per_spec_resolution else ctx.budget
        result = fn(spec, budget, ctx.target, ctx.alpha, ctx.beta)
        if isinstance(result, dict):
            result = TrialResult.from_dict(result)
        if not isinstance(result, TrialResult):
            return TrialResult(status="failed", wall_time=time.time() - t0,
                               message=f"evaluator returned {type(result).__name__}, not a TrialResult")
    except BaseException as exc:  # noqa: BLE001 - a trial failure is a result, not a crash
        if isinstance(exc, KeyboardInterrupt):
            raise
        first = (f"{type(exc).__name__}: {exc}".splitlines() or ["error"])[0][:500]
        return TrialResult(status="failed", wall_time=time.time() - t0, message=first)
    if not result.wall_time:
        result.wall_time = time.time() - t0
    if result.status == "ok" and (result.accuracy is None or not math.isfinite(float(result.accuracy))):
        result.status, result.message = "diverged", (result.message + " " if result.message else "") + \
            f"accuracy is {result.accuracy}"
        result.accuracy = None
    return result


# --------------------------------------------------------------------------------------
# The interface engines implement, and the source of jobs they drive
# --------------------------------------------------------------------------------------
class JobSource(Protocol):
    """What an engine drives: `SearchLoop` (the search) or `BatchSource` (grid, reference)."""

    done: bool

    def initial_jobs(self) -> list[Job]: ...
    def next_job(self) -> Optional[Job]: ...
    def complete(self, job: Job, result: TrialResult, worker: str = "", started_at: float | None = None,
                 finished_at: float | None = None, extra: dict | None = None) -> dict: ...


class Engine(Protocol):
    """Runs a JobSource to the end. Implementations: nas.engine_local.LocalEngine,
    nas.engine_nni (helper G). `ctx` says what to compute for each job."""

    name: str

    def run(self, source: JobSource, ctx: EvalContext) -> None: ...


# --------------------------------------------------------------------------------------
# The search loop
# --------------------------------------------------------------------------------------
@dataclass
class LoopSettings:
    """The parts of the configuration the loop needs (see nas/config.py for the rest).

    trials: trained trials to run (source 'trained', any status); cost-only and cached
    proposals are recorded and told but do not count. max_proposals caps all asks
    (a controller stuck proposing untrainable or known architectures ends the run).
    """

    target: int
    alpha: float = -0.07
    beta: float = -0.07
    trials: int = 24
    cost_window: tuple[float, float] = (0.5, 1.0)
    max_proposals: int = 0          # 0: 50 x trials + 100
    target_resolution: int = 224
    chance: float = 0.1             # accuracy of a model that learned nothing (1/classes)

    def __post_init__(self) -> None:
        if not self.max_proposals:
            self.max_proposals = 50 * self.trials + 100


def cost_only_reward(macs: int, target: int, chance: float) -> float:
    """The reward told for an architecture outside the cost window (no training).

    `chance × min(m, 1/m)` with m = MACs / target: never above chance accuracy (so below
    any model that learned something), and rising toward the target from both sides, so
    a learning controller is pulled back into the window rather than just pushed away.
    """
    m = max(macs, 1) / float(target)
    return float(chance) * min(m, 1.0 / m)


class SearchLoop:
    """Ask, filter (cost window, cache), hand out jobs, tell, record, checkpoint.

    `space` needs `.decode(choices, num_classes=, resolution=)`; `controller` is a
    `controllers.base.Controller`. `reference` (an ArchSpec or None) is trained once
    under the same budget, recorded as kind 'reference' and never told.
    `listeners` get every new trial record (dict, as stored) — progress, TensorBoard.
    """

    def __init__(self, store: Store, space: Any, controller: Any, settings: LoopSettings,
                 reference: Any = None, listeners: Sequence[Callable[[dict], None]] = ()) -> None:
        self.store, self.space, self.controller, self.s = store, space, controller, settings
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
        self._restore()

    # -- restore / checkpoint ------------------------------------------------------------
    def _restore(self) -> None:
        saved = self.store.checkpoint(CHECKPOINT_NAME)
        if saved is not None:
            state, self._tells, self._asks = saved
            self.controller.load_state_dict(state)
        self.stop_reason = self.store.get_meta("stop_reason", "") or ""
        if self.stop_reason.startswith(CAP_REASON) and self._asks < self.s.max_proposals:
            self._stop("")  # resumed with more --trials: the cap on proposals has risen

    def reload(self) -> None:
        """Re-read the controller checkpoint and stop reason from the store (after another
        process, e.g. NNI's dispatcher, drove this search)."""
        with self.lock:
            self._restore()

    def _ckpt(self) -> Checkpoint:
        return Checkpoint(CHECKPOINT_NAME, self.controller.state_dict(), self._tells, self._asks)

    # -- counts ----------------------------------------------------------------------------
    @property
    def trained(self) -> int:
        return self.store.count("search", ("trained",))

    def _in_flight(self, kind: str = "search") -> int:
        return sum(1 for j in self.in_flight.values() if j.kind == kind)

    @property
    def done(self) -> bool:
        with self.lock:
            if self.in_flight:
                return False
            if self._reference_missing():
                return False
            return bool(self.stop_reason) or self.trained >= self.s.trials

    def _reference_missing(self) -> bool:
        return self.reference is not None and self.store.trial("reference", 0) is None

    # -- jobs --------------------------------------------------------------------------
    def initial_jobs(self) -> list[Job]:
        """Jobs pending in the store (running when the run stopped), then the reference."""
        with self.lock:
            jobs, followers = [], []
            for d in self.store.pending():
                if d["kind"] not in ("search", "reference"):
                    continue  # e.g. grid jobs: their own BatchSource re-queues them
                job = Job.from_dict({**d, "attempt": d.get("attempt", 1)})
                (followers if d.get("follows") else jobs).append(job)
            for f in followers:  # waiting for a twin: told from its record, or wait again
                cached = self.store.find_key(f.key, "search")
                if cached is not None:
                    self._tell_cached(self._proposal(f), self._base(f), cached)
                elif any(j.key == f.key for j in jobs):
                    self._followers.setdefault(f.key, []).append(f)
                else:
                    jobs.append(f)
            if self._reference_missing() and not any(j.kind == "reference" for j in jobs):
                jobs.insert(0, self._reference_job())
            for j in jobs:
                self.in_flight[j.name] = j
            return jobs

    def _reference_job(self) -> Job:
        from search_space import cost
        spec = self.reference
        job = Job(kind="reference", proposal_id=0, spec=spec.to_dict(), key=spec.key(),
                  macs=int(cost.macs(spec, self.s.target_resolution)), params=int(cost.params(spec)))
        self.store.add_pending(job.kind, job.proposal_id, _job_row(job))
        return job

    def next_job(self) -> Optional[Job]:
        """The next architecture to train, or None (nothing to start now)."""
        with self.lock:
            while not self.stop_reason and self.trained + self._in_flight() < self.s.trials:
                if self._asks >= self.s.max_proposals:
                    self._stop(f"{CAP_REASON} {self._asks} proposals: the controller keeps proposing "
                               "architectures outside the cost window or already evaluated")
                    return None
                try:
                    proposal = self.controller.ask()
                except StopIteration as exc:  # controllers.SpaceExhausted
                    self._stop(f"search space exhausted ({exc})")
                    return None
                self._asks += 1
                job = self._make_job(proposal)
                if job is not None:
                    self._proposals[proposal.id] = proposal
                    self.in_flight[job.name] = job
                    self.store.add_pending(job.kind, job.proposal_id, _job_row(job), self._ckpt())
                    return job
            return None

    def _make_job(self, proposal: Any) -> Optional[Job]:
        """A Job to train, or None after telling and recording a cost-only/cached result (or
        parking the proposal until the same architecture, in flight now, has finished)."""
        from search_space import cost
        spec = self.space.decode(list(proposal.choices), num_classes=1000,
                                 resolution=self.s.target_resolution)
        key = spec.key()
        macs = int(cost.macs(spec, self.s.target_resolution))
        job = Job(kind="search", proposal_id=proposal.id, spec=spec.to_dict(), key=key, macs=macs,
                  params=int(cost.params(spec)), choices=list(proposal.choices))
        base = self._base(job)
        lo, hi = self.s.cost_window
        if not lo * self.s.target <= macs <= hi * self.s.target:
            r = cost_only_reward(macs, self.s.target, self.s.chance)
            self.controller.tell(proposal, r)
            self._tells += 1
            self._record({**base, "status": "skipped", "source": "cost-only", "reward": r, "accuracy": None,
                          "message": f"MACs {macs / self.s.target:.2f}x target, outside the cost window "
                                     f"[{lo:g}, {hi:g}]: reward from cost alone, not trained"})
            return None
        cached = self.store.find_key(key, "search")
        if cached is not None:
            self._tell_cached(proposal, base, cached)
            return None
        twin = next((j for j in self.in_flight.values() if j.kind == "search" and j.key == key), None)
        if twin is not None:  # being trained now: never train it twice, wait for that result
            self._proposals[proposal.id] = proposal
            self._followers.setdefault(key, []).append(job)
            self.store.add_pending(job.kind, job.proposal_id, {**_job_row(job), "follows": twin.name}, self._ckpt())
            return None
        return job

    @staticmethod
    def _base(job: Job) -> dict:
        return dict(kind="search", proposal_id=job.proposal_id, choices=job.choices, spec=job.spec, key=job.key,
                    macs=job.macs, params=job.params, queued_at=job.queued_at, started_at=None, worker="",
                    attempt=1, told=True)

    def _proposal(self, job: Job) -> Any:
        proposal = self._proposals.pop(job.proposal_id, None)
        if proposal is None:  # asked before a restart
            from controllers.base import Proposal
            proposal = Proposal(job.proposal_id, tuple(job.choices or ()))
        return proposal

    def _tell_cached(self, proposal: Any, base: dict, cached: dict) -> dict:
        """Tell and record a proposal whose architecture has a trained record already."""
        if cached["status"] in FAILED_STATUSES or cached["reward"] is None:
            self.controller.tell_failure(proposal, cached["status"])
        else:
            self.controller.tell(proposal, cached["reward"])
        self._tells += 1
        return self._record({**base, **{k: cached[k] for k in ("accuracy", "reward", "status", "epoch_accuracies")},
                             "source": "cache", "message": f"same architecture as trial {cached['id']}: result reused"})

    def complete(self, job: Job, result: TrialResult, worker: str = "", started_at: float | None = None,
                 finished_at: float | None = None, extra: dict | None = None) -> dict:
        """Record a trained job's result (and tell the controller, for 'search' jobs)."""
        from nas.reward import reward as reward_fn
        with self.lock:
            finished_at = finished_at or time.time()
            status = result.status
            acc = result.accuracy
            r = None
            if status in ("ok", "skipped") and acc is not None and math.isfinite(float(acc)):
                r = float(reward_fn(float(acc), job.macs, self.s.target, self.s.alpha, self.s.beta))
            elif status == "ok":
                status = "diverged"
            rec = dict(kind=job.kind, proposal_id=job.proposal_id, choices=job.choices, spec=job.spec,
                       key=job.key, macs=job.macs, params=job.params, accuracy=acc, reward=r,
                       status=status, message=result.message or "", epoch_accuracies=list(result.epoch_accuracies or []),
                       loss=_finite(result.loss), images_per_sec=result.images_per_sec,
                       queued_at=job.queued_at, started_at=started_at, finished_at=finished_at,
                       wall_time=result.wall_time, worker=worker, source="trained", attempt=job.attempt,
                       told=job.kind == "search", extra=extra)
            ckpt = None
            if job.kind == "search":
                proposal = self._proposal(job)
                if r is not None:
                    self.controller.tell(proposal, r)
                else:
                    self.controller.tell_failure(proposal, status)
                self._tells += 1
                ckpt = self._ckpt()
            self.in_flight.pop(job.name, None)
            rec = self._record(rec, ckpt)
            for f in self._followers.pop(job.key, []) if job.kind == "search" else []:
                self._tell_cached(self._proposal(f), self._base(f), rec)
            return rec

    def _record(self, rec: dict, ckpt: Checkpoint | None = "auto") -> dict:  # type: ignore[assignment]
        if ckpt == "auto":
            ckpt = self._ckpt()
        rec.setdefault("finished_at", time.time())
        rec["id"] = self.store.add_trial(rec, ckpt)
        for listener in self.listeners:
            try:
                listener(rec)
            except Exception:  # a broken report must not break the search
                traceback.print_exc()
        return rec

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.store.set_meta("stop_reason", reason)

    # -- results ------------------------------------------------------------------------
    def best(self) -> Optional[dict]:
        return best_trial(self.store.trials("search", "trained"))


def best_trial(rows: Iterable[dict]) -> Optional[dict]:
    """The highest-reward trained, ok trial (ties: fewer MACs, then earlier)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("reward") is not None
          and r.get("source", "trained") == "trained"]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["reward"], -(r.get("macs") or 0), -(r.get("id") or 0)))


def _job_row(job: Job) -> dict:
    d = job.to_dict()
    d.pop("kind")
    d.pop("proposal_id")
    d.pop("attempt")
    return d


def _finite(x: Any) -> Any:
    try:
        return x if x is None or math.isfinite(float(x)) else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------
# A fixed batch of jobs (scaling's grid search; anything "evaluate these specs")
# --------------------------------------------------------------------------------------
class BatchSource:
    """Train a fixed list of specs once each, recorded as `kind` in the store.

    Resumable: specs already recorded are not trained again; pending ones re-run.
    `results()` returns one TrialResult per spec, in the given order.
    """

    def __init__(self, store: Store, specs: Sequence[Any], kind: str = "grid", target_resolution: int | None = None,
                 target: int = 1, alpha: float = -0.07, beta: float = -0.07,
                 listeners: Sequence[Callable[[dict], None]] = ()) -> None:
        from search_space import cost
        self.store, self.kind, self.listeners = store, kind, list(listeners)
        self.target, self.alpha, self.beta = target, alpha, beta
        self.jobs = []
        for i, spec in enumerate(specs):
            res = target_resolution or spec.resolution
            self.jobs.append(Job(kind=kind, proposal_id=i, spec=spec.to_dict(), key=spec.key(),
                                 macs=int(cost.macs(spec, res)), params=int(cost.params(spec))))
        self.lock = threading.RLock()
        self.in_flight: dict[str, Job] = {}

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
        from nas.reward import reward as reward_fn
        with self.lock:
            acc = result.accuracy if result.status == "ok" else None
            r = float(reward_fn(acc, job.macs, self.target, self.alpha, self.beta)) if acc is not None else None
            rec = dict(kind=job.kind, proposal_id=job.proposal_id, spec=job.spec, key=job.key, macs=job.macs,
                       params=job.params, accuracy=acc, reward=r, status=result.status, message=result.message,
                       epoch_accuracies=list(result.epoch_accuracies or []), loss=_finite(result.loss),
                       images_per_sec=result.images_per_sec, queued_at=job.queued_at, started_at=started_at,
                       finished_at=finished_at or time.time(), wall_time=result.wall_time, worker=worker,
                       source="trained", attempt=job.attempt, told=False, extra=extra)
            rec["id"] = self.store.add_trial(rec)
            self.in_flight.pop(job.name, None)
            for listener in self.listeners:
                listener(rec)
            return rec

    def results(self) -> list[TrialResult]:
        out = []
        for job in self.jobs:
            row = self.store.trial(self.kind, job.proposal_id)
            if row is None:
                out.append(TrialResult(status="failed", message="not evaluated"))
            else:
                out.append(TrialResult(status=row["status"], accuracy=row["accuracy"], macs=row["macs"],
                                       params=row["params"], reward=row["reward"], message=row["message"] or "",
                                       epoch_accuracies=row["epoch_accuracies"] or [],
                                       wall_time=row["wall_time"] or 0.0))
        return out
