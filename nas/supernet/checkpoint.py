"""The supernet's files: one checkpoint to resume from, the final weights, a manifest.

Everything is safetensors or JSON (nothing pickled: reading a file cannot run code), and
every file is written atomically, so a process killed at any instant leaves the previous
checkpoint or the new one, never half of one.

    SUPERNET/checkpoint.safetensors  model.* (the supernet's state dict) and optim.<i>.<name>
                                     (optimizer state) tensors; metadata: format, version,
                                     step, the training config (JSON), the optimizer's
                                     param groups (JSON), the per-epoch losses so far
                                     and the running sum of the epoch in progress
    SUPERNET/supernet.safetensors    the trained weights alone, with the config (`load`)
    SUPERNET/manifest.json           space, budget, settings, seed, epochs, steps, final
                                     loss, wall time, status: what a reader needs first

The checkpoint is one file on purpose: weights and optimizer state of the same step are
committed together. No RNG state is stored: every random draw of a step (its batch, its
sub-networks, dropout) comes from generators seeded by (seed, epoch or step), so a resumed
run repeats them exactly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nas.errors import UserError
from search_space.fileio import write_atomic

FORMAT_CHECKPOINT = "effnas-supernet-checkpoint"
FORMAT_WEIGHTS = "effnas-supernet"
VERSION = "1"
CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "supernet.safetensors"
MANIFEST = "manifest.json"


def _st():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("the supernet's files need the safetensors package: pip install 'safetensors>=0.4'") from None
    return safetensors


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    config: dict, losses: list[float], elapsed: float, epoch_sum: float = 0.0) -> None:
    """Weights, optimizer state and the step, committed together in one atomic write."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            if value is None:
                continue
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = value
    meta = {"format": FORMAT_CHECKPOINT, "version": VERSION, "step": str(int(step)), "config": json.dumps(config),
            "param_groups": json.dumps(opt["param_groups"]), "losses": json.dumps(losses), "elapsed": repr(float(elapsed)),
            "epoch_sum": repr(float(epoch_sum))}
    write_atomic(folder / CHECKPOINT, _st().torch.save(_cpu(tensors), metadata=meta))


def read_checkpoint(folder: Path) -> dict[str, Any] | None:
    """{"step", "config", "losses", "elapsed", "model": state dict, "optimizer": state dict},
    or None when the folder has no checkpoint; a damaged file is one `UserError` line."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    meta, tensors = _read(path, FORMAT_CHECKPOINT)
    try:
        state: dict[int, dict[str, torch.Tensor]] = {}
        model = {}
        for name, t in tensors.items():
            kind, _, rest = name.partition(".")
            if kind == "model":
                model[rest] = t
            else:
                idx, _, key = rest.partition(".")
                state.setdefault(int(idx), {})[key] = t
        return {"step": int(meta["step"]), "config": json.loads(meta["config"]), "losses": json.loads(meta["losses"]),
                "elapsed": float(meta["elapsed"]), "epoch_sum": float(meta["epoch_sum"]), "model": model,
                "optimizer": {"state": state, "param_groups": json.loads(meta["param_groups"])}}
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path}: not a readable supernet checkpoint ({exc})") from None


def save_weights(folder: Path, model: torch.nn.Module, config: dict) -> None:
    meta = {"format": FORMAT_WEIGHTS, "version": VERSION, "config": json.dumps(config)}
    write_atomic(folder / WEIGHTS, _st().torch.save(_cpu(model.state_dict()), metadata=meta))


def read_weights(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of a `supernet.safetensors`."""
    meta, tensors = _read(path, FORMAT_WEIGHTS)
    try:
        return json.loads(meta["config"]), tensors
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path}: not a readable supernet weights file ({exc})") from None


def read_config(folder: Path) -> dict:
    """The training config (space, budget, settings, num_classes) of the trained supernet in
    `folder`, from its weights file's metadata alone (no tensor is read)."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise UserError(f"{folder}: no trained supernet ({WEIGHTS} missing; train it with "
                        "python -m nas.supernet train)")
    st = _st()
    try:
        with st.safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except st.SafetensorError as exc:
        raise UserError(f"{path}: not a safetensors file or a damaged one ({' '.join(str(exc).split())})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if meta.get("format") != FORMAT_WEIGHTS or "config" not in meta:
        raise UserError(f"{path}: not a trained supernet's weights file")
    try:
        return json.loads(meta["config"])
    except ValueError as exc:
        raise UserError(f"{path}: its config does not parse ({exc})") from None


def write_manifest(folder: Path, manifest: dict) -> None:
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None


def _read(path: Path, fmt: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    st = _st()
    try:
        with st.safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != fmt:
                raise UserError(f"{path}: not a {fmt} file (its metadata says format {meta.get('format')!r})")
            if meta.get("version") != VERSION:
                raise UserError(f"{path}: format version {meta.get('version')!r} is not supported "
                                f"(this code reads version {VERSION})")
            return meta, {k: fh.get_tensor(k) for k in fh.keys()}
    except st.SafetensorError as exc:
        raise UserError(f"{path}: not a safetensors file or a damaged one ({' '.join(str(exc).split())})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
