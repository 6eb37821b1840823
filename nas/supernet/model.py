"""One weight-sharing network over a whole search space, and exact sub-network extraction.

Every decision of the space is elastic in one module (once-for-all / BigNAS style):

- width and expansion: leading channels. A block's filter multiplier changes its output
  channels, so the next block's input channels are elastic too; every weight is sliced
  `[:out, :in]` and every BatchNorm `[:channels]` (per-width sliced BN).
- kernel: the largest kernel of a block's options is stored; a smaller kernel is the
  centre of the next larger one times a learned k²×k² matrix (identity at init, one per
  layer and kernel size, as once-for-all does). `kernel_mode="separate"` keeps an
  independent weight per kernel size instead.
- layers: the first n layers of a block run.
- squeeze-excite: reduce/expand weights sliced to the spec's squeeze width (off: skipped).
- skip: an identity residual where the spec has one (`BlockSpec.has_residual`).
- conv op: separate weights per structural op: `mbconv` (1x1 expand, depthwise, SE,
  project), `dsconv` (depthwise, SE, project; also MBConv with expansion 1, which is the
  same network) and `conv` (a plain kxk convolution).

`Supernet.forward(x, spec)` runs the sub-network of `spec`; `Supernet.extract(spec)` returns
`search_space.model.build(spec)` with the inherited weights copied in, so its multiply-adds
and parameters are the stand-alone network's (`search_space.cost`) by construction. Both go
through one function (`_Plan.ops`: which tensors a sub-network uses, in the builder's
order), so the two cannot disagree. BatchNorm statistics are not tracked while the supernet
trains (they would mix every sub-network); `recalibrate` computes them for one spec.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import UserError
from search_space.cost import expanded_channels, se_channels
from search_space.model import BN_EPS, build
from search_space.space import SearchSpace, round_channels
from search_space.spec import ArchSpec

KERNEL_MODES = ("transform", "separate")
# Preference of the largest sub-network's op (the skeleton's op first) and of the smallest's.
LARGEST_OPS = ("mbconv", "dsconv", "conv")
SMALLEST_OPS = ("dsconv", "mbconv", "conv")


# -- the space, block by block ---------------------------------------------------------------
@dataclass(frozen=True)
class BlockOptions:
    """What one block of the space allows (every option, including the fixed ones)."""

    stride: int
    kernels: tuple[int, ...]
    conv_ops: tuple[str, ...]
    expand_ratios: tuple[float, ...]
    se_ratios: tuple[float, ...]
    skips: tuple[str, ...]
    outs: tuple[int, ...]          # output channels of each filter multiplier (sorted, distinct)
    repeats: tuple[int, ...]       # layers of each layers_delta (sorted, distinct)

    @property
    def families(self) -> tuple[str, ...]:
        """The structural ops a canonical spec of this block can have (`BlockSpec.canonical`)."""
        fams = []
        if "mbconv" in self.conv_ops and any(e != 1 for e in self.expand_ratios):
            fams.append("mbconv")
        if "dsconv" in self.conv_ops or ("mbconv" in self.conv_ops and 1 in self.expand_ratios):
            fams.append("dsconv")
        if "conv" in self.conv_ops:
            fams.append("conv")
        return tuple(fams)


def block_options(space: SearchSpace) -> list[BlockOptions]:
    """Each skeleton block's options, read from the space's public description."""
    out = []
    for b in space.blocks:
        own = dict(b.choices)
        opts = {f: tuple(own[f]) if f in own else tuple(space.choices[f]) for f in space.choices}
        outs = sorted({round_channels(b.out_channels * m, space.channel_divisor) for m in opts["filter_multiplier"]})
        reps = sorted({max(1, b.repeats + d) for d in opts["layers_delta"]})
        out.append(BlockOptions(b.stride, tuple(sorted(opts["kernel"])), opts["conv_op"], opts["expand_ratio"],
                                opts["se_ratio"], opts["skip"], tuple(outs), tuple(reps)))
    return out


def _extreme(space: SearchSpace, ops: Sequence[str], most: Any) -> list[int]:
    """One index per decision: the first of `ops` the block allows for `conv_op`, an identity
    skip where allowed, and `most` (max or min) of every other option."""
    def pick(field: str, options: Sequence[Any]) -> Any:
        if field == "conv_op":
            return next(op for op in ops if op in options)
        if field == "skip":
            return "identity" if "identity" in options else options[0]
        return most(options)
    return [d.choices.index(pick(d.name.split(".", 1)[1], d.choices)) for d in space.decisions]


def largest(space: SearchSpace, num_classes: int | None = None) -> ArchSpec:
    """The sandwich rule's largest sub-network: every option at its maximum (largest kernel,
    expansion, SE ratio, width, layers; identity skips); MBConv where the block allows it."""
    return space.decode(_extreme(space, LARGEST_OPS, max), num_classes=num_classes)


def smallest(space: SearchSpace, num_classes: int | None = None) -> ArchSpec:
    """The sandwich rule's smallest: every option at its minimum; depthwise-separable where allowed."""
    return space.decode(_extreme(space, SMALLEST_OPS, min), num_classes=num_classes)


