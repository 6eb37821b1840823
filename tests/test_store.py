"""The SQLite store: atomic records, checkpoints written with them, no repeated trial."""
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from nas.errors import UserError
from nas.store import KILL_IN_WRITE_ENV, Checkpoint, Store


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
        from nas.store import Store, Checkpoint
        st = Store.open({str(tmp_path)!r})
        st.add_trial({_rec(0)!r}, Checkpoint("controller", {{"v": 2}}, 1, 1))
    """)
    env = dict(os.environ, **{KILL_IN_WRITE_ENV: "1"})
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.getcwd(), timeout=60)
    assert proc.returncode == -9
    with Store.open(tmp_path) as st:
        assert st.trials() == []
        assert [p["proposal_id"] for p in st.pending()] == [0]
        assert st.checkpoint() == ({"v": 1}, 0, 1)
        assert [p["attempt"] for p in st.requeue_pending()] == [2]
