"""The search's record of truth: one SQLite file (WAL) under `--out`.

Why one file and these transactions: a run may be killed at any instant (SIGKILL
included) and `--resume` must continue it exactly. Every change of controller state
is written *in the same transaction* as the record it belongs to:

- asking: the pending job (what is about to be trained) + the controller checkpoint;
- finishing: the trial row + removal of its pending job + the controller checkpoint
  taken right after `tell` (or none, for trials that are not told, e.g. the reference).

So on disk the controller state, the finished trials and the pending jobs always agree:
resume loads the checkpoint, re-queues the pending jobs (same proposal ids) and goes on.
`UNIQUE(kind, proposal_id)` makes a repeated trial impossible, not just unlikely.

Several processes may write (the NNI tuner runs in NNI's dispatcher): transactions are
`BEGIN IMMEDIATE` with a busy timeout. `synchronous=NORMAL` in WAL mode survives any
process kill; a power cut may lose the last commits but never splits one.

Tables
  meta(key, value)              'schema', 'config' (JSON of the run's options), 'created',
                                'state' (running | finished), free-form extras
  trials(...)                   one row per finished trial (see `TRIAL_COLUMNS`)
  pending(...)                  jobs asked but not finished (re-queued on resume)
  checkpoints(name, ...)        latest controller state per name, with counts
  checkpoint_data(name, digest, data)  large tensor bytes of checkpoints, by content (below)
  trial_counts(kind, source, n) trials per kind and source, kept by triggers

Scale: nothing written or read per trial grows with the number of trials (a run of
20,000 trials must not slow down). Hence:
- `count` reads `trial_counts`, which triggers on `trials` keep exact in the inserting
  transaction (a COUNT(*) scans every matching row, and the loop counts with every ask);
  `trials(kind, source)` uses the index (kind, source), `find_key` (kind, key), forced
  with INDEXED BY; `proposal_history` reads a range of ids;
- a controller checkpoint is bounded: the controllers leave their history (the keys of
  every proposal, which grows with the run) out of the state the loop writes, and rebuild
  it on resume from this store, which holds every proposal's choices and key already
  (`proposal_history`; see controllers/base.py, "History": why a replay rather than a
  table of keys);
- a checkpoint's large tensors (the RL policy and its Adam moments, ~1.3 MB in all;
  each tensor of 32 KiB or more) are stored once per content in `checkpoint_data`,
  keyed by (checkpoint name, BLAKE2b digest); the checkpoint row holds the rest of the
  blob (header, small tensors such as the generator state, which changes with every
  ask) and `data_parts`, the [offset, digest] of each chunk left out. The policy
  changes only every few tells, so most checkpoints write a few KB instead of 1.3 MB
  (7.7 ms a write here). Chunks no longer used are deleted in the same transaction.
Stores made before these additions gain them when opened (`Store.open`: indexes,
tables, triggers and column IF NOT EXISTS, the counts filled from `trials`, in one
transaction; nothing is written when they are there already).

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
printing (an RL checkpoint, ~1.3 MB, is encoded with every ask and every tell). In the
store the blob is kept as two parts: the row holds everything up to the tensor bytes,
`checkpoint_data` the bytes (see "Scale"); `Store.checkpoint` joins them again.
`decode_state` refuses anything else (an old pickled checkpoint, another format or
version, a damaged blob) and `Store.checkpoint` turns that into a one-line `UserError`.
There is no migration: a run with a pickled checkpoint is not resumed (loading it is the
unsafe act); start a new `--out`.

Permissions: the folders `create` makes and `search.db` (SQLite gives its -wal and -shm
files the same mode) are created with no write bit for group or others whatever the
umask (modes 0o755 and 0o644, which a umask can only narrow). A folder the user gave
that exists already keeps its permissions: it is theirs.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError

DB_NAME = "search.db"
SCHEMA_VERSION = 1
CHECKPOINT_FORMAT = b"effnas-checkpoint"
CHECKPOINT_VERSION = 1
DIR_MODE = 0o755   # what `create` gives the folders it makes (before the umask)
FILE_MODE = 0o644  # and search.db

TRIAL_COLUMNS = (
    "id",                 # INTEGER, 1.., in order of completion
    "kind",               # 'search' (told to the controller) | 'reference' | 'grid' | other
    "proposal_id",        # the controller's proposal id (reference: 0)
    "choices",            # JSON list of choice indices (or null)
    "spec",               # JSON of ArchSpec.to_dict() (the deliverable spec)
    "key",                # SearchSpace.key / ArchSpec.key: the cache key
    "macs", "params",     # at the target resolution, 1000 classes
    "accuracy", "reward",
    "status",             # nas.result.STATUSES
    "message",
    "epoch_accuracies",   # JSON list
    "loss", "images_per_sec",
    "queued_at", "started_at", "finished_at", "wall_time",
    "worker",             # e.g. 'cpu-0', 'cuda:1-0', 'inproc', 'nni:TRIALID'
    "source",             # 'trained' | 'cost-only' | 'cache'
    "told",               # 1 when the controller was told this trial
    "attempt",            # 1 + times the job was re-queued (resume)
    "extra",              # JSON dict, engine-specific (e.g. NNI trial id)
    "test_accuracy",      # stage 2 only: accuracy on the held-out test part (nas.final)
    "latency_ms",         # with a latency target: predicted latency (nas.records.new_job), else null
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, proposal_id INTEGER NOT NULL,
    choices TEXT, spec TEXT, key TEXT, macs INTEGER, params INTEGER,
    accuracy REAL, reward REAL, status TEXT NOT NULL, message TEXT,
    epoch_accuracies TEXT, loss REAL, images_per_sec REAL,
    queued_at REAL, started_at REAL, finished_at REAL, wall_time REAL,
    worker TEXT, source TEXT NOT NULL, told INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1, extra TEXT, test_accuracy REAL, latency_ms REAL,
    UNIQUE (kind, proposal_id)
);
CREATE INDEX IF NOT EXISTS trials_key ON trials (kind, key);
CREATE TABLE IF NOT EXISTS pending (
    kind TEXT NOT NULL, proposal_id INTEGER NOT NULL,
    job TEXT NOT NULL, queued_at REAL NOT NULL, attempt INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (kind, proposal_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY, state BLOB NOT NULL, tells INTEGER NOT NULL,
    asks INTEGER NOT NULL, saved_at REAL NOT NULL, data_parts TEXT
);
"""

