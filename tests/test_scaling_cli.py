"""`python -m scaling`: derive writes a family, grid trains candidates resumably; bad input is one line, exit 2."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from nas.evaluate.result import TrialResult
from nas.search.objective import reward
from scaling import __main__ as cli
from search_space import cost, zoo
from search_space.spec import ArchSpec

ROOT = Path(__file__).resolve().parents[1]
B7_PARAMS = 66_347_960      # torchvision efficientnet_b7 num_params (see tests/test_scaling.py)


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, *words):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scaling: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in err


# -- derive ---------------------------------------------------------------------------
def test_derive_published_writes_the_family(tmp_path, capsys):
    out_dir = tmp_path / "fam"
    rc, out, err = run(capsys, "derive", "efficientnet-b0", "--out", str(out_dir))
    assert rc == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == [f"b{k}.yaml" for k in range(8)] + ["family.csv", "family.md", "family.png"]
    b7 = ArchSpec.load(out_dir / "b7.yaml")
    assert cost.params(b7) == B7_PARAMS and b7.resolution == 600 and b7.name == "efficientnet-b7"
    rows = list(csv.DictReader((out_dir / "family.csv").open()))
    assert [r["name"] for r in rows] == [f"efficientnet-b{k}" for k in range(8)]
    assert int(rows[7]["params"]) == B7_PARAMS and int(rows[7]["macs"]) == cost.macs(b7, 600)
    assert (out_dir / "family.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out_dir / "family.md").read_text()
    assert "multiply-adds" in md and "66,347,960" in md
    assert "66,347,960" in out                   # the table is printed too


def test_derive_json_formula_from_a_yaml_baseline(tmp_path, capsys):
    base = zoo.get("efficientnet-b0")
    path = tmp_path / "best.yaml"
    base.save(path)
    rc, out, err = run(capsys, "derive", str(path), "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15",
                       "--phis", "1,2.5", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["phi"] for r in rows] == [0, 1, 2.5]
    assert rows[1]["resolution"] == 256 and rows[2]["resolution"] == round(224 * 1.15 ** 2.5 / 4) * 4
    assert rows[1]["width"] == 1.1 and rows[1]["depth"] == 1.2
    assert rows[0]["params"] == cost.params(base)
    assert set(rows[0]) == {"name", "phi", "width", "depth", "resolution", "params", "macs"}


def test_derive_without_out_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "derive", "efficientnet-b0", "--phis", "1-2", "--coefficients", "paper")
    assert rc == 0 and list(tmp_path.iterdir()) == []
    assert out.count("\n") == 5                   # header, rule, b0, b1, b2


@pytest.mark.parametrize("argv, words", [
    (["derive", "no-such-net"], ["no-such-net", "zoo name"]),
    (["derive", "efficientnet-b0", "--phis", "5-1"], ["empty"]),
    (["derive", "efficientnet-b0", "--phis=-1-3"], ["negative"]),
    (["derive", "efficientnet-b0", "--alpha", "0.9", "--beta", "1.1", "--gamma", "1.15"], ["alpha", ">= 1"]),
    (["derive", "efficientnet-b0", "--alpha", "1.2"], ["--beta"]),
    (["derive", "efficientnet-b0", "--phis", "1.5"], ["0..7"]),
    (["derive", "efficientnet-b0", "--alpha", "x"], ["--alpha"]),
    (["frobnicate"], ["frobnicate"]),
    (["grid", "efficientnet-b0", "--out", "OUT", "--alpha-range", "1,1.1", "--beta-range", "1,1.1",
      "--gamma-range", "1,1.1"], ["keeps no point"]),
    (["grid", "efficientnet-b0", "--out", "OUT", "--tol", "-1"], ["tolerance"]),
    (["grid", "efficientnet-b0", "--out", "OUT", "--step", "1e-9"], ["too fine"]),
    (["grid", "efficientnet-b0", "--out", "OUT", "--batch-size", "0"], ["--batch-size"]),
    (["grid", "efficientnet-b0", "--out", "OUT", "--proxy-epochs", "-1"], ["--proxy-epochs"]),
    (["grid", "efficientnet-b0", "--out", "OUT", "--proxy-steps", "0"], ["--proxy-steps"]),
    (["grid", "efficientnet-b0", "--out", "OUT", "--dataset", "nope"], ["--dataset", "mnist5k"]),
    (["grid", "efficientnet-b0", "--out", "OUT", "--device", "nope"], ["device", "nope"]),
    (["derive", "efficientnet-b0", "--alpha", "2", "--beta", "1", "--gamma", "1", "--phis", "2000"],
     ["overflows"]),
    (["derive", "efficientnet-b0", "--coefficients", "paper", "--phis", "0-1000000:0.000001"], ["1000"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, words):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert_one_line_error(*run(capsys, *argv), *words)
    assert not (tmp_path / "out").exists()


def test_baseline_that_does_not_parse(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("blocks: [r1_k3_s11_e1_i32_o16, {oops\n")
    assert_one_line_error(*run(capsys, "derive", str(bad)), "does not parse", "bad.yaml")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("blocks: [r1_k4_s11_e1_i32_o16]\n")
    assert_one_line_error(*run(capsys, "derive", str(wrong)), "kernel")
    named = tmp_path / "named.yaml"                   # a YAML number as the name
    named.write_text("blocks: [r1_k3_s11_e1_i32_o16]\nname: 5\n")
    assert_one_line_error(*run(capsys, "derive", str(named)), "name")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert_one_line_error(*run(capsys, "derive", str(binary)), "not a text file")


def test_unwritable_out_leaves_nothing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(*run(capsys, "derive", "efficientnet-b0", "--out", str(blocker / "fam")), "--out")
    assert_one_line_error(*run(capsys, "derive", "efficientnet-b0", "--out", str(blocker)), "not a folder")
    assert blocker.read_text() == "x"


def test_failure_while_writing_leaves_no_half_family(tmp_path, capsys, monkeypatch):
    import scaling.plot

    def broken(rows, path, title=""):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scaling.plot, "plot_family", broken)
    out_dir = tmp_path / "fam"
    assert_one_line_error(*run(capsys, "derive", "efficientnet-b0", "--out", str(out_dir)), "No space left")
    assert not out_dir.exists()
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "keep.txt").write_text("k")
    assert_one_line_error(*run(capsys, "derive", "efficientnet-b0", "--out", str(existing)), "No space left")
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


def test_python_dash_m_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scaling", "derive", "efficientnet-b0", "--phis", "9-3"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["scaling: error: φ range '9-3' is empty (end below start)"]


# -- grid -------------------------------------------------------------------------------
@pytest.fixture()
def fake_trial(monkeypatch):
    """Stand-in for nas.trial: accuracy from depth, width and the *proxy* resolution it was given."""
    calls = []

    def evaluate(spec, budget):
        calls.append((spec.name, budget.resolution, budget.target_resolution))
        acc = spec.num_layers / 100 + budget.resolution / 1000 - spec.stem_channels / 2000
        return TrialResult(status="ok", accuracy=acc)

    monkeypatch.setitem(sys.modules, "nas.trial", types.SimpleNamespace(evaluate=evaluate))
    return calls


def test_grid_cli_trains_picks_best_and_resumes(tmp_path, capsys, fake_trial):
    out_dir = tmp_path / "grid"
    argv = ["grid", "efficientnet-b0", "--out", str(out_dir), "--step", "0.1", "--tol", "0.15",
            "--max-candidates", "5", "--proxy-resolution", "32", "--json"]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    report = json.loads(out)
    rows, best = report["rows"], report["best"]
    assert len(rows) == 6 and len(fake_trial) <= 6 * 3        # the paper's point added; 3 seeds each
    assert all(r["n"] == 3 and r["sd"] == 0 for r in rows)      # this stand-in ignores the seed
    # without seed noise any gap is certain (p = 0): the best mean is adopted over the paper's
    assert best["accuracy"] == max(r["accuracy"] for r in rows) and report["decision"]["adopted"] == "candidate"
    assert report["decision"]["p"] == 0.0 and best["role"] == "best mean, adopted"
    b0_macs = cost.macs(zoo.get("efficientnet-b0"), 224)
    for name, proxy, target_res in fake_trial:
        row = next(r for r in rows if name.endswith(f"-a{r['alpha']:g}-b{r['beta']:g}-g{r['gamma']:g}"))
        assert target_res == row["resolution"]
        assert proxy == round(32 * row["resolution"] / 224)   # γ reaches the proxy resolution
    assert {p.name for p in out_dir.iterdir()} >= {"search.db", "grid.md", "grid.csv", "best.json"}
    assert json.loads((out_dir / "best.json").read_text())["alpha"] == best["alpha"]
    from nas.store import Store
    with Store.open(out_dir) as store:
        records = store.trials()
    assert len(records) == len(fake_trial) and all(r["status"] == "ok" for r in records)
    assert sorted({r["extra"]["overrides"]["seed"] for r in records}) == [0, 1, 2]
    for r in records:  # rewarded against the default target: twice the baseline's multiply-adds
        assert r["macs"] == cost.macs(ArchSpec.from_dict(r["spec"]), r["spec"]["resolution"])
        assert r["reward"] == pytest.approx(reward(r["accuracy"], r["macs"], 2 * b0_macs))

    trained = len(fake_trial)
    rc, out2, _ = run(capsys, *argv)             # resume: nothing is trained again
    assert rc == 0 and len(fake_trial) == trained and json.loads(out2) == report

    rc, _, _ = run(capsys, *argv[:-1], "--proxy-epochs", "2")   # a different budget is not reused
    assert rc == 0 and len(fake_trial) == 2 * trained


def test_grid_cli_reports_when_nothing_trained(tmp_path, capsys, monkeypatch):
    def evaluate(spec, budget):
        raise RuntimeError("CUDA error: boom")

    monkeypatch.setitem(sys.modules, "nas.trial", types.SimpleNamespace(evaluate=evaluate))
    rc, out, err = run(capsys, "grid", "efficientnet-b0", "--out", str(tmp_path / "g"), "--max-candidates", "2")
    assert rc == 1 and "no candidate trained successfully" in out
    assert (tmp_path / "g" / "grid.csv").read_text().count("failed") == 3       # and the paper's point


def test_grid_candidates_train_at_the_proxy_resolution_scaled_like_their_own(tmp_path):
    """γ changes what is learned: a 280 px candidate trains at 32 * 280 / 224 = 40 px."""
    import dataclasses

    from nas.evaluate.budget import ProxyBudget
    from nas.engines.protocol import EvalContext
    from nas.engines.local import LocalEngine
    from nas.search.grid import run_grid
    from nas.search.objective import Objective
    from nas.store import Store

    b0 = zoo.get("efficientnet-b0")
    ctx = EvalContext(ProxyBudget(resolution=32), evaluator="tests.fake_evaluators:by_resolution")
    with Store.create(tmp_path, {}) as store:
        result = run_grid(store, b0, [(1.0, 1.0, 1.0), (1.0, 1.0, 1.25)], LocalEngine(in_process=True), ctx,
                          Objective(400_000_000))
        assert [r["resolution"] for r in result.rows] == [224, 280, 256]     # and the paper's point
        assert [r["status"] for r in result.rows] == ["ok", "ok", "ok"]
        assert [r["accuracy"] for r in result.rows] == [0.032, 0.040, 0.037]
        assert [r["macs"] for r in store.trials("grid")][:2] == [
            cost.macs(b0, 224), cost.macs(dataclasses.replace(b0, resolution=280), 280)]
