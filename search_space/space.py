"""MnasNet's factorized hierarchical search space, described by a small YAML file.

A space is a skeleton of blocks (stages) plus, per block, the options of seven
choices (conv op, kernel, expansion, SE, skip, filter multiplier, layers delta).
Controllers see only `decisions`: a flat list of named categorical decisions; a
proposal is one index per decision, and `decode` turns it into an `ArchSpec`.
The file format is documented in docs/space-file.md.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .decisions import Decision
from .errors import SpecError, read_text_file
from .fileio import write_atomic, yaml_line, yaml_problem
from .spec import ACTIVATIONS, CONV_OPS, ArchSpec, BlockSpec, _is_int, _is_real

SKIP_OPS = ("identity", "none")

# The order of a block's choices, also the order of its decisions.
CHOICE_FIELDS = ("conv_op", "kernel", "expand_ratio", "se_ratio", "skip", "filter_multiplier", "layers_delta")

# MnasNet's per-block options; a file's top-level `choices` overrides these, a block's `choices` overrides both.
DEFAULT_CHOICES: dict[str, tuple[Any, ...]] = {
    "conv_op": ("mbconv", "dsconv", "conv"),
    "kernel": (3, 5),
    "expand_ratio": (1, 3, 6),
    "se_ratio": (0, 0.25),
    "skip": ("identity", "none"),
    "filter_multiplier": (0.75, 1.0, 1.25),
    "layers_delta": (-1, 0, 1),
}

GLOBAL_DEFAULTS: dict[str, Any] = {
    "stem_channels": 32, "head_channels": 1280, "activation": "swish", "num_classes": 1000,
    "dropout": 0.2, "drop_connect": 0.2, "resolution": 224, "channel_divisor": 8,
}

SKELETON_REQUIRED = ("repeats", "kernel", "stride", "expand_ratio", "out_channels")
SKELETON_OPTIONAL: dict[str, Any] = {"se_ratio": 0, "skip": "identity", "conv_op": "mbconv"}


def round_channels(channels: float, divisor: int = 8) -> int:
    """EfficientNet's rounding: nearest multiple of `divisor`, never more than 10 % below."""
    new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if new < 0.9 * channels:
        new += divisor
    return int(new)


@dataclass(frozen=True)
class SkeletonBlock:
    """One skeleton block: its base values and its own choice overrides (field -> options)."""

    repeats: int
    kernel: int
    stride: int
    expand_ratio: float
    out_channels: int
    se_ratio: float = 0
    skip: str = "identity"
    conv_op: str = "mbconv"
    choices: tuple[tuple[str, tuple[Any, ...]], ...] = ()


