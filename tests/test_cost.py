"""The analytic cost model agrees exactly with counting on the built module (our hooks and torch's FlopCounterMode)."""
import random
import subprocess
import sys

import pytest

from search_space import ArchSpec, BlockSpec, cost, zoo
from search_space.model import build, count_by_hooks
from search_space.space import SearchSpace

RESOLUTIONS = (32, 96, 224, 227)
SMALL = (32, 33, 64, 97)  # odd and even sizes; large ones are covered by the zoo test


def random_spec(rng: random.Random) -> ArchSpec:
    """Small random networks over every operator, kernel, SE, skip and expansion, odd widths."""
    stem = rng.randint(1, 33)
    blocks, cin = [], stem
    for _ in range(rng.randint(1, 7)):
        cout = rng.choice([cin, rng.randint(1, 40)])  # equal widths make residuals possible
        blocks.append(BlockSpec(
            repeats=rng.randint(1, 3), kernel=rng.choice([3, 5, 7]), stride=rng.choice([1, 2]),
            expand_ratio=rng.choice([1, 3, 6]), in_channels=cin, out_channels=cout,
            se_ratio=rng.choice([0.0, 0.25]), skip=rng.random() < 0.5,
            conv_op=rng.choice(["mbconv", "dsconv", "conv"])))
        cin = cout
    return ArchSpec(blocks=tuple(blocks), stem_channels=stem, head_channels=rng.randint(1, 64),
                    num_classes=rng.randint(1, 20), activation=rng.choice(["swish", "relu"]))


def analytic(spec, resolution):
    return cost.macs(spec, resolution), cost.params(spec)


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_zoo_agrees_with_hooks(name, resolution):
    spec = zoo.get(name)
    assert analytic(spec, resolution) == count_by_hooks(build(spec), resolution)


def flop_counter(spec, resolution):
    """(FLOPs, counted ops, params) by torch's own FlopCounterMode: an oracle independent of our hooks.

    Shapes only (built on `meta`), so even 224x224 costs milliseconds.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = build(spec, device="meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, resolution, resolution, device="meta"))
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    return counter.get_total_flops(), ops, sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("resolution", (64, 224))
def test_zoo_agrees_with_torch_flop_counter(name, resolution):
    spec = zoo.get(name)
    flops, ops, n_params = flop_counter(spec, resolution)
    # FlopCounterMode counts 2 FLOPs per multiply-add of convolutions (the SE's 1x1 convs
    # included) and of the classifier's addmm, and nothing for BN, activations, pooling,
    # the SE gate or residual adds, exactly the rule of the analytic model: equality holds.
    assert ops == {"aten.convolution", "aten.addmm"}
    assert flops == 2 * cost.macs(spec, resolution)
    assert n_params == cost.params(spec)


def test_search_space_samples_agree_with_torch_flop_counter():
    space = SearchSpace.default()
    rng = random.Random(2024)
    for i in range(20):
        spec = space.decode(space.sample(rng))
        r = SMALL[i % len(SMALL)]
        flops, _, n_params = flop_counter(spec, r)
        assert (flops, n_params) == (2 * cost.macs(spec, r), cost.params(spec)), (r, spec.key())


def test_b0_matches_reference_counts():
    b0 = zoo.get("efficientnet-b0")
    # docs/reference.md: torchvision / timm efficientnet_b0 (1000 classes): 5,288,548 parameters,
    # 0.386 GFLOPS (= MACs).
    assert cost.params(b0) == 5_288_548
    assert abs(cost.macs(b0) - 0.386e9) < 0.5e6
    assert cost.macs(b0) == cost.macs(b0, 224)


def test_mnasnet_a1_matches_paper():
    a1 = zoo.get("mnasnet-a1")
    assert round(cost.params(a1) / 1e6, 2) == 3.89      # paper 3.9 M, timm 3.89 M
    assert abs(cost.macs(a1) - 312e6) < 1e6             # paper: 312 M multiply-adds


def test_500_random_specs_agree_with_hooks():
    rng = random.Random(1234)
    ops = set()
    for i in range(500):
        spec = random_spec(rng)
        r = SMALL[i % len(SMALL)]
        assert analytic(spec, r) == count_by_hooks(build(spec), r), (r, spec.key())
        ops |= {(b.conv_op, b.kernel, b.expand_ratio, b.se_ratio > 0, b.has_residual()) for b in spec.blocks}
    # the sample really covered every operator variant
    assert {o[0] for o in ops} == {"mbconv", "dsconv", "conv"}
    assert {o[1] for o in ops} == {3, 5, 7} and {o[2] for o in ops} == {1, 3, 6}
    assert {o[3] for o in ops} == {True, False} and {o[4] for o in ops} == {True, False}


def test_500_search_space_samples_agree_with_hooks():
    space = SearchSpace.default()
    rng = random.Random(99)
    for i in range(500):
        # 10 classes keeps the classifier small; the cost is counted at small odd and even sizes
        spec = space.decode(space.sample(rng), num_classes=10)
        r = SMALL[i % len(SMALL)]
        assert analytic(spec, r) == count_by_hooks(build(spec), r), (r, spec.key())


def test_stage_table_sums_to_totals_and_follows_table_1():
    b0 = zoo.get("efficientnet-b0")
    rows = cost.stage_table(b0, 224)
    assert sum(r.macs for r in rows) == cost.macs(b0, 224)
    assert sum(r.params for r in rows) == cost.params(b0)
    # EfficientNet paper, Table 1
    assert [r.resolution for r in rows] == [224, 112, 112, 56, 28, 14, 14, 7, 7]
    assert [r.channels for r in rows] == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert [r.layers for r in rows] == [1, 1, 2, 2, 3, 3, 4, 1, 1]
    assert rows[1].operator.startswith("MBConv1 k3x3") and rows[6].operator.startswith("MBConv6 k5x5")
    assert rows[0].operator == "Conv3x3" and rows[-1].operator == "Conv1x1 & Pooling & FC"


def test_macs_grow_with_resolution_params_do_not():
    b0 = zoo.get("efficientnet-b0")
    assert cost.macs(b0, 240) > cost.macs(b0, 224) > cost.macs(b0, 112)
    assert cost.params(b0) == cost.params(b0.__class__(**{**b0.__dict__, "resolution": 300}))


@pytest.mark.parametrize("bad", [0, -5, 2.5, "224", True])
def test_bad_resolution_is_rejected(bad):
    with pytest.raises(ValueError, match="resolution"):
        cost.macs(zoo.get("efficientnet-b0"), bad)


def test_cost_does_not_import_torch():
    code = "import sys, search_space.cost, search_space.zoo; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
