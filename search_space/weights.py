"""Trained weights as safetensors files that carry the spec they were trained as.

The format (version 1) is a safetensors file of the network's `state_dict()` (tensors on
the CPU, contiguous, in the dtype they were trained in) whose string metadata is

    format:  "effnas-weights"
    version: "1"
    spec:    ArchSpec.to_json() of the network exactly as trained (num_classes of the
             dataset, resolution of the training)

safetensors holds tensors and a string header and nothing else: reading a file cannot
run code, unlike `torch.load` of a pickle. Stage 2 writes these files with `save`;
`load_model` reads one into the network of a spec (a run's `best.yaml`, a family member
file, a zoo name), taking `num_classes` from the file and refusing the weights of any
other architecture. Every problem is one `WeightsError` line naming the file.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import zoo
from .errors import SpecError, WeightsError
from .fileio import write_atomic
from .model import build
from .spec import ArchSpec

FORMAT = "effnas-weights"
VERSION = "1"
SUFFIX = ".safetensors"


def _safetensors():
    try:
        import safetensors
        import safetensors.torch
    except ImportError:
        raise WeightsError("weights files need the safetensors package: pip install 'safetensors>=0.4'") from None
    return safetensors


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside `torch.compile`'s wrapper or (Distributed)DataParallel (their
    state dicts prefix every name with `_orig_mod.` or `module.`)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as safetensors wants it: detached, on the CPU, contiguous."""
    return {name: t.detach().to("cpu").contiguous() for name, t in unwrap(model).state_dict().items()}