class SearchSpace:
    """A factorized hierarchical space: decisions, decode/encode, sample, mutate, size."""

    def __init__(self, blocks: Sequence[SkeletonBlock], choices: Mapping[str, Sequence[Any]] | None = None,
                 source: str = "<space>", **globals_: Any) -> None:
        """Prefer `from_yaml`/`from_dict`/`default`; this constructor validates the same way."""
        self.source = source
        unknown = sorted(set(globals_) - set(GLOBAL_DEFAULTS))
        if unknown:
            self._fail(unknown[0], "unknown key")
        g = {**GLOBAL_DEFAULTS, **globals_}
        for name in ("stem_channels", "head_channels", "num_classes", "resolution", "channel_divisor"):
            self._positive_int(g[name], name)
        if g["activation"] not in ACTIVATIONS:
            self._fail("activation", f"unknown activation {g['activation']!r} (expected one of {', '.join(ACTIVATIONS)})")
        for name in ("dropout", "drop_connect"):
            if not _is_real(g[name]) or not 0 <= g[name] < 1:
                self._fail(name, f"must be a number in [0, 1), got {g[name]!r}")
        self.stem_channels: int = g["stem_channels"]
        self.head_channels: int = g["head_channels"]
        self.activation: str = g["activation"]
        self.num_classes: int = g["num_classes"]
        self.dropout: float = g["dropout"]
        self.drop_connect: float = g["drop_connect"]
        self.resolution: int = g["resolution"]
        self.channel_divisor: int = g["channel_divisor"]

        self.choices: dict[str, tuple[Any, ...]] = dict(DEFAULT_CHOICES)
        for name, options in (choices or {}).items():
            self.choices[name] = self._check_options(name, options, f"choices.{name}")
        self.blocks: tuple[SkeletonBlock, ...] = tuple(blocks)
        if not self.blocks:
            self._fail("blocks", "a space needs at least one block")
        self._build()

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "SearchSpace":
        """Read the mapping a space file holds; errors name `source` and the field."""
        def fail(field: str, problem: str) -> None:
            raise SpecError(f"{source}: {field}: {problem}")

        if not isinstance(data, Mapping):
            fail("<top level>", "expected a mapping")
        data = dict(data)
        known = set(GLOBAL_DEFAULTS) | {"blocks", "choices"}
        for key in data:
            if key not in known:
                fail(str(key), f"unknown key (known: {', '.join(sorted(known))})")
        choices = data.pop("choices", None) or {}
        if not isinstance(choices, Mapping):
            fail("choices", "expected a mapping of choice name -> list of options")
        for key in choices:
            if key not in CHOICE_FIELDS:
                fail(f"choices.{key}", f"unknown choice (known: {', '.join(CHOICE_FIELDS)})")
        raw_blocks = data.pop("blocks", None)
        if not isinstance(raw_blocks, list) or not raw_blocks:
            fail("blocks", "missing or empty: expected a list of skeleton blocks")
        blocks = []
        block_keys = set(SKELETON_REQUIRED) | set(SKELETON_OPTIONAL) | {"choices"}
        for i, raw in enumerate(raw_blocks):
            where = f"blocks[{i}]"
            if not isinstance(raw, Mapping):
                fail(where, "expected a mapping")
            for key in raw:
                if key not in block_keys:
                    fail(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(block_keys))})")
            missing = [k for k in SKELETON_REQUIRED if k not in raw]
            if missing:
                fail(where, f"missing {', '.join(missing)}")
            own = raw.get("choices") or {}
            if not isinstance(own, Mapping):
                fail(f"{where}.choices", "expected a mapping of choice name -> list of options")
            for key in own:
                if key not in CHOICE_FIELDS:
                    fail(f"{where}.choices.{key}", f"unknown choice (known: {', '.join(CHOICE_FIELDS)})")
            fields = {k: raw[k] for k in raw if k != "choices"}
            blocks.append(SkeletonBlock(**{**SKELETON_OPTIONAL, **fields},
                                        choices=tuple((k, _as_tuple(v)) for k, v in own.items())))
        return cls(blocks, choices=choices, source=source, **data)

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<yaml>") -> "SearchSpace":
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            line = yaml_line(exc)
            where = "<yaml>" if line is None else f"line {line}"
            raise SpecError(f"{source}: {where}: YAML does not parse: {yaml_problem(exc, with_line=False)}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchSpace":
        """Load a space file; any problem is one `SpecError` line naming the file and field."""
        text = read_text_file(path, "the space file")
        return cls.from_yaml_text(text, source=str(path))

    @classmethod
    def default(cls) -> "SearchSpace":
        """The packaged space: the EfficientNet-B0 skeleton with MnasNet's choices."""
        return cls.from_yaml(Path(__file__).with_name("default_space.yaml"))

    def to_dict(self) -> dict[str, Any]:
        """The file form: globals, the full top-level `choices`, blocks with their own overrides."""
        d: dict[str, Any] = {name: getattr(self, name) for name in GLOBAL_DEFAULTS}
        d["choices"] = {k: list(v) for k, v in self.choices.items()}
        d["blocks"] = []
        for b in self.blocks:
            entry = {f.name: getattr(b, f.name) for f in dataclasses.fields(b) if f.name != "choices"}
            if b.choices:
                entry["choices"] = {k: list(v) for k, v in b.choices}
            d["blocks"].append(entry)
        return d

    def to_yaml(self) -> str:
        import yaml
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> None:
        """Write the file form atomically (a killed process never leaves half a file)."""
        write_atomic(path, self.to_yaml())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"SearchSpace({self.source}: {len(self.blocks)} blocks, {len(self.decisions)} decisions, "
                f"10^{self.log10_size:.1f} choice vectors)")

    # -- the decisions -----------------------------------------------------------------
    @property
    def decisions(self) -> list[Decision]:
        """Flat list, block by block in CHOICE_FIELDS order, named `b<i>.<choice>` (i from 0)."""
        return list(self._decisions)

    @property
    def log10_size(self) -> float:
        """log10 of the number of distinct choice vectors.

        This counts canonical duplicates: e.g. `dsconv` with expansion 3 and with 6, a
        `conv` with and without SE, multipliers that round to the same width, and
        layers_delta -1 and 0 on a one-layer block each count separately.
        `log10_distinct_size` counts distinct networks (distinct `ArchSpec.key()`).
        """
        return float(sum(math.log10(d.size) for d in self._decisions))

    @property
    def log10_distinct_size(self) -> float:
        """log10 of the number of distinct networks (`ArchSpec.key()`) the space decodes to.

        Exact: `skip` tells networks apart only where a layer can have a residual (more than
        one layer, or stride 1 with in == out, which depends on the previous block's width),
        so the count runs block by block over the input width.
        """
        if self._log10_distinct is None:
            prefixes = {self.stem_channels: 1}  # input width of the next block -> distinct prefixes
            for i, slots in enumerate(self._slots):
                opts = dict((f, v) for f, v, _ in slots)
                base = self.blocks[i]
                outs = {self._out[i][m] for m in opts["filter_multiplier"]}
                reps = {max(1, base.repeats + d) for d in opts["layers_delta"]}
                ops = {}  # residual possible? -> number of distinct (op, expansion, SE, skip)
                for residual in (True, False):
                    seen = set()
                    for op, e, se, skip in itertools.product(opts["conv_op"], opts["expand_ratio"],
                                                             opts["se_ratio"], opts["skip"]):
                        b = BlockSpec(1, 3, 1 if residual else 2, e, 8, 8, se, skip == "identity", op).canonical()
                        seen.add((b.conv_op, float(b.expand_ratio), float(b.se_ratio), b.skip))
                    ops[residual] = len(seen)
                following: dict[int, int] = {}
                for cin, n in prefixes.items():
                    for out in outs:
                        for r in reps:
                            residual = r > 1 or (base.stride == 1 and cin == out)
                            following[out] = following.get(out, 0) + n * len(opts["kernel"]) * ops[residual]
                prefixes = following
            self._log10_distinct = math.log10(sum(prefixes.values()))
        return self._log10_distinct

    # -- decode / encode -----------------------------------------------------------------
    def decode(self, choices: Sequence[int], num_classes: int | None = None,
               resolution: int | None = None) -> ArchSpec:
        """The (canonical) ArchSpec these choice indices select."""
        idx = self._check_choices(choices)
        blocks = []
        cin = self.stem_channels
        for i, slots in enumerate(self._slots):
            v = {f: opts[0] if pos is None else opts[idx[pos]] for f, opts, pos in slots}
            base = self.blocks[i]
            block = BlockSpec(
                repeats=max(1, base.repeats + v["layers_delta"]), kernel=v["kernel"], stride=base.stride,
                expand_ratio=v["expand_ratio"], in_channels=cin, out_channels=self._out[i][v["filter_multiplier"]],
                se_ratio=v["se_ratio"], skip=v["skip"] == "identity", conv_op=v["conv_op"]).canonical()
            blocks.append(block)
            cin = block.out_channels
        return ArchSpec(blocks=tuple(blocks), stem_channels=self.stem_channels, head_channels=self.head_channels,
                        resolution=self.resolution if resolution is None else resolution,
                        num_classes=self.num_classes if num_classes is None else num_classes,
                        dropout=self.dropout, drop_connect=self.drop_connect, activation=self.activation)

    def key(self, choices: Sequence[int]) -> str:
        return self.decode(choices).key()

    def encode(self, spec: ArchSpec) -> list[int] | None:
        """Choices that decode to `spec`'s canonical form (ignoring num_classes/resolution); None if none do."""
        if not isinstance(spec, ArchSpec):
            raise TypeError(f"encode expects an ArchSpec, got {type(spec).__name__}")
        if (len(spec.blocks) != len(self.blocks) or spec.stem_channels != self.stem_channels
                or spec.head_channels != self.head_channels or spec.activation != self.activation):
            return None
        target = spec.canonical()
        out = [0] * len(self._decisions)
        for i, (tb, slots) in enumerate(zip(target.blocks, self._slots)):
            base, raw = self.blocks[i], spec.blocks[i]
            # Among equivalent encodings prefer the spec's own spelling, multiplier 1 and delta 0.
            prefer = {"conv_op": raw.conv_op, "expand_ratio": raw.expand_ratio, "se_ratio": raw.se_ratio,
                      "skip": "identity" if raw.skip else "none"}
            rank = {f: (lambda v, p=p: v != p) for f, p in prefer.items()}
            rank["filter_multiplier"] = lambda v: abs(v - 1)
            rank["layers_delta"] = abs
            match = {  # per-field filters for the choices that map one-to-one onto a spec field
                "kernel": lambda v, k=tb.kernel: v == k,
                "filter_multiplier": lambda v, outs=self._out[i], c=tb.out_channels: outs[v] == c,
                "layers_delta": lambda v, r=base.repeats, want=tb.repeats: max(1, r + v) == want,
            }
            cands = []
            for f, opts, _ in slots:
                ok = [j for j, v in enumerate(opts) if match.get(f, lambda _: True)(v)]
                ok.sort(key=lambda j: rank.get(f, lambda _: 0)(opts[j]))
                if not ok or base.stride != tb.stride:
                    return None
                cands.append(ok)
            for combo in itertools.product(*cands):
                v = {f: opts[j] for (f, opts, _), j in zip(slots, combo)}
                try:
                    b = BlockSpec(tb.repeats, v["kernel"], tb.stride, v["expand_ratio"], tb.in_channels,
                                  tb.out_channels, v["se_ratio"], v["skip"] == "identity", v["conv_op"]).canonical()
                except SpecError:
                    continue
                if b == tb:
                    for (_, _, pos), j in zip(slots, combo):
                        if pos is not None:
                            out[pos] = j
                    break
            else:
                return None
        if self.decode(out, num_classes=spec.num_classes).key() != spec.key():
            return None
        return out

    def skeleton(self) -> ArchSpec:
        """The skeleton's own network (multiplier 1, base layers, base ops); may lie outside the choices."""
        blocks, cin = [], self.stem_channels
        for b in self.blocks:
            out = round_channels(b.out_channels, self.channel_divisor)
            blocks.append(BlockSpec(b.repeats, b.kernel, b.stride, b.expand_ratio, cin, out, b.se_ratio,
                                    b.skip == "identity", b.conv_op))
            cin = out
        return ArchSpec(blocks=tuple(blocks), stem_channels=self.stem_channels, head_channels=self.head_channels,
                        resolution=self.resolution, num_classes=self.num_classes, dropout=self.dropout,
                        drop_connect=self.drop_connect, activation=self.activation)

    def base_choices(self) -> list[int] | None:
        """`encode(skeleton())`: the skeleton as choices (the B0 choices in the default space)."""
        return self.encode(self.skeleton())

    # -- sampling ------------------------------------------------------------------------
    def sample(self, rng: Any = None) -> list[int]:
        """Uniform choices; `rng` is a numpy Generator, random.Random, an int seed or None."""
        rng = _as_rng(rng)
        return [_below(rng, d.size) for d in self._decisions]

    def mutate(self, choices_or_spec: Sequence[int] | ArchSpec, rng: Any = None) -> list[int]:
        """Change exactly one decision to another option, preferring one that changes the network."""
        rng = _as_rng(rng)
        if isinstance(choices_or_spec, ArchSpec):
            choices = self.encode(choices_or_spec)
            if choices is None:
                raise SpecError(f"{self.source}: mutate: the spec is not in this search space")
        else:
            choices = self._check_choices(choices_or_spec)
        if not self._decisions:
            raise SpecError(f"{self.source}: mutate: the space has no decisions (every choice is fixed)")
        old_key = self.key(choices)
        fallback = None
        for pos in _permutation(rng, len(self._decisions)):
            others = [v for v in range(self._decisions[pos].size) if v != choices[pos]]
            for k in _permutation(rng, len(others)):
                new = list(choices)
                new[pos] = others[k]
                if fallback is None:
                    fallback = new
                if self.key(new) != old_key:
                    return new
        return fallback  # every single change gives the same network: still change exactly one

    # -- internals -----------------------------------------------------------------------
    def _build(self) -> None:
        """Validate blocks, resolve each block's options, lay out the flat decisions."""
        self._slots: list[list[tuple[str, tuple[Any, ...], int | None]]] = []
        self._out: list[dict[Any, int]] = []
        decisions: list[Decision] = []
        div = self.channel_divisor
        for i, b in enumerate(self.blocks):
            where = f"blocks[{i}]"
            self._positive_int(b.repeats, f"{where}.repeats")
            self._check_value("kernel", b.kernel, f"{where}.kernel")
            if b.stride not in (1, 2) or isinstance(b.stride, bool):
                self._fail(f"{where}.stride", f"must be 1 or 2, got {b.stride!r}")
            self._check_value("expand_ratio", b.expand_ratio, f"{where}.expand_ratio")
            self._positive_int(b.out_channels, f"{where}.out_channels")
            self._check_value("se_ratio", b.se_ratio, f"{where}.se_ratio")
            self._check_value("skip", b.skip, f"{where}.skip")
            self._check_value("conv_op", b.conv_op, f"{where}.conv_op")
            own = dict(b.choices)
            slots = []
            for f in CHOICE_FIELDS:
                field = f"{where}.choices.{f}" if f in own else f"choices.{f}"
                opts = self._check_options(f, own[f], field) if f in own else self.choices[f]
                pos = None
                if len(opts) > 1:
                    pos = len(decisions)
                    decisions.append(Decision(f"b{i}.{f}", opts))
                slots.append((f, opts, pos))
            outs = {}
            multipliers = next(opts for f, opts, _ in slots if f == "filter_multiplier")
            for m in multipliers:
                scaled = b.out_channels * m
                if int(scaled + div / 2) // div * div <= 0:
                    field = f"{where}.choices.filter_multiplier" if "filter_multiplier" in own else "choices.filter_multiplier"
                    self._fail(field, f"multiplier {m} rounds {where} ({b.out_channels} channels -> {scaled:g}) "
                                      f"to 0 channels (channel_divisor {div})")
                outs[m] = round_channels(scaled, div)
            self._slots.append(slots)
            self._out.append(outs)
        self._decisions = tuple(decisions)
        self._log10_distinct: float | None = None

    def _check_options(self, name: str, options: Any, field: str) -> tuple[Any, ...]:
        opts = _as_tuple(options)
        if not opts:
            self._fail(field, "empty choice list (give at least one option)")
        seen = []
        for v in opts:
            self._check_value(name, v, field)
            if v in seen:
                self._fail(field, f"duplicate option {v!r}")
            seen.append(v)
        return opts

    def _check_value(self, name: str, v: Any, field: str) -> None:
        """One option (or skeleton value) of choice `name`; SpecError naming `field` if bad."""
        problem = None
        if name == "conv_op" and v not in CONV_OPS:
            problem = f"unknown conv op {v!r} (expected one of {', '.join(CONV_OPS)})"
        elif name == "skip" and v not in SKIP_OPS:
            problem = f"unknown skip op {v!r} (expected one of {', '.join(SKIP_OPS)})"
        elif name == "kernel" and not (_is_int(v) and v > 0 and v % 2 == 1):
            problem = f"kernel must be a positive odd integer, got {v!r}"
        elif name == "expand_ratio" and not (_is_real(v) and v >= 1):
            problem = f"expansion ratio must be a number >= 1, got {v!r}"
        elif name == "se_ratio" and not (_is_real(v) and 0 <= v <= 1):
            problem = f"squeeze-excite ratio must be a number in [0, 1], got {v!r}"
        elif name == "filter_multiplier" and not (_is_real(v) and v > 0):
            problem = f"filter multiplier must be a positive number, got {v!r}"
        elif name == "layers_delta" and not _is_int(v):
            problem = f"layers delta must be an integer, got {v!r}"
        if problem:
            self._fail(field, problem)

    def _positive_int(self, v: Any, field: str) -> None:
        if not _is_int(v) or v < 1:
            self._fail(field, f"must be a positive integer, got {v!r}")

    def _fail(self, field: str, problem: str) -> None:
        raise SpecError(f"{self.source}: {field}: {problem}")

    def _check_choices(self, choices: Sequence[int]) -> list[int]:
        try:
            idx = [operator.index(c) for c in choices]
        except TypeError:
            raise SpecError(f"choices must be a sequence of integer indices, got {choices!r}") from None
        if len(idx) != len(self._decisions):
            raise SpecError(f"expected {len(self._decisions)} choices (one per decision), got {len(idx)}")
        for c, d in zip(idx, self._decisions):
            if not 0 <= c < d.size:
                raise SpecError(f"choice for {d.name} must lie in [0, {d.size - 1}], got {c}")
        return idx


def _as_tuple(options: Any) -> tuple[Any, ...]:
    """A list of options; a scalar is shorthand for a one-option (fixed) list."""
    if isinstance(options, (list, tuple)):
        return tuple(options)
    if options is None:
        return ()
    return (options,)


def _as_rng(rng: Any) -> Any:
    if rng is None:
        return np.random.default_rng()
    if _is_int(rng):
        return np.random.default_rng(int(rng))
    if isinstance(rng, (np.random.Generator, np.random.RandomState, random.Random)):
        return rng
    raise TypeError(f"rng must be a numpy Generator, random.Random, an int seed or None, got {type(rng).__name__}")


def _below(rng: Any, n: int) -> int:
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    if isinstance(rng, np.random.RandomState):
        return int(rng.randint(n))
    return rng.randrange(n)


def _permutation(rng: Any, n: int) -> list[int]:
    order = list(range(n))
    for i in range(n - 1, 0, -1):  # Fisher-Yates, so every rng type shuffles the same way
        j = _below(rng, i + 1)
        order[i], order[j] = order[j], order[i]
    return order
