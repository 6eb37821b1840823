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
  checkpoints(name, ...)        latest pickled controller state per name, with counts
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError

DB_NAME = "search.db"
SCHEMA_VERSION = 1

# Test hooks (tests/test_resume_kill.py): SIGKILL this process inside the N-th write
# transaction (1-based; after its statements ran, before COMMIT), or right after the
# N-th commit (between one record and the next step).
KILL_IN_WRITE_ENV = "EFFNAS_TEST_KILL_IN_WRITE"
KILL_AFTER_WRITE_ENV = "EFFNAS_TEST_KILL_AFTER_WRITE"

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
    attempt INTEGER NOT NULL DEFAULT 1, extra TEXT,
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
    asks INTEGER NOT NULL, saved_at REAL NOT NULL
);
"""

_JSON_COLUMNS = ("choices", "spec", "epoch_accuracies", "extra")


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else 0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


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
        self._writes = 0
        self._kill_in = _env_int(KILL_IN_WRITE_ENV)
        self._kill_after = _env_int(KILL_AFTER_WRITE_ENV)

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
    def create(cls, out_dir: str | Path, config: dict[str, Any]) -> "Store":
        """A new run's store; the schema and the config are written in one transaction,
        so a store without a config (a kill during creation) is never taken for a run."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = cls.db_path(out_dir)
        if cls.is_run(out_dir):
            raise UserError(f"{out_dir}: already holds a run (use --resume, or another --out)")
        for suffix in ("", "-wal", "-shm"):
            leftover = Path(str(path) + suffix)
            if leftover.exists():
                leftover.unlink()
        store = cls(path)
        with store._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
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
        return store

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
        def __init__(self, store: "Store") -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._conn.execute("BEGIN IMMEDIATE")
            return self.store._conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            conn = self.store._conn
            if exc_type is not None:
                conn.execute("ROLLBACK")
                return
            st = self.store
            st._writes += 1
            if st._kill_in and st._writes == st._kill_in:
                _die()
            conn.execute("COMMIT")
            if st._kill_after and st._writes == st._kill_after:
                _die()

    def _write(self) -> "Store._Txn":
        return Store._Txn(self)

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
    def _put_checkpoint(self, ckpt: Checkpoint | None) -> None:
        if ckpt is None:
            return
        name, state, tells, asks = ckpt
        self._conn.execute(
            "INSERT OR REPLACE INTO checkpoints (name, state, tells, asks, saved_at) VALUES (?, ?, ?, ?, ?)",
            (name, sqlite3.Binary(pickle.dumps(state, protocol=4)), tells, asks, time.time()))

    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        with self._write():
            self._put_checkpoint(ckpt)

    def checkpoint(self, name: str = "controller") -> tuple[Any, int, int] | None:
        """(state, tells, asks) of the latest checkpoint called `name`, or None."""
        row = self._conn.execute("SELECT state, tells, asks FROM checkpoints WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        return pickle.loads(row[0]), int(row[1]), int(row[2])

    # -- pending jobs ------------------------------------------------------------------
    def add_pending(self, kind: str, proposal_id: int, job: dict[str, Any],
                    ckpt: Checkpoint | None = None, attempt: int = 1) -> None:
        """Record a job about to be trained, with the controller state after its ask."""
        with self._write():
            self._conn.execute(
                "INSERT OR REPLACE INTO pending (kind, proposal_id, job, queued_at, attempt) VALUES (?, ?, ?, ?, ?)",
                (kind, int(proposal_id), json.dumps(job), time.time(), int(attempt)))
            self._put_checkpoint(ckpt)

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
        with self._write():
            cur = self._conn.execute(f"INSERT INTO trials ({cols}) VALUES ({marks})", tuple(row.values()))
            self._conn.execute("DELETE FROM pending WHERE kind=? AND proposal_id=?",
                               (row["kind"], row["proposal_id"]))
            self._put_checkpoint(ckpt)
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

    def count(self, kind: str = "search", sources: Iterable[str] = ("trained",)) -> int:
        sources = tuple(sources)
        marks = ", ".join("?" for _ in sources)
        return int(self._conn.execute(
            f"SELECT COUNT(*) FROM trials WHERE kind=? AND source IN ({marks})", (kind, *sources)).fetchone()[0])

    def find_key(self, key: str, kind: str = "search") -> dict[str, Any] | None:
        """The first trained trial of `kind` with this cache key (the cache), or None."""
        row = self._conn.execute(
            f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trials WHERE kind=? AND key=? AND source='trained' "
            "ORDER BY id LIMIT 1", (kind, key)).fetchone()
        return None if row is None else self._decode(row)

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
