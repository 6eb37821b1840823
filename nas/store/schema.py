"""The store's tables: the columns of a trial record and the SQL that makes them.

Kept apart from `nas.store.store` so that the record's shape can be read in one place.
"""
SCHEMA_VERSION = 1

TRIAL_COLUMNS = (
    "id",                 # INTEGER, 1.., in order of completion
    "kind",               # 'search' (told to the controller) | 'reference' | 'grid' | other
    "proposal_id",        # the controller's proposal id (reference: 0)
    "choices",            # JSON list of choice indices (or null)
    "spec",               # JSON of ArchSpec.to_dict() (the deliverable spec)
    "key",                # SearchSpace.key / ArchSpec.key: the cache key
    "macs", "params",     # at the target resolution, 1000 classes
    "accuracy", "reward",
    "status",             # nas.evaluate.result.STATUSES
    "message",
    "epoch_accuracies",   # JSON list
    "loss", "images_per_sec",
    "queued_at", "started_at", "finished_at", "wall_time",
    "worker",             # e.g. 'cpu-0', 'cuda:1-0', 'inproc', 'nni:TRIALID'
    "source",             # 'trained' | 'cost-only' | 'cache' | 'prefilter'
    "told",               # 1 when the controller was told this trial
    "attempt",            # 1 + times the job was re-queued (resume)
    "extra",              # JSON dict, engine-specific (e.g. NNI trial id)
    "test_accuracy",      # stage 2 only: accuracy on the held-out test part (nas.final)
    "latency_ms",         # with a latency target: predicted latency (nas.search.records.new_job), else null
)

SCHEMA = """
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

# Added for runs of many trials (nas/store/store.py, "Scale"); `create` makes them and
# `open` adds those an older store lacks. Each statement is idempotent.
SCALE_SCHEMA = (
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
    # ASHA's rung accuracies (nas.search.asha): one row per (trial, rung), kept across a resume
    "CREATE TABLE IF NOT EXISTS rungs (kind TEXT NOT NULL, proposal_id INTEGER NOT NULL, "
    "rung INTEGER NOT NULL, accuracy REAL NOT NULL, PRIMARY KEY (kind, proposal_id, rung))",
)
SCALE_NAMES = frozenset({"trials_source", "trial_counts", "trial_counts_insert", "trial_counts_delete",
                          "trial_counts_update", "checkpoint_data", "rungs"})

JSON_COLUMNS = ("choices", "spec", "epoch_accuracies", "extra")
