"""Measured inference latency: a spec end to end, and the layer configurations a table is made of.

Multiply-adds rank real latency poorly (a depthwise 5x5 at 112x112 costs few MACs but much
memory traffic; per-op overhead dominates the 7x7 stages at batch 1), so the search needs a
measured number. `measure` times a whole network; `layer_configs` splits a spec into the
parts a `search_space.latency_table.LatencyTable` measures once and sums (stem, every block
layer, head with pooling and classifier), with the same geometry helpers `cost.py` uses.

Timing rules, the same for a network and for its parts: model in eval mode under
`torch.inference_mode`, warm-up calls first (allocator, oneDNN primitive caches, cuDNN
autotuning), a fixed number of timed calls with the garbage collector paused, the intra-op
thread count fixed with `torch.set_num_threads` and restored afterwards, CUDA synchronized
around every call, glibc kept from handing freed memory back between calls
(`steady_allocator`), and a timing whose IQR exceeds 10 % of its median taken again (up to
3 times, the least spread kept). The median is the figure; p25/p75 show the spread.
Parts are timed round-robin, a network's worth at a time (`measure_parts`), so each finds
the caches as other layers left them, as it would inside a network.

torch is imported inside the functions that run a module, so importing this module (and
`describe` without `--latency`) stays torch-free.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .cost import out_size
from .errors import SpecError
from .spec import ArchSpec, BlockSpec

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_WARMUP = 10
DEFAULT_REPEATS = 30
DEFAULT_TRIES = 3        # timings of one thing at most, while its spread is too wide
DEFAULT_MAX_SPREAD = 0.1  # IQR / median above which a timing is taken again


class LatencyError(SpecError):
    """Bad latency input (device, dtype, table file); the message is one line for the CLI."""


# -- devices ---------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    """`cpu`, `cuda` (the current CUDA device, as `cuda:N`) or `cuda:N`; LatencyError otherwise.

    Only CPU and CUDA are timed (synchronization and device names are known for those), so
    `tpu`, `mps` or `meta` are refused here rather than failing inside a timing loop.
    """
    text = str(device).strip().lower()
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", text)
    if not m:
        raise LatencyError(f"unknown device {str(device)!r} (expected cpu, cuda or cuda:N)")
    if text == "cpu":
        return "cpu"
    import torch
    if not torch.cuda.is_available():
        raise LatencyError(f"device {text!r}: CUDA is not available on this machine (torch {torch.__version__})")
    index = int(m.group(1)) if m.group(1) is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise LatencyError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return f"cuda:{index}"


def cpu_model() -> str:
    """The CPU's model string (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                value = line.split(":", 1)[1].strip()
                if value and not value.isdigit():
                    return value
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: str) -> str:
    """What a latency figure is valid for: CPU model plus the vector ISA torch uses, or the GPU name.

    Cloud VMs often report a generic model string ("Intel(R) Xeon(R) Processor") for CPUs
    with and without AVX-512, so torch's detected CPU capability is part of the name.
    """
    import torch
    dev = resolve_device(device)
    if dev == "cpu":
        try:
            isa = torch.backends.cpu.get_cpu_capability()
        except Exception:  # older torch: the model string alone
            isa = ""
        return f"{cpu_model()} ({isa})" if isa else cpu_model()
    return torch.cuda.get_device_name(int(dev.split(":")[1]))


