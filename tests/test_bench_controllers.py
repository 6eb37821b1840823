"""The controller benchmark and its surrogate: the data script (resumable, exported table),
the surrogate (fits, held-out statistics, cached), the benchmark's loop (the search's rules
for every method) and its CLI (bad input, --quick --json)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import controllers as bc
from bench import surrogate as sg
from bench import surrogate_data as sd
from controllers.base import Ledger
from search_space import cost
from search_space.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.default()
HASH = ["--evaluator", "nas.trial:hash_evaluate"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A 12-architecture table made by the data script with the hash evaluator."""
    d = tmp_path_factory.mktemp("sd")
    path = d / "t.csv.gz"
    assert sd.main(["--archs", "12", "--out", str(d / "store"), "--export", str(path), *HASH]) == 0
    return d, path


def test_uniform_sample_is_in_window_distinct_and_a_prefix_of_a_bigger_one():
    small = sd.sample_uniform(SPACE, 400_000_000, (0.5, 1.0), 5, seed=3)
    big = sd.sample_uniform(SPACE, 400_000_000, (0.5, 1.0), 9, seed=3)
    assert [c for c, _ in small] == [c for c, _ in big[:5]]
    assert len({s.key() for _, s in big}) == 9
    assert all(200e6 <= cost.macs(s, 224) <= 400e6 for _, s in big)


def test_data_script_exports_whole_architectures_and_continues(table, capsys):
    d, path = table
    rows, meta = sg.read_table(path)
    assert len(rows) == 12 and meta["budget"]["epochs"] == 2.0 and meta["budget"]["dataset"] == "mnist5k"
    assert meta["seeds"] == [1, 2] and meta["torch"] and meta["cpu"]
    for r in rows:
        spec = SPACE.decode(json.loads(r["choices"]), num_classes=1000, resolution=224)
        assert spec.key() == r["key"] and int(r["macs"]) == cost.macs(spec, 224)
        assert r["acc_seed1"] and r["acc_seed2"] and r["status_seed1"] == "ok"
    capsys.readouterr()
    out2 = d / "t2.csv.gz"
    assert sd.main(["--archs", "14", "--out", str(d / "store"), "--export", str(out2), *HASH]) == 0
    assert "24 stored" in capsys.readouterr().err  # the 12 already trained are not trained again
    rows2, _ = sg.read_table(out2)
    assert [r["key"] for r in rows2[:12]] == [r["key"] for r in rows]
    assert sd.main(["--archs", "14", "--out", str(d / "store"), "--export", str(out2), "--cost-window", "0.4,1",
                    *HASH]) == 2  # another table's store: refused


