"""PyTorch builder: `build(spec) -> nn.Module`, and the hook counter used as the cost oracle.

Layer semantics follow the TensorFlow reference (and torchvision/timm, whose B0 has
exactly the same 5,288,548 parameters): stem 3x3/2 conv + BN + act; MBConv = 1x1 expand
(absent when the ratio is 1) -> kxk depthwise -> squeeze-excite -> 1x1 project + BN ->
drop-connect -> residual; head 1x1 conv + BN + act, global pool, dropout, linear.
Channel widths come from `search_space.cost` so the analytic count and the module can
never disagree about the geometry. Nothing here is device-specific.
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import nn

from .cost import expanded_channels, has_expansion, se_channels
from .spec import ArchSpec, BlockSpec

DeviceLike = Union[torch.device, str, None]
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention; TensorFlow's 0.99


def _act(name: str) -> nn.Module:
    return nn.SiLU(inplace=True) if name == "swish" else nn.ReLU(inplace=True)


def _bn(c: int, device: DeviceLike = None) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM, device=device)


class ConvBNAct(nn.Sequential):
    """kxk conv (padding k // 2, no bias) + BN (+ activation when `act` is given)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = None,
                 device: DeviceLike = None):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False, device=device),
            _bn(cout, device)]
        if act is not None:
            layers.append(_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 reduce (bias) -> act -> 1x1 expand (bias) -> sigmoid gate."""

    def __init__(self, channels: int, squeeze: int, act: str, device: DeviceLike = None):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1, device=device)
        self.act = _act(act)
        self.expand = nn.Conv2d(squeeze, channels, 1, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class DropConnect(nn.Module):
    """Stochastic depth on the residual branch: drop a whole sample with probability `p`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Layer(nn.Module):
    """One layer of a block: MBConv / depthwise-separable / plain conv, with optional residual."""

    def __init__(self, layer: BlockSpec, act: str, drop_prob: float, device: DeviceLike = None):
        super().__init__()
        cin, cout, k, s = layer.in_channels, layer.out_channels, layer.kernel, layer.stride
        ops: list[nn.Module] = []
        if layer.conv_op == "conv":
            ops.append(ConvBNAct(cin, cout, k, s, act=act, device=device))
        else:
            mid = expanded_channels(layer)
            if has_expansion(layer):
                ops.append(ConvBNAct(cin, mid, 1, act=act, device=device))
            ops.append(ConvBNAct(mid, mid, k, s, groups=mid, act=act, device=device))
            sq = se_channels(layer)
            if sq:
                ops.append(SqueezeExcite(mid, sq, act, device))
            ops.append(ConvBNAct(mid, cout, 1, device=device))
        self.ops = nn.Sequential(*ops)
        self.residual = layer.has_residual()
        self.drop = DropConnect(drop_prob) if self.residual and drop_prob > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ops(x)
        return x + self.drop(y) if self.residual else y


class Net(nn.Module):
    """The network of one ArchSpec; `spec` is kept for reference."""

    def __init__(self, spec: ArchSpec, device: DeviceLike = None):
        super().__init__()
        self.spec = spec
        act = spec.activation
        self.stem = ConvBNAct(3, spec.stem_channels, 3, 2, act=act, device=device)
        n, i = spec.num_layers, 0
        stages = []
        for block in spec.blocks:
            layers = []
            for layer in block.layers():
                layers.append(Layer(layer, act, spec.drop_connect * i / n, device))
                i += 1
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*stages)
        self.head = ConvBNAct(spec.blocks[-1].out_channels, spec.head_channels, 1, act=act, device=device)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.head_channels, spec.num_classes, device=device)
        _init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def _init(module: nn.Module) -> None:
    """Reference init: kaiming-normal fan_out convs, unit BN, uniform(+-1/sqrt(out)) linear."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            r = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -r, r)
            nn.init.zeros_(m.bias)


def build(spec: ArchSpec, device: DeviceLike = None) -> Net:
    """Build the PyTorch module of `spec`, its tensors on `device` (default: the current default device).

    `device="meta"` gives the structure without memory or init cost (for shape-only work).
    """
    return Net(spec, device)


def count_by_hooks(module: nn.Module, resolution: int) -> tuple[int, int]:
    """(macs, params) measured on a built module: the oracle for `search_space.cost`.

    Forward hooks on every Conv2d and Linear add `out elements per image * in/groups * kh*kw`
    (conv) or `in * out` (linear); params are all parameters. One image of zeros is run
    in eval mode on the module's device (a module built on `meta` works too: shapes only).
    """
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += (out.numel() // out.shape[0]) * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inputs, out) -> None:
        nonlocal total
        total += (out.numel() // out.shape[-1] // inputs[0].shape[0]) * m.in_features * m.out_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    first = next(module.parameters())
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, 3, resolution, resolution, device=first.device, dtype=first.dtype))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total, sum(p.numel() for p in module.parameters())
