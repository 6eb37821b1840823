"""The training-free prefilter (`--prefilter SCORE --prefilter-ratio N`, nas/search/prefilter.py):
1 in N trained, the others recorded `source: prefilter` with the documented reward, the
winner the best-scored of its batch, SIGKILL + --resume at points inside a batch, a
compute budget (`--max-epochs`), and bad options."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli.search import main
from nas.store import Store

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 6
RATIO = 3
ARGS = ["--target-flops", "400M", "--controller", "random", "--trials", str(TRIALS), "--evaluator",
        "tests.fake_evaluators:ok", "--device", "cpu", "--no-tensorboard", "--no-scale", "--no-progress",
        "--quiet", "--no-final", "--seed", "4", "--workers", "1", "--prefilter", "params",
        "--prefilter-ratio", str(RATIO)]


def _db_rows(out):
    con = sqlite3.connect(f"file:{out}/search.db?mode=ro", uri=True)
    try:
        return con.execute("SELECT kind, proposal_id, key, status, accuracy, reward, source, message "
                           "FROM trials").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("prefilter") / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    return out, _db_rows(out)


def test_trains_the_best_scored_one_in_n_and_records_the_others(uninterrupted):
    out, _ = uninterrupted
    with Store.open(out) as st:
        rows = st.trials("search")
        cfg = st.config
    trained = [r for r in rows if r["source"] == "trained"]
    pre = [r for r in rows if r["source"] == "prefilter"]
    assert len(trained) == TRIALS and len(pre) == (RATIO - 1) * TRIALS
    by_id = {r["proposal_id"]: r for r in rows}
    batches: dict[int, list] = {}
    for r in pre:
        assert r["status"] == "skipped" and r["told"] and r["accuracy"] is None
        winner = int(re.search(r"proposal (\d+) of its batch was", r["message"]).group(1))
        batches.setdefault(winner, []).append(r)
        # the documented reward: the cost-only reward of an untrained architecture
        from nas.search.objective import Objective
        assert r["reward"] == pytest.approx(Objective(400_000_000).cost_only_reward(r["macs"], None, 0.1))
        assert r["extra"]["prefilter"]["score"] == pytest.approx(r["params"])  # the score is params here
    assert sorted(batches) == sorted(r["proposal_id"] for r in trained)
    for winner, losers in batches.items():
        assert len(losers) == RATIO - 1
        assert all(by_id[winner]["params"] >= r["params"] for r in losers)  # the best of its batch trained
        assert by_id[winner]["source"] == "trained"
    assert cfg["prefilter"] == "params" and cfg["prefilter_ratio"] == RATIO


@pytest.mark.parametrize("after_write", [6, 8, 11, 13])
def test_sigkill_inside_a_batch_then_resume_loses_nothing_and_trains_nothing_twice(tmp_path, uninterrupted,
                                                                                    after_write):
    """Killed right after a write: a held proposal, the winner's mark, a loser's record or a
    trained trial. Resumed, the records are exactly the uninterrupted run's (one worker)."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tests.kill_hooks", "after-write", str(after_write), "--",
                           *ARGS, "--out", str(out)], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-800:]
    before = _db_rows(out)
    assert main(["--resume", "--out", str(out)]) == 0
    after = _db_rows(out)
    assert set(before) <= set(after)
    ids = [(r[0], r[1]) for r in after]
    assert len(ids) == len(set(ids))
    strip = lambda rows: sorted(r[:7] for r in rows)  # noqa: E731 - messages hold no ids that differ
    assert strip(after) == strip(uninterrupted[1])
    with Store.open(out) as st:
        assert st.pending() == [] and st.get_meta("state") == "finished"
        assert st.checkpoint()[1] == len([r for r in after if r[0] == "search"])  # every proposal told once


def test_max_epochs_stops_the_search_at_a_compute_budget(tmp_path):
    out = tmp_path / "run"
    args = ARGS[:ARGS.index("--prefilter")] + ["--trials", "50", "--max-epochs", "7", "--proxy-epochs", "2"]
    assert main(args + ["--out", str(out)]) == 0
    with Store.open(out) as st:
        trained = st.trials("search", "trained")
        assert len(trained) == 4  # 2 epochs each: the 4th starts at 6 < 7 epochs, none after 8
        assert st.get_meta("stop_reason").startswith("compute budget reached: 8 epochs")
    assert main(["--resume", "--out", str(out), "--max-epochs", "10"]) == 0  # a higher budget continues
    with Store.open(out) as st:
        assert len(st.trials("search", "trained")) == 5


@pytest.mark.parametrize("argv, words", [
    (["--prefilter", "unknown"], "--prefilter"),
    (["--prefilter", "naswot", "--prefilter-ratio", "0"], "--prefilter-ratio"),
    (["--prefilter", "naswot", "--prefilter-ratio", "x"], "--prefilter-ratio"),
])
def test_bad_options_are_one_line_exit_2(tmp_path, capsys, argv, words):
    out = tmp_path / "run"
    args = ARGS[:ARGS.index("--prefilter")]
    assert main(args + ["--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err
    assert not Store.is_run(out)