def test_data_script_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    assert sd.main(["--archs", "0"]) == 2
    assert sd.main(["--archs", "3", "--specs", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "bad.txt"
    bad.write_text("[1, 2]\n")
    assert sd.main(["--archs", "3", "--specs", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "Traceback" not in err


def test_surrogate_fits_predicts_in_range_and_caches(table):
    _, path = table
    s = sg.Surrogate(path)
    spec = SPACE.decode(SPACE.sample(np.random.default_rng(0)), num_classes=1000, resolution=224)
    a = s.accuracy(spec)
    assert 0.0 <= a <= 1.0 and s.accuracy(spec) == a and len(s.cache) == 1
    assert sg.Surrogate(path).accuracy(spec) == a  # a fixed random state: the same model again


def test_cross_validation_ranks_a_learnable_target_and_the_ceiling_is_computed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = x[:, 0] + 0.1 * rng.normal(size=60)
    per_seed = np.stack([y + 0.05 * rng.normal(size=60), y + 0.05 * rng.normal(size=60)], 1)
    r = sg.cross_validate(x, y, per_seed, "gbm", folds=5)
    assert r["tau"] > 0.5 and r["r2"] > 0.5 and r["n"] == 60
    assert sg.seed_ceiling(per_seed)["tau"] > 0.7


class Scripted:
    """Proposes a fixed list of choice tuples (a repeat, one outside the window, ...)."""

    def __init__(self, proposals):
        self.items, self.ledger, self.told = list(proposals), Ledger(), []

    def ask(self):
        return self.ledger.issue(self.items.pop(0))

    def tell(self, p, r):
        self.ledger.settle(p)
        self.told.append(r)


def test_drive_counts_only_distinct_in_window_evaluations():
    rng = np.random.default_rng(1)
    inside, outside = [], None
    while len(inside) < 3 or outside is None:
        c = tuple(SPACE.sample(rng))
        m = cost.macs(SPACE.decode(list(c), num_classes=1000, resolution=224), 224)
        if 200e6 <= m <= 400e6:
            inside.append(c)
        elif m > 400e6:
            outside = c
    calls = []

    def evaluate(spec, key, macs):
        calls.append(key)
        return 0.5

    ctl = Scripted([inside[0], outside, inside[0], inside[1], inside[2]])
    res = bc.drive(ctl, SPACE, evaluate, budget=3)
    assert res["rewards"] == [0.5, 0.5, 0.5] and res["asked"] == 5 and len(calls) == 3
    assert ctl.told[1] < 0.1 and ctl.told[2] == 0.5  # cost-only reward; the repeat told the known one


def test_bench_bad_options_exit_2(capsys, tmp_path):
    for argv in (["--budgets", "x"], ["--methods", "bayes"], ["--seeds", "0"],
                 ["--data", str(tmp_path / "missing.csv.gz")]):
        with pytest.raises(SystemExit) as exc:
            bc.parse(argv)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_naswot_objective_is_deterministic():
    spec = SPACE.decode(SPACE.sample(np.random.default_rng(2)), num_classes=1000, resolution=224)
    m = cost.macs(spec, 224)
    a, b = bc.Evaluator("naswot"), bc.Evaluator("naswot")
    assert a(spec, spec.key(), m) == b(spec, spec.key(), m)


def test_quick_run_reports_every_method_under_the_same_rules(table, tmp_path):
    _, path = table
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "controllers.py"), "--quick", "--json", "--data",
                           str(path), "--methods", ",".join(bc.METHODS)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    f = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(f["methods"]) == set(bc.METHODS) and f["budgets"] == [6, 12] and f["seeds"] == [0, 1]
    for m, row in f["methods"].items():
        assert row["budgets"]["12"]["median"] >= row["budgets"]["6"]["median"] > 0, m
    assert f["methods"]["random"]["budgets"]["12"]["ratio_to_random"] == 1.0
    assert f["surrogate_architectures"] == 12
    trust = f["surrogate"]  # reported beside the results: held-out tau, R2, the seed-noise ceiling
    assert trust["cv"]["n"] == 12 and -1 <= trust["cv"]["tau"] <= 1 and -1 <= trust["ceiling"]["tau"] <= 1
    assert trust["origins"] == {"uniform": 12}
    assert "seed-noise ceiling" in done.stdout


def test_data_script_killed_loses_no_finished_run(tmp_path):
    """SIGKILL mid-collection, rerun the same command: every run stored before the kill
    is kept as it was, and the table ends complete with each run once."""
    import signal
    import sqlite3
    import time

    out, table_path = tmp_path / "store", tmp_path / "t.csv.gz"
    cmd = [sys.executable, "-m", "bench.surrogate_data", "--archs", "6", "--out", str(out), "--export",
           str(table_path), "--evaluator", "nas.trial:hash_evaluate_jitter"]

    def rows():
        try:
            con = sqlite3.connect(f"file:{out}/search.db?mode=ro", uri=True)
            try:
                return con.execute("SELECT proposal_id, accuracy FROM trials").fetchall()
            finally:
                con.close()
        except sqlite3.Error:
            return []

    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(rows()) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-800:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = rows()
    assert 3 <= len(before) < 12
    assert sd.main(cmd[3:]) == 0
    after = rows()
    assert set(before) <= set(after) and len(after) == 12 and len({pid for pid, _ in after}) == 12
    table, _ = sg.read_table(table_path)
    assert len(table) == 6 and all(r["acc_seed1"] and r["acc_seed2"] for r in table)


def test_data_script_continues_a_table_in_a_new_store_without_training_it_again(table, tmp_path, capsys):
    """--known: a lost store costs nothing that the exported table holds; a new store never
    overwrites an earlier table unless told to continue it."""
    _, path = table
    mine = tmp_path / "t.csv.gz"
    mine.write_bytes(path.read_bytes())
    assert sd.main(["--archs", "14", "--out", str(tmp_path / "fresh"), "--export", str(mine), *HASH]) == 2
    assert "--known" in capsys.readouterr().err and mine.read_bytes() == path.read_bytes()  # untouched
    assert sd.main(["--archs", "14", "--out", str(tmp_path / "new"), "--export", str(mine), "--known", str(mine),
                    *HASH]) == 0
    err = capsys.readouterr().err
    assert "24 known" in err and "0 stored" in err
    rows, _ = sg.read_table(mine)
    old, _ = sg.read_table(path)
    assert len(rows) == 14 and rows[:12] == old  # the 12 kept as they were, 2 trained and added
    from nas.store import Store
    with Store.open(tmp_path / "new") as store:
        assert store.count_all() == 4  # only the 2 new architectures x 2 seeds were trained
    other = ["--archs", "14", "--out", str(tmp_path / "o"), "--export", str(tmp_path / "x.csv"), "--known", str(mine)]
    assert sd.main([*other, "--cost-window", "0.4,1", *HASH]) == 2
    assert "another window" in capsys.readouterr().err


def test_trajectory_picks_spread_over_the_runs_equally_per_method():
    """K distinct architectures per method, from early and late in its runs, labelled."""
    paths = {"a": [[[i, 0] for i in range(10)], [[i, 1] for i in range(10)]], "b": [[[7, 7]] * 3 + [[8, 8]]]}
    raw = {m: {"paths": p} for m, p in paths.items()}
    picks = bc.trajectory_picks(raw, 4)
    a = [p["choices"] for p in picks if p["origin"] == "trajectory:a"]
    b = [p["choices"] for p in picks if p["origin"] == "trajectory:b"]
    assert len(a) == 4 and len({tuple(c) for c in a}) == 4
    assert a[0][0] == 0 and max(c[0] for c in a) >= 7  # the random start and the end of the runs
    assert {c[1] for c in a} == {0, 1}  # both seeds' runs
    assert sorted(b) == [[7, 7], [8, 8]]  # fewer distinct than K: each once


def test_trajectories_file_feeds_the_data_script_with_its_origin(table, tmp_path):
    """bench/controllers.py --trajectories writes what bench/surrogate_data.py --specs reads;
    the table names the method that proposed each added architecture."""
    _, path = table
    traj = tmp_path / "traj.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "controllers.py"), "--quick", "--data", str(path),
                           "--methods", "random,evolution", "--trajectories", str(traj), "--trajectory-count", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x) for x in traj.read_text().splitlines()]
    assert [x["origin"] for x in lines] == ["trajectory:random"] * 2 + ["trajectory:evolution"] * 2
    out = tmp_path / "t.csv.gz"
    assert sd.main(["--archs", "3", "--specs", str(traj), "--out", str(tmp_path / "s"), "--export", str(out),
                    *HASH]) == 0
    rows, _ = sg.read_table(out)
    origins = [r["origin"] for r in rows]
    assert origins[:3] == ["uniform"] * 3 and set(origins[3:]) <= {"trajectory:random", "trajectory:evolution"}
    assert len(rows) > 3


def _raw(best40: list[float], longest: list[list[float]]) -> dict:
    return {"best": {40: best40}, "longest": longest, "top": len(longest[0]), "asked_longest": 1,
            "controller_ms_per_proposal": 0.0, "config": {}}


def test_goal_carries_a_one_sided_test_of_best_of_40_against_random_best_of_200():
    rng = np.random.default_rng(0)
    runs = [list(rng.uniform(0.90, 0.95, 200)) for _ in range(20)]
    random = _raw([max(r[:40]) for r in runs], runs)
    better = _raw(list(rng.uniform(0.96, 0.99, 20)), runs)
    worse = _raw(list(rng.uniform(0.80, 0.85, 20)), runs)
    g = bc.summarize({"random": random, "x": better}, [40])["goal_40_vs_random_200"]
    assert g["met"] and g["best_method_at_40"] == "x"
    assert g["p_mannwhitney"] < 1e-6 and g["share_above_random_median"] == 1.0
    g = bc.summarize({"random": random, "y": worse}, [40])["goal_40_vs_random_200"]
    assert not g["met"] and g["best_method_at_40"] == "random"   # random's 40 is below its own 200
    assert g["p_mannwhitney"] > 0.5
    text = bc.report(bc.summarize({"random": random, "x": better}, [40]), [40])
    assert "on 100% of its seeds the best-of-40 reaches random's median best-of-200" in text
    assert "Mann-Whitney U (its best-of-40 > random's best-of-200, over seeds) p = " in text
