"""Architecture specs: plain dataclasses that every other package passes around.

An `ArchSpec` is the whole description of a network (stem, MBConv-style blocks, head,
classifier); nothing here builds modules or counts cost. Specs round-trip through
dicts (hence YAML/JSON) and through the block-string formats of the TensorFlow
reference (`r1_k3_s11_e1_i32_o16_se0.25`) and of timm (`ir_r2_k3_s2_e6_c24_se0.25`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpecError, read_text_file
from .fileio import write_atomic, yaml_problem

CONV_OPS = ("mbconv", "dsconv", "conv")
ACTIVATIONS = ("swish", "relu")


@dataclass(frozen=True)
class BlockSpec:
    """One stage ("block" in MnasNet's words): `repeats` identical layers.

    Only the first layer has `stride` and the `in_channels -> out_channels` change;
    the others are stride 1 with `out_channels` in and out. `se_ratio` is relative to
    the layer's *input* channels (TF reference). `skip` asks for an identity residual,
    which exists only where stride is 1 and in == out.

    conv_op: `mbconv` (1x1 expand, kxk depthwise, SE, 1x1 project); `dsconv`
    (depthwise-separable: kxk depthwise, SE, 1x1 pointwise, i.e. MBConv with
    expand_ratio 1); `conv` (a plain kxk convolution, BN, activation; no SE).
    """

    repeats: int
    kernel: int
    stride: int
    expand_ratio: float
    in_channels: int
    out_channels: int
    se_ratio: float = 0.0
    skip: bool = True
    conv_op: str = "mbconv"

    def __post_init__(self) -> None:
        if self.conv_op not in CONV_OPS:
            raise SpecError(f"conv_op: unknown operator {self.conv_op!r} (expected one of {', '.join(CONV_OPS)})")
        if not _is_int(self.repeats) or self.repeats < 1:
            raise SpecError(f"repeats: must be a positive integer, got {self.repeats!r}")
        if not _is_int(self.kernel) or self.kernel < 1 or self.kernel % 2 == 0:
            raise SpecError(f"kernel: must be a positive odd integer, got {self.kernel!r}")
        if not _is_int(self.stride) or self.stride not in (1, 2):
            raise SpecError(f"stride: must be 1 or 2, got {self.stride!r}")
        for name in ("in_channels", "out_channels"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SpecError(f"{name}: must be a positive integer, got {value!r}")
        for name in ("expand_ratio", "se_ratio"):
            if not _is_real(getattr(self, name)):
                raise SpecError(f"{name}: must be a finite number, got {getattr(self, name)!r}")
        if not isinstance(self.skip, bool):
            if isinstance(self.skip, str) or self.skip not in (0, 1):
                raise SpecError(f"skip: must be true or false, got {self.skip!r}")
            object.__setattr__(self, "skip", bool(self.skip))
        if not self.expand_ratio or self.expand_ratio < 1:
            raise SpecError(f"expand_ratio: must be >= 1, got {self.expand_ratio!r}")
        if self.se_ratio < 0 or self.se_ratio > 1:
            raise SpecError(f"se_ratio: must lie in [0, 1], got {self.se_ratio!r}")

    def canonical(self) -> "BlockSpec":
        """The same network with equivalent encodings folded together.

        `dsconv` is MBConv with expansion 1; a plain conv ignores expansion and SE;
        `skip` means nothing in a single layer that strides or changes width.
        Two specs that build identical modules have identical canonical forms.
        """
        block = self
        if block.repeats == 1 and not (block.stride == 1 and block.in_channels == block.out_channels):
            block = dataclasses.replace(block, skip=True)  # no layer can have a residual
        if block.conv_op == "dsconv" or (block.conv_op == "mbconv" and block.expand_ratio == 1):
            return dataclasses.replace(block, conv_op="dsconv", expand_ratio=1)
        if block.conv_op == "conv":
            return dataclasses.replace(block, expand_ratio=1, se_ratio=0.0)
        return block

    def layers(self) -> list["BlockSpec"]:
        """The `repeats` layers of this block, each as a one-repeat BlockSpec."""
        first = dataclasses.replace(self, repeats=1)
        rest = dataclasses.replace(self, repeats=1, stride=1, in_channels=self.out_channels)
        return [first] + [rest] * (self.repeats - 1)

    def has_residual(self) -> bool:
        return self.skip and self.stride == 1 and self.in_channels == self.out_channels

    # -- TensorFlow reference block strings ---------------------------------------
    def to_tf_string(self) -> str:
        """`r1_k3_s11_e1_i32_o16_se0.25[_noskip]`; a plain conv adds `_conv` (our extension)."""
        b = self.canonical()
        parts = [f"r{b.repeats}", f"k{b.kernel}", f"s{b.stride}{b.stride}", f"e{_num(b.expand_ratio)}",
                 f"i{b.in_channels}", f"o{b.out_channels}"]
        if b.se_ratio > 0:
            parts.append(f"se{_num(b.se_ratio)}")
        if not b.skip:
            parts.append("noskip")
        if b.conv_op == "conv":
            parts.append("conv")
        return "_".join(parts)

    @classmethod
    def from_tf_string(cls, text: str) -> "BlockSpec":
        fields: dict[str, Any] = {"se_ratio": 0.0, "skip": True, "conv_op": "mbconv"}
        tokens = text.strip().split("_")
        _no_repeated_fields(tokens, f"block string {text!r}")
        for token in tokens:
            if token == "noskip":
                fields["skip"] = False
            elif token == "conv":
                fields["conv_op"] = "conv"
            else:
                m = re.fullmatch(r"(se|r|k|s|e|i|o)(\d+(?:\.\d+)?)", token)
                if not m:
                    raise SpecError(f"block string {text!r}: cannot read token {token!r}")
                key, value = m.groups()
                if key == "s":
                    fields["stride"] = _stride(value, f"block string {text!r}")
                elif key in ("r", "k", "i", "o"):
                    fields[{"r": "repeats", "k": "kernel", "i": "in_channels", "o": "out_channels"}[key]] = \
                        _whole(value, token, f"block string {text!r}")
                elif key == "e":
                    fields["expand_ratio"] = _int_if_whole(float(value))
                else:
                    fields["se_ratio"] = float(value)
        missing = [k for k in ("repeats", "kernel", "stride", "expand_ratio", "in_channels", "out_channels") if k not in fields]
        if missing:
            raise SpecError(f"block string {text!r}: missing {', '.join(missing)}")
        return cls(**fields)

    # -- timm arch definitions -----------------------------------------------------
    def to_timm_string(self) -> str:
        """`ds_r1_k3_s1_e1_c16_se0.25`, `ir_r2_k3_s2_e6_c24_se0.25`, `cn_r1_k3_s1_c32`.

        timm's `cn` block has a residual only when told `skip` (the others unless `noskip`),
        so a plain conv block that can have one is written with `_skip`.
        """
        b = self.canonical()
        kind = {"dsconv": "ds", "mbconv": "ir", "conv": "cn"}[b.conv_op]
        parts = [kind, f"r{b.repeats}", f"k{b.kernel}", f"s{b.stride}"]
        if kind != "cn":
            parts.append(f"e{_num(b.expand_ratio)}")
        parts.append(f"c{b.out_channels}")
        if b.se_ratio > 0:
            parts.append(f"se{_num(b.se_ratio)}")
        if kind == "cn":
            if b.skip and (b.repeats > 1 or b.has_residual()):
                parts.append("skip")
        elif not b.skip:
            parts.append("noskip")
        return "_".join(parts)

    @classmethod
    def from_timm_string(cls, text: str, in_channels: int) -> "BlockSpec":
        tokens = text.strip().split("_")
        kinds = {"ds": "dsconv", "ir": "mbconv", "cn": "conv"}
        if not tokens or tokens[0] not in kinds:
            raise SpecError(f"timm block {text!r}: block type must be one of ds, ir, cn")
        # timm: `ds`/`ir` have a residual unless `noskip`; `cn` has none unless `skip`.
        fields: dict[str, Any] = {"conv_op": kinds[tokens[0]], "se_ratio": 0.0, "skip": tokens[0] != "cn",
                                  "expand_ratio": 1, "in_channels": in_channels}
        _no_repeated_fields(tokens[1:], f"timm block {text!r}", same={"skip": "noskip"})
        for token in tokens[1:]:
            if token in ("skip", "noskip"):
                fields["skip"] = token == "skip"
                continue
            m = re.fullmatch(r"(se|r|k|s|e|c)(\d+(?:\.\d+)?)", token)
            if not m:
                raise SpecError(f"timm block {text!r}: cannot read token {token!r}")
            key, value = m.groups()
            if key == "se":
                fields["se_ratio"] = float(value)
            elif key == "e":
                fields["expand_ratio"] = _int_if_whole(float(value))
            elif key == "s":
                fields["stride"] = _stride(value, f"timm block {text!r}")
            else:
                fields[{"r": "repeats", "k": "kernel", "c": "out_channels"}[key]] = \
                    _whole(value, token, f"timm block {text!r}")
        missing = [k for k in ("repeats", "kernel", "stride", "out_channels") if k not in fields]
        if missing:
            raise SpecError(f"timm block {text!r}: missing {', '.join(missing)}")
        return cls(**fields)


def _no_repeated_fields(tokens: list[str], where: str, same: dict[str, str] | None = None) -> None:
    """`k3_k5` would silently mean k5 (the TF reference keeps the last): refuse it instead."""
    seen: dict[str, str] = {}
    for token in tokens:
        m = re.match(r"[a-z]+", token)  # the field's letters: k3 -> k, se0.25 -> se, noskip
        key = m.group(0) if m else token
        key = (same or {}).get(key, key)
        if key in seen:
            raise SpecError(f"{where}: {seen[key]!r} and {token!r} give the same field twice")
        seen[key] = token


@dataclass(frozen=True)
class ArchSpec:
    """A whole network: stem conv, blocks, head 1x1 conv, pool, dropout, classifier."""

    blocks: tuple[BlockSpec, ...]
    stem_channels: int = 32
    head_channels: int = 1280
    resolution: int = 224
    num_classes: int = 1000
    dropout: float = 0.2
    drop_connect: float = 0.2
    activation: str = "swish"
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise SpecError("blocks: a network needs at least one block")
        for name in ("stem_channels", "head_channels", "resolution", "num_classes"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SpecError(f"{name}: must be a positive integer, got {value!r}")
        if not isinstance(self.name, str):
            raise SpecError(f"name: must be a string, got {self.name!r}")
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"activation: unknown {self.activation!r} (expected one of {', '.join(ACTIVATIONS)})")
        for name in ("dropout", "drop_connect"):
            if not _is_real(getattr(self, name)):
                raise SpecError(f"{name}: must be a finite number, got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1 or not 0 <= self.drop_connect < 1:
            raise SpecError("dropout and drop_connect must lie in [0, 1)")
        expected_in = self.stem_channels
        for i, block in enumerate(self.blocks):
            if block.in_channels != expected_in:
                raise SpecError(f"blocks[{i}].in_channels: {block.in_channels} does not match the previous output {expected_in}")
            expected_in = block.out_channels

    # -- derived facts ---------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return sum(b.repeats for b in self.blocks)

    @property
    def total_stride(self) -> int:
        s = 2  # stem
        for b in self.blocks:
            s *= b.stride
        return s

    def canonical(self) -> "ArchSpec":
        return dataclasses.replace(self, blocks=tuple(b.canonical() for b in self.blocks), name="")

    def key(self) -> str:
        """A canonical string that identifies the network (not its name or resolution).

        Two specs with the same key build the same module; used as the cache key.
        """
        c = self.canonical()
        return "|".join([f"stem{c.stem_channels}", *[b.to_tf_string() for b in c.blocks],
                         f"head{c.head_channels}", f"cls{c.num_classes}", c.activation])

    # -- dict / YAML / JSON ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocks"] = [dataclasses.asdict(b) for b in self.blocks]
        d["block_strings"] = [b.to_tf_string() for b in self.blocks]
        return d

    @classmethod
    def from_dict(cls, data: Any) -> "ArchSpec":
        """Read a dict; blocks may be dicts, TF block strings, or given as `block_strings`."""
        if not isinstance(data, dict):
            raise SpecError("spec: expected a mapping at the top level")
        data = dict(data)
        strings = data.pop("block_strings", None)
        blocks = data.pop("blocks", None)
        if blocks is None:
            blocks, strings = strings, None
        if not blocks:
            raise SpecError("blocks: missing or empty")
        if not isinstance(blocks, (list, tuple)):
            raise SpecError("blocks: expected a list of block mappings or block strings")
        known = {f.name for f in dataclasses.fields(cls)} - {"blocks"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known | {'blocks', 'block_strings'}))})")
        block_fields = {f.name for f in dataclasses.fields(BlockSpec)}
        parsed = []
        for i, b in enumerate(blocks):
            if isinstance(b, str):
                try:
                    parsed.append(BlockSpec.from_tf_string(b))
                except SpecError as exc:
                    raise SpecError(f"blocks[{i}]: {exc}") from None
            elif isinstance(b, dict):
                bad = sorted(set(b) - block_fields)
                if bad:
                    raise SpecError(f"blocks[{i}]: unknown key {bad[0]!r}")
                try:
                    parsed.append(BlockSpec(**b))
                except TypeError as exc:
                    raise SpecError(f"blocks[{i}]: {exc}") from None
                except SpecError as exc:
                    raise SpecError(f"blocks[{i}].{exc}") from None
            else:
                raise SpecError(f"blocks[{i}]: expected a mapping or a block string")
        if strings is not None:  # `to_dict` writes both: an edit of one must not be silently ignored
            if not isinstance(strings, (list, tuple)) or len(strings) != len(parsed):
                raise SpecError("block_strings: does not match blocks (edit one of them and delete the other)")
            for i, (text, block) in enumerate(zip(strings, parsed)):
                try:
                    same = BlockSpec.from_tf_string(str(text)).canonical() == block.canonical()
                except SpecError:
                    same = False
                if not same:
                    raise SpecError(f"block_strings[{i}]: {text!r} does not match blocks[{i}] "
                                    "(edit one of them and delete the other)")
        return cls(blocks=tuple(parsed), **data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec JSON does not parse: {exc}") from None

    def to_yaml(self) -> str:
        import yaml
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "ArchSpec":
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"spec YAML does not parse: {yaml_problem(exc)}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write JSON for a `.json` path, YAML otherwise, atomically (a killed process never
        leaves half a file). `load` reads both (JSON is YAML)."""
        path = Path(path)
        write_atomic(path, self.to_json() + "\n" if path.suffix.lower() == ".json" else self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "ArchSpec":
        path = Path(path)
        text = read_text_file(path, "the spec file")
        try:
            return cls.from_yaml(text)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None

    # -- block-string formats --------------------------------------------------------
    def to_tf_strings(self) -> list[str]:
        return [b.to_tf_string() for b in self.blocks]

    @classmethod
    def from_tf_strings(cls, strings: list[str], **kwargs: Any) -> "ArchSpec":
        blocks = tuple(BlockSpec.from_tf_string(s) for s in strings)
        kwargs.setdefault("stem_channels", blocks[0].in_channels if blocks else 32)
        return cls(blocks=blocks, **kwargs)

    def to_timm_arch_def(self) -> list[list[str]]:
        """timm's `arch_def`: one list per stage (here one block string per stage)."""
        return [[b.to_timm_string()] for b in self.blocks]

    @classmethod
    def from_timm_arch_def(cls, arch_def: list, stem_channels: int = 32, **kwargs: Any) -> "ArchSpec":
        blocks = []
        channels = stem_channels
        for stage in arch_def:
            for text in ([stage] if isinstance(stage, str) else stage):
                block = BlockSpec.from_timm_string(text, in_channels=channels)
                blocks.append(block)
                channels = block.out_channels
        return cls(blocks=tuple(blocks), stem_channels=stem_channels, **kwargs)


def _is_real(x: Any) -> bool:
    """A finite real number, not a bool or a string (YAML may hand over either, or .nan/.inf)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    """A Python int, not a bool (YAML's `true` is not a width) nor a numpy integer.

    Shared with the space, whose values end up in BlockSpecs: accepting there what a
    BlockSpec refuses would only move the error from the file to `decode`.
    """
    return isinstance(x, int) and not isinstance(x, bool)


def _whole(value: str, token: str, where: str) -> int:
    """An integer token of a block string (`r2`, `k3`, `c24`): `k3.5` is an error, not 3."""
    if not value.isdigit():
        raise SpecError(f"{where}: {token!r} needs a whole number")
    return int(value)


def _stride(value: str, where: str) -> int:
    """`s2` or the TF reference's `s22`; unequal (`s12`) or longer strides are errors."""
    if not value.isdigit() or len(value) > 2 or (len(value) == 2 and value[0] != value[1]):
        raise SpecError(f"{where}: stride {value!r} is not supported (expected s1, s2, s11 or s22)")
    return int(value[0])


def _num(x: float) -> str:
    """1.0 -> '1', 0.25 -> '0.25' (the block-string spelling)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x
