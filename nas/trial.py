"""`evaluate(spec, budget, target)`: the one function that trains a candidate and scores it.

Cost is counted analytically at the *target* resolution (224 by default) with the spec's
own classifier (1,000 classes for ImageNet-style specs), because the target T (400M) is
stated for that network; training happens at the proxy resolution with the classifier
replaced to fit the proxy dataset. Reward = MnasNet's ACC x (MACs/T)^w; failures carry
cost but no reward.
"""
from __future__ import annotations

from typing import Callable

from .budget import ProxyBudget
from .data import ProxyData
from .result import TrialResult
from .reward import parse_count, reward
from .train import _one_line, train


def _cost(spec, budget: ProxyBudget) -> tuple[int, int]:
    from search_space import cost

    return cost.macs(spec, budget.target_resolution), cost.params(spec)


def cost_only(spec, budget: ProxyBudget, target: int | str, alpha: float = -0.07, beta: float = -0.07) -> TrialResult:
    """A `skipped` result with MACs and params filled and no training (accuracy None).

    The search decides what reward a skipped candidate gets; `alpha`/`beta` are accepted
    so both functions share one signature.
    """
    parse_count(target)
    macs, params = _cost(spec, budget)
    return TrialResult(status="skipped", macs=macs, params=params, message="not trained: cost only")


def evaluate(spec, budget: ProxyBudget, target: int | str, alpha: float = -0.07, beta: float = -0.07,
             data: ProxyData | None = None,
             on_epoch: Callable[[int, float], None] | None = None) -> TrialResult:
    """Count cost at `budget.target_resolution`, proxy-train at `budget.resolution`, score.

    Never raises for a failing candidate (the result's status says what happened); a
    `UserError` (bad dataset, budget or target) propagates because it affects every trial.
    """
    target = parse_count(target)
    try:
        macs, params = _cost(spec, budget)
    except Exception as exc:  # noqa: BLE001 - a spec the cost model rejects is a failed trial
        return TrialResult(status="failed", message=_one_line(exc))
    result = train(spec, budget, data, on_epoch)
    result.macs, result.params = macs, params
    if result.status == "ok" and result.accuracy is not None:
        result.reward = reward(result.accuracy, macs, target, alpha, beta)
    return result
