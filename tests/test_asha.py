"""ASHA early stopping (`--early-stop asha`, nas/search/asha.py): the rung schedule, the stopping
rule on known inputs, a search on a fake evaluator with a learning curve (both local
engine paths), what the controller is told, SIGKILL + --resume, the NNI assessor path,
and bad options.

`tests.fake_evaluators:curve` reports `curve_accuracy(key, f)` at each rung fraction f,
so every stopped record's rung accuracy is known from its architecture alone.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nas.search.asha import Asha, AshaSettings, continues, rung_fractions
from nas.cli.search import main
from nas.store import Store
from tests.fake_evaluators import accuracy_of, curve_accuracy

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 12
ARGS = ["--target-flops", "400M", "--controller", "random", "--trials", str(TRIALS), "--evaluator",
        "tests.fake_evaluators:curve", "--device", "cpu", "--no-tensorboard", "--no-scale", "--no-progress",
        "--quiet", "--no-final", "--seed", "3", "--early-stop", "asha", "--reference", "none"]


def test_rung_schedule():
    assert rung_fractions(1 / 9, 3) == pytest.approx([1 / 9, 1 / 3, 1.0])
    assert rung_fractions(0.25, 2) == pytest.approx([0.25, 0.5, 1.0])
    assert rung_fractions(0.5, 3) == pytest.approx([0.5, 1.0])
    assert rung_fractions(0.1, 4) == pytest.approx([0.1, 0.4, 1.0])


def test_stopping_rule_on_known_inputs():
    # fewer than eta recorded: always continue
    assert continues(0.1, [0.1], 3) and continues(0.1, [0.1, 0.9], 3)
    # 3 recorded, eta 3: only the best continues (ties continue)
    assert not continues(0.5, [0.5, 0.7, 0.9], 3) and continues(0.9, [0.5, 0.7, 0.9], 3)
    assert continues(0.9, [0.5, 0.9, 0.9], 3)
    # 6 recorded: the top 2
    six = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert [continues(a, six, 3) for a in six] == [False] * 4 + [True] * 2
    assert [continues(a, six, 2) for a in six] == [False] * 3 + [True] * 3


def test_asha_decisions_and_a_rereport_replaces():
    asha = Asha(AshaSettings(eta=3, min_fraction=1 / 9))
    assert asha.decision_fractions == pytest.approx([1 / 9, 1 / 3])
    assert [asha.decide(p, 0, a) for p, a in ((1, 0.5), (2, 0.6), (3, 0.4), (4, 0.7))] == [True, True, False, True]
    assert asha.decide(3, 0, 0.4) is False            # the same trial again (a resume): not counted twice
    assert asha.recorded[0] == [0.4, 0.5, 0.6, 0.7]
    assert not asha.is_decision(2, 0.1)               # the full budget is no decision rung
    assert not asha.is_decision(0, float("nan"))      # nor is a NaN
    stored = [(p, r, a) for (p, r), a in asha.by_trial.items()]
    again = Asha(AshaSettings(eta=3, min_fraction=1 / 9), stored)  # a new process, from the store's rows
    assert again.recorded == asha.recorded and again.by_trial == asha.by_trial
    assert again.decide(5, 0, 0.55) is False          # 5 recorded: top 1 is 0.7


def test_the_loop_stores_each_rung_accuracy_before_deciding_and_a_new_loop_reads_them(tmp_path):
    from nas.engines.protocol import Job
    from nas.search.loop import SearchLoop
    from nas.search.objective import Objective
    from nas.search.recipe import ControllerRecipe
    from nas.search.settings import LoopSettings
    from search_space.space import SearchSpace

    store = Store.create(tmp_path / "run", {"test": "asha"})
    settings = LoopSettings(Objective(400_000_000), asha=AshaSettings(eta=3, min_fraction=1 / 9))
    loop = SearchLoop(store, SearchSpace.default(), ControllerRecipe("random", seed=0), settings)
    jobs = [Job("search", p, {}, f"k{p}", 1, 1) for p in range(1, 5)]
    assert [loop.rung(j, 0, a) for j, a in zip(jobs, (0.5, 0.6, 0.4, 0.7))] == [True, True, False, True]
    assert loop.rung(jobs[0], 2, 0.1) is True         # not a decision rung: neither stored nor counted
    assert loop.rung(Job("reference", 0, {}, "r", 1, 1), 0, 0.0) is True  # only search trials are judged
    assert sorted(store.rungs("search")) == [(1, 0, 0.5), (2, 0, 0.6), (3, 0, 0.4), (4, 0, 0.7)]
    again = SearchLoop(store, SearchSpace.default(), ControllerRecipe("random", seed=0), settings)
    assert again.asha.recorded == loop.asha.recorded
    store.close()


def _rows(out):
    with Store.open(out) as st:
        return st.trials("search"), st.rungs("search")


def _check_stopped_records(rows):
    trained = [r for r in rows if r["source"] == "trained"]
    stopped = [r for r in trained if r["status"] == "stopped"]
    assert len(trained) == TRIALS and stopped and len(stopped) < TRIALS
    for r in stopped:
        at = r["extra"]["stopped_at"]
        assert at["fraction"] == pytest.approx(rung_fractions(1 / 9, 3)[at["rung"]]) and at["rung"] in (0, 1)
        assert r["accuracy"] == pytest.approx(curve_accuracy(r["key"], at["fraction"]))
        assert at["accuracy"] == pytest.approx(r["accuracy"])
    for r in trained:
        if r["status"] == "ok":
            assert r["accuracy"] == pytest.approx(accuracy_of(r["key"]))
    return stopped


@pytest.mark.parametrize("workers", ["1", "2"])
def test_search_with_asha_stops_the_bad_ones(tmp_path, workers):
    out = tmp_path / "run"
    assert main(ARGS + ["--workers", workers, "--out", str(out)]) == 0
    rows, rungs = _rows(out)
    stopped = _check_stopped_records(rows)
    # the rule held for each stop: below the top 1/3 of the rung accuracies recorded by then
    # (workers 1: trials run in proposal order, so "by then" is "of lower proposal id")
    if workers == "1":
        for r in stopped:
            at = r["extra"]["stopped_at"]
            seen = sorted(a for p, g, a in rungs if g == at["rung"] and p <= r["proposal_id"])
            assert not continues(at["accuracy"], seen, 3)
    # every rung a trial reached is stored once: stopped at rung g -> rungs 0..g, ok -> 0 and 1
    reached = {}
    for p, g, _ in rungs:
        reached.setdefault(p, []).append(g)
    for r in (r for r in rows if r["source"] == "trained"):
        want = list(range(r["extra"]["stopped_at"]["rung"] + 1)) if r["status"] == "stopped" else [0, 1]
        assert reached[r["proposal_id"]] == want


def test_controller_is_told_the_reward_of_the_rung_accuracy(tmp_path):
    from nas.engines.protocol import EvalContext
    from nas.engines.local import LocalEngine
    from nas.evaluate.budget import ProxyBudget
    from nas.search.loop import SearchLoop
    from nas.search.recipe import ControllerRecipe
    from nas.search.objective import Objective
    from nas.search.settings import LoopSettings, StopRule
    from search_space.space import SearchSpace

    space = SearchSpace.default()
    controller = ControllerRecipe("random", seed=3).build(space)
    told = {}
    tell = controller.tell
    controller.tell = lambda p, r: (told.__setitem__(p.id, r), tell(p, r))
    store = Store.create(tmp_path / "run", {"test": "asha"})
    settings = LoopSettings(Objective(400_000_000), stop=StopRule(trials=TRIALS), asha=AshaSettings(3, 1 / 9))
    loop = SearchLoop(store, space, controller, settings)
    LocalEngine(in_process=True).run(loop, EvalContext(ProxyBudget(), evaluator="tests.fake_evaluators:curve"))
    stopped = _check_stopped_records(store.trials("search"))
    for r in stopped:
        expected = settings.objective.reward(r["extra"]["stopped_at"]["accuracy"], r["macs"], None)
        assert told[r["proposal_id"]] == pytest.approx(expected) == pytest.approx(r["reward"])
        assert r["status"] not in ("failed",) and r["source"] == "trained"
    assert loop.best()["status"] == "ok"
    store.close()


def _db_rows(out):
    con = sqlite3.connect(f"file:{out}/search.db?mode=ro", uri=True)
    try:
        trials = con.execute("SELECT kind, proposal_id, key, status, accuracy, reward, source FROM trials").fetchall()
        rungs = con.execute("SELECT proposal_id, rung, accuracy FROM rungs").fetchall()
        return trials, rungs
    except sqlite3.OperationalError:
        return [], []
    finally:
        con.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("asha") / "run"
    assert main(ARGS + ["--workers", "1", "--out", str(out)]) == 0
    return _db_rows(out)


@pytest.mark.parametrize("after_write", [9, 16])
def test_sigkill_then_resume_keeps_trials_and_rungs(tmp_path, uninterrupted, after_write):
    """Killed right after a store write (a trial's record, a pending job, a rung report),
    resumed: nothing lost, nothing trained twice, rung data kept, and (one worker: every
    decision in the same order) exactly the records of an uninterrupted run."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tests.kill_hooks", "after-write", str(after_write), "--",
                           *ARGS, "--workers", "1", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-800:]
    before_trials, before_rungs = _db_rows(out)
    assert before_rungs  # killed mid-run, with rung data stored
    assert main(["--resume", "--out", str(out)]) == 0
    after_trials, after_rungs = _db_rows(out)
    assert set(before_trials) <= set(after_trials) and set(before_rungs) <= set(after_rungs)
    ids = [(r[0], r[1]) for r in after_trials]
    assert len(ids) == len(set(ids))
    assert sorted(after_trials) == sorted(uninterrupted[0])
    assert sorted(after_rungs) == sorted(uninterrupted[1])
    with Store.open(out) as st:
        assert st.pending() == [] and st.get_meta("state") == "finished"