def sample(space: SearchSpace, rng: Any = None, num_classes: int | None = None) -> ArchSpec:
    """A sub-network drawn uniformly over the space's choices (`SearchSpace.sample`)."""
    return space.decode(space.sample(rng), num_classes=num_classes)


# -- elastic pieces ------------------------------------------------------------------------------
class ElasticBN(nn.Module):
    """BatchNorm over the leading `c` channels of a `channels`-wide BN (per-width sliced BN).

    Training: batch statistics only (`track` off: running statistics mixed over many
    sub-networks mean nothing). Recalibration (`track` on): the exact average of the batch
    statistics seen since `start_tracking`. Eval: the running statistics of the slice.
    The tensors have `nn.BatchNorm2d`'s names, so they copy into the builder's BN as is.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.track = False

    def start_tracking(self, c: int) -> None:
        with torch.no_grad():
            self.running_mean[:c].zero_()
            self.running_var[:c].fill_(1)
            self.num_batches_tracked.zero_()
        self.track = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        w, b = self.weight[:c], self.bias[:c]
        if self.track:
            self.num_batches_tracked += 1
            return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], w, b, True,
                                1.0 / float(self.num_batches_tracked), BN_EPS)
        if self.training:
            return F.batch_norm(x, None, None, w, b, True, 0.0, BN_EPS)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], w, b, False, 0.0, BN_EPS)

    def tensors(self, c: int) -> dict[str, torch.Tensor]:
        return {"weight": self.weight[:c], "bias": self.bias[:c], "running_mean": self.running_mean[:c],
                "running_var": self.running_var[:c], "num_batches_tracked": self.num_batches_tracked}


class ElasticKernel(nn.Module):
    """A conv weight (out, in/groups, K, K) whose smaller kernels are centre crops times a
    learned k²×k² transform (once-for-all), or separate weights per kernel size."""

    def __init__(self, out: int, per_group_in: int, kernels: Sequence[int], mode: str):
        super().__init__()
        self.kernels = tuple(sorted(kernels, reverse=True))
        self.mode = mode
        if mode == "separate":
            self.weights = nn.ParameterDict({str(k): _kaiming(torch.empty(out, per_group_in, k, k))
                                             for k in self.kernels})
        else:
            big = self.kernels[0]
            self.weight = _kaiming(torch.empty(out, per_group_in, big, big))
            self.transforms = nn.ParameterDict({str(k): nn.Parameter(torch.eye(k * k)) for k in self.kernels[1:]})

    def get(self, k: int, out: int, per_group_in: int) -> torch.Tensor:
        """The (out, per_group_in, k, k) weight of kernel size `k`."""
        if self.mode == "separate":
            return self.weights[str(k)][:out, :per_group_in]
        w = self.weight[:out, :per_group_in]
        size = self.kernels[0]
        for smaller in self.kernels[1:]:
            if size == k:
                break
            start = (size - smaller) // 2
            centre = w[:, :, start:start + smaller, start:start + smaller].reshape(-1, smaller * smaller)
            w = F.linear(centre, self.transforms[str(smaller)]).reshape(out, per_group_in, smaller, smaller)
            size = smaller
        return w


def _kaiming(t: torch.Tensor) -> nn.Parameter:
    """The builder's conv init (kaiming normal, fan_out) on the largest weight."""
    nn.init.kaiming_normal_(t, mode="fan_out")
    return nn.Parameter(t)


