"""The one reading of a training device option for everything under `nas`.

`auto` is CUDA when this machine has it, else the CPU; `cpu`, `cuda` and `cuda:N` are
checked by `search_space.latency.resolve_device` (the search space's own resolver, which
the latency tables use too), so a device means the same thing to training and to timing.
"""
from __future__ import annotations

from ..errors import UserError


def cuda_available() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no usable torch: CPU
        return False


def resolve(device: object, flag: str = "device") -> str:
    """`cpu`, or `cuda:N` for `cuda`/`cuda:N`/`auto` with CUDA; a one-line `UserError`
    naming `flag` for anything else (an unknown name, CUDA asked for where there is none)."""
    from search_space.latency import LatencyError, resolve_device

    text = str(device).strip().lower()
    if text == "auto":
        text = "cuda" if cuda_available() else "cpu"
    if text.startswith("cuda") and not cuda_available():
        raise UserError(f"{flag} {device}: CUDA is not available on this machine (use cpu or auto)")
    try:
        return resolve_device(text)
    except LatencyError as exc:
        raise UserError(f"{flag} {device}: {exc}") from None
