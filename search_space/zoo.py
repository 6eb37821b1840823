"""Known networks as specs, with the block strings of the TensorFlow reference implementations.

EfficientNet-B0 is the search's target (and compound scaling's starting point);
MnasNet-A1 is the network MnasNet's own search found. Both are plain `ArchSpec`s.
"""
from __future__ import annotations

from .errors import SpecError
from .spec import ArchSpec

# TF TPU `efficientnet_builder.py`, efficientnet-b0.
EFFICIENTNET_B0_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25", "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)

# TF TPU `mnasnet_models.py`, mnasnet_a1.
MNASNET_A1_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_noskip", "r2_k3_s22_e6_i16_o24", "r3_k5_s22_e3_i24_o40_se0.25",
    "r4_k3_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o112_se0.25", "r3_k5_s22_e6_i112_o160_se0.25",
    "r1_k3_s11_e6_i160_o320",
)

_SPECS = {
    "efficientnet-b0": ArchSpec.from_tf_strings(
        list(EFFICIENTNET_B0_BLOCKS), stem_channels=32, head_channels=1280, resolution=224,
        num_classes=1000, dropout=0.2, drop_connect=0.2, activation="swish", name="efficientnet-b0"),
    # The MnasNet reference has no drop-connect; ReLU everywhere (SE included).
    "mnasnet-a1": ArchSpec.from_tf_strings(
        list(MNASNET_A1_BLOCKS), stem_channels=32, head_channels=1280, resolution=224,
        num_classes=1000, dropout=0.2, drop_connect=0.0, activation="relu", name="mnasnet-a1"),
}


def names() -> tuple[str, ...]:
    """The zoo's names, in a stable order."""
    return tuple(_SPECS)


def normalize(name: str) -> str:
    """`EfficientNet_B0` -> `efficientnet-b0`."""
    return str(name).strip().lower().replace("_", "-")


def has(name: str) -> bool:
    return normalize(name) in _SPECS


def get(name: str) -> ArchSpec:
    """The spec of a known network; `SpecError` naming the known ones otherwise."""
    key = normalize(name)
    if key not in _SPECS:
        raise SpecError(f"unknown zoo name {name!r} (known: {', '.join(names())})")
    return _SPECS[key]