@dataclass(frozen=True)
class _Conv:
    """One conv + BN (+ activation) of a sub-network: the builder's `ConvBNAct`."""

    weight: torch.Tensor
    stride: int
    groups: int
    bn: ElasticBN
    channels: int
    act: bool


@dataclass(frozen=True)
class _SE:
    reduce_w: torch.Tensor
    reduce_b: torch.Tensor
    expand_w: torch.Tensor
    expand_b: torch.Tensor


class ElasticSepConv(nn.Module):
    """The `mbconv` family (with a 1x1 expansion) or the `dsconv` family (without one)."""

    def __init__(self, cin: int, cout: int, mid: int, squeeze: int, kernels: Sequence[int], mode: str, expand: bool):
        super().__init__()
        if expand:
            self.expand = _kaiming(torch.empty(mid, cin, 1, 1))
            self.expand_bn = ElasticBN(mid)
        self.depthwise = ElasticKernel(mid, 1, kernels, mode)
        self.depthwise_bn = ElasticBN(mid)
        if squeeze:
            self.se_reduce = _kaiming(torch.empty(squeeze, mid, 1, 1))
            self.se_reduce_bias = nn.Parameter(torch.zeros(squeeze))
            self.se_expand = _kaiming(torch.empty(mid, squeeze, 1, 1))
            self.se_expand_bias = nn.Parameter(torch.zeros(mid))
        self.project = _kaiming(torch.empty(cout, mid, 1, 1))
        self.project_bn = ElasticBN(cout)

    def ops(self, cin: int, cout: int, mid: int, squeeze: int, kernel: int, stride: int) -> list:
        ops: list = []
        if hasattr(self, "expand"):
            ops.append(_Conv(self.expand[:mid, :cin], 1, 1, self.expand_bn, mid, True))
        ops.append(_Conv(self.depthwise.get(kernel, mid, 1), stride, mid, self.depthwise_bn, mid, True))
        if squeeze:
            ops.append(_SE(self.se_reduce[:squeeze, :mid], self.se_reduce_bias[:squeeze],
                           self.se_expand[:mid, :squeeze], self.se_expand_bias[:mid]))
        ops.append(_Conv(self.project[:cout, :mid], 1, 1, self.project_bn, cout, False))
        return ops


class ElasticPlainConv(nn.Module):
    """The `conv` family: one kxk convolution + BN + activation."""

    def __init__(self, cin: int, cout: int, kernels: Sequence[int], mode: str):
        super().__init__()
        self.conv = ElasticKernel(cout, cin, kernels, mode)
        self.bn = ElasticBN(cout)

    def ops(self, cin: int, cout: int, kernel: int, stride: int) -> list:
        return [_Conv(self.conv.get(kernel, cout, cin), stride, 1, self.bn, cout, True)]


class ElasticLayer(nn.Module):
    """One layer position of a block: a module per structural op the block allows."""

    def __init__(self, cin: int, cout: int, options: BlockOptions, mode: str):
        super().__init__()
        ses = [s for s in options.se_ratios if s > 0]
        squeeze = max(1, int(cin * max(ses))) if ses else 0
        self.families = nn.ModuleDict()
        for fam in options.families:
            if fam == "conv":
                self.families[fam] = ElasticPlainConv(cin, cout, options.kernels, mode)
            else:
                e = max(e for e in options.expand_ratios if e != 1) if fam == "mbconv" else 1
                mid = max(1, int(round(cin * e))) if fam == "mbconv" else cin
                self.families[fam] = ElasticSepConv(cin, cout, mid, squeeze, options.kernels, mode, fam == "mbconv")


