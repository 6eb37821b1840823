"""Evaluators that train nothing, for engine and CLI tests (importable by spawned workers).

All keep the evaluator contract `fn(spec, budget) -> TrialResult`. Accuracy is a hash of the
architecture's key, so results are deterministic and belong visibly to their spec.
"""
from __future__ import annotations

import hashlib
import os
import time

from nas.evaluate.result import TrialResult

# What `mixed` does with an architecture, by its key's hash (see `behaviour`).
BEHAVIOURS = ("raise", "nan", "hang", "exit", "ok", "ok", "ok", "ok")


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def accuracy_of(key: str) -> float:
    return 0.1 + 0.85 * (key_hash(key) % 10_000) / 10_000


def behaviour(key: str) -> str:
    return BEHAVIOURS[key_hash(key) % len(BEHAVIOURS)]


def ok(spec, budget):
    """Deterministic accuracy; sleeps EFFNAS_FAKE_SLEEP seconds (default 0) first. With a
    stage-2 budget (`test=True`) also a test accuracy: the validation one moved by a
    seed-dependent jitter of at most ±0.01, so stage 2 sees seed noise."""
    delay = float(os.environ.get("EFFNAS_FAKE_SLEEP", "0") or 0)
    if delay:
        time.sleep(delay)
    acc = accuracy_of(spec.key())
    test = None
    if getattr(budget, "test", False):
        test = acc - 0.01 + 0.02 * (key_hash(f"{spec.key()}/{budget.seed}") % 1000) / 1000
    return TrialResult(status="ok", accuracy=acc, epoch_accuracies=[acc / 2, acc], wall_time=delay,
                       test_accuracy=test)


def no_gap(spec, budget):
    """`ok` on search-validation (so stage 2 chooses a B0), but every network has the same
    test accuracy up to a seed jitter of ±0.01: stage 2 sees no true difference."""
    result = ok(spec, budget)
    if result.test_accuracy is not None:
        result.test_accuracy = 0.89 + 0.02 * (key_hash(f"{spec.key()}/{budget.seed}") % 1000) / 1000
    return result


def noop(spec, budget):
    """Does no work at all (engine overhead)."""
    return TrialResult(status="ok", accuracy=0.5)


def raises(spec, budget):
    raise RuntimeError("injected failure")


def nan(spec, budget):
    return TrialResult(status="ok", accuracy=float("nan"))


def hang(spec, budget):
    time.sleep(600)


def exits(spec, budget):
    os._exit(3)


def mixed(spec, budget):
    """raise / NaN / hang / os._exit / ok, chosen by the architecture's key."""
    return {"raise": raises, "nan": nan, "hang": hang, "exit": exits, "ok": ok}[behaviour(spec.key())](
        spec, budget)


def by_name(spec, budget):
    """The behaviour named by `spec.name` (`sleep0.5` sleeps, then ok; ok when unnamed)."""
    if spec.name.startswith("sleep"):
        time.sleep(float(spec.name[5:]))
        return ok(spec, budget)
    fn = {"raise": raises, "nan": nan, "hang": hang, "exit": exits}.get(spec.name, ok)
    return fn(spec, budget)


def by_resolution(spec, budget):
    """Accuracy = proxy resolution / 1000: shows which resolution a trial trained at."""
    if budget.target_resolution != spec.resolution and budget.target_resolution != 224:
        raise ValueError(f"costed at {budget.target_resolution}, spec runs at {spec.resolution}")
    return TrialResult(status="ok", accuracy=budget.resolution / 1000)


def curve_accuracy(key: str, fraction: float) -> float:
    """`curve`'s learning curve: the final accuracy times (0.4 + 0.6·fraction), so every
    rung ranks architectures as the full budget does."""
    return accuracy_of(key) * (0.4 + 0.6 * fraction)


def curve(spec, budget, rungs=None, on_rung=None):
    """`ok` with a learning curve and ASHA's hook (`nas.search.asha`): at each rung fraction it
    reports `curve_accuracy` and stops when told to; sleeps EFFNAS_FAKE_SLEEP per rung."""
    from nas.evaluate.result import stopped_result

    delay = float(os.environ.get("EFFNAS_FAKE_SLEEP", "0") or 0)
    key = spec.key()
    for i, f in enumerate(rungs or []):
        if delay:
            time.sleep(delay)
        acc = curve_accuracy(key, f)
        if on_rung is not None and not on_rung(i, acc):
            return stopped_result(i, f, acc)
    if delay:
        time.sleep(delay)
    acc = accuracy_of(key)
    test = None
    if getattr(budget, "test", False):  # stage 2: as `ok`, a seed-dependent jitter of at most ±0.01
        test = acc - 0.01 + 0.02 * (key_hash(f"{key}/{budget.seed}") % 1000) / 1000
    return TrialResult(status="ok", accuracy=acc, epoch_accuracies=[acc], wall_time=delay, test_accuracy=test)


def scaled(spec, budget):
    """Accuracy that rewards balanced scaling: concave in each of width (head channels over
    1280), depth (layers over 16) and image size (over 32 px), so at equal cost the compound
    mix beats any single dimension; plus a seed jitter of at most ±0.002 on both parts. For
    `python -m scaling verify` and the grid's rule (the scaling tests)."""
    import math

    def gain(ratio: float) -> float:
        return math.sqrt(max(0.0, math.log(ratio)))

    acc = 0.5 + 0.1 * (gain(spec.head_channels / 1280) + gain(spec.num_layers / 16) + gain(budget.resolution / 32))
    jitter = 0.004 * (key_hash(f"{spec.key()}/{budget.seed}") % 1000) / 1000 - 0.002
    test = acc + jitter if getattr(budget, "test", False) else None
    return TrialResult(status="ok", accuracy=acc - jitter / 2, test_accuracy=test)