def torch_dtype(name: str, device: str = "cpu") -> Any:
    """`float32`/`bfloat16`/`float16` -> torch dtype; float16 convolutions are CUDA-only here."""
    import torch
    if name not in DTYPES:
        raise LatencyError(f"unknown dtype {name!r} (expected one of {', '.join(DTYPES)})")
    if name == "float16" and not str(device).startswith("cuda"):
        raise LatencyError("dtype float16 is only timed on cuda (use float32 or bfloat16 on cpu)")
    return getattr(torch, name)


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Run with `threads` intra-op threads (None: keep the current count); yields the count in force."""
    import torch
    before = torch.get_num_threads()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LatencyError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# -- the C allocator ---------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_MMAP_MAX = 32 << 20  # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)


def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def allocator_name(steady: bool = True) -> str:
    """`glibc-steady` when `steady_allocator` can act here, else `system` (part of a table's key)."""
    return "glibc-steady" if steady and _glibc() is not None else "system"


@contextlib.contextmanager
def steady_allocator(enabled: bool = True) -> Iterator[str]:
    """Time without the C allocator handing memory back to the OS between calls (glibc).

    With glibc's defaults a tensor freed at the top of the heap is trimmed (or was mmapped)
    and the next call page-faults it back in: on this project's 2-core Xeon that made
    EfficientNet-B0 28 ms instead of 19 ms and a lone stem conv 1.7 ms instead of 0.6 ms,
    and by amounts that depend on what else was allocated, so parts timed alone did not add
    up to the network. A serving process keeps its memory, so during the measurement glibc
    keeps freed memory (trim threshold 1 GiB) and serves tensors up to 32 MiB from the heap.
    Afterwards the thresholds are set to 32 MiB mmap / 64 MiB trim, where glibc's own
    dynamic rule ends up for tensors this size (setting them turns that rule off for good).
    Yields the allocator name recorded with the figures.
    """
    mallopt = _glibc() if enabled else None
    if mallopt is None:
        yield "system"
        return
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)
    try:
        yield "glibc-steady"
    finally:
        mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_MAX)
        mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)


