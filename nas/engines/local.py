"""The local engine: trials run concurrently in worker processes on this machine.

Why processes (spawn), one per device slot: a trial may segfault, leak memory, hang, or
call `os._exit`; only a process boundary contains that. Each worker is pinned to one
slot (`cpu`, or `cuda:N` with N workers per GPU), loads the dataset once and trains job
after job. The parent enforces the per-trial time limit (kill + replace the worker,
status 'timeout') and replaces a worker that dies mid-trial (status 'failed').
Results are handed to the JobSource in completion order.

`in_process=True` evaluates in the calling process instead (tests, benchmarks,
debugging): no isolation and no hard time limit.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from typing import Any, Optional, Sequence

from nas.errors import EngineError
from nas.evaluate.result import TrialResult

from .evaluator import evaluate_job, load_evaluator
from .protocol import EvalContext, Job, JobSource


def device_slots(device: str, workers: int, workers_per_gpu: int = 1, gpus: Sequence[int] | None = None) -> list[str]:
    """One device string per worker: `cpu` x workers, or `cuda:N` (each GPU x workers_per_gpu).

    With CUDA, `workers` 0 means "fill every GPU"; otherwise the slots cycle over the GPUs.
    """
    if device == "cpu":
        return ["cpu"] * max(1, workers)
    if gpus is None:
        import torch
        gpus = list(range(torch.cuda.device_count()))
    if not gpus:
        raise EngineError("no CUDA device is visible")
    per = [f"cuda:{g}" for g in gpus for _ in range(max(1, workers_per_gpu))]
    n = workers if workers > 0 else len(per)
    return [per[i % len(per)] for i in range(n)]


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


# --------------------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Never outlive the parent (a SIGKILLed search must not leave trainers behind)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(conn: Any, name: str, device: str, threads: int, ctx_dict: dict) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    ctx = EvalContext.from_dict(ctx_dict)
    ctx.budget = replace(ctx.budget, device=device)
    load_error = ""
    try:
        fn = load_evaluator(ctx.evaluator)
    except Exception as exc:  # reported per job below
        fn, load_error = None, f"cannot load evaluator {ctx.evaluator!r}: {exc}"
    if "torch" in sys.modules:  # only when the evaluator uses it (fake ones start faster)
        try:
            sys.modules["torch"].set_num_threads(threads)
        except Exception:
            pass
    conn.send(("ready", name))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if isinstance(msg, (tuple, list)):  # a rung answer that came after its wait ended: stale
            continue
        job = Job.from_dict(msg)
        if fn is None:
            result = TrialResult(status="failed", message=load_error)
        else:
            result = evaluate_job(job, ctx, fn, on_rung=_ask_parent(conn, job.name))
        try:
            conn.send(("result", job.name, result.to_dict()))
        except (EOFError, OSError, BrokenPipeError):
            return


RUNG_WAIT = 60.0  # seconds a worker waits for the parent's rung answer before it just goes on


def _ask_parent(conn: Any, name: str):
    """ASHA's `on_rung` in a worker: one round trip over the pipe. The parent answers
    between two polls; a parent that does not answer in RUNG_WAIT seconds (or is gone)
    means "continue": a trial is never stopped, nor left waiting, by a broken link."""
    def on_rung(rung: int, accuracy: float) -> bool:
        try:
            conn.send(("rung", name, int(rung), float(accuracy)))
            deadline = time.time() + RUNG_WAIT
            while conn.poll(max(0.0, deadline - time.time())):
                msg = conn.recv()
                if isinstance(msg, (tuple, list)) and msg[:3] == ("rung-answer", name, int(rung)):
                    return bool(msg[3])
        except (EOFError, OSError, BrokenPipeError):
            pass
        return True
    return on_rung


def _rung_answer(source: JobSource, job: Optional[Job], rung: int, accuracy: float) -> bool:
    """The source's decision for a rung report (True for a job it no longer knows)."""
    if job is None:
        return True
    try:
        return bool(source.rung(job, rung, accuracy))
    except Exception:  # noqa: BLE001 - a decision that fails lets the trial go on
        import traceback
        traceback.print_exc()
        return True


