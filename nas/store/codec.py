"""The controller checkpoint as bytes: plain data and raw tensor bytes, never a pickle.

Checkpoints hold no pickle: no code runs from a run directory. Whoever can write a run
directory could otherwise make the next `--resume` execute anything (unpickling calls
whatever the data names). A state is plain data (dicts with str keys, lists, tuples,
str, int, float, bool, None) and CPU tensors; `encode_state` writes it as

    b"effnas-checkpoint 1\n"      format tag and version (one ASCII line)
    8 bytes                       length of the header, unsigned little-endian
    header                        UTF-8 JSON: {"byteorder", "state", "tensors"}
    data                          the tensors' raw bytes, one after another

In "state" a tensor is {"$tensor": i} (i indexes "tensors": dtype, shape, offset,
nbytes), a tuple {"$tuple": [...]}, and a dict whose single key starts with "$" is
wrapped as {"$dict": {...}}, so every state reads back equal to what was written.
Why raw bytes and not `torch.save`/`torch.load(weights_only=True)`: that is still an
unpickler, restricted but with a history of bypasses; raw bytes plus JSON cannot run code
by construction, keep floats bit-exact (exact resume) and cost no base64 or float
printing (an RL checkpoint is encoded with every ask and every tell). In the
store the blob is kept as two parts: the row holds everything up to the tensor bytes,
`checkpoint_data` the bytes (see nas/store/store.py, "Scale"); `Store.checkpoint` joins them again.
`decode_state` refuses anything else (an old pickled checkpoint, another format or
version, a damaged blob) and `Store.checkpoint` turns that into a one-line `UserError`.
There is no migration: a run with a pickled checkpoint is not resumed (loading it is the
unsafe act); start a new `--out`.
"""
from __future__ import annotations

import json
import struct
import sys
from typing import Any

CHECKPOINT_FORMAT = b"effnas-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointFormatError(ValueError):
    """A checkpoint blob that is not loaded; the message says why, on one line."""


_TAG_TENSOR, _TAG_TUPLE, _TAG_DICT = "$tensor", "$tuple", "$dict"
_HEADER = struct.Struct("<Q")
_MAX_TAG_LINE = 64


def _dtypes() -> dict[str, Any]:
    import torch
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
            "float64": torch.float64, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
            "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}


def encode_state(state: Any) -> bytes:
    """`state` (plain data and CPU tensors) as a checkpoint blob; TypeError names the
    first value that is not plain data (a controller bug: found when it is written)."""
    head, chunks = encode_state_parts(state)
    return b"".join([head, *chunks])


_FLAT = frozenset({int, float, str, bool, type(None)})


