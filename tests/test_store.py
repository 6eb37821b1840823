"""The SQLite store: atomic records, checkpoints written with them, no repeated trial,
checkpoints that cannot run code, owner-only write permissions."""
import os
import pickle
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nas.errors import UserError
from nas.store import Checkpoint, Store
from nas.store.codec import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointFormatError, decode_state, encode_state

ROOT = Path(__file__).resolve().parents[1]


def _rec(pid, **kw):
    base = dict(kind="search", proposal_id=pid, choices=[pid, 1], spec={"x": pid}, key=f"k{pid}", macs=100 + pid,
                params=10, accuracy=0.5, reward=0.5, status="ok", source="trained", told=True)
    base.update(kw)
    return base


def test_create_open_and_config(tmp_path):
    assert not Store.is_run(tmp_path)
    with Store.create(tmp_path / "run", {"trials": 3, "target_flops": 400}) as st:
        assert st.get_meta("state") == "running"
    assert Store.is_run(tmp_path / "run")
    with Store.open(tmp_path / "run") as st:
        assert st.config == {"trials": 3, "target_flops": 400}
    with pytest.raises(UserError, match="already holds a run"):
        Store.create(tmp_path / "run", {})
    with pytest.raises(UserError, match="not a search run"):
        Store.open(tmp_path)
    assert (tmp_path / "run" / "search.db").is_file()
    con = sqlite3.connect(tmp_path / "run" / "search.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_trial_pending_and_checkpoint_move_together(tmp_path):
    st = Store.create(tmp_path, {})
    st.add_pending("search", 0, {"key": "k0"}, Checkpoint("controller", {"asked": 1}, 0, 1))
    assert [p["proposal_id"] for p in st.pending()] == [0]
    assert st.checkpoint() == ({"asked": 1}, 0, 1)
    tid = st.add_trial(_rec(0), Checkpoint("controller", {"told": 1}, 1, 1))
    assert tid == 1 and st.pending() == []
    assert st.checkpoint() == ({"told": 1}, 1, 1)
    row = st.trial("search", 0)
    assert row["choices"] == [0, 1] and row["spec"] == {"x": 0} and row["told"] is True
    # a repeated trial is refused and changes nothing, checkpoint included
    with pytest.raises(sqlite3.IntegrityError):
        st.add_trial(_rec(0, reward=0.9), Checkpoint("controller", {"bad": 1}, 2, 2))
    assert st.checkpoint() == ({"told": 1}, 1, 1)
    assert len(st.trials()) == 1 and st.trial("search", 0)["reward"] == 0.5
    st.close()


def test_counts_and_cache_lookup(tmp_path):
    st = Store.create(tmp_path, {})
    st.add_trial(_rec(0, key="a", source="cost-only", status="skipped"))
    assert st.find_key("a") is None  # cost-only results are not a cache
    st.add_trial(_rec(1, key="a"))
    st.add_trial(_rec(2, key="a", source="cache"))
    st.add_trial(_rec(0, kind="reference", key="a", told=False))
    assert st.find_key("a")["proposal_id"] == 1
    assert st.count("search") == 1
    assert st.count("search", ("cost-only", "cache")) == 2
    assert [r["kind"] for r in st.trials()] == ["search", "search", "search", "reference"]
    st.close()


def test_sigkill_inside_a_write_leaves_the_previous_state(tmp_path):
    """A process killed between a transaction's statements and its COMMIT changes nothing."""
    st = Store.create(tmp_path, {})
    st.add_pending("search", 0, {"key": "k0"}, Checkpoint("controller", {"v": 1}, 0, 1))
    st.close()
    code = textwrap.dedent(f"""
        import tests.kill_hooks as k
        k.install(in_write=1)
        from nas.store import Store, Checkpoint
        st = Store.open({str(tmp_path)!r})
        st.add_trial({_rec(0)!r}, Checkpoint("controller", {{"v": 2}}, 1, 1))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60)
    assert proc.returncode == -9
    with Store.open(tmp_path) as st:
        assert st.trials() == []
        assert [p["proposal_id"] for p in st.pending()] == [0]
        assert st.checkpoint() == ({"v": 1}, 0, 1)
        assert [p["attempt"] for p in st.requeue_pending()] == [2]


def test_kill_hooks_kill_inside_or_right_after_the_nth_write(tmp_path):
    """The fixture the resume tests rely on: in-write N keeps write N out, after-write N keeps it."""
    for point, n, kept in (("in_write", 2, [0]), ("after_write", 2, [0, 1]), ("in_write", 1, [])):
        out = tmp_path / f"{point}{n}"
        Store.create(out, {}).close()
        code = textwrap.dedent(f"""
            import tests.kill_hooks as k
            k.install({point}={n})
            from nas.store import Store
            st = Store.open({str(out)!r})
            for pid in range(4):
                st.add_pending("search", pid, {{}})
        """)
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60)
        assert proc.returncode == -9
        with Store.open(out) as st:
            assert [p["proposal_id"] for p in st.pending()] == kept


STATE = {"kind": "rl", "sizes": [3, 2], "n": 2 ** 100, "x": -0.1, "nan": float("nan"), "flag": True,
         "none": None, "pair": (1, (2, "a")), "nested": [[1, 2], {"k": []}], "$odd": {"$tensor": 0},
         "w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
         "step": torch.tensor(7.0), "gen": torch.Generator().manual_seed(3).get_state(),
         "half": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "empty": torch.zeros(0, 5),
         "mask": torch.tensor([True, False])}


def _same(a, b):
    if isinstance(a, torch.Tensor):
        bits = lambda t: t.reshape(-1).view(torch.uint8)  # noqa: E731  (bit-exact, NaN included)
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(bits(a), bits(b)))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_state_encoding_round_trips_exactly_without_pickle():
    blob = encode_state(STATE)
    assert blob.startswith(CHECKPOINT_FORMAT + f" {CHECKPOINT_VERSION}\n".encode())
    back = decode_state(blob)
    assert _same(STATE, back) and not _same(STATE, {**back, "pair": [1, [2, "a"]]})
    back["w"] += 1  # decoded tensors are writable and share nothing with the blob
    assert _same(decode_state(blob)["w"], STATE["w"])
    for bad in ({1: "int key"}, {"a": {1, 2}}, [object()], {"np": __import__("numpy").int64(3)}):
        with pytest.raises(TypeError):
            encode_state(bad)


def test_damaged_or_foreign_blobs_are_refused_by_decode():
    blob = encode_state(STATE)
    tag = CHECKPOINT_FORMAT + f" {CHECKPOINT_VERSION}\n".encode()
    cases = {
        pickle.dumps(STATE): "pickle",
        b"PK\x03\x04torch.save zip": "not in a known format",
        blob.replace(tag, CHECKPOINT_FORMAT + b" 99\n", 1): "version '99'",
        blob[:len(tag) + 20]: "damaged",
        blob[:-3]: "damaged",
        tag + (5).to_bytes(8, "little") + b'{"a":': "damaged",
    }
    for data, words in cases.items():
        with pytest.raises(CheckpointFormatError, match=words.replace("(", r"\(")):
            decode_state(data)


class _Boom:
    """Unpickling calls os.system: the attack a writable run directory allowed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _plant(out, blob, name="controller"):
    con = sqlite3.connect(out / "search.db")
    with con:
        con.execute("INSERT OR REPLACE INTO checkpoints (name, state, tells, asks, saved_at) "
                    "VALUES (?, ?, 1, 1, 0)", (name, blob))
    con.close()


def test_a_planted_malicious_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    Store.create(out, {}).close()
    payload = pickle.dumps({"state": _Boom(marker)}, protocol=4)
    assert payload[:1] == b"\x80"
    _plant(out, payload)
    with Store.open(out) as st:
        with pytest.raises(UserError) as exc:
            st.checkpoint()
    msg = str(exc.value)
    assert "old unsafe format (pickle)" in msg and "another --out" in msg and "\n" not in msg
    assert not marker.exists()
    # the same payload in a protocol-0 pickle (no \x80 byte) is refused just the same
    _plant(out, pickle.dumps(_Boom(marker), protocol=0))
    with Store.open(out) as st, pytest.raises(UserError, match="not in a known format"):
        st.checkpoint()
    assert not marker.exists()
    pickle.loads(payload)  # the control: unpickling it does run the command
    assert marker.exists()


def test_a_store_written_with_the_old_pickle_format_gets_a_one_line_refusal(tmp_path):
    out = tmp_path / "run"
    st = Store.create(out, {"trials": 3})
    st.add_trial(_rec(0), Checkpoint("controller", {"told": 1}, 1, 1))
    st.close()
    old_state = {"kind": "random", "sizes": [3], "ledger": {"next_id": 1, "pending": [(0, [1], None)]}}
    _plant(out, pickle.dumps(old_state, protocol=4))  # what the old Store._put_checkpoint wrote
    with Store.open(out) as st:
        assert len(st.trials()) == 1 and st.config == {"trials": 3}  # the record is still readable
        with pytest.raises(UserError) as exc:
            st.checkpoint()
        assert st.checkpoint("other") is None
    assert str(exc.value) == (f"{out}: controller checkpoint 'controller' is in an old unsafe format (pickle) "
                              "and is not loaded; start a new run with another --out")


def test_controller_states_go_through_the_store_and_resume_exactly(tmp_path):
    import controllers
    st = Store.create(tmp_path / "run", {})
    for name in ("random", "evolution", "rl"):
        a = controllers.make(name, [3, 2, 4], seed=1)
        for p in a.ask_batch(6)[:4]:
            a.tell(p, float(sum(p.choices)))
        st.add_pending("search", 100, {}, Checkpoint(name, a.state_dict(), 4, 6))
        b = controllers.make(name, [3, 2, 4], seed=2)
        b.load_state_dict(st.checkpoint(name)[0])
        assert [p.choices for p in a.ask_batch(5)] == [p.choices for p in b.ask_batch(5)]
    st.close()


def _write_bits(path):
    return stat.S_IMODE(os.stat(path).st_mode) & (stat.S_IWGRP | stat.S_IWOTH)


def test_new_folders_and_the_database_are_writable_by_the_owner_only(tmp_path):
    old = os.umask(0)  # the most permissive umask: every bit is ours to choose
    try:
        st = Store.create(tmp_path / "a" / "b" / "run", {})
        st.add_pending("search", 0, {}, Checkpoint("controller", {"v": 1}, 0, 1))
        given = tmp_path / "given"
        given.mkdir(mode=0o777)
        os.chmod(given, 0o777)
        Store.create(given, {}).close()
    finally:
        os.umask(old)
    run = tmp_path / "a" / "b" / "run"
    files = [run / n for n in ("search.db", "search.db-wal", "search.db-shm")]
    assert all(f.exists() for f in files)  # WAL mode, store open
    for path in [tmp_path / "a", tmp_path / "a" / "b", run, *files]:
        assert _write_bits(path) == 0, (path, oct(os.stat(path).st_mode))
        assert os.stat(path).st_mode & stat.S_IWUSR
    st.close()
    assert stat.S_IMODE(os.stat(given).st_mode) == 0o777  # the user's own folder is left as it is
    assert _write_bits(given / "search.db") == 0
