"""ONNX export of a built network with a dynamic batch dimension, and its check against
PyTorch with onnxruntime.

The exporter is `torch.onnx.export(..., dynamo=True)`: the torch.export-based exporter,
which since torch 2.9 is the default and the documented recommended path; it translates
the exported graph with onnxscript's torch library (hence the `onnxscript` package). The
TorchScript exporter (`dynamo=False`) is still in torch 2.13 but emits a
DeprecationWarning ("You are using the legacy TorchScript-based ONNX export"), stops at
opset 20, and takes the batch dimension through the deprecated `dynamic_axes`.

Everything the builder makes exports: SiLU (Sigmoid * Mul), squeeze-excite (ReduceMean,
Conv, Sigmoid), depthwise convs (Conv with group), BatchNorm in eval mode (folded into the
convs by the exporter's optimizer), dropout and drop-connect in eval mode (identities).
The packages are an optional extra: `pip install 'effnas[export]'`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from .errors import ExportError
from .fileio import write_atomic

# The newest opset torch 2.13's exporter declares (torch.onnx._constants.ONNX_MAX_OPSET).
# onnxruntime runs it from 1.23 on (1.22 refuses opset 23 models: checked), so the
# `export` extra asks for onnxruntime>=1.23 and onnx>=1.18 (the release that defines it).
OPSET = 23
# The exporter's own (torchlib's) opset: asked for less, it silently writes opset 18.
MIN_OPSET = 18
INPUT, OUTPUT = "input", "logits"
TOLERANCE = 1e-4  # fp32; scaled by the outputs' magnitude beyond 1, see `tolerance`
PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL = "pip install 'effnas[export]'"


def require(*packages: str) -> None:
    """`ExportError` naming the first of `packages` (default: all three) that is not installed."""
    for name in packages or PACKAGES:
        if importlib.util.find_spec(name) is None:
            raise ExportError(f"the ONNX export needs the {name} package, which is not installed: {INSTALL}")


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, an output path that cannot be written (one `ExportError` line)."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ExportError(f"{path}: is a folder, expected a file name such as model.onnx")
    if not folder.is_dir():
        raise ExportError(f"{path}: cannot write (folder {folder} does not exist)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"{path}: cannot write (folder {folder} is not writable)")


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    require("onnx")
    import onnx
    return onnx.defs.onnx_opset_version()


def export_onnx(model, resolution: int, path: str | Path, opset: int = OPSET, batch_dim: str = "batch") -> None:
    """Write `model` (in eval mode while exporting) as ONNX with input `input` of shape
    [batch_dim, 3, resolution, resolution] and output `logits`, the batch dimension
    dynamic, at `opset`, to `path` atomically (no half-written file on any failure).

    The weights are stored inside the file (no external data file). `ExportError` for a
    missing package, an opset out of range, an unwritable path or a failed export.
    """
    path = Path(path)
    require("onnx", "onnxscript")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset():
        raise ExportError(f"opset {opset!r} is out of range: the exporter writes opsets {MIN_OPSET} to "
                          f"{max_opset()} (default {OPSET})")
    if not batch_dim.isidentifier():
        raise ExportError(f"batch dimension name {batch_dim!r} must be an identifier")
    check_writable(path)
    import torch

    from .weights import unwrap
    model = unwrap(model)  # torch.compile / DataParallel wrappers export as the network inside
    first = next(model.parameters())
    # An example batch of 2: torch.export specialises a dimension whose example is 0 or 1.
    example = torch.randn(2, 3, resolution, resolution, device=first.device, dtype=first.dtype)
    was_training = model.training
    model.eval()
    try:
        with _quiet():
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim(batch_dim, min=1)},), external_data=False, verbose=False)
    except Exception as exc:
        raise ExportError(f"{path}: the ONNX exporter failed ({type(exc).__name__}: {_first_line(exc)})") from None
    finally:
        model.train(was_training)
    proto = program.model_proto
    written = opset_of(proto)
    if written != opset:
        raise ExportError(f"{path}: asked for opset {opset}, the exporter wrote {written}")
    try:
        write_atomic(path, proto.SerializeToString())
    except OSError as exc:
        raise ExportError(f"{path}: cannot write ({exc.strerror or exc})") from None


def opset_of(model_or_path) -> int | None:
    """The default-domain (ai.onnx) opset of an ONNX ModelProto or file."""
    import onnx
    proto = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def compare(model, path: str | Path, resolution: int, batches: Iterable[int] = (1, 3),
            seed: int = 0) -> tuple[float, float]:
    """(max abs difference between onnxruntime on `path` and PyTorch, max abs PyTorch output)
    over random normal inputs of each batch size (seeded); PyTorch runs in eval mode."""
    require("onnxruntime")
    import numpy as np
    import onnxruntime as ort
    import torch

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{path}: onnxruntime cannot load it ({_first_line(exc)})") from None
    name = session.get_inputs()[0].name
    first = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    diff = scale = 0.0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            x = torch.randn(batch, 3, resolution, resolution, generator=gen, dtype=first.dtype)
            with torch.no_grad():
                ref = model(x.to(first.device)).float().cpu().numpy()
            try:
                out = session.run(None, {name: x.numpy()})[0]
            except Exception as exc:
                raise ExportError(f"{path}: onnxruntime failed on a batch of {batch} ({_first_line(exc)})") from None
            if out.shape != ref.shape:
                raise ExportError(f"{path}: onnxruntime gave shape {list(out.shape)} for a batch of {batch}, "
                                  f"PyTorch {list(ref.shape)}")
            diff = max(diff, float(np.abs(out.astype(np.float32) - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
    finally:
        model.train(was_training)
    return diff, scale


def tolerance(scale: float) -> float:
    """The largest max abs difference that passes the check: 1e-4 for outputs up to 1 in
    magnitude, 1e-4 of the largest output beyond (a relative 1e-4).

    An absolute 1e-4 alone fails correct exports of networks with large logits: fp32
    PyTorch itself is off from fp64 by about 3e-6 of the output's magnitude in these deep
    networks (1.1e-5 at logits of 3.7 for B0), and the exporter folds BatchNorm into the
    convolutions, which rounds differently again (9.7e-5 measured at logits of 33). A wrong
    export differs by about the outputs' own magnitude.
    """
    return TOLERANCE * max(1.0, scale)


def check_onnx(model, path: str | Path, resolution: int, batches: Iterable[int] = (1, 3), seed: int = 0) -> float:
    """The max abs difference between onnxruntime (CPUExecutionProvider) running `path` and
    PyTorch running `model`, over random inputs of each batch size in `batches`."""
    return compare(model, path, resolution, batches, seed)[0]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's chatter off: its logger's warnings (torchvision ops it skips) and the
    Future/DeprecationWarnings torch.export raises about its own internals."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
