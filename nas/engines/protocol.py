"""What every engine shares: a `Job`, its `EvalContext`, and the interfaces.

Why this split: *what* is searched (ask, the cost window, the cache, rewards, tells,
records, checkpoints) must be identical whether trials run in local worker processes
or as NNI trials on remote machines. So all of it lives in a `JobSource` (`nas.search.loop.SearchLoop`
for the search, `nas.search.batch.BatchSource` for a fixed list such as stage 2 or the
scaling grid);
an engine only decides *where* a `Job` is trained and hands the `TrialResult` back:

    jobs = source.initial_jobs()              # re-queued after a kill, the reference
    while not source.done:
        job = jobs.pop(0) if jobs else source.next_job()   # None: nothing to start now
        ... train `job` somewhere with `nas.engines.evaluator.evaluate_job(job, ctx)` ...
        source.complete(job, result, worker=..., started_at=..., finished_at=...)

`next_job()` returning None means "nothing to start now" (budget reached with trials
in flight, the controller's space exhausted, or too many proposals that could not be
trained); `done` is True when nothing is in flight and nothing more will come.
`complete` may be called in any order (completion order) and from any thread.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol

from nas.evaluate.budget import ProxyBudget
from nas.evaluate.result import TrialResult

if TYPE_CHECKING:
    from nas.store.store import Store

DEFAULT_EVALUATOR = "nas.trial:evaluate"


@dataclass
class Job:
    """One architecture to train. `kind` + `proposal_id` identify it across restarts.

    `spec` is the deliverable spec (as a dict: num_classes 1000, target resolution);
    `macs`/`params` are counted on it (`nas.search.records.new_job`). kinds: 'search' (told to
    the controller), 'reference' (EfficientNet-B0 under the same budget; never told),
    'grid' (scaling).
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
    overrides: Optional[dict] = None   # budget fields of this job alone (stage 2: its seed)
    rungs: Optional[list] = None       # ASHA: fractions of the budget to report at (nas.search.asha)
    latency_ms: Optional[float] = None  # predicted where the job is made, with a latency target (never in a trial)
    weights: Optional[str] = None      # where the evaluator saves the trained weights (stage 2), if it can

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.proposal_id}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class EvalContext:
    """What a worker needs besides the job (plain data: it travels to NNI trials).

    No cost target or reward exponents: a worker only trains; the loop scores.
    """

    budget: ProxyBudget
    evaluator: str = DEFAULT_EVALUATOR   # 'module:function'
    per_spec_resolution: bool = False    # grid: each spec trains and is costed at its own resolution

    def to_dict(self) -> dict:
        return {"budget": self.budget.to_dict(), "evaluator": self.evaluator,
                "per_spec_resolution": self.per_spec_resolution}

    @classmethod
    def from_dict(cls, data: dict) -> "EvalContext":
        return cls(budget=ProxyBudget.from_dict(data["budget"]), evaluator=data.get("evaluator") or DEFAULT_EVALUATOR,
                   per_spec_resolution=bool(data.get("per_spec_resolution", False)))


class JobSource(Protocol):
    """What an engine drives, and all it may use of it (`nas.search` implements it).

    `store` and `listeners` are read by engines that run the source's decisions in
    another process (NNI: the tuner writes the store there, the engine feeds the
    listeners here from it). `handover()` is the plain-data description from which
    `nas.search.handover.source_from_handover` builds an equal source in that process;
    `refresh()` re-reads what that process changed; `max_jobs()` bounds the jobs
    still to start (an upper bound, the source decides the real end). `rung(job, rung,
    accuracy)` is ASHA's question, asked by the engines while a job trains: whether it
    goes on (always True for a source without ASHA).
    """

    store: "Store"
    listeners: list

    @property
    def done(self) -> bool: ...
    def initial_jobs(self) -> list[Job]: ...
    def next_job(self) -> Optional[Job]: ...
    def complete(self, job: Job, result: TrialResult, worker: str = "", started_at: float | None = None,
                 finished_at: float | None = None, extra: dict | None = None) -> dict: ...
    def handover(self) -> dict: ...
    def refresh(self) -> None: ...
    def max_jobs(self) -> int: ...
    def rung(self, job: Job, rung: int, accuracy: float) -> bool: ...


class Engine(Protocol):
    """Runs a JobSource to the end: `nas.engines.local.LocalEngine`, `nas.nni.engine.NniEngine`."""

    name: str

    def run(self, source: JobSource, ctx: EvalContext) -> None: ...


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread, so one path stops a run cleanly.

    Re-entrant: the search CLI holds it for the whole run, and an engine used on its own
    (`NniEngine.run` in a script) installs it itself; nested, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is _raise_interrupt:
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
