"""`evaluate` trains with the classifier replaced for the proxy; the loop's `nas.search.records`
counts cost at the target resolution with the spec's own classifier and computes the reward."""
import dataclasses

import pytest

import search_space.model as model_module
from nas.evaluate import data as D
from nas.evaluate.budget import ProxyBudget
from nas.errors import UserError
from nas.search.objective import Objective
from nas.search.records import new_job, trial_record
from nas.search.objective import reward
from nas.trial import evaluate
from search_space import cost, zoo
from search_space.spec import ArchSpec, BlockSpec

# An ImageNet-style spec (1,000 classes) trained on a 10-class proxy.
TINY = ArchSpec(blocks=(BlockSpec(1, 3, 2, 4, 8, 16, se_ratio=0.25),), stem_channels=8, head_channels=32,
                num_classes=1000, dropout=0.0, drop_connect=0.0, name="tiny")
BUDGET = ProxyBudget(dataset="digits", resolution=8, steps=20, batch_size=64, lr=0.2)


@pytest.fixture(scope="module")
def digits():
    return D.load("digits", resolution=8, seed=0)


def test_evaluate_trains_the_proxy_classifier_and_records_cost_at_the_target(digits, monkeypatch):
    built = []
    real_build = model_module.build
    monkeypatch.setattr(model_module, "build", lambda spec: built.append(spec.num_classes) or real_build(spec))
    r = evaluate(TINY, BUDGET, data=digits)
    assert r.status == "ok" and built == [10] and 0 <= r.accuracy <= 1
    job = new_job("search", 0, TINY, 224)
    assert job.macs == cost.macs(TINY, 224) and job.params == cost.params(TINY)  # 1,000 classes, 224 px
    assert job.macs > cost.macs(TINY, 8)
    rec = trial_record(job, r, Objective(400_000), told=True)
    assert rec["reward"] == pytest.approx(reward(r.accuracy, job.macs, 400_000))
    hard = trial_record(job, r, Objective(400_000, 0.0, -1.0), told=True)
    assert hard["reward"] == pytest.approx(reward(r.accuracy, job.macs, 400_000, 0.0, -1.0))


def test_failures_keep_cost_but_have_no_reward(digits):
    r = evaluate(TINY, dataclasses.replace(BUDGET, lr=1e30), data=digits)
    rec = trial_record(new_job("search", 0, TINY, 224), r, Objective(400_000_000), told=True)
    assert r.status == "diverged" and rec["status"] == "diverged"
    assert rec["reward"] is None and rec["macs"] == cost.macs(TINY, 224)


def test_an_ok_result_without_a_finite_accuracy_is_recorded_as_diverged():
    from nas.evaluate.result import TrialResult
    job = new_job("grid", 0, zoo.get("efficientnet-b0"))
    for acc in (None, float("nan"), float("inf")):
        rec = trial_record(job, TrialResult(status="ok", accuracy=acc), Objective(400_000_000), told=False)
        assert rec["status"] == "diverged" and rec["reward"] is None and rec["accuracy"] is None


def test_bad_target_is_user_error():
    from nas.cli.args import parse_count
    with pytest.raises(UserError, match="target '400X'"):
        parse_count("400X")


# One block, eight channels: a network that can barely see a digit.
CRIPPLED = ArchSpec(blocks=(BlockSpec(1, 3, 2, 1, 8, 8),), stem_channels=8, head_channels=16,
                    num_classes=1000, dropout=0.0, drop_connect=0.0, name="crippled")
QUICK = ProxyBudget(dataset="mnist5k", resolution=32, steps=40, batch_size=128, lr=0.1, warmup_epochs=0.2)


def test_b0_learns_real_digits_and_a_crippled_net_scores_lower():
    b0 = evaluate(zoo.get("efficientnet-b0"), QUICK)
    weak = evaluate(CRIPPLED, QUICK)
    assert b0.status == weak.status == "ok"
    assert b0.accuracy > 0.45  # chance is 0.10
    assert weak.accuracy < b0.accuracy - 0.2


def test_b0_same_seed_same_accuracy():
    short = dataclasses.replace(QUICK, steps=4)
    a, b = (evaluate(zoo.get("efficientnet-b0"), short) for _ in range(2))
    assert a.accuracy == b.accuracy and a.loss == b.loss