# Added for runs of many trials (module docstring, "Scale"); `create` makes them and
# `open` adds those an older store lacks. Each statement is idempotent.
_SCALE_SCHEMA = (
    "CREATE INDEX IF NOT EXISTS trials_source ON trials (kind, source)",
    "CREATE TABLE IF NOT EXISTS trial_counts (kind TEXT NOT NULL, source TEXT NOT NULL, "
    "n INTEGER NOT NULL, PRIMARY KEY (kind, source))",
    "CREATE TRIGGER IF NOT EXISTS trial_counts_insert AFTER INSERT ON trials BEGIN "
    "INSERT INTO trial_counts (kind, source, n) VALUES (NEW.kind, NEW.source, 1) "
    "ON CONFLICT (kind, source) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER IF NOT EXISTS trial_counts_delete AFTER DELETE ON trials BEGIN "
    "UPDATE trial_counts SET n = n - 1 WHERE kind = OLD.kind AND source = OLD.source; END",
    "CREATE TRIGGER IF NOT EXISTS trial_counts_update AFTER UPDATE OF kind, source ON trials BEGIN "
    "UPDATE trial_counts SET n = n - 1 WHERE kind = OLD.kind AND source = OLD.source; "
    "INSERT INTO trial_counts (kind, source, n) VALUES (NEW.kind, NEW.source, 1) "
    "ON CONFLICT (kind, source) DO UPDATE SET n = n + 1; END",
    "CREATE TABLE IF NOT EXISTS checkpoint_data (name TEXT NOT NULL, digest TEXT NOT NULL, "
    "data BLOB NOT NULL, PRIMARY KEY (name, digest))",
    # ASHA's rung accuracies (nas.asha): one row per (trial, rung), kept across a resume
    "CREATE TABLE IF NOT EXISTS rungs (kind TEXT NOT NULL, proposal_id INTEGER NOT NULL, "
    "rung INTEGER NOT NULL, accuracy REAL NOT NULL, PRIMARY KEY (kind, proposal_id, rung))",
)
_SCALE_NAMES = frozenset({"trials_source", "trial_counts", "trial_counts_insert", "trial_counts_delete",
                          "trial_counts_update", "checkpoint_data", "rungs"})

