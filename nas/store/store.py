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
- a checkpoint's large tensors (the RL policy and its Adam moments; each tensor of
  `EXTERNAL_MIN` bytes or more) are stored once per content in `checkpoint_data`,
  keyed by (checkpoint name, BLAKE2b digest); the checkpoint row holds the rest of the
  blob (header, small tensors such as the generator state, which changes with every
  ask) and `data_parts`, the [offset, digest] of each chunk left out. The policy
  changes only every few tells, so most checkpoints write a few KB instead of the whole
  policy (BENCHMARKS.md, "Scale"). Chunks no longer used are deleted in the same transaction.
Stores made before these additions gain them when opened (`Store.open`: indexes,
tables, triggers and column IF NOT EXISTS, the counts filled from `trials`, in one
transaction; nothing is written when they are there already).

The controller checkpoint's bytes (plain data, never a pickle: nothing in a run folder
runs code) are `nas.store.codec`'s; the tables are in `nas.store.schema`.

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
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from .codec import CheckpointFormatError, decode_state, encode_state_parts
from .schema import JSON_COLUMNS, SCALE_NAMES, SCALE_SCHEMA, SCHEMA, SCHEMA_VERSION, TRIAL_COLUMNS

DB_NAME = "search.db"
DIR_MODE = 0o755   # what `create` gives the folders it makes (before the umask)
FILE_MODE = 0o644  # and search.db


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
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    store._conn.execute(statement)
            for statement in SCALE_SCHEMA:
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
            return SCALE_NAMES - names, "data_parts" not in cols
        if missing() == (set(), False):
            return
        with self._write():
            lacking, no_parts = missing()  # again under the lock: another process may have done it
            if "trial_counts" in lacking:
                self._conn.execute(SCALE_SCHEMA[1])
                self._conn.execute("INSERT INTO trial_counts (kind, source, n) "
                                   "SELECT kind, source, COUNT(*) FROM trials GROUP BY kind, source")
            for statement in SCALE_SCHEMA:
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
        (a poller learns whether the checkpoint moved without decoding it)."""
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
        for c in JSON_COLUMNS:
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

    # -- ASHA rungs (nas.search.asha) -----------------------------------------------------------
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
        for c in JSON_COLUMNS:
            if d[c] is not None:
                d[c] = json.loads(d[c])
        d["told"] = bool(d["told"])
        return d