@dataclass
class _Worker:
    name: str
    device: str
    proc: Any
    conn: Any
    ready: bool = False
    job: Optional[Job] = None
    started: float = 0.0


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------
class LocalEngine:
    """Run a JobSource on local worker processes (or in-process).

    slots: one device string per worker (see `device_slots`). trial_timeout: seconds a
    trial may run (measured from hand-off to the worker), None for no limit.
    """

    name = "local"

    def __init__(self, slots: Sequence[str] = ("cpu",), trial_timeout: float | None = None,
                 threads: int | None = None, in_process: bool = False, poll: float = 0.5,
                 start_method: str = "spawn") -> None:
        self.slots = list(slots) or ["cpu"]
        self.trial_timeout = trial_timeout
        self.threads = threads or threads_per_worker(len(self.slots))
        self.in_process = in_process
        self.poll = poll
        self.mp = mp.get_context(start_method)
        self.workers: list[_Worker] = []
        self.replaced = 0          # workers replaced (timeouts and deaths), for reports and tests
        self.startup_deaths = 0    # consecutive deaths before "ready": a broken worker set-up

    # -- public ---------------------------------------------------------------------------
    def run(self, source: JobSource, ctx: EvalContext) -> None:
        if self.in_process:
            self._run_inline(source, ctx)
            return
        try:
            self._run_pool(source, ctx)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop every worker (kill those still busy); idempotent."""
        for w in self.workers:
            try:
                if w.job is None and w.proc.is_alive():
                    w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        deadline = time.time() + 2.0
        for w in self.workers:
            w.proc.join(max(0.0, deadline - time.time()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)
            w.conn.close()
        self.workers = []

    # -- in-process -----------------------------------------------------------------------
    def _run_inline(self, source: JobSource, ctx: EvalContext) -> None:
        fn = load_evaluator(ctx.evaluator)
        queue = list(source.initial_jobs())
        while True:
            job = queue.pop(0) if queue else source.next_job()
            if job is None:
                break
            t0 = time.time()
            result = evaluate_job(job, ctx, fn,
                                  on_rung=lambda r, a, j=job: _rung_answer(source, j, r, a))
            source.complete(job, result, worker="inproc", started_at=t0, finished_at=time.time())

    # -- worker pool ----------------------------------------------------------------------
    def _spawn(self, index: int, ctx: EvalContext) -> _Worker:
        device = self.slots[index]
        name = f"{device}-{index}"
        parent_conn, child_conn = self.mp.Pipe()
        proc = self.mp.Process(target=_worker_main, name=f"effnas-worker-{index}",
                               args=(child_conn, name, device, self.threads, ctx.to_dict()), daemon=True)
        proc.start()
        child_conn.close()
        return _Worker(name=name, device=device, proc=proc, conn=parent_conn)

    def _replace(self, i: int, ctx: EvalContext) -> None:
        old = self.workers[i]
        if old.proc.is_alive():
            old.proc.kill()
        old.proc.join(5)
        old.conn.close()
        self.workers[i] = self._spawn(i, ctx)
        self.replaced += 1

    def _run_pool(self, source: JobSource, ctx: EvalContext) -> None:
        self.workers = [self._spawn(i, ctx) for i in range(len(self.slots))]
        queue = list(source.initial_jobs())
        while True:
            no_more = False
            for w in self.workers:  # hand jobs to idle workers
                if w.job is None and w.ready:
                    job = queue.pop(0) if queue else source.next_job()
                    if job is None:
                        no_more = True
                        break
                    w.conn.send(job.to_dict())
                    w.job, w.started = job, time.time()
            busy = [w for w in self.workers if w.job is not None]
            if not busy and no_more:
                return
            timeout = self.poll
            if self.trial_timeout:
                now = time.time()
                for w in busy:
                    timeout = min(timeout, max(0.0, w.started + self.trial_timeout - now))
            handles = {}
            for i, w in enumerate(self.workers):
                handles[w.conn] = i
                handles[w.proc.sentinel] = i
            ready = wait(list(handles), timeout)
            now = time.time()
            for i in sorted({handles[h] for h in ready}):
                w = self.workers[i]
                message = None
                try:
                    if w.conn.poll():
                        message = w.conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None and message[0] == "ready":
                    w.ready, self.startup_deaths = True, 0
                    continue
                if message is not None and message[0] == "rung":  # ASHA: answer at once, never wait
                    _, name, rung, acc = message
                    job = w.job if w.job is not None and w.job.name == name else None
                    try:
                        w.conn.send(("rung-answer", name, rung, _rung_answer(source, job, rung, acc)))
                    except (OSError, BrokenPipeError):
                        pass
                    continue
                if message is not None and message[0] == "result":
                    job, w.job = w.job, None
                    if job is not None:
                        source.complete(job, TrialResult.from_dict(message[2]), worker=w.name,
                                        started_at=w.started, finished_at=now)
                    continue
                if not w.proc.is_alive():  # died: mid-trial or while starting
                    w.proc.join(1)
                    job, w.job = w.job, None
                    code = w.proc.exitcode
                    self._replace(i, ctx)
                    if job is not None:
                        source.complete(job, TrialResult(status="failed", wall_time=now - w.started,
                                                         message=f"worker process died (exit code {code})"),
                                        worker=w.name, started_at=w.started, finished_at=now)
                    elif not w.ready:
                        self.startup_deaths += 1
                        if self.startup_deaths > 10 * len(self.slots):
                            raise EngineError(f"worker processes keep dying at start-up (exit code {code})")
            if self.trial_timeout:
                for i, w in enumerate(self.workers):
                    if w.job is not None and now - w.started >= self.trial_timeout:
                        job, w.job = w.job, None
                        started = w.started
                        self._replace(i, ctx)
                        source.complete(job, TrialResult(status="timeout", wall_time=now - started,
                                                         message=f"over the {self.trial_timeout:g} s trial limit: "
                                                                 "worker killed"),
                                        worker=w.name, started_at=started, finished_at=time.time())