def test_nni_assessor_stops_through_the_loop_and_the_tuner_records_stopped(tmp_path, monkeypatch):
    """NNI's own MsgDispatcher around our tuner and assessor: rung reports reach the loop's
    ASHA; the one below the top 1/3 is judged Bad, and its end is recorded as stopped."""
    pytest.importorskip("nni")
    from nni.common.serializer import dump

    from nas.search.loop import SearchLoop
    from nas.search.recipe import ControllerRecipe
    from nas.search.objective import Objective
    from nas.search.settings import CostWindow, LoopSettings, StopRule
    from search_space.space import SearchSpace
    from tests.test_nni_engine import _Dispatcher, _session
    from nas.nni.tuner import ControllerTuner

    monkeypatch.setenv("HOME", str(tmp_path))
    store = Store.create(tmp_path / "run", {"test": "nni-asha"})
    loop = SearchLoop(store, SearchSpace.default(), ControllerRecipe("random", seed=3),
                      LoopSettings(Objective(400_000_000), CostWindow(0.0, 1e9), StopRule(trials=4), asha=AshaSettings()))
    tuner = ControllerTuner(session=str(_session(tmp_path, loop)))
    nni_side = _Dispatcher(tuner)
    killed = []
    nni_side.d.send = lambda command, data: killed.append(data)  # the kill command NNI would send
    params = [nni_side.generate(i) for i in range(3)]
    assert all(p["job"]["rungs"] == pytest.approx([1 / 9, 1 / 3]) for p in params)

    def report(trial, i, value, seq):
        job = params[i]["job"]
        v = {"proposal_id": job["proposal_id"], "kind": "search", "session": params[i]["session"], **value}
        nni_side.d.handle_report_metric_data({"parameter_id": i, "trial_job_id": nni_side.run + trial,
                                              "type": "PERIODICAL", "sequence": seq, "value": dump(v)})

    for i, (trial, acc) in enumerate((("A", 0.8), ("B", 0.9), ("C", 0.3))):
        report(trial, i, {}, 0)
        report(trial, i, {"default": acc, "rung": 0}, 1)
    assert killed == [f'"{nni_side.run}C"']                       # only C is stopped, at once
    nni_side.end("C", 2, "EARLY_STOPPED")
    rows = {r["proposal_id"]: r for r in store.trials()}
    c = params[2]["job"]["proposal_id"]
    assert list(rows) == [c] and rows[c]["status"] == "stopped"
    assert rows[c]["extra"]["stopped_at"] == {"rung": 0, "fraction": pytest.approx(1 / 9), "accuracy": 0.3}
    assert rows[c]["reward"] == pytest.approx(loop.objective.reward(0.3, rows[c]["macs"], None))
    assert sorted(a for _, _, a in store.rungs()) == [0.3, 0.8, 0.9]
    store.close()


