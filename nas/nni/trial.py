"""The trial command of the NNI engine: `python -m nas.nni.trial`.

NNI runs this module once per trial, on whichever machine its training service picks.
Why it is shaped this way (see docs/nni.md):

* `nni.get_next_parameter()` is called FIRST: a trial that dies before reading its
  parameters stalls NNI's dispatcher, so nothing of ours is even imported before it.
* Everything after it is wrapped: any failure becomes a *result* (status `failed`),
  never a crash.
* The parameters carry the whole job (`nas.engines.protocol.Job`: kind, proposal id, choices,
  canonical key, spec, MACs) and the `EvalContext` (budget, evaluator), so the trial
  needs no shared file system (remote and Kubernetes workers work the same); it trains
  with `nas.engines.evaluator.evaluate_job`, as the local engine does. It computes no reward: the
  tuner records the result through the loop, which does.
* The final-result dict repeats what this trial actually trained (proposal id, choices,
  key, spec): NNI can pair parameters and results of different trials, so the engine
  builds its records from this dict alone. Its `default` metric (what NNI's web UI
  shows) is the accuracy.
"""
from __future__ import annotations

import socket
import sys
import time
import traceback
from typing import Any, Callable

RESULT_FIELDS = ("status", "accuracy", "loss", "epoch_accuracies", "wall_time", "images_per_sec", "message",
                 "test_accuracy", "stopped_at")
IDENTITY = ("kind", "proposal_id", "choices", "key", "spec")


def run_trial(params: Any, report_intermediate: Callable[[Any], None]) -> dict:
    """Evaluate the job in `params` with the engines' `evaluate_job`; always returns a
    final-result dict that repeats the job's identity (what this trial trained)."""
    job_d = params.get("job") if isinstance(params, dict) else None
    job_d = job_d if isinstance(job_d, dict) else {}
    out: dict[str, Any] = {"default": 0.0, **{k: job_d.get(k) for k in IDENTITY},
                           "session": params.get("session") if isinstance(params, dict) else None,
                           "host": socket.gethostname(), "status": "failed", "message": ""}
    t0 = time.time()
    if "proposal_id" in job_d:  # first report: which job this trial holds (nas.nni.assessor)
        try:
            report_intermediate({k: out[k] for k in ("proposal_id", "kind", "session")})
        except Exception:  # noqa: BLE001 - the trial goes on; only attribution of its end is lost
            traceback.print_exc()
    try:
        if not job_d:
            raise ValueError(f"no job in the trial parameters: {params!r:.200}")
        from nas.engines.evaluator import evaluate_job, load_evaluator, with_epoch_hook
        from nas.engines.protocol import EvalContext, Job
        from nas.evaluate.result import finite
        from search_space.spec import ArchSpec

        job = Job.from_dict(job_d)
        ctx = EvalContext.from_dict(params["ctx"])
        key = ArchSpec.from_dict(job.spec).key()
        if key != job.key:
            raise ValueError(f"spec does not match its key ({key} != {job.key})")
        mark = {"proposal_id": job.proposal_id, "kind": job.kind, "session": out["session"]}  # nas.nni.assessor

        def on_epoch(*args: Any, **kwargs: Any) -> None:
            acc = kwargs.get("accuracy", args[-1] if args else None)
            report_intermediate({"default": float(acc), **mark})

        def on_rung(rung: int, accuracy: float) -> bool:
            # ASHA: the assessor decides (nas.nni.assessor) and NNI ends a stopped trial;
            # the trial itself never waits for an answer
            report_intermediate({"default": float(accuracy), "rung": int(rung), **mark})
            return True

        fn, hooked = with_epoch_hook(load_evaluator(ctx.evaluator), on_epoch)
        data = evaluate_job(job, ctx, fn, on_rung=on_rung).to_dict()
        for name in RESULT_FIELDS:
            out[name] = data.get(name)
        if not hooked:  # no per-epoch hook: the curve is reported once training is over
            for acc in data.get("epoch_accuracies") or []:
                report_intermediate({"default": float(acc), **mark})
        for name in ("accuracy", "loss", "images_per_sec", "test_accuracy"):
            out[name] = finite(out.get(name))
        out["default"] = out["accuracy"] if out["status"] == "ok" and out["accuracy"] is not None else 0.0
    except BaseException as exc:  # noqa: BLE001 - every failure must become a result
        out["status"] = "failed"
        out["message"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
            (f"{type(exc).__name__}: {exc}".splitlines() or ["error"])[0][:500]
        if not isinstance(exc, KeyboardInterrupt):
            traceback.print_exc()
    out["wall_time"] = out.get("wall_time") or round(time.time() - t0, 4)
    return out


def main() -> int:
    import nni

    params = nni.get_next_parameter()  # FIRST: see the module docstring
    try:
        out = run_trial(params, nni.report_intermediate_result)
        try:
            out["trial_id"] = nni.get_trial_id()
        except Exception:
            pass
    except BaseException as exc:  # noqa: BLE001 - last resort, still report
        job = (params.get("job") or {}) if isinstance(params, dict) else {}
        out = {"default": 0.0, "status": "failed", "message": f"{type(exc).__name__}: {exc}"[:500],
               **{k: job.get(k) for k in IDENTITY}}
    nni.report_final_result(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
