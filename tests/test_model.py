"""The PyTorch builder: reference parameter count, layer semantics, CPU channels_last/bf16."""
import math

import pytest
import torch
from torch import nn

from search_space import ArchSpec, BlockSpec, zoo
from search_space.model import DropConnect, Layer, SqueezeExcite, build, count_by_hooks


def tiny(**kw) -> ArchSpec:
    blocks = (BlockSpec(1, 3, 1, 1, 8, 8, 0.25), BlockSpec(2, 5, 2, 6, 8, 16, 0.25),
              BlockSpec(2, 3, 1, 3, 16, 16, 0.0, conv_op="conv"))
    return ArchSpec(blocks=blocks, stem_channels=8, head_channels=32, num_classes=5, **kw)


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return build(zoo.get("efficientnet-b0"))


def test_b0_has_exactly_the_reference_parameter_count(b0):
    # torchvision efficientnet_b0 and timm efficientnet_b0, 1000 classes
    assert sum(p.numel() for p in b0.parameters()) == 5_288_548


def test_b0_structure(b0):
    layers = [m for m in b0.modules() if isinstance(m, Layer)]
    assert len(layers) == 16
    # 18 "conv layers" in the paper's sense: stem, 16 MBConv, head
    assert 2 + len(layers) == 18
    assert all(isinstance(m, nn.SiLU) for m in b0.modules() if isinstance(m, (nn.SiLU, nn.ReLU)))
    bns = [m for m in b0.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    # SE squeezes from the layer's input width: stage 2 first layer is 16 -> 96 expanded -> SE 4
    se = [m for m in layers[1].modules() if isinstance(m, SqueezeExcite)][0]
    assert (se.reduce.in_channels, se.reduce.out_channels) == (96, 4)
    assert se.reduce.bias is not None and se.expand.bias is not None
    # the first layer (expansion 1) has no 1x1 expansion conv: depthwise first
    first_conv = [m for m in layers[0].modules() if isinstance(m, nn.Conv2d)][0]
    assert first_conv.groups == 32 and first_conv.kernel_size == (3, 3)
    assert isinstance(b0.dropout, nn.Dropout) and b0.dropout.p == 0.2


def test_residual_and_drop_connect_schedule(b0):
    spec = zoo.get("efficientnet-b0")
    flat = [layer for block in spec.blocks for layer in block.layers()]
    layers = [m for m in b0.modules() if isinstance(m, Layer)]
    for i, (ls, lm) in enumerate(zip(flat, layers)):
        assert lm.residual == (ls.stride == 1 and ls.in_channels == ls.out_channels)
        if lm.residual:
            assert isinstance(lm.drop, DropConnect)
            assert math.isclose(1 - lm.drop.p, 1 - 0.2 * i / 16)  # survival for layer i of N
    assert sum(lm.residual for lm in layers) == 9


def test_noskip_removes_residual():
    spec = tiny()
    noskip = ArchSpec(blocks=tuple(BlockSpec(**{**b.__dict__, "skip": False}) for b in spec.blocks),
                      stem_channels=8, head_channels=32, num_classes=5)
    assert any(m.residual for m in build(spec).modules() if isinstance(m, Layer))
    assert not any(m.residual for m in build(noskip).modules() if isinstance(m, Layer))


def test_mnasnet_uses_relu_and_no_drop_connect():
    net = build(zoo.get("mnasnet-a1"))
    acts = [m for m in net.modules() if isinstance(m, (nn.SiLU, nn.ReLU))]
    assert acts and all(isinstance(m, nn.ReLU) for m in acts)
    assert not any(isinstance(m, DropConnect) for m in net.modules())


def test_init_follows_the_references(b0):
    conv = b0.stem[0]
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.15)
    bound = 1 / math.sqrt(1000)
    assert b0.classifier.weight.abs().max().item() <= bound and b0.classifier.weight.std().item() > bound / 3
    assert torch.count_nonzero(b0.classifier.bias) == 0


def test_forward_backward_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    net = build(tiny()).eval()
    x = torch.randn(2, 3, 37, 37)
    with torch.no_grad():
        ref = net(x)
        cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(x)
    assert ref.shape == (2, 5)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert (half.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    net.train()
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_drop_connect_is_stochastic_only_in_training():
    torch.manual_seed(0)
    drop = DropConnect(0.3)
    x = torch.ones(4000, 2, 1, 1)
    y = drop(x)
    kept = (y[:, 0, 0, 0] != 0).float()
    assert abs(kept.mean().item() - 0.7) < 0.03
    assert torch.all(y[:, 0] == y[:, 1])              # whole samples are dropped
    assert abs(y.mean().item() - 1.0) < 0.05          # rescaled by 1 / survival
    drop.eval()
    assert torch.equal(drop(x), x)


def test_count_by_hooks_restores_state_and_removes_hooks():
    net = build(tiny()).train()
    before = net(torch.zeros(1, 3, 16, 16))
    macs, params = count_by_hooks(net, 16)
    assert net.training and macs > 0 and params == sum(p.numel() for p in net.parameters())
    assert all(not m._forward_hooks for m in net.modules())
    assert count_by_hooks(net, 16) == (macs, params)  # no leftover hook double-counts
    assert before.shape == (1, 5)


def test_build_on_meta_device_has_same_structure():
    spec = tiny()
    meta = build(spec, device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in build(spec).parameters())