@pytest.mark.parametrize("argv, words", [
    (["--early-stop", "asha", "--eta", "1"], "--eta"),
    (["--early-stop", "asha", "--eta", "two"], "--eta"),
    (["--early-stop", "asha", "--min-fraction", "0"], "--min-fraction"),
    (["--early-stop", "asha", "--min-fraction", "1"], "--min-fraction"),
    (["--early-stop", "asha", "--min-fraction", "1/0"], "--min-fraction"),
    (["--early-stop", "hyperband"], "--early-stop"),
    (["--max-epochs", "-1"], "--max-epochs"),
])
def test_bad_options_are_one_line_exit_2(tmp_path, capsys, argv, words):
    out = tmp_path / "run"
    assert main(ARGS[:-4] + ["--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err
    assert not Store.is_run(out)


def test_trainer_scores_each_rung_and_stops_or_ends_as_without_rungs():
    """The real trainer: a rung at 1/9 and 1/3 of the steps; told to go on it ends exactly
    as without rungs (scoring a rung changes no weight and no RNG); told to stop it ends
    'stopped' with the rung's accuracy."""
    from nas.evaluate import data as D
    from nas.evaluate.train import train
    from tests.test_train import TINY, budget

    digits = D.load("digits", resolution=8, seed=0)
    plain = train(TINY, budget(steps=27, seed=2), digits)
    seen = []
    going = train(TINY, budget(steps=27, seed=2), digits, rungs=[1 / 9, 1 / 3],
                  on_rung=lambda r, a: seen.append((r, a)) or True)
    assert plain.status == going.status == "ok" and going.accuracy == plain.accuracy and going.loss == plain.loss
    assert [r for r, _ in seen] == [0, 1] and all(0 <= a <= 1 for _, a in seen)
    stop = train(TINY, budget(steps=27, seed=2), digits, rungs=[1 / 9, 1 / 3], on_rung=lambda r, a: r < 1)
    assert stop.status == "stopped" and stop.accuracy == seen[1][1]
    assert stop.stopped_at == {"rung": 1, "fraction": pytest.approx(1 / 3), "accuracy": seen[1][1]}


def test_worker_rung_question_never_hangs(monkeypatch):
    """A worker's `on_rung` over its pipe: the matching answer decides; a stale answer is
    skipped; no answer in RUNG_WAIT, or a parent gone, means continue."""
    import multiprocessing as mp

    from nas.engines import local as engine_local

    parent, child = mp.Pipe()
    ask = engine_local._ask_parent(child, "search-7")
    parent.send(("rung-answer", "search-7", 0, True))      # stale: an earlier rung's answer
    parent.send(("rung-answer", "search-7", 1, False))
    assert ask(1, 0.3) is False
    assert parent.recv() == ("rung", "search-7", 1, 0.3)
    monkeypatch.setattr(engine_local, "RUNG_WAIT", 0.2)
    assert ask(0, 0.5) is True                              # nobody answers: go on
    parent.close()
    assert ask(1, 0.5) is True                              # the parent is gone: go on
