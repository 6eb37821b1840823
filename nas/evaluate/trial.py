"""The evaluators: `evaluate(spec, budget)` trains a candidate; the hash ones train nothing.

The contract every evaluator keeps (`--evaluator MODULE:FUNC`): `fn(spec, budget)` returns
a `nas.evaluate.result.TrialResult` of what it measured (status, accuracy, per-epoch curve, wall
time, message) and may accept `on_epoch(epoch, accuracy)` to report the curve as it goes.
Cost and reward are not the evaluator's business: the loop counts multiply-adds at the
target resolution with the deliverable classifier and computes the reward
(`nas.search.records`), the same way for every job.
"""
from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any, Callable

from .budget import ProxyBudget
from .result import TrialResult

if TYPE_CHECKING:
    from .data import ProxyData


def evaluate(spec, budget: ProxyBudget, data: "ProxyData | None" = None,
             on_epoch: Callable[[int, float], None] | None = None, rungs: list | None = None,
             on_rung: Callable[[int, float], bool] | None = None, weights_path: str | None = None) -> TrialResult:
    """Proxy-train `spec` at `budget.resolution` with the classifier replaced for the dataset.

    Never raises for a failing candidate (the result's status says what happened); a
    `UserError` (bad dataset or budget) propagates because it affects every trial.
    `rungs`/`on_rung`: ASHA's early stopping (`nas.evaluate.train.train`, `nas.search.asha`);
    `weights_path`: where stage 2 keeps the trained weights.
    """
    from .train import train  # torch only here: the hash evaluators start without it

    return train(spec, budget, data, on_epoch, rungs, on_rung, weights_path)


def hash_accuracy(key: str) -> float:
    """A deterministic stand-in accuracy in [0.05, 0.95) that depends only on `key`."""
    digest = hashlib.sha256(key.encode()).digest()
    return 0.05 + 0.9 * int.from_bytes(digest[:8], "big") / 2.0**64


def hash_evaluate(spec: Any, budget: Any) -> TrialResult:
    """Trains nothing (tests, benchmarks): accuracy = hash_accuracy(spec.key()), so engine
    overhead and the attribution of results to architectures can be checked for real."""
    acc = hash_accuracy(spec.key())
    return TrialResult(status="ok", accuracy=acc, epoch_accuracies=[acc], message="hash evaluator")


def hash_evaluate_jitter(spec: Any, budget: Any) -> TrialResult:
    """`hash_evaluate` after a key-dependent sleep of 0.1-0.6 s, so that concurrent
    trials finish out of order (the case where NNI mis-pairs parameters and results)."""
    time.sleep(0.1 + 0.5 * (hash_accuracy(spec.key() + "/delay") - 0.05) / 0.9)
    return hash_evaluate(spec, budget)
