"""The proxy trainer: determinism, schedules, precision paths, and failures as results."""
import dataclasses
import math

import pytest
import torch

import search_space.model as model_module
from nas.evaluate import data as D
from nas.evaluate import train as T
from nas.evaluate.budget import ProxyBudget
from nas.errors import UserError
from search_space.spec import ArchSpec, BlockSpec

TINY = ArchSpec(blocks=(BlockSpec(1, 3, 2, 4, 8, 16, se_ratio=0.25),), stem_channels=8, head_channels=32,
                num_classes=10, dropout=0.1, drop_connect=0.0, name="tiny")


@pytest.fixture(scope="module")
def digits():
    return D.load("digits", resolution=8, seed=0)


def budget(**kw):
    base = dict(dataset="digits", resolution=8, steps=25, batch_size=64, lr=0.2, warmup_epochs=0.1)
    return ProxyBudget(**{**base, **kw})


def test_same_seed_same_result_other_seed_differs(digits):
    a = T.train(TINY, budget(seed=3), digits)
    b = T.train(TINY, budget(seed=3), digits)
    c = T.train(TINY, budget(seed=4), digits)
    assert a.status == b.status == c.status == "ok"
    assert a.accuracy == b.accuracy and a.loss == b.loss and a.epoch_accuracies == b.epoch_accuracies
    assert c.loss != a.loss
    assert a.accuracy > 0.3  # 10 classes: chance is 0.1
    assert a.images_per_sec > 0 and a.wall_time > 0


def test_epochs_give_one_accuracy_each(digits):
    seen = []
    r = T.train(TINY, budget(steps=None, epochs=2, batch_size=256), digits,
                on_epoch=lambda epoch, acc: seen.append((epoch, acc)))
    assert r.status == "ok" and len(r.epoch_accuracies) == 2 and r.accuracy == r.epoch_accuracies[-1]
    assert seen == list(enumerate(r.epoch_accuracies, start=1))  # reported while training, in order
    half = T.train(TINY, budget(steps=None, epochs=0.5, batch_size=256), digits)
    assert len(half.epoch_accuracies) == 1


def test_rmsprop_linear_and_bf16_channels_last_on_cpu(digits, monkeypatch):
    dtypes, formats = set(), set()
    real_build = model_module.build

    def build(spec):
        net = real_build(spec)
        def hook(module, inputs, output):
            dtypes.add(output.dtype)
            formats.add(inputs[0].is_contiguous(memory_format=torch.channels_last))

        net.stem[0].register_forward_hook(hook)
        return net

    monkeypatch.setattr(model_module, "build", build)
    r = T.train(TINY, budget(optimizer="rmsprop", lr=0.01, schedule="linear", precision="bf16", channels_last=True), digits)
    assert r.status == "ok" and r.accuracy > 0.2
    assert dtypes == {torch.bfloat16} and formats == {True}


def test_lr_schedule_warmup_then_decay():
    lrs = [T.lr_at(s, 100, 10, 1.0, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.01
    assert T.lr_at(55, 100, 10, 1.0, "linear") == pytest.approx(0.5)


def test_bn_recalibration_uses_training_statistics(digits):
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    T.recalibrate_bn(net, digits, batch=100, bf16=False, channels_last=False, images=500)
    expected = torch.cat(list(digits.calibration_batches(500, 128))).mean(dim=(0, 2, 3))
    assert torch.allclose(net[0].running_mean, expected, atol=1e-5)
    assert net[0].momentum == 0.1


def test_diverged(digits):
    r = T.train(TINY, budget(lr=1e30, warmup_epochs=0), digits)
    assert r.status == "diverged" and r.accuracy is None and "NaN" in r.message


def test_timeout(digits):
    r = T.train(TINY, budget(steps=10_000, time_limit=0.5), digits)
    assert r.status == "timeout" and r.accuracy is None and "limit" in r.message
    assert r.wall_time < 10


class _Boom(torch.nn.Module):
    def __init__(self, exc):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.exc = exc

    def forward(self, x):
        raise self.exc


@pytest.mark.parametrize("exc, status, message", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "oom", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"),
    (MemoryError("cannot allocate 40 GiB"), "oom", "MemoryError: cannot allocate 40 GiB"),
    (ValueError("boom\nsecond line"), "failed", "ValueError: boom"),
])
def test_exceptions_become_results(digits, monkeypatch, exc, status, message):
    freed = []
    monkeypatch.setattr(model_module, "build", lambda spec: _Boom(exc))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    r = T.train(TINY, budget(), digits)
    assert r.status == status and r.message == message and r.accuracy is None
    assert bool(freed) == (status == "oom")


def test_bad_budget_and_resolution_are_user_errors(digits):
    with pytest.raises(UserError, match="optimizer 'adam'"):
        T.train(TINY, budget(optimizer="adam"), digits)
    deep = dataclasses.replace(TINY, blocks=TINY.blocks + (BlockSpec(1, 3, 2, 1, 16, 16), BlockSpec(1, 3, 2, 1, 16, 16)))
    assert deep.total_stride == 16
    with pytest.raises(UserError, match="proxy resolution 8 is below the network's total stride 16"):
        T.train(deep, budget(), digits)


def test_loads_data_from_budget_when_not_given():
    r = T.train(TINY, budget(steps=3))
    assert r.status == "ok" and math.isfinite(r.loss)


def test_proxy_init_starts_at_uniform_predictions():
    from search_space import zoo

    net = model_module.build(dataclasses.replace(zoo.get("efficientnet-b0"), num_classes=10))
    T.proxy_init(net)
    net.eval()
    with torch.no_grad():
        logits = net(torch.randn(2, 3, 32, 32))
    assert torch.count_nonzero(logits) == 0
    residual = [m for m in net.modules() if getattr(m, "residual", False) is True]
    assert len(residual) == 9  # B0: 16 layers, 9 with an identity shortcut
    assert all(torch.count_nonzero(m.ops[-1][1].weight.detach()) == 0 for m in residual)
