"""Compound scaling: widen, deepen and enlarge a baseline with one coefficient φ.

EfficientNet scales depth by d = α^φ, width by w = β^φ and resolution by r = γ^φ.
The rounding rules are those of the TensorFlow reference (torchvision and timm agree),
so EfficientNet-B0 scaled with the published table gives exactly the reference B1..B7.
Pure functions on `ArchSpec`; nothing here builds a module or trains.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, NamedTuple, Sequence

from search_space.space import round_channels
from search_space.spec import ArchSpec

from .errors import ScalingError

# The paper's coefficients, found by its grid search at φ = 1.
PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA = 1.2, 1.1, 1.15

# At most this many φ values in one family (`--phis 0-1e6:1e-6` would otherwise exhaust memory).
MAX_PHIS = 1000

# Resolution rule for the formula mode: the scaled resolution rounds to the nearest
# multiple of 4. The published resolutions (224, 240, 260, 300, 380, 456, 528, 600)
# are all multiples of 4, not all of 8, so 4 is the coarsest grid that contains them.
RESOLUTION_MULTIPLE = 4


class Coefficients(NamedTuple):
    width: float
    depth: float
    resolution: int
    dropout: float


# EfficientNet B0..B7 as published (TF reference `efficientnet_params`; torchvision agrees).
PUBLISHED: dict[str, Coefficients] = {
    "b0": Coefficients(1.0, 1.0, 224, 0.2),
    "b1": Coefficients(1.0, 1.1, 240, 0.2),
    "b2": Coefficients(1.1, 1.2, 260, 0.3),
    "b3": Coefficients(1.2, 1.4, 300, 0.3),
    "b4": Coefficients(1.4, 1.8, 380, 0.4),
    "b5": Coefficients(1.6, 2.2, 456, 0.4),
    "b6": Coefficients(1.8, 2.6, 528, 0.5),
    "b7": Coefficients(2.0, 3.1, 600, 0.5),
}

# Paper Table 2 (for plots and reports beside our own counts): params (M), FLOPS (B).
PAPER_PARAMS_M = (5.3, 7.8, 9.2, 12, 19, 30, 43, 66)
PAPER_FLOPS_B = (0.39, 0.70, 1.0, 1.8, 4.2, 9.9, 19, 37)


class FamilyMember(NamedTuple):
    name: str
    phi: float
    width: float
    depth: float
    resolution: int
    spec: ArchSpec


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, to a multiple of `divisor`, never > 10 % below."""
    return round_channels(channels * width, divisor)


def round_repeats(repeats: int, depth: float) -> int:
    """ceil(depth * repeats); a 1e-9 slack keeps float noise (1.1 * 10 = 11.000000000000002) from adding a layer."""
    return int(math.ceil(depth * repeats - 1e-9))


def round_resolution(resolution: float, multiple: int = RESOLUTION_MULTIPLE) -> int:
    """Nearest multiple of `multiple` (halves round up), at least `multiple`."""
    return max(multiple, int(math.floor(resolution / multiple + 0.5)) * multiple)


def scale(spec: ArchSpec, width: float, depth: float, resolution: int, dropout: float | None = None,
          name: str | None = None, divisor: int = 8) -> ArchSpec:
    """`spec` widened by `width`, deepened by `depth`, at `resolution`.

    Stem, every block's in/out channels and the head go through `round_filters`;
    repeats through `round_repeats`. Kernel, stride, expansion and SE ratio stay
    (SE squeeze width follows the scaled block input, as in the references).
    """
    if not width > 0 or not depth > 0:
        raise ScalingError(f"width and depth must be positive, got width={width!r}, depth={depth!r}")
    if not isinstance(resolution, int) or resolution < 1:
        raise ScalingError(f"resolution must be a positive integer, got {resolution!r}")
    blocks = tuple(
        dataclasses.replace(b, in_channels=round_filters(b.in_channels, width, divisor),
                            out_channels=round_filters(b.out_channels, width, divisor),
                            repeats=round_repeats(b.repeats, depth))
        for b in spec.blocks)
    return dataclasses.replace(
        spec, blocks=blocks,
        stem_channels=round_filters(spec.stem_channels, width, divisor),
        head_channels=round_filters(spec.head_channels, width, divisor),
        resolution=resolution,
        dropout=spec.dropout if dropout is None else dropout,
        name=spec.name if name is None else name)


def member_name(base: str, phi: float) -> str:
    """'efficientnet-b0' at φ=2 -> 'efficientnet-b2'; 'mynet' -> 'mynet-b2'; '' -> 'b2'."""
    tag = f"b{format_phi(phi)}"
    stem = re.sub(r"[-_]?b0$", "", base or "")
    return f"{stem}-{tag}" if stem else tag


def format_phi(phi: float) -> str:
    return str(int(phi)) if float(phi).is_integer() else f"{phi:g}"