def encode_state_parts(state: Any) -> tuple[bytes, list[bytes]]:
    """`encode_state(state)` as (head, chunks): the tag, length and JSON header, then
    each tensor's raw bytes; their concatenation is the blob. The store keeps large
    chunks apart, by content, so an unchanged policy is not written again."""
    # No tensor can exist where torch was never imported: a state without tensors
    # (evolution, random) is then encoded without importing it (most of a resume's start-up).
    torch = sys.modules.get("torch")
    names = {v: k for k, v in _dtypes().items()} if torch is not None else {}
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0

    def enc(obj: Any, where: str) -> Any:
        nonlocal offset
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj)
        if isinstance(obj, list):
            if _FLAT.issuperset(map(type, obj)):  # a list of scalars (choices, keys): as is
                return list(obj)
            return [enc(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {_TAG_TUPLE: [enc(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if not isinstance(k, str):
                    raise TypeError(f"{where}: dict key {k!r} is not a str")
                out[k] = enc(v, f"{where}[{k!r}]")
            return {_TAG_DICT: out} if len(out) == 1 and next(iter(out)).startswith("$") else out
        if torch is not None and isinstance(obj, torch.Tensor):
            if obj.device.type != "cpu" or obj.layout != torch.strided or obj.dtype not in names:
                raise TypeError(f"{where}: tensor ({obj.dtype}, {obj.device}, {obj.layout}) is not a "
                                "dense CPU tensor of a supported dtype")
            t = obj.detach().contiguous().reshape(-1)
            raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
            tensors.append({"dtype": names[obj.dtype], "shape": list(obj.shape), "offset": offset,
                            "nbytes": len(raw)})
            chunks.append(raw)
            offset += len(raw)
            return {_TAG_TENSOR: len(tensors) - 1}
        raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} is not plain data")

    try:
        encoded = enc(state, "state")
    finally:
        # `enc` refers to itself (it recurses), a cycle that would keep this call's
        # chunks alive until the cyclic GC runs (RSS grew with every RL checkpoint;
        # BENCHMARKS.md, "Scale"). Breaking it frees them now.
        enc = None  # noqa: F841
    header = json.dumps({"byteorder": sys.byteorder, "state": encoded, "tensors": tensors},
                        separators=(",", ":")).encode()
    tag = CHECKPOINT_FORMAT + b" " + str(CHECKPOINT_VERSION).encode() + b"\n"
    return b"".join([tag, _HEADER.pack(len(header)), header]), chunks


def decode_state(blob: bytes) -> Any:
    """The state `encode_state` wrote; `CheckpointFormatError` for anything else. Only
    JSON is parsed and bytes copied into tensors: nothing in the blob can run code."""
    blob = bytes(blob)
    if blob[:1] == b"\x80":
        raise CheckpointFormatError("is in an old unsafe format (pickle) and is not loaded")
    line, sep, rest = blob[:_MAX_TAG_LINE].partition(b"\n")
    fmt, _, version = line.partition(b" ")
    if not sep or fmt != CHECKPOINT_FORMAT:
        raise CheckpointFormatError("is not in a known format and is not loaded")
    if version != str(CHECKPOINT_VERSION).encode():
        shown = version.decode("ascii", "replace")[:20]
        raise CheckpointFormatError(f"has format version {shown!r}, this effnas reads version "
                                    f"{CHECKPOINT_VERSION}, and is not loaded")
    body = blob[len(line) + 1:]
    try:
        return _decode_body(body)
    except CheckpointFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error, RecursionError) as exc:
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise CheckpointFormatError(f"is damaged ({detail}) and is not loaded") from None


def _decode_body(body: bytes) -> Any:
    (n,) = _HEADER.unpack_from(body)
    start = _HEADER.size + n
    if start > len(body):
        raise ValueError("header runs past the end")
    head = json.loads(body[_HEADER.size:start].decode())
    data = memoryview(body)[start:]
    if head["byteorder"] != sys.byteorder:
        raise ValueError(f"written on a {head['byteorder']}-endian machine")
    tensors = []
    if head["tensors"]:  # torch is imported only for a state that holds tensors
        import torch
        dtypes = _dtypes()
    for meta in head["tensors"]:
        dtype = dtypes[meta["dtype"]]
        shape, offset, nbytes = meta["shape"], meta["offset"], meta["nbytes"]
        if not all(isinstance(x, int) and x >= 0 for x in (*shape, offset, nbytes)):
            raise ValueError("bad tensor shape or extent")
        numel = 1
        for dim in shape:
            numel *= dim
        if numel * torch.empty((), dtype=dtype).element_size() != nbytes or offset + nbytes > len(data):
            raise ValueError("tensor bytes do not match its shape")
        if nbytes:
            flat = torch.frombuffer(bytearray(data[offset:offset + nbytes]), dtype=torch.uint8)
            tensors.append(flat.view(dtype).reshape(shape))
        else:
            tensors.append(torch.empty(shape, dtype=dtype))

    def dec(obj: Any) -> Any:
        if isinstance(obj, list):
            return [dec(v) for v in obj]
        if isinstance(obj, dict):
            if len(obj) == 1:
                (k, v), = obj.items()
                if k == _TAG_TENSOR:
                    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < len(tensors):
                        raise ValueError("bad tensor reference")
                    return tensors[v]
                if k == _TAG_TUPLE:
                    if not isinstance(v, list):
                        raise ValueError("bad tuple")
                    return tuple(dec(x) for x in v)
                if k == _TAG_DICT:
                    if not isinstance(v, dict):
                        raise ValueError("bad dict")
                    return {kk: dec(vv) for kk, vv in v.items()}
                if k.startswith("$"):
                    raise ValueError(f"unknown tag {k[:20]!r}")
            return {k: dec(v) for k, v in obj.items()}
        return obj

    try:
        return dec(head["state"])
    finally:
        dec = None  # noqa: F841  (the same self-reference cycle as `enc` in encode_state_parts)
