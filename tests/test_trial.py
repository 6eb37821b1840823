"""`evaluate`: cost at the target resolution with the spec's own classifier, reward, failures."""
import dataclasses

import pytest

import search_space.model as model_module
from nas import data as D
from nas.budget import ProxyBudget
from nas.errors import UserError
from nas.reward import reward
from nas.trial import cost_only, evaluate
from search_space import cost, zoo
from search_space.spec import ArchSpec, BlockSpec

# An ImageNet-style spec (1,000 classes) trained on a 10-class proxy.
TINY = ArchSpec(blocks=(BlockSpec(1, 3, 2, 4, 8, 16, se_ratio=0.25),), stem_channels=8, head_channels=32,
                num_classes=1000, dropout=0.0, drop_connect=0.0, name="tiny")
BUDGET = ProxyBudget(dataset="digits", resolution=8, steps=20, batch_size=64, lr=0.2)


@pytest.fixture(scope="module")
def digits():
    return D.load("digits", resolution=8, seed=0)


def test_evaluate_fills_cost_at_target_resolution_and_reward(digits, monkeypatch):
    built = []
    real_build = model_module.build
    monkeypatch.setattr(model_module, "build", lambda spec: built.append(spec.num_classes) or real_build(spec))
    r = evaluate(TINY, BUDGET, "400k", data=digits)
    assert r.status == "ok" and built == [10]
    assert r.macs == cost.macs(TINY, 224) and r.params == cost.params(TINY)
    assert r.macs > cost.macs(TINY, 8)
    assert r.reward == pytest.approx(reward(r.accuracy, r.macs, 400_000))
    hard = evaluate(TINY, BUDGET, 400_000, alpha=0.0, beta=-1.0, data=digits)
    assert hard.accuracy == r.accuracy and hard.reward == pytest.approx(reward(r.accuracy, r.macs, 400_000, 0.0, -1.0))


def test_failures_keep_cost_but_have_no_reward(digits):
    r = evaluate(TINY, dataclasses.replace(BUDGET, lr=1e30), "400M", data=digits)
    assert r.status == "diverged" and r.reward is None and r.macs == cost.macs(TINY, 224)


def test_cost_only_trains_nothing():
    r = cost_only(zoo.get("efficientnet-b0"), ProxyBudget(), "400M")
    assert r.status == "skipped" and r.accuracy is None and r.reward is None
    assert 380e6 < r.macs < 400e6 and r.params == 5_288_548


def test_bad_target_is_user_error(digits):
    with pytest.raises(UserError, match="target '400X'"):
        evaluate(TINY, BUDGET, "400X", data=digits)


# One block, eight channels: a network that can barely see a digit.
CRIPPLED = ArchSpec(blocks=(BlockSpec(1, 3, 2, 1, 8, 8),), stem_channels=8, head_channels=16,
                    num_classes=1000, dropout=0.0, drop_connect=0.0, name="crippled")
QUICK = ProxyBudget(dataset="mnist5k", resolution=32, steps=40, batch_size=128, lr=0.1, warmup_epochs=0.2)


def test_b0_learns_real_digits_and_a_crippled_net_scores_lower():
    b0 = evaluate(zoo.get("efficientnet-b0"), QUICK, "400M")
    weak = evaluate(CRIPPLED, QUICK, "400M")
    assert b0.status == weak.status == "ok"
    assert b0.accuracy > 0.45  # chance is 0.10
    assert weak.accuracy < b0.accuracy - 0.2 and weak.reward < b0.reward


def test_b0_same_seed_same_accuracy():
    short = dataclasses.replace(QUICK, steps=4)
    a, b = (evaluate(zoo.get("efficientnet-b0"), short, "400M") for _ in range(2))
    assert a.accuracy == b.accuracy and a.loss == b.loss