# -- a sub-network's plan ----------------------------------------------------------------------
@dataclass(frozen=True)
class _LayerPlan:
    block: int
    index: int
    family: str
    cin: int
    cout: int
    mid: int
    squeeze: int
    kernel: int
    stride: int
    residual: bool
    drop: float


class Supernet(nn.Module):
    """The weight-sharing network of `space` with `num_classes` outputs.

    `forward(x, spec)` (or `set_active(spec)` then `forward(x)`) runs the sub-network of any
    spec the space can decode; `extract(spec)` gives it as a stand-alone module. A spec
    outside the space is one `UserError` line naming the block and the choice.
    """

    def __init__(self, space: SearchSpace, num_classes: int, kernel_mode: str = "transform"):
        super().__init__()
        if kernel_mode not in KERNEL_MODES:
            raise UserError(f"kernel_mode {kernel_mode!r}: expected one of {', '.join(KERNEL_MODES)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise UserError(f"num_classes {num_classes!r}: expected a positive integer")
        self.space = space
        self.num_classes = num_classes
        self.kernel_mode = kernel_mode
        self.options = block_options(space)
        self.act = F.silu if space.activation == "swish" else F.relu
        self.stem = _kaiming(torch.empty(space.stem_channels, 3, 3, 3))
        self.stem_bn = ElasticBN(space.stem_channels)
        blocks = []
        cin = space.stem_channels
        for opts in self.options:
            cout = max(opts.outs)
            layers = [ElasticLayer(cin if j == 0 else cout, cout, opts, kernel_mode) for j in range(max(opts.repeats))]
            blocks.append(nn.ModuleList(layers))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = _kaiming(torch.empty(space.head_channels, cin, 1, 1))
        self.head_bn = ElasticBN(space.head_channels)
        self.classifier = nn.Linear(space.head_channels, num_classes)
        r = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(self.classifier.weight, -r, r)
        nn.init.zeros_(self.classifier.bias)
        self._active: ArchSpec | None = None
        self._plans: dict[ArchSpec, tuple[_LayerPlan, ...]] = {}

    def zero_init(self) -> None:
        """The proxy trainer's zero init (`nas.evaluate.train.proxy_init`) in a supernet.

        The classifier starts at zero (uniform predictions), and so does the last BN scale
        of every later layer of a block that allows skip `identity`: the largest sub-network
        (identity skips) starts as a shallow one. Without it the largest of the default
        space does not train at the proxy's learning rate (docs/supernet.md). A sub-network
        with skip `none` there starts with that branch at zero; the scale is shared with
        the sub-networks that have the residual, which move it off zero. A block's first
        layer is left alone: where it strides or changes width (the largest's, mostly) no
        sub-network has a residual around it, and a zero there would cut the network.
        """
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.bias.zero_()
            for opts, layers in zip(self.options, self.blocks):
                if "identity" in opts.skips:
                    for layer in list(layers)[1:]:
                        for fam in layer.families.values():
                            (fam.project_bn if isinstance(fam, ElasticSepConv) else fam.bn).weight.zero_()

    # -- the sandwich rule's sub-networks (with this supernet's number of classes) -------------
    def largest(self) -> ArchSpec:
        return largest(self.space, self.num_classes)

    def smallest(self) -> ArchSpec:
        return smallest(self.space, self.num_classes)

    def sample(self, rng: Any = None) -> ArchSpec:
        return sample(self.space, rng, self.num_classes)

    # -- which weights a spec uses ---------------------------------------------------------------
    def plan(self, spec: ArchSpec) -> tuple[_LayerPlan, ...]:
        """The layers of `spec` in the supernet; `UserError` if the space cannot decode `spec`."""
        found = self._plans.get(spec)
        if found is None:
            found = self._plan(spec)
            if len(self._plans) >= 256:
                self._plans.clear()
            self._plans[spec] = found
        return found

    def _plan(self, spec: ArchSpec) -> tuple[_LayerPlan, ...]:
        if not isinstance(spec, ArchSpec):
            raise TypeError(f"expected an ArchSpec, got {type(spec).__name__}")
        space, where = self.space, f"the spec is not in the supernet's space ({self.space.source})"
        for name, want in (("stem_channels", space.stem_channels), ("head_channels", space.head_channels),
                           ("activation", space.activation), ("num_classes", self.num_classes)):
            if getattr(spec, name) != want:
                raise UserError(f"{where}: {name} {getattr(spec, name)!r}, the supernet has {want!r}")
        if len(spec.blocks) != len(self.options):
            raise UserError(f"{where}: {len(spec.blocks)} blocks, the space has {len(self.options)}")
        layers, total, i = [], spec.num_layers, 0
        for b, (raw, opts) in enumerate(zip(spec.blocks, self.options)):
            block = raw.canonical()
            problem = _outside(block, opts)
            if problem:
                raise UserError(f"{where}: blocks[{b}]: {problem}")
            for j, layer in enumerate(block.layers()):
                layers.append(_LayerPlan(b, j, block.conv_op, layer.in_channels, layer.out_channels,
                                         expanded_channels(layer), se_channels(layer), layer.kernel, layer.stride,
                                         layer.has_residual(), spec.drop_connect * i / total))
                i += 1
        return tuple(layers)

    def set_active(self, spec: ArchSpec) -> None:
        """The sub-network that `forward(x)` runs (checked now)."""
        self.plan(spec)
        self._active = spec

    # -- running a sub-network --------------------------------------------------------------------
    def forward(self, x: torch.Tensor, spec: ArchSpec | None = None) -> torch.Tensor:
        spec = self._active if spec is None else spec
        if spec is None:
            raise UserError("no sub-network chosen: call forward(x, spec) or set_active(spec) first")
        for name, op in self._ops(spec):
            if name == "classifier":
                x = F.adaptive_avg_pool2d(x, 1).flatten(1)
                x = F.dropout(x, spec.dropout, self.training)
                x = F.linear(x, op[0], op[1])
            elif isinstance(op, list):  # one layer: its ops, then the residual
                plan = name
                y = x
                for o in op:
                    y = self._run_op(o, y)
                if plan.residual:
                    if self.training and plan.drop > 0:
                        keep = 1.0 - plan.drop
                        mask = torch.empty((y.shape[0], 1, 1, 1), dtype=y.dtype, device=y.device).bernoulli_(keep)
                        y = y * mask / keep
                    y = x + y
                x = y
            else:
                x = self._run_op(op, x)
        return x

    def _run_op(self, op, x: torch.Tensor) -> torch.Tensor:
        if isinstance(op, _SE):
            s = x.mean((2, 3), keepdim=True)
            s = self.act(F.conv2d(s, op.reduce_w, op.reduce_b))
            return x * torch.sigmoid(F.conv2d(s, op.expand_w, op.expand_b))
        k = op.weight.shape[-1]
        x = op.bn(F.conv2d(x, op.weight, None, op.stride, k // 2, 1, op.groups))
        return self.act(x) if op.act else x

    def _ops(self, spec: ArchSpec) -> list:
        """(builder prefix or layer plan, op) in the builder's order: the one description of
        which tensors a sub-network uses, for `forward` and `extract` alike."""
        out: list = [("stem", _Conv(self.stem, 2, 1, self.stem_bn, self.space.stem_channels, True))]
        cin = self.space.stem_channels
        for p in self.plan(spec):
            fam = self.blocks[p.block][p.index].families[p.family]
            if p.family == "conv":
                ops = fam.ops(p.cin, p.cout, p.kernel, p.stride)
            else:
                ops = fam.ops(p.cin, p.cout, p.mid, p.squeeze, p.kernel, p.stride)
            out.append((p, ops))
            cin = p.cout
        out.append(("head", _Conv(self.head[:, :cin], 1, 1, self.head_bn, self.space.head_channels, True)))
        out.append(("classifier", (self.classifier.weight, self.classifier.bias)))
        return out

    # -- extraction -----------------------------------------------------------------------------------
    def state_of(self, spec: ArchSpec) -> dict[str, torch.Tensor]:
        """The state dict of `build(spec)` with the inherited weights (copies, contiguous)."""
        state: dict[str, torch.Tensor] = {}

        def conv(prefix: str, op: _Conv) -> None:
            state[f"{prefix}.0.weight"] = op.weight
            for k, t in op.bn.tensors(op.channels).items():
                state[f"{prefix}.1.{k}"] = t

        for name, op in self._ops(spec):
            if name == "classifier":
                state["classifier.weight"], state["classifier.bias"] = op
            elif isinstance(op, list):
                prefix = f"blocks.{name.block}.{name.index}.ops"
                for n, o in enumerate(op):
                    if isinstance(o, _SE):
                        state.update({f"{prefix}.{n}.reduce.weight": o.reduce_w, f"{prefix}.{n}.reduce.bias": o.reduce_b,
                                      f"{prefix}.{n}.expand.weight": o.expand_w, f"{prefix}.{n}.expand.bias": o.expand_b})
                    else:
                        conv(f"{prefix}.{n}", o)
            else:
                conv(name, op)
        with torch.no_grad():
            return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in state.items()}

    def extract(self, spec: ArchSpec) -> nn.Module:
        """`search_space.model.build(spec)` on the supernet's device with the inherited weights
        (BatchNorm statistics included: call `recalibrate` first), in the supernet's mode."""
        state = self.state_of(spec)
        net = build(spec, device="meta")
        net.load_state_dict(state, strict=True, assign=True)
        return net.train(self.training)

    # -- BatchNorm statistics of one sub-network --------------------------------------------------
    @torch.no_grad()
    def recalibrate(self, spec: ArchSpec, batches: Iterable[torch.Tensor], channels_last: bool = True) -> None:
        """Set the BatchNorm statistics that `spec` uses to their exact average over `batches`
        (images only, un-augmented training images); the supernet's mode is kept."""
        was = self.training
        used = [op for _, op in self._ops(spec) for op in (op if isinstance(op, list) else [op]) if isinstance(op, _Conv)]
        self.eval()
        for op in used:
            op.bn.start_tracking(op.channels)
        try:
            for x in batches:
                self(x.contiguous(memory_format=torch.channels_last) if channels_last else x, spec)
        finally:
            for op in used:
                op.bn.track = False
        self.train(was)

    def extra_repr(self) -> str:
        return f"space={self.space.source}, num_classes={self.num_classes}, kernel_mode={self.kernel_mode}"


def _outside(block, opts: BlockOptions) -> str | None:
    """Why a canonical block is not one of `opts`' networks, or None."""
    if block.stride != opts.stride:
        return f"stride {block.stride}, the skeleton has {opts.stride}"
    if block.out_channels not in opts.outs:
        return f"{block.out_channels} output channels, the filter multipliers give {_list(opts.outs)}"
    if block.repeats not in opts.repeats:
        return f"{block.repeats} layers, the layers deltas give {_list(opts.repeats)}"
    if block.kernel not in opts.kernels:
        return f"kernel {block.kernel}, the options are {_list(opts.kernels)}"
    if block.conv_op not in opts.families:
        what = block.conv_op if block.conv_op != "mbconv" else f"mbconv with expansion {block.expand_ratio:g}"
        return f"{what} is not among its ops ({_list(opts.conv_ops)}, expansions {_list(opts.expand_ratios)})"
    if block.conv_op == "mbconv" and block.expand_ratio not in opts.expand_ratios:
        return f"expansion {block.expand_ratio:g}, the options are {_list(opts.expand_ratios)}"
    if block.conv_op != "conv" and block.se_ratio not in opts.se_ratios:
        return f"squeeze-excite ratio {block.se_ratio:g}, the options are {_list(opts.se_ratios)}"
    residual_possible = block.repeats > 1 or (block.stride == 1 and block.in_channels == block.out_channels)
    skip = "identity" if block.skip else "none"
    if residual_possible and skip not in opts.skips:
        return f"skip {skip}, the options are {_list(opts.skips)}"
    return None


def _list(values: Iterable[Any]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
