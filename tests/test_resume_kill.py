"""SIGKILL a running search (subprocess) at several points, resume it with --resume, and
check that every finished trial is there exactly once and the run completes exactly.

Kill points: inside a store write transaction (before COMMIT), right after a commit
(between one record and the next step), both through tests/kill_hooks.py, and mid-trial
(workers busy, parent polled, SIGKILL from here).
The random controller and a deterministic sleeping evaluator make the architectures an
uninterrupted run trains known in advance.
"""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.cli.search import main
from nas.store import Store

TRIALS = 10
ARGS = ["--target-flops", "400M", "--controller", "random", "--trials", str(TRIALS), "--workers", "2",
        "--evaluator", "tests.fake_evaluators:ok", "--device", "cpu", "--no-tensorboard", "--no-scale",
        "--no-progress", "--quiet", "--seed", "5"]
ROOT = Path(__file__).resolve().parents[1]


def _rows(out):
    con = sqlite3.connect(f"file:{out}/search.db?mode=ro", uri=True)
    try:
        return con.execute("SELECT kind, proposal_id, key, reward, status, source FROM trials").fetchall()
    except sqlite3.OperationalError:  # killed before the schema was committed
        return []
    finally:
        con.close()


def _pending(out):
    con = sqlite3.connect(f"file:{out}/search.db?mode=ro", uri=True)
    try:
        return con.execute("SELECT kind, proposal_id FROM pending").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def _children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def expected(tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    with Store.open(out) as st:
        return sorted(r["key"] for r in st.trials("search", "trained"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("EFFNAS_FAKE_SLEEP", "0.3")
    yield mp
    mp.undo()


def _start(out, hook=()):
    """`python -m nas.search ARGS`, or with `hook=(point, n)` the same search run by
    tests/kill_hooks.py, which SIGKILLs it at that store write."""
    env = dict(os.environ, EFFNAS_FAKE_SLEEP="0.3", OMP_NUM_THREADS="1")
    entry = ["-m", "tests.kill_hooks", *hook, "--"] if hook else ["-m", "nas.search"]
    return subprocess.Popen([sys.executable, *entry, *ARGS, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc, out, n_trained):
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (out / "search.db").exists() and sum(1 for r in _rows(out) if r[5] == "trained" and r[0] == "search") >= n_trained:
            workers = _children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            return workers
        time.sleep(0.05)
    raise AssertionError(f"search ended before {n_trained} trials: {proc.stderr.read().decode()[-500:]}")


@pytest.mark.parametrize("point", ["in-write-9", "after-write-14", "mid-trial-4"])
def test_kill_and_resume(tmp_path, expected, monkeypatch_module, point):
    out = tmp_path / "run"
    kind, n = point.rsplit("-", 1)
    proc = _start(out, () if kind == "mid-trial" else (kind, n))
    workers = _kill_when(proc, out, int(n)) if kind == "mid-trial" else []
    proc.wait(timeout=90)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-800:]
    before = _rows(out)
    running = _pending(out)
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "workers outlived the killed search"
    assert Store.is_run(out)
    with Store.open(out) as st:
        assert 0 < st.count("search") < TRIALS or kind != "mid-trial"

    assert main(["--resume", "--out", str(out)]) == 0
    after = _rows(out)
    # nothing finished before the kill was lost or changed, nothing is repeated
    assert set(before) <= set(after)
    ids = [(r[0], r[1]) for r in after]
    assert len(ids) == len(set(ids))
    trained = sorted(r[2] for r in after if r[0] == "search" and r[5] == "trained")
    assert len(trained) == TRIALS
    assert trained == expected  # exactly the architectures of an uninterrupted run
    assert sum(1 for r in after if r[0] == "reference") == 1
    with Store.open(out) as st:
        for k, pid in running:  # jobs running at the kill were re-queued under the same proposal
            assert st.trial(k, pid)["attempt"] == 2
        assert running or kind != "mid-trial"
        assert st.pending() == [] and st.get_meta("state") == "finished"
        assert st.checkpoint()[1] == len([r for r in after if r[0] == "search"])  # every proposal told once


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path, monkeypatch_module):
    out = tmp_path / "run"
    args = ARGS + ["--out", str(out), "--reference", "none"]
    assert main(args[:args.index("--trials")] + ["--trials", "3"] + args[args.index("--trials") + 2:]) == 0
    first = _rows(out)
    assert main(["--resume", "--out", str(out)]) == 0
    assert _rows(out) == first
    assert main(["--resume", "--out", str(out), "--trials", "5"]) == 0  # more trials: continues
    assert sum(1 for r in _rows(out) if r[0] == "search" and r[5] == "trained") == 5 and set(first) <= set(_rows(out))
    assert main(["--resume", "--out", str(out), "--target-flops", "300M"]) == 2


def test_resume_compares_identity_options_by_meaning_not_spelling(tmp_path, monkeypatch_module, capsys):
    """`0.5,1` is the stored `0.5,1.0`; `MNIST5K` is `mnist5k`; `0.4G` is `400M`; a real change is refused."""
    out = tmp_path / "run"
    args = ARGS + ["--out", str(out), "--reference", "none"]
    assert main(args[:args.index("--trials")] + ["--trials", "2"] + args[args.index("--trials") + 2:]) == 0
    same = ["--cost-window", "0.5,1", "--dataset", "MNIST5K", "--target-flops", "0.4G"]
    assert main(["--resume", "--out", str(out), *same]) == 0
    capsys.readouterr()
    assert main(["--resume", "--out", str(out), "--cost-window", "0.5,1.2"]) == 2
    assert "--cost-window 0.5,1.2 differs" in capsys.readouterr().err