def save(model: nn.Module, spec: ArchSpec, path: str | Path) -> None:
    """Write `model`'s weights with `spec` (the network exactly as trained) to `path`,
    atomically (a killed process leaves the old file or the new one, never half of one).

    The model must be the network of `spec` (`WeightsError` otherwise), so that every
    file written can be loaded back. Nothing is pickled. A file that cannot be written (a
    full disk, a missing folder) is the `OSError` itself: a fault of the machine, which
    the caller reports (stage 2 keeps the run and says so in its message).
    """
    path = Path(path)
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"spec must be an ArchSpec, got {type(spec).__name__}")
    tensors = state_tensors(model)
    problem = _problems({k: tuple(t.shape) for k, t in tensors.items()}, _expected(spec), strict=True)
    if problem:
        raise WeightsError(f"weights {path}: the model is not the network of its spec ({problem})")
    metadata = {"format": FORMAT, "version": VERSION, "spec": spec.to_json()}
    data = _safetensors().torch.save(tensors, metadata=metadata)
    write_atomic(path, data)


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(the spec dict of the metadata, the tensors) of a weights file; the format and
    version are checked, the spec is not parsed (`load_model` does)."""
    return _read(Path(path), with_tensors=True)


def read_spec(path: str | Path) -> ArchSpec:
    """The spec the weights were trained as, from the metadata alone (no tensor is read)."""
    meta, _ = _read(Path(path), with_tensors=False)
    return _parse(meta, f"weights {path}")


def load_model(spec_or_path: ArchSpec | str | Path, weights_path: str | Path, strict: bool = True) -> nn.Module:
    """The network of a spec with the weights of `weights_path` loaded, in eval mode.

    `spec_or_path` is an ArchSpec, a spec file (YAML/JSON, e.g. a run's best.yaml) or a
    zoo name. `num_classes`, and nothing else, is taken from the weights' own spec when
    the two differ (best.yaml says 1000 classes, the weights were trained on 10); the
    architecture (stem, blocks, head, activation: `ArchSpec.key()`, which ignores the
    name, resolution, dropout and drop-connect) must then be the same. With
    `strict=False` missing and unexpected tensors are allowed; wrong shapes never are.
    """
    spec, source = _spec_of(spec_or_path)
    meta, tensors = read(weights_path)
    where = f"weights {weights_path}"
    trained = _parse(meta, where)
    if trained.num_classes != spec.num_classes:
        spec = dataclasses.replace(spec, num_classes=trained.num_classes)
    if trained.key() != spec.key():
        raise WeightsError(f"{where}: made for another network than {source} ({_difference(trained, spec)})")
    problem = _problems({k: tuple(t.shape) for k, t in tensors.items()}, _expected(spec), strict)
    if problem:
        raise WeightsError(f"{where}: {problem}")
    model = build(spec)
    try:
        model.load_state_dict(tensors, strict=strict)
    except RuntimeError as exc:  # checked above; kept as one line should torch find more
        raise WeightsError(f"{where}: {_one_line(exc)}") from None
    return model.eval()


# -- helpers ---------------------------------------------------------------------------
def _spec_of(spec_or_path: ArchSpec | str | Path) -> tuple[ArchSpec, str]:
    """(the spec, how messages name it)."""
    if isinstance(spec_or_path, ArchSpec):
        return spec_or_path, (spec_or_path.name or "the spec given")
    text = str(spec_or_path)
    if isinstance(spec_or_path, str) and zoo.has(text):
        return zoo.get(text), text
    return ArchSpec.load(text), text


def _read(path: Path, with_tensors: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    where = f"weights {path}"
    if not path.exists():
        raise WeightsError(f"{where}: no such file")
    if path.is_dir():
        raise WeightsError(f"{where}: is a folder, expected a {SUFFIX} file")
    st = _safetensors()
    try:
        with st.safe_open(str(path), framework="pt") as fh:
            spec = _spec_of_metadata(fh.metadata() or {}, where)  # before reading any tensor
            tensors = {name: fh.get_tensor(name) for name in fh.keys()} if with_tensors else {}
    except st.SafetensorError as exc:
        raise WeightsError(f"{where}: not a safetensors file or a damaged one ({_one_line(exc)})") from None
    except OSError as exc:
        raise WeightsError(f"{where}: cannot read ({exc.strerror or exc})") from None
    return spec, tensors


def _parse(meta: dict[str, Any], where: str) -> ArchSpec:
    try:
        return ArchSpec.from_dict(meta)
    except SpecError as exc:
        raise WeightsError(f"{where}: the spec in its metadata is not valid ({exc})") from None


def _spec_of_metadata(metadata: Mapping[str, str], where: str) -> dict[str, Any]:
    fmt = metadata.get("format")
    if fmt != FORMAT:
        found = f"its metadata says format {fmt!r}" if fmt is not None else "its metadata has no format"
        raise WeightsError(f"{where}: not an effnas weights file ({found}, expected {FORMAT!r})")
    version = metadata.get("version")
    if version != VERSION:
        raise WeightsError(f"{where}: format version {version!r} is not supported (this code reads version {VERSION})")
    text = metadata.get("spec")
    if text is None:
        raise WeightsError(f"{where}: its metadata has no spec")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{where}: the spec in its metadata is not JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise WeightsError(f"{where}: the spec in its metadata is not a JSON object")
    return spec


def _expected(spec: ArchSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the state dict of `spec`'s network (built on `meta`: no memory, no init)."""
    return {k: tuple(t.shape) for k, t in build(spec, device="meta").state_dict().items()}


def _problems(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], strict: bool) -> str | None:
    """The first thing that keeps `found` from loading into a state dict of `expected`, or None."""
    shaped = [f"{k} is {list(found[k])}, expected {list(v)}" for k, v in expected.items()
              if k in found and tuple(found[k]) != tuple(v)]
    if shaped:
        return f"{_count(shaped, 'tensor')} of the wrong shape: {_few(shaped)}"
    if strict:
        missing = [k for k in expected if k not in found]
        if missing:
            return f"{_count(missing, 'tensor')} missing: {_few(missing)}"
        unexpected = [k for k in found if k not in expected]
        if unexpected:
            return f"{_count(unexpected, 'tensor')} the network does not have: {_few(unexpected)}"
    return None


def _difference(trained: ArchSpec, spec: ArchSpec) -> str:
    """Where two architectures first differ, as `what: X in the weights, Y in the spec`."""
    if len(trained.blocks) != len(spec.blocks):
        return f"{len(trained.blocks)} blocks in the weights, {len(spec.blocks)} in the spec"
    a, b = trained.key().split("|"), spec.key().split("|")
    labels = ["stem", *[f"blocks[{i}]" for i in range(len(spec.blocks))], "head", "classes", "activation"]
    for label, x, y in zip(labels, a, b):
        if x != y:
            return f"{label}: {x} in the weights, {y} in the spec"
    return "the architectures differ"  # not reached: different keys differ in some part


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
