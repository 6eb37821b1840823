"""What every engine shares: a `Job`, how one is evaluated, and the interfaces.

Why this split: *what* is searched (ask, the cost window, the cache, rewards, tells,
records, checkpoints) must be identical whether trials run in local worker processes
or as NNI trials on remote machines. So all of it lives in a `JobSource` (`nas.loop`:
`SearchLoop` for the search, `BatchSource` for a fixed list such as the scaling grid);
an engine only decides *where* a `Job` is trained and hands the `TrialResult` back:

    jobs = source.initial_jobs()              # re-queued after a kill, the reference
    while not source.done:
        job = jobs.pop(0) if jobs else source.next_job()   # None: nothing to start now
        ... train `job` somewhere with `evaluate_job(job, ctx)` ...
        source.complete(job, result, worker=..., started_at=..., finished_at=...)

`next_job()` returning None means "nothing to start now" (budget reached with trials
in flight, the controller's space exhausted, or too many proposals that could not be
trained); `done` is True when nothing is in flight and nothing more will come.
`complete` may be called in any order (completion order) and from any thread.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from nas.budget import ProxyBudget
from nas.errors import EngineError  # noqa: F401 - engines raise it from here
from nas.result import TrialResult, finite

if TYPE_CHECKING:
    from nas.store import Store

DEFAULT_EVALUATOR = "nas.trial:evaluate"


@dataclass
class Job:
    """One architecture to train. `kind` + `proposal_id` identify it across restarts.

    `spec` is the deliverable spec (as a dict: num_classes 1000, target resolution);
    `macs`/`params` are counted on it (`nas.records.new_job`). kinds: 'search' (told to
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
    rungs: Optional[list] = None       # ASHA: fractions of the budget to report at (nas.asha)
    latency_ms: Optional[float] = None  # predicted where the job is made, with a latency target (never in a trial)

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


def load_evaluator(ref: str | Callable | None) -> Callable[..., Any]:
    """`'module:function'` (or `module.function`), a callable, or None for `nas.trial:evaluate`.

    The contract: `fn(spec, budget) -> TrialResult` (or a dict of its fields); it may
    take a keyword `on_epoch(epoch, accuracy)` to report its learning curve as it goes.
    """
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


def with_epoch_hook(fn: Callable[..., Any], on_epoch: Callable[..., None]) -> tuple[Callable[..., Any], bool]:
    """`fn` with `on_epoch` bound when its signature takes one; (fn, whether it was bound)."""
    try:
        names = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn, False
    if "on_epoch" in names:
        return functools.partial(fn, on_epoch=on_epoch), True
    return fn, False


def with_rung_hook(fn: Callable[..., Any], rungs: list, on_rung: Callable[[int, float], bool]) -> Callable[..., Any]:
    """`fn` with `rungs` and `on_rung` bound when its signature takes both (ASHA, nas.asha);
    an evaluator that does not take them trains its whole budget."""
    try:
        names = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    if "rungs" in names and "on_rung" in names:
        return functools.partial(fn, rungs=list(rungs), on_rung=on_rung)
    return fn


def evaluate_job(job: Job, ctx: EvalContext, evaluator: Callable | None = None,
                 on_rung: Callable[[int, float], bool] | None = None) -> TrialResult:
    """Train `job` with the context's evaluator; never raises (but lets Ctrl-C through).

    Exceptions become status 'failed' (message: the exception's first line); a
    non-finite accuracy becomes 'diverged'; anything not a TrialResult becomes 'failed'.
    `on_rung(rung, accuracy) -> continue?` is handed to the evaluator when the job has
    rungs (ASHA): the engine's way of asking the search whether the trial goes on.
    """
    from search_space.spec import ArchSpec

    t0 = time.time()
    try:
        fn = evaluator or load_evaluator(ctx.evaluator)
        if job.rungs and on_rung is not None:
            fn = with_rung_hook(fn, job.rungs, on_rung)
        spec = ArchSpec.from_dict(job.spec)
        budget = ctx.budget.at_resolution(spec.resolution) if ctx.per_spec_resolution else ctx.budget
        if job.overrides:
            budget = dataclasses.replace(budget, **job.overrides)
        result = fn(spec, budget)
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
    return checked(result)


def checked(result: TrialResult) -> TrialResult:
    """An 'ok' result without a finite accuracy is 'diverged' (whatever engine ran it)."""
    if result.status == "ok" and finite(result.accuracy) is None:
        note = f"accuracy is {result.accuracy}"
        result.status, result.accuracy = "diverged", None
        result.message = f"{result.message} {note}" if result.message else note
    return result


class JobSource(Protocol):
    """What an engine drives, and all it may use of it (`nas.loop` implements it).

    `store` and `listeners` are read by engines that run the source's decisions in
    another process (NNI: the tuner writes the store there, the engine feeds the
    listeners here from it). `handover()` is the plain-data description from which
    `nas.loop.source_from_handover` builds an equal source in that process;
    `refresh()` re-reads what that process changed; `max_jobs()` bounds the jobs
    still to start (an upper bound, the source decides the real end).
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


class Engine(Protocol):
    """Runs a JobSource to the end: `nas.engine_local.LocalEngine`, `nas.nni.NniEngine`."""

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