def scaled_dropout(base: float, phi: float) -> float:
    """base + 0.1 per two steps of φ, capped at 0.5: reproduces the published 0.2 ... 0.5."""
    cap = max(0.5, base)
    return round(min(cap, base + 0.1 * math.floor(phi / 2 + 1e-9)), 6)


def check_coefficients(alpha: float, beta: float, gamma: float) -> None:
    for label, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value) or value < 1:
            raise ScalingError(f"{label} must be a number >= 1, got {value!r}")


def check_phis(phis: Iterable[float]) -> list[float]:
    phis = [float(p) for p in phis]
    if not phis:
        raise ScalingError("the φ range is empty")
    if len(phis) > MAX_PHIS:
        raise ScalingError(f"the φ range has {len(phis)} values; at most {MAX_PHIS} are allowed")
    for p in phis:
        if math.isnan(p) or math.isinf(p) or p < 0:
            raise ScalingError(f"φ must be a finite number >= 0, got {p:g}")
    return sorted(set(phis))


def derive_family(b0: ArchSpec, alpha: float = PAPER_ALPHA, beta: float = PAPER_BETA,
                  gamma: float = PAPER_GAMMA, phis: Iterable[float] = range(1, 8),
                  resolution_multiple: int = RESOLUTION_MULTIPLE) -> list[FamilyMember]:
    """The formula mode: d = α^φ, w = β^φ, resolution = b0.resolution · γ^φ to the nearest multiple of 4.

    φ = 0 is the baseline itself (its resolution kept as is). Dropout follows `scaled_dropout`.
    """
    check_coefficients(alpha, beta, gamma)
    members = []
    for phi in check_phis(phis):
        try:
            d, w = alpha ** phi, beta ** phi
            res = b0.resolution if phi == 0 else round_resolution(b0.resolution * gamma ** phi, resolution_multiple)
        except OverflowError:
            raise ScalingError(f"φ = {phi:g} with alpha={alpha:g}, beta={beta:g}, gamma={gamma:g} "
                               "overflows: use a smaller φ") from None
        name = member_name(b0.name, phi)
        spec = scale(b0, w, d, res, dropout=scaled_dropout(b0.dropout, phi), name=name)
        members.append(FamilyMember(name, phi, round(w, 6), round(d, 6), res, spec))
    return members


def published_family(b0: ArchSpec, phis: Iterable[float] = range(1, 8)) -> list[FamilyMember]:
    """The published mode: φ = k takes Bk's row of the table as given.

    A baseline at a resolution other than 224 gets the table's resolutions times
    b0.resolution / 224, rounded to a multiple of 4 (identical at 224).
    """
    members = []
    for phi in check_phis(phis):
        if not phi.is_integer() or phi > 7:
            raise ScalingError(f"published coefficients exist for φ = 0..7 only, got {phi:g}")
        k = int(phi)
        row = PUBLISHED[f"b{k}"]
        res = row.resolution if b0.resolution == 224 else round_resolution(row.resolution * b0.resolution / 224)
        name = member_name(b0.name, k)
        spec = scale(b0, row.width, row.depth, res, dropout=row.dropout, name=name)
        members.append(FamilyMember(name, float(k), row.width, row.depth, res, spec))
    return members


def parse_phis(text: str) -> list[float]:
    """'1-7', '1,2,5', '0.5-3' (step 1 from the start), '0-2:0.5' (explicit step), or mixes with commas."""
    phis: list[float] = []
    text = (text or "").strip()
    if not text:
        raise ScalingError("the φ range is empty")
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?[0-9.]+)(?:\s*-\s*(-?[0-9.]+)(?::([0-9.]+))?)?", part)
        if not m:
            raise ScalingError(f"cannot read φ range {part!r} (expected e.g. 1-7, 1,2,5 or 0-2:0.5)")
        try:
            start = float(m.group(1))
            stop = float(m.group(2)) if m.group(2) is not None else start
            step = float(m.group(3)) if m.group(3) is not None else 1.0
        except ValueError:
            raise ScalingError(f"cannot read φ range {part!r}") from None
        if start < 0 or stop < 0:
            raise ScalingError(f"φ range {part!r} is negative")
        if stop < start:
            raise ScalingError(f"φ range {part!r} is empty (end below start)")
        if step <= 0:
            raise ScalingError(f"φ range {part!r}: step must be positive")
        n = int(math.floor((stop - start) / step + 1e-9))
        if len(phis) + n + 1 > MAX_PHIS:
            raise ScalingError(f"φ range {part!r} has more than {MAX_PHIS} values")
        phis.extend(round(start + i * step, 9) for i in range(n + 1))
    return check_phis(phis)


def family_rows(members: Sequence[FamilyMember]) -> list[dict]:
    """One table row per member: name, φ, width, depth, resolution, params, multiply-adds."""
    from search_space import cost
    return [{"name": m.name, "phi": m.phi, "width": m.width, "depth": m.depth, "resolution": m.resolution,
             "params": int(cost.params(m.spec)), "macs": int(cost.macs(m.spec, m.resolution))}
            for m in members]