_JSON_COLUMNS = ("choices", "spec", "epoch_accuracies", "extra")


# -- checkpoint encoding (see the module docstring) -------------------------------------
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
    # (evolution, random) is then encoded without importing it (~0.8 s of a resume).
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
        # chunks (1.3 MB for RL) alive until the cyclic GC runs: RSS grew ~10 KB a
        # checkpoint, 160 MB over 20,000 RL proposals. Breaking it frees them now.
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


def _make_dirs(path: Path) -> None:
    """`mkdir -p` giving DIR_MODE to every folder it makes (Path.mkdir gives parents
    0o777 minus the umask, group-writable under the common umask 002)."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            pass
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a folder")


EXTERNAL_MIN = 32 * 1024  # tensor bytes from which a chunk is kept in checkpoint_data


def _digest(data: bytes) -> str:
    """Content address of a checkpoint's tensor bytes (128-bit BLAKE2b, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Checkpoint(tuple):
    """(name, state, tells, asks): what to write with a transaction."""

    def __new__(cls, name: str, state: Any, tells: int, asks: int) -> "Checkpoint":
        return super().__new__(cls, (name, state, int(tells), int(asks)))


class Store:
    """A run's SQLite store. Open with `create` (new run) or `open` (existing run)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        # checkpoint name -> {tensor index: (bytes, digest)} of the large chunks last written
        self._last_chunks: dict[str, dict[int, tuple[bytes, str]]] = {}

    # -- opening -----------------------------------------------------------------------
    @staticmethod
    def db_path(out_dir: str | Path) -> Path:
        return Path(out_dir) / DB_NAME

    @classmethod
    def is_run(cls, out_dir: str | Path) -> bool:
        """True when `out_dir` holds a store with a recorded config (a real run)."""
        path = cls.db_path(out_dir)
        if not path.is_file():
            return False
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key='config'").fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return False
        return row is not None

    @classmethod
    def unreadable(cls, out_dir: str | Path) -> str | None:
        """Why `out_dir/search.db` exists but is no readable store (damaged, foreign, another
        version), or None. Read-only: the file is never touched."""
        path = cls.db_path(out_dir)
        if not path.exists():
            return None
        if not path.is_file():
            return "it is not a file"
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if not tables:
                    return None  # an empty file: a run killed while it was being created
                if "meta" not in tables or "trials" not in tables:
                    return "it is an SQLite database of something else"
                row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if row is not None and row[0] != str(SCHEMA_VERSION):
            return f"its schema version is {row[0]}, this effnas reads {SCHEMA_VERSION}"
        return None

    @classmethod
    def create(cls, out_dir: str | Path, config: dict[str, Any]) -> "Store":
        """A new run's store; the schema and the config are written in one transaction,
        so a store without a config (a kill during creation) is never taken for a run."""
        out_dir = Path(out_dir)
        _make_dirs(out_dir)
        path = cls.db_path(out_dir)
        if cls.is_run(out_dir):
            raise UserError(f"{out_dir}: already holds a run (use --resume, or another --out)")
        for suffix in ("", "-wal", "-shm"):
            leftover = Path(str(path) + suffix)
            if leftover.exists():
                leftover.unlink()
        # made here, not by SQLite, so its mode is ours; SQLite copies it to -wal and -shm
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        store = cls(path)
        with store._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    store._conn.execute(statement)
            for statement in _SCALE_SCHEMA:
                store._conn.execute(statement)
            store._put_meta({"schema": str(SCHEMA_VERSION), "config": json.dumps(config, sort_keys=True),
                             "created": repr(time.time()), "state": "running"})
        return store

    @classmethod
    def open(cls, out_dir: str | Path) -> "Store":
        """An existing run's store; `UserError` when `out_dir` is not a run."""
        out_dir = Path(out_dir)
        if not cls.is_run(out_dir):
            raise UserError(f"{out_dir}: not a search run (no {DB_NAME} with a recorded configuration)")
        store = cls(cls.db_path(out_dir))
        schema = store.get_meta("schema")
        if schema != str(SCHEMA_VERSION):
            store.close()
            raise UserError(f"{out_dir}: store schema {schema} is not supported (expected {SCHEMA_VERSION})")
        store._add_columns()
        store._add_scale_schema()
        return store

    def _add_scale_schema(self) -> None:
        """Give a store made before them the indexes, counts and checkpoint data table
        (module docstring, "Scale"); one transaction, and no write when all is there."""
        def missing() -> tuple[set, bool]:
            names = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
            cols = {r[1] for r in self._conn.execute("PRAGMA table_info(checkpoints)")}
            return _SCALE_NAMES - names, "data_parts" not in cols
        if missing() == (set(), False):
            return
        with self._write():
            lacking, no_parts = missing()  # again under the lock: another process may have done it
            if "trial_counts" in lacking:
                self._conn.execute(_SCALE_SCHEMA[1])
                self._conn.execute("INSERT INTO trial_counts (kind, source, n) "
                                   "SELECT kind, source, COUNT(*) FROM trials GROUP BY kind, source")
            for statement in _SCALE_SCHEMA:
                self._conn.execute(statement)
            if no_parts:
                self._conn.execute("ALTER TABLE checkpoints ADD COLUMN data_parts TEXT")

    def _add_columns(self) -> None:
        """Columns added since schema 1 was first written (older stores gain them, empty)."""
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(trials)")}
        if "test_accuracy" not in have:
            with self._write():
                self._conn.execute("ALTER TABLE trials ADD COLUMN test_accuracy REAL")
        if "latency_ms" not in have:
            with self._write():
                self._conn.execute("ALTER TABLE trials ADD COLUMN latency_ms REAL")

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error:
            pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transactions ------------------------------------------------------------------
    class _Txn:
        """One write transaction: BEGIN IMMEDIATE, the statements, then `Store._commit`."""

        def __init__(self, store: "Store") -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._conn.execute("BEGIN IMMEDIATE")
            return self.store._conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            if exc_type is not None:
                self.store._conn.execute("ROLLBACK")
                return
            self.store._commit()

    def _write(self) -> "Store._Txn":
        return Store._Txn(self)

    def _commit(self) -> None:
        """Commit the open write transaction: every successful write passes here once,
        after its statements. The one seam tests/kill_hooks.py wraps to SIGKILL a process
        at an exact point of a run."""
        self._conn.execute("COMMIT")

    # -- meta --------------------------------------------------------------------------
    def _put_meta(self, items: dict[str, str]) -> None:
        self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               [(k, str(v)) for k, v in items.items()])

    def set_meta(self, key: str, value: str) -> None:
        with self._write():
            self._put_meta({key: value})

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.get_meta("config") or "{}")

    def set_config(self, config: dict[str, Any]) -> None:
        """Replace the recorded config (resume with compatible changed options)."""
        self.set_meta("config", json.dumps(config, sort_keys=True))

    # -- checkpoints -------------------------------------------------------------------
    def _encode_checkpoint(self, ckpt: Checkpoint | None) -> tuple | None:
        """The checkpoint row, encoded before the transaction (no lock held meanwhile):
        (name, row bytes, tells, asks, parts, chunks). Tensors of EXTERNAL_MIN bytes or
        more leave the row for `checkpoint_data`: `parts` lists [offset in the blob,
        digest] for each, `chunks` maps digest to bytes. A chunk equal to the one this
        store last wrote at the same place reuses its digest (a memcmp, not a hash)."""
        if ckpt is None:
            return None
        name, state, tells, asks = ckpt
        head, chunks = encode_state_parts(state)
        last, now = self._last_chunks.get(name, {}), {}
        inline, parts, external, offset = [head], [], {}, len(head)
        for i, chunk in enumerate(chunks):
            if len(chunk) >= EXTERNAL_MIN:
                prev = last.get(i)
                digest = prev[1] if prev is not None and prev[0] == chunk else _digest(chunk)
                now[i] = (chunk, digest)
                parts.append([offset, digest])
                external[digest] = chunk
            else:
                inline.append(chunk)
            offset += len(chunk)
        self._last_chunks[name] = now
        return name, b"".join(inline), tells, asks, parts, external

    def _put_checkpoint(self, row: tuple | None) -> None:
        """Write the row; add the external chunks `checkpoint_data` lacks for this name and
        drop those no longer used (both in the caller's transaction)."""
        if row is None:
            return
        name, data, tells, asks, parts, external = row
        have = {r[0] for r in self._conn.execute("SELECT digest FROM checkpoint_data WHERE name=?", (name,))}
        for digest, chunk in external.items():
            if digest not in have:
                self._conn.execute("INSERT INTO checkpoint_data (name, digest, data) VALUES (?, ?, ?)",
                                   (name, digest, sqlite3.Binary(chunk)))
        for digest in have - external.keys():
            self._conn.execute("DELETE FROM checkpoint_data WHERE name=? AND digest=?", (name, digest))
        self._conn.execute(
            "INSERT OR REPLACE INTO checkpoints (name, state, tells, asks, saved_at, data_parts) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, sqlite3.Binary(data), tells, asks, time.time(), json.dumps(parts) if parts else None))

    def _blob(self, name: str, data: bytes, parts_json: str | None) -> bytes:
        """The checkpoint blob again: the row's bytes with the external chunks put back at
        their offsets, each checked against its digest."""
        if not parts_json:
            return data
        try:
            parts = json.loads(parts_json)
            stored = dict(self._conn.execute("SELECT digest, data FROM checkpoint_data WHERE name=?", (name,)))
            out, used, length = [], 0, 0
            for offset, digest in parts:
                chunk = bytes(stored[digest])
                if _digest(chunk) != digest or offset < length:
                    raise ValueError("altered")
                out.append(data[used:used + offset - length])
                used, length = used + offset - length, offset + len(chunk)
                out.append(chunk)
            out.append(data[used:])
            return b"".join(out)
        except (ValueError, TypeError, KeyError):
            raise CheckpointFormatError("is damaged (its tensor data is missing or altered) "
                                        "and is not loaded") from None

    def checkpoint(self, name: str = "controller") -> tuple[Any, int, int] | None:
        """(state, tells, asks) of the latest checkpoint called `name`, or None.

        A blob that is not this format (an old pickle included) is never unpickled:
        `UserError`, one line saying so and how to go on.
        """
        row = self._conn.execute("SELECT state, tells, asks, data_parts FROM checkpoints WHERE name=?",
                                 (name,)).fetchone()
        if row is None:
            return None
        try:
            state = decode_state(self._blob(name, bytes(row[0]), row[3]))
        except CheckpointFormatError as exc:
            raise UserError(f"{self.path.parent}: controller checkpoint {name!r} {exc}; "
                            "start a new run with another --out") from None
        return state, int(row[1]), int(row[2])

    def checkpoint_counts(self, name: str = "controller") -> tuple[int, int] | None:
        """(tells, asks) of the latest checkpoint called `name`, or None; reads no state
        (a poller learns whether the checkpoint moved without decoding 1.3 MB)."""
        row = self._conn.execute("SELECT tells, asks FROM checkpoints WHERE name=?", (name,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    # -- pending jobs ------------------------------------------------------------------
    def add_pending(self, kind: str, proposal_id: int, job: dict[str, Any],
                    ckpt: Checkpoint | None = None, attempt: int = 1) -> None:
        """Record a job about to be trained, with the controller state after its ask."""
        ckpt_row = self._encode_checkpoint(ckpt)
        with self._write():
            self._conn.execute(
                "INSERT OR REPLACE INTO pending (kind, proposal_id, job, queued_at, attempt) VALUES (?, ?, ?, ?, ?)",
                (kind, int(proposal_id), json.dumps(job), time.time(), int(attempt)))
            self._put_checkpoint(ckpt_row)

    def pending(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Pending jobs (dicts as given to `add_pending`, plus `attempt`), oldest first."""
        sql = "SELECT kind, proposal_id, job, attempt FROM pending"
        args: tuple = ()
        if kind is not None:
            sql += " WHERE kind=?"
            args = (kind,)
        rows = self._conn.execute(sql + " ORDER BY queued_at, proposal_id", args).fetchall()
        out = []
        for k, pid, job, attempt in rows:
            d = json.loads(job)
            d.update(kind=k, proposal_id=pid, attempt=attempt)
            out.append(d)
        return out

    def requeue_pending(self) -> list[dict[str, Any]]:
        """Bump every pending job's attempt (they were running when the run stopped)."""
        with self._write():
            self._conn.execute("UPDATE pending SET attempt = attempt + 1")
        return self.pending()

    # -- trials ------------------------------------------------------------------------
    def add_trial(self, record: dict[str, Any], ckpt: Checkpoint | None = None) -> int:
        """Insert a finished trial, drop its pending job and save `ckpt`: one transaction.

        Returns the trial id. A second record for the same (kind, proposal_id) raises
        `sqlite3.IntegrityError` and changes nothing.
        """
        row = {c: record.get(c) for c in TRIAL_COLUMNS if c != "id"}
        for c in _JSON_COLUMNS:
            if row[c] is not None and not isinstance(row[c], str):
                row[c] = json.dumps(row[c])
        row["told"] = int(bool(row["told"]))
        row["attempt"] = int(row["attempt"] or 1)
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        ckpt_row = self._encode_checkpoint(ckpt)
        with self._write():
            cur = self._conn.execute(f"INSERT INTO trials ({cols}) VALUES ({marks})", tuple(row.values()))
            self._conn.execute("DELETE FROM pending WHERE kind=? AND proposal_id=?",
                               (row["kind"], row["proposal_id"]))
            self._put_checkpoint(ckpt_row)
            return int(cur.lastrowid)

    def trials(self, kind: str | None = None, source: str | None = None) -> list[dict[str, Any]]:
        """Finished trials as dicts (JSON columns decoded), in order of completion."""
        where, args = [], []
        if kind is not None:
            where.append("kind=?")
            args.append(kind)
        if source is not None:
            where.append("source=?")
            args.append(source)
        sql = f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trials"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [self._decode(r) for r in self._conn.execute(sql + " ORDER BY id", args).fetchall()]

    def trials_after(self, last_id: int) -> list[dict[str, Any]]:
        """Trials recorded after trial `last_id`, in order (a poller's cost stays flat)."""
        rows = self._conn.execute(f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trials WHERE id > ? ORDER BY id",
                                  (int(last_id),)).fetchall()
        return [self._decode(r) for r in rows]

    def last_trial_id(self) -> int:
        return int(self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM trials").fetchone()[0])

    def count_all(self) -> int:
        return int(self._conn.execute("SELECT COALESCE(SUM(n), 0) FROM trial_counts").fetchone()[0])

    def count(self, kind: str = "search", sources: Iterable[str] = ("trained",)) -> int:
        """Trials of `kind` from `sources`: read from `trial_counts` (constant time; the
        loop counts with every ask), which the triggers keep equal to a COUNT(*)."""
        sources = tuple(sources)
        marks = ", ".join("?" for _ in sources)
        return int(self._conn.execute(
            f"SELECT COALESCE(SUM(n), 0) FROM trial_counts WHERE kind=? AND source IN ({marks})",
            (kind, *sources)).fetchone()[0])

    def proposal_history(self, kind: str = "search", after: int = 0) -> tuple[list[tuple], int]:
        """(proposal_id, choices, key) of every trial of `kind` recorded after trial id
        `after`, in order, then of every pending job of `kind`; and the last trial id read.

        Every proposal a controller made is in one of the two tables, written in the same
        transaction as the checkpoint taken after it: this is the history a controller
        rebuilds on resume (`Controller.replay_history`) instead of checkpointing it.
        Reading from `after` on keeps a repeated refresh incremental (NOT INDEXED: a
        range of the primary key, not every trial of `kind`)."""
        rows = self._conn.execute("SELECT id, proposal_id, choices, key FROM trials NOT INDEXED "
                                  "WHERE id > ? AND kind=? ORDER BY id", (int(after), kind)).fetchall()
        last = rows[-1][0] if rows else int(after)
        out = [(pid, None if c is None else json.loads(c), k) for _, pid, c, k in rows]
        for pid, job in self._conn.execute("SELECT proposal_id, job FROM pending WHERE kind=? "
                                           "ORDER BY queued_at, proposal_id", (kind,)).fetchall():
            d = json.loads(job)
            out.append((pid, d.get("choices"), d.get("key")))
        return out, last

    def find_key(self, key: str, kind: str = "search") -> dict[str, Any] | None:
        """The first trained trial of `kind` with this cache key (the cache), or None.
        INDEXED BY: without statistics SQLite would take (kind, source), a scan of every
        trained trial with each ask."""
        row = self._conn.execute(
            f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trials INDEXED BY trials_key "
            "WHERE kind=? AND key=? AND source='trained' ORDER BY id LIMIT 1", (kind, key)).fetchone()
        return None if row is None else self._decode(row)

    # -- ASHA rungs (nas.asha) -----------------------------------------------------------
    def add_rung(self, kind: str, proposal_id: int, rung: int, accuracy: float) -> None:
        """The accuracy a trial reached at a rung (a re-run after a kill replaces it)."""
        with self._write():
            self._conn.execute("INSERT OR REPLACE INTO rungs (kind, proposal_id, rung, accuracy) VALUES (?, ?, ?, ?)",
                               (kind, int(proposal_id), int(rung), float(accuracy)))

    def rungs(self, kind: str = "search") -> list[tuple[int, int, float]]:
        """(proposal_id, rung, accuracy) of every rung report of `kind` (read once, at start)."""
        return [(int(p), int(r), float(a)) for p, r, a in self._conn.execute(
            "SELECT proposal_id, rung, accuracy FROM rungs WHERE kind=? ORDER BY proposal_id, rung", (kind,))]

    def trial(self, kind: str, proposal_id: int) -> dict[str, Any] | None:
        row = self._conn.execute(f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trials WHERE kind=? AND proposal_id=?",
                                 (kind, int(proposal_id))).fetchone()
        return None if row is None else self._decode(row)

    @staticmethod
    def _decode(row: tuple) -> dict[str, Any]:
        d = dict(zip(TRIAL_COLUMNS, row))
        for c in _JSON_COLUMNS:
            if d[c] is not None:
                d[c] = json.loads(d[c])
        d["told"] = bool(d["told"])
        return d