# -- timing ------------------------------------------------------------------------------
def time_calls(fn: Callable[[], Any], warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
               sync: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` after `warmup` untimed ones.

    `sync` (e.g. `torch.cuda.synchronize`) runs after each call so asynchronous work is
    inside the timing. The garbage collector is paused so a collection never lands in a sample.
    """
    if repeats < 1 or warmup < 0:
        raise LatencyError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            samples.append(time.perf_counter() - start)
    finally:
        if enabled:
            gc.enable()
    return samples


def least_spread(run: Callable[[], Any], spread: Callable[[Any], float], tries: int = DEFAULT_TRIES,
                 max_spread: float = DEFAULT_MAX_SPREAD) -> Any:
    """`run()` again while `spread(result) > max_spread`, at most `tries` times; the least-spread result.

    Another process taking the core for part of a timing shows as a wide IQR; timing
    again is cheaper than carrying a disturbed figure into a table that is kept.
    """
    if tries < 1:
        raise LatencyError(f"tries must be >= 1, got {tries}")
    best = None
    for _ in range(tries):
        result = run()
        if best is None or spread(result) < spread(best):
            best = result
        if spread(best) <= max_spread:
            break
    return best


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    """(p25, median, p75); a single sample is all three."""
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    p25, p50, p75 = statistics.quantiles(samples, n=4, method="inclusive")
    return p25, p50, p75


@dataclass(frozen=True)
class Latency:
    """One measured latency with the conditions it holds for (all times in milliseconds)."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    repeats: int
    warmup: int
    threads: int
    device: str          # cpu, cuda:0
    device_name: str     # the CPU model (+ ISA) or the GPU name
    batch: int
    resolution: int
    dtype: str
    channels_last: bool
    torch: str
    allocator: str = "system"

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "iqr_ms": self.iqr_ms}

    def summary(self) -> str:
        """One line: figure, spread, and the conditions (for the CLI)."""
        return (f"{self.median_ms:.2f} ms median, IQR {self.iqr_ms:.2f} ms ({self.repeats} runs after "
                f"{self.warmup} warm-up; {self.device} {self.device_name}, {self.threads} thread"
                f"{'s' if self.threads != 1 else ''}, batch {self.batch}, {self.resolution}x{self.resolution}, "
                f"{self.dtype}{', channels_last' if self.channels_last else ''}, torch {self.torch}, "
                f"{self.allocator} allocator)")


def measure_module(module: Any, input_shape: tuple[int, ...], *, device: str = "cpu", threads: int | None = 1,
                   dtype: str = "float32", channels_last: bool = False, warmup: int = DEFAULT_WARMUP,
                   repeats: int = DEFAULT_REPEATS, resolution: int | None = None, steady: bool = True) -> Latency:
    """Time `module(x)` for a random `x` of `input_shape` (batch first) under the rules above.

    The module is moved to `device`/`dtype` (and channels_last for 4-D tensors) in place
    and left in eval mode. `resolution` is only reported (default: the input's height).
    `steady` False times with the C allocator's own settings (see `steady_allocator`).
    """
    import torch
    dev = resolve_device(device)
    tdtype = torch_dtype(dtype, dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(device=dev, dtype=tdtype).eval()
    if channels_last:
        module = module.to(memory_format=fmt)
    x = torch.randn(*input_shape, device=dev, dtype=tdtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=fmt)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.startswith("cuda") else None
    with fixed_threads(threads) as used, steady_allocator(steady) as allocator, torch.inference_mode():
        samples = time_calls(lambda: module(x), warmup, repeats, sync)
    p25, p50, p75 = quartiles(samples)
    return Latency(median_ms=p50 * 1e3, p25_ms=p25 * 1e3, p75_ms=p75 * 1e3, min_ms=min(samples) * 1e3,
                   repeats=repeats, warmup=warmup, threads=used, device=dev, device_name=device_name(dev),
                   batch=int(input_shape[0]), resolution=int(resolution or input_shape[-1]), dtype=dtype,
                   channels_last=bool(channels_last), torch=torch.__version__, allocator=allocator)


def measure(spec: ArchSpec, resolution: int | None = None, *, batch: int = 1, device: str = "cpu",
            threads: int | None = 1, dtype: str = "float32", channels_last: bool = False,
            warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS, steady: bool = True,
            tries: int = DEFAULT_TRIES, max_spread: float = DEFAULT_MAX_SPREAD) -> Latency:
    """End-to-end inference latency of `spec` (input `batch x 3 x R x R`, R default: the spec's own).

    Timed again (up to `tries` timings, the least spread kept) while IQR / median exceeds `max_spread`.
    """
    from .model import build
    res = _positive("resolution", spec.resolution if resolution is None else resolution)
    _positive("batch", batch)
    dev = resolve_device(device)
    torch_dtype(dtype, dev)  # refuse a bad dtype before building anything
    module = build(spec, device=dev)
    return least_spread(
        lambda: measure_module(module, (batch, 3, res, res), device=dev, threads=threads, dtype=dtype,
                               channels_last=channels_last, warmup=warmup, repeats=repeats, resolution=res,
                               steady=steady),
        lambda lat: lat.iqr_ms / lat.median_ms if lat.median_ms > 0 else 0.0, tries, max_spread)


# -- the parts a table measures -------------------------------------------------------------
@dataclass(frozen=True)
class LayerConfig:
    """One distinct part of a network, everything its latency depends on (batch aside).

    kind `stem`: 3x3/2 conv + BN + act from 3 channels; `layer`: one block layer (first layer
    of a block: the block's stride and in-channels; later ones: stride 1, out -> out); `head`:
    1x1 conv + BN + act, global pooling, dropout, linear classifier. `size` is the input
    height = width. Encodings that build the same module share one config (`conv` has no
    expansion or SE, MBConv with expansion 1 is `dsconv`).
    """

    kind: str
    in_channels: int
    out_channels: int
    size: int
    activation: str
    conv_op: str = "conv"
    kernel: int = 1
    stride: int = 1
    expand_ratio: float = 1
    se_ratio: float = 0.0
    residual: bool = False
    num_classes: int = 0

    def key(self) -> str:
        """The table's entry name, e.g. `mbconv_k5_s2_e6_se0.25_i24_o40_r56_noskip_swish` (formatted once)."""
        key = self.__dict__.get("_key")
        if key is None:
            key = self._format_key()
            object.__setattr__(self, "_key", key)  # a cache, not a field: equality and hashing ignore it
        return key

    def _format_key(self) -> str:
        if self.kind == "stem":
            return f"stem_i{self.in_channels}_o{self.out_channels}_r{self.size}_{self.activation}"
        if self.kind == "head":
            return f"head_i{self.in_channels}_o{self.out_channels}_c{self.num_classes}_r{self.size}_{self.activation}"
        return (f"{self.conv_op}_k{self.kernel}_s{self.stride}_e{_num(self.expand_ratio)}_se{_num(self.se_ratio)}"
                f"_i{self.in_channels}_o{self.out_channels}_r{self.size}_{'skip' if self.residual else 'noskip'}"
                f"_{self.activation}")

    def block(self) -> BlockSpec:
        """The one-layer BlockSpec a `layer` config builds (model.Layer takes one)."""
        return BlockSpec(1, self.kernel, self.stride, self.expand_ratio, self.in_channels, self.out_channels,
                         self.se_ratio, self.residual, self.conv_op)

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.in_channels, self.size, self.size)

    def module(self) -> Any:
        """A fresh nn.Module of this part, built with the same classes as `model.build`."""
        from torch import nn

        from .model import ConvBNAct, Layer
        if self.kind == "stem":
            return ConvBNAct(self.in_channels, self.out_channels, 3, 2, act=self.activation)
        if self.kind == "layer":
            return Layer(self.block(), self.activation, 0.0)

        class Head(nn.Module):  # Net.forward after the blocks: head conv, pool, flatten, dropout, classifier
            def __init__(self, cin: int, ch: int, classes: int, act: str):
                super().__init__()
                self.head = ConvBNAct(cin, ch, 1, act=act)
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.dropout = nn.Dropout(0.2)
                self.classifier = nn.Linear(ch, classes)

            def forward(self, x):
                return self.classifier(self.dropout(self.pool(self.head(x)).flatten(1)))

        return Head(self.in_channels, self.out_channels, self.num_classes, self.activation)


def layer_config(layer: BlockSpec, size: int, activation: str) -> LayerConfig:
    """The config of one layer (a one-repeat BlockSpec, as `BlockSpec.layers()` yields) at input `size`."""
    c = layer.canonical()
    return LayerConfig("layer", c.in_channels, c.out_channels, size, activation, c.conv_op, c.kernel, c.stride,
                       _plain(c.expand_ratio), float(c.se_ratio), layer.has_residual())


def _block_configs(block: BlockSpec, size: int, activation: str) -> tuple[list[LayerConfig], int]:
    """Configs of the block's layers in order, and the output size (the first layer strides).

    Same result as `layer_config` over `block.layers()`, without a BlockSpec per layer
    (the search predicts thousands of specs; this is most of a prediction's time).
    """
    c = block.canonical()
    e, se = _plain(c.expand_ratio), float(c.se_ratio)
    out = out_size(size, c.stride)
    first = LayerConfig("layer", c.in_channels, c.out_channels, size, activation, c.conv_op, c.kernel, c.stride,
                        e, se, block.has_residual())
    if block.repeats == 1:
        return [first], out
    rest = LayerConfig("layer", c.out_channels, c.out_channels, out, activation, c.conv_op, c.kernel, 1, e, se,
                       block.skip)
    return [first] + [rest] * (block.repeats - 1), out


def stem_config(stem_channels: int, resolution: int, activation: str) -> LayerConfig:
    return LayerConfig("stem", 3, stem_channels, resolution, activation, "conv", 3, 2)


def head_config(in_channels: int, head_channels: int, num_classes: int, size: int, activation: str) -> LayerConfig:
    return LayerConfig("head", in_channels, head_channels, size, activation, num_classes=num_classes)


def layer_configs(spec: ArchSpec, resolution: int | None = None) -> list[LayerConfig]:
    """Stem, every layer of every block, head: the parts whose latencies sum to the spec's."""
    res = _positive("resolution", spec.resolution if resolution is None else resolution)
    out = [stem_config(spec.stem_channels, res, spec.activation)]
    size = out_size(res, 2)
    for block in spec.blocks:
        configs, size = _block_configs(block, size, spec.activation)
        out += configs
    out.append(head_config(spec.blocks[-1].out_channels, spec.head_channels, spec.num_classes, size, spec.activation))
    return out


def space_configs(space: Any, resolution: int | None = None) -> list[LayerConfig]:
    """Every distinct config any network of `space` (a SearchSpace) has at `resolution`, in a stable order.

    Runs over each block's own option product (op, kernel, expansion, SE, skip, width,
    layers) and each input width the previous block can give, never over whole networks:
    strides are fixed by the skeleton, so each block's input size is known in advance.
    """
    import itertools

    from .space import CHOICE_FIELDS, round_channels
    res = _positive("resolution", space.resolution if resolution is None else resolution)
    act = space.activation
    seen: dict[str, LayerConfig] = {}

    def add(config: LayerConfig) -> None:
        seen.setdefault(config.key(), config)

    add(stem_config(space.stem_channels, res, act))
    size = out_size(res, 2)
    inputs = {space.stem_channels}
    for base in space.blocks:
        opts = {**space.choices, **dict(base.choices)}
        outs = {round_channels(base.out_channels * m, space.channel_divisor) for m in opts["filter_multiplier"]}
        reps = sorted({max(1, base.repeats + d) for d in opts["layers_delta"]})
        reps = sorted({min(r, 2) for r in reps})  # layers after the second repeat the second's config
        fields = [f for f in CHOICE_FIELDS if f not in ("filter_multiplier", "layers_delta")]
        for values in itertools.product(*(opts[f] for f in fields)):
            v = dict(zip(fields, values))
            for cin, cout, r in itertools.product(sorted(inputs), sorted(outs), reps):
                block = BlockSpec(r, v["kernel"], base.stride, v["expand_ratio"], cin, cout, v["se_ratio"],
                                  v["skip"] == "identity", v["conv_op"])
                for config in _block_configs(block, size, act)[0]:
                    add(config)
        size = out_size(size, base.stride)
        inputs = outs
    for cin in sorted(inputs):
        add(head_config(cin, space.head_channels, space.num_classes, size, act))
    return list(seen.values())


def network_order(configs: Iterable[LayerConfig]) -> list[LayerConfig]:
    """Stem first, then by input size, largest first (the order a network runs them), head last."""
    rank = {"stem": 0, "layer": 1, "head": 2}
    return sorted(configs, key=lambda c: (rank[c.kind], -c.size))


def measure_parts(configs: Sequence[LayerConfig], *, batch: int = 1, device: str = "cpu", threads: int | None = 1,
                  dtype: str = "float32", channels_last: bool = False, warmup: int = DEFAULT_WARMUP,
                  repeats: int = DEFAULT_REPEATS, steady: bool = True) -> list[Latency]:
    """Latency of each part, timed in turn: `repeats` rounds over all of them (after `warmup` rounds).

    A layer in a network runs after the other layers have been through the caches, TLB and
    branch predictors; timed alone, back to back, it finds them as its own previous call
    left them and comes out faster (on the 2-core Xeon, late 7x7 layers 1.3x, the head
    1.7x; a whole random network's parts summed 19 % under its measured latency). Timing
    a network's worth of parts round-robin in network order, each one's input freshly read
    just before its call as a previous layer would have left it, brings that to about 5 %
    and ranks networks better. Each part gets its own random input of its own shape.
    """
    import torch
    if repeats < 1 or warmup < 0:
        raise LatencyError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    dev = resolve_device(device)
    tdtype = torch_dtype(dtype, dev)
    _positive("batch", batch)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    modules, inputs = [], []
    for c in configs:
        m = c.module().to(device=dev, dtype=tdtype).eval()
        x = torch.randn(*c.input_shape(batch), device=dev, dtype=tdtype)
        if channels_last:
            m, x = m.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        modules.append(m)
        inputs.append(x)
    cuda = dev.startswith("cuda")
    samples: list[list[float]] = [[] for _ in modules]
    enabled = gc.isenabled()
    with fixed_threads(threads) as used, steady_allocator(steady) as allocator, torch.inference_mode():
        try:
            for round_ in range(warmup + repeats):
                if round_ == warmup:
                    gc.disable()
                for i, (m, x) in enumerate(zip(modules, inputs)):
                    if cuda:
                        torch.cuda.synchronize(dev)
                    else:
                        x.sum()  # the input in the caches, as the previous layer leaves it
                    start = time.perf_counter()
                    m(x)
                    if cuda:
                        torch.cuda.synchronize(dev)
                    if round_ >= warmup:
                        samples[i].append(time.perf_counter() - start)
        finally:
            if enabled:
                gc.enable()
    name, version = device_name(dev), torch.__version__
    out = []
    for c, ts in zip(configs, samples):
        p25, p50, p75 = quartiles(ts)
        out.append(Latency(p50 * 1e3, p25 * 1e3, p75 * 1e3, min(ts) * 1e3, repeats, warmup, used, dev, name, batch,
                           c.size, dtype, bool(channels_last), version, allocator))
    return out


# -- helpers -----------------------------------------------------------------------------------
def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LatencyError(f"{name} must be a positive integer, got {value!r}")
    return value


def _plain(x: float) -> float | int:
    """6.0 -> 6, so equal ratios give equal keys and dataclass equality."""
    return int(x) if float(x).is_integer() else float(x)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def distinct(configs: Iterable[LayerConfig]) -> list[LayerConfig]:
    """First occurrence of each config key, in order."""
    seen: dict[str, LayerConfig] = {}
    for c in configs:
        seen.setdefault(c.key(), c)
    return list(seen.values())
