"""Analytic cost model: multiply-adds ("FLOPS" in MnasNet/EfficientNet) and parameters.

The search asks for the cost of thousands of specs, so this is plain integer
arithmetic over the spec (microseconds; no torch import, no module built). It mirrors
`search_space.model.build` layer by layer, and the tests check that it agrees exactly
with counting on the built module through forward hooks.

What is counted (the papers' convention, also torchvision's published `_ops`):
multiply-adds of every convolution (stem, expand, depthwise, squeeze-excite's two 1x1
convolutions on the pooled map, project, head) and of the linear classifier. BN,
activations, pooling, the SE gate multiply and residual adds are not counted.
A convolution with padding k // 2 produces ceil(in / stride) rows and columns.
Parameters are all `nn.Parameter`s of the built module: convolution weights (no bias,
except the SE convolutions), BN weight and bias, classifier weight and bias.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .spec import ArchSpec, BlockSpec


# -- layer geometry shared with the builder -----------------------------------------
def has_expansion(layer: BlockSpec) -> bool:
    """An MBConv layer has a 1x1 expansion conv unless its ratio is 1."""
    return layer.conv_op == "mbconv" and layer.expand_ratio != 1


def expanded_channels(layer: BlockSpec, in_channels: int | None = None) -> int:
    """Width of the depthwise stage: `in * expand_ratio` (rounded), or `in` without expansion.

    `in_channels` overrides the block's own (the later layers of a block take `out_channels`).
    """
    cin = layer.in_channels if in_channels is None else in_channels
    if not has_expansion(layer):
        return cin
    return max(1, int(round(cin * layer.expand_ratio)))


def se_channels(layer: BlockSpec, in_channels: int | None = None) -> int:
    """Squeeze width `max(1, int(in * se_ratio))` from the layer's *input* width; 0 = no SE."""
    if layer.conv_op == "conv" or layer.se_ratio <= 0:
        return 0
    cin = layer.in_channels if in_channels is None else in_channels
    return max(1, int(cin * layer.se_ratio))


def out_size(size: int, stride: int) -> int:
    """Output rows of a conv with padding k // 2 (odd k): ceil(size / stride)."""
    return -(-size // stride)


# -- per-layer counts -----------------------------------------------------------------
def _layer_cost(block: BlockSpec, cin: int, stride: int, size: int) -> tuple[int, int, int]:
    """(macs, params, output size) of one layer of `block` with input width `cin` at `size`."""
    k2 = block.kernel * block.kernel
    cout = block.out_channels
    out = -(-size // stride)
    if block.conv_op == "conv":
        return out * out * cout * cin * k2, cout * cin * k2 + 2 * cout, out
    mid = expanded_channels(block, cin)
    macs = params = 0
    if has_expansion(block):
        macs += size * size * mid * cin
        params += mid * cin + 2 * mid
    macs += out * out * mid * k2                     # depthwise
    params += mid * k2 + 2 * mid
    sq = se_channels(block, cin)
    if sq:
        macs += 2 * mid * sq                         # reduce + expand on the 1x1 pooled map
        params += 2 * mid * sq + sq + mid            # both SE convs have a bias
    macs += out * out * cout * mid                   # project
    params += cout * mid + 2 * cout
    return macs, params, out


def _block_cost(block: BlockSpec, size: int) -> tuple[int, int, int]:
    """(macs, params, output size) of all `repeats` layers (same as iterating `block.layers()`)."""
    macs, params, size = _layer_cost(block, block.in_channels, block.stride, size)
    if block.repeats > 1:
        m, p, size = _layer_cost(block, block.out_channels, 1, size)  # stride 1 keeps the size
        macs, params = macs + (block.repeats - 1) * m, params + (block.repeats - 1) * p
    return macs, params, size


def _stem_cost(spec: ArchSpec, size: int) -> tuple[int, int, int]:
    out = out_size(size, 2)
    c = spec.stem_channels
    return out * out * c * 3 * 9, c * 27 + 2 * c, out


def _head_cost(spec: ArchSpec, size: int) -> tuple[int, int]:
    """Head 1x1 conv + BN, then the classifier (pooling has no cost)."""
    cin, ch, n = spec.blocks[-1].out_channels, spec.head_channels, spec.num_classes
    return size * size * ch * cin + ch * n, ch * cin + 2 * ch + ch * n + n


def _resolution(spec: ArchSpec, resolution: int | None) -> int:
    res = spec.resolution if resolution is None else resolution
    if isinstance(res, bool) or not isinstance(res, int) or res < 1:
        raise ValueError(f"resolution: must be a positive integer, got {res!r}")
    return res


# -- public API -------------------------------------------------------------------------
def macs(spec: ArchSpec, resolution: int | None = None) -> int:
    """Multiply-adds of one image at `resolution` (default: the spec's own)."""
    size = _resolution(spec, resolution)
    total, _, size = _stem_cost(spec, size)
    for block in spec.blocks:
        m, _, size = _block_cost(block, size)
        total += m
    return total + _head_cost(spec, size)[0]


def params(spec: ArchSpec) -> int:
    """Number of trainable parameters (independent of resolution)."""
    total = _stem_cost(spec, 1)[1] + _head_cost(spec, 1)[1]
    for block in spec.blocks:
        total += _block_cost(block, 1)[1]
    return total


def cost(spec: ArchSpec, resolution: int | None = None) -> tuple[int, int]:
    """(macs, params) in one call."""
    return macs(spec, resolution), params(spec)


@dataclass(frozen=True)
class StageCost:
    """One row of the EfficientNet paper's Table 1, with its cost."""

    stage: int
    operator: str
    resolution: int      # input height = width of the stage
    channels: int        # output channels
    layers: int
    macs: int
    params: int

    def to_dict(self) -> dict:
        return asdict(self)


def operator_name(block: BlockSpec) -> str:
    """Table 1 spelling: `MBConv6 k3x3`, `SepConv k3x3`, `Conv3x3`; `+SE`, `noskip` flags."""
    k = f"k{block.kernel}x{block.kernel}"
    if block.conv_op == "conv":
        name = f"Conv{block.kernel}x{block.kernel}"
    elif block.conv_op == "dsconv":
        name = f"SepConv {k}"
    else:
        e = block.expand_ratio
        name = f"MBConv{int(e) if float(e).is_integer() else e} {k}"
    if se_channels(block):
        name += f" SE{block.se_ratio:g}"
    if not block.skip:
        name += " noskip"
    return name


def stage_table(spec: ArchSpec, resolution: int | None = None) -> list[StageCost]:
    """Per-stage breakdown: stem, one row per block, head (+ pooling + classifier)."""
    size = _resolution(spec, resolution)
    m, p, out = _stem_cost(spec, size)
    rows = [StageCost(1, "Conv3x3", size, spec.stem_channels, 1, m, p)]
    size = out
    for i, block in enumerate(spec.blocks):
        start = size
        m_sum, p_sum, size = _block_cost(block, size)
        rows.append(StageCost(i + 2, operator_name(block), start, block.out_channels, block.repeats, m_sum, p_sum))
    m, p = _head_cost(spec, size)
    rows.append(StageCost(len(spec.blocks) + 2, "Conv1x1 & Pooling & FC", size, spec.head_channels, 1, m, p))
    return rows
