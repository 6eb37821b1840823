"""Issue 25: the grid's rule (the paper's coefficients unless beaten at p < 0.05) and
`python -m scaling verify` (compound against single dimensions at matched multiply-adds)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nas.cli.search import main as search_main
from nas.store import Store
from scaling import __main__ as cli
from scaling import grid, verify
from scaling.compound import derive_family
from search_space import cost, zoo
from search_space.spec import ArchSpec

ROOT = Path(__file__).resolve().parents[1]
# A B0 found by a default search on this machine (its best.yaml), besides EfficientNet-B0.
SEARCHED = ArchSpec.from_dict({"name": "b0", "resolution": 224, "blocks": [
    "r1_k5_s11_e1_i32_o16_se0.25", "r1_k5_s22_e6_i16_o32", "r3_k5_s22_e1_i32_o48", "r2_k5_s22_e6_i48_o80_noskip",
    "r2_k3_s11_e1_i80_o144_conv", "r5_k5_s22_e1_i144_o192", "r2_k5_s11_e1_i192_o320"]})
FAST = ["--evaluator", "tests.fake_evaluators:scaled", "--device", "cpu", "--no-tensorboard", "--quiet",
        "--target-flops", "400M", "--controller", "random", "--workers", "1", "--trials", "3", "--reference", "none"]


# -- matched multiply-adds ---------------------------------------------------------------------
@pytest.mark.parametrize("base", [zoo.get("efficientnet-b0"), SEARCHED], ids=["efficientnet-b0", "searched"])
def test_each_single_dimension_matches_its_compound_member_within_5_percent(base):
    members = {m.phi: m.spec for m in derive_family(base, 1.2, 1.1, 1.15, [1, 2, 3])}
    items = verify.variants(base, members, [1, 2, 3])
    assert [v.method for v in items] == ["baseline"] + ["compound", "width", "depth", "resolution"] * 3
    for v in items[1:]:
        member = members[v.phi]
        target = cost.macs(member, member.resolution)                    # the exact cost model
        assert v.macs == cost.macs(v.spec, v.spec.resolution) and v.target_macs == target
        assert abs(v.macs / target - 1) <= 0.05, (v.method, v.phi, v.error)
        # one dimension only: the other two stay B0's
        same_channels = [b.out_channels for b in v.spec.blocks] == [b.out_channels for b in base.blocks]
        same_layers = [b.repeats for b in v.spec.blocks] == [b.repeats for b in base.blocks]
        if v.method == "width":
            assert same_layers and v.spec.resolution == base.resolution and not same_channels
        elif v.method == "depth":
            assert same_channels and v.spec.resolution == base.resolution and v.depth > 1
            assert all(b.repeats >= r.repeats for b, r in zip(v.spec.blocks, base.blocks))
        elif v.method == "resolution":
            assert same_channels and same_layers and v.spec.resolution % 4 == 0
        if v.method != "compound":
            assert v.spec.dropout == member.dropout       # only the shape differs from B_φ


def test_training_resolution_scales_like_the_family():
    assert verify.train_resolution(32, 224, 224) == 32
    assert verify.train_resolution(32, 224, 256) == 36     # 36.6 to the nearest multiple of 4
    assert verify.train_resolution(32, 224, 480) == 68
    assert verify.train_resolution(30, 224, 224) == 30     # B0 keeps the budget's size as given


# -- the grid's rule ---------------------------------------------------------------------------
def _known(values: dict):
    """evaluate(specs, seeds): per-seed accuracies by (α, β, γ) from the candidate's name."""
    def evaluate(specs, seeds):
        out = []
        for spec in specs:
            point = next(p for p in values if spec.name.endswith(f"-a{p[0]:g}-b{p[1]:g}-g{p[2]:g}"))
            out += [SimpleNamespace(status="ok", accuracy=a) for a in values[point][:len(seeds)]]
        return out
    return evaluate


PAPER = (1.2, 1.1, 1.15)


def test_grid_adopts_a_candidate_only_when_it_beats_the_paper_at_p_below_005():
    b0 = zoo.get("efficientnet-b0")
    clear = {PAPER: [0.90, 0.901, 0.899], (2.0, 1.0, 1.0): [0.93, 0.931, 0.929], (1.0, 1.0, 1.4): [0.80, 0.81, 0.79]}
    result = grid.grid_search(b0, _known(clear), [(2.0, 1.0, 1.0), (1.0, 1.0, 1.4)], seeds=[0, 1, 2])
    top = result.rows[0]
    assert result.best is top and result.decision["adopted"] == "candidate"
    assert top["p"] < 0.05 and top["n"] == 3 and top["sd"] == pytest.approx(0.001)
    assert "adopted (2, 1, 1)" in result.decision["text"]

    noisy = {PAPER: [0.90, 0.92, 0.88], (2.0, 1.0, 1.0): [0.93, 0.89, 0.91], (1.0, 1.0, 1.4): [0.80, 0.81, 0.79]}
    result = grid.grid_search(b0, _known(noisy), [(2.0, 1.0, 1.0), (1.0, 1.0, 1.4)], seeds=[0, 1, 2])
    top, paper = result.rows[0], result.rows[-1]
    assert top["accuracy"] > paper["accuracy"]                  # the best mean ...
    assert top["p"] >= 0.05 and result.best is paper            # ... does not beat the paper's: kept
    assert result.decision["adopted"] == "paper" and "kept the paper's coefficients" in result.decision["text"]
    assert top["role"] == "best mean, not adopted" and paper["role"] == "paper's, kept"

    best_is_paper = {PAPER: [0.95, 0.95, 0.95], (2.0, 1.0, 1.0): [0.93, 0.931, 0.929]}
    result = grid.grid_search(b0, _known(best_is_paper), [(2.0, 1.0, 1.0)], seeds=[0, 1, 2])
    assert result.best is result.rows[-1] and result.decision["p"] is None
    assert result.rows[-1]["role"] == "paper's, best mean, adopted"


def test_grid_table_gives_mean_sd_n_and_the_decision(tmp_path):
    b0 = zoo.get("efficientnet-b0")
    values = {PAPER: [0.90, 0.92, 0.88], (2.0, 1.0, 1.0): [0.93, 0.89, 0.91]}
    result = grid.grid_search(b0, _known(values), [(2.0, 1.0, 1.0)], seeds=[0, 1, 2])
    md, csv_path = grid.save_grid_table(result.rows, tmp_path, decision=result.decision)
    text = md.read_text()
    assert "0.9100 ± 0.0200" in text and "0.9000 ± 0.0200" in text
    assert "best mean, not adopted" in text and "kept the paper's coefficients" in text and "Welch p = " in text
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["n"] for r in rows] == ["3", "3"] and float(rows[0]["p"]) == pytest.approx(result.rows[0]["p"])
    assert rows[1]["role"] == "paper's, kept"


# -- the verdicts from plain results -----------------------------------------------------------
def _runs(val, test):
    return [{"status": "ok", "accuracy": v, "test_accuracy": t} for v, t in zip(val, test)]


def test_verdict_compares_on_test_the_single_dimension_best_on_validation():
    b0 = zoo.get("efficientnet-b0")
    items = verify.variants(b0, {1.0: derive_family(b0, phis=[1])[0].spec}, [1.0])
    same = [0.90, 0.91, 0.89]
    runs = [_runs(same, same),
            _runs(same, [0.95, 0.951, 0.949]),                      # compound
            _runs([0.99, 0.99, 0.99], [0.80, 0.801, 0.799]),        # width: best on validation, poor on test
            _runs(same, [0.99, 0.99, 0.99]),                        # depth: best on test, never looked at
            _runs(same, same)]                                      # resolution
    summary = verify.summarize(items, runs)
    v = summary["verdicts"][0]
    assert v["single"] == "width" and v["words"] == "better" and v["test"]["p"] < 0.05
    assert v["test"]["diff"] == pytest.approx(0.15)
    line = verify.verdict_line(v)
    assert line.startswith("φ = 1: compound 0.9500 ± 0.0010 (n = 3) vs width only") and "compound better" in line

    runs[2] = _runs([0.99] * 3, [0.94, 0.96, 0.95])              # within the noise: no difference
    v = verify.summarize(items, runs)["verdicts"][0]
    assert v["words"] == "no significant difference" and v["test"]["p"] >= 0.05
    runs[2] = _runs([0.99], [0.94])                              # one run: no test
    assert verify.summarize(items, runs)["verdicts"][0]["test"] is None


# -- python -m scaling verify ------------------------------------------------------------------
def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def run_dir(tmp_path):
    out = tmp_path / "run"
    assert search_main(FAST + ["--no-final", "--phis", "1-3", "--out", str(out)]) == 0
    return out


def test_verify_trains_fresh_seeds_writes_the_table_and_resumes(run_dir, capsys):
    capsys.readouterr()
    rc, out, err = _run(capsys, "verify", str(run_dir), "--phi", "1,2", "--seeds", "2", "--no-progress")
    assert rc == 0, err
    with Store.open(run_dir) as st:
        records = st.trials("verify")
    assert len(records) == 9 * 2 and all(r["status"] == "ok" for r in records)
    assert {r["extra"]["overrides"]["seed"] for r in records} == {1, 2}       # fresh: never the search seed 0
    # each network trains at its own size, the budget's 32 px times its resolution over B0's, and is costed there
    for r in records:
        o = r["extra"]["overrides"]
        assert o["target_resolution"] == r["spec"]["resolution"]
        assert o["resolution"] == verify.train_resolution(32, 224, o["target_resolution"])
        assert r["macs"] == cost.macs(ArchSpec.from_dict(r["spec"]), r["spec"]["resolution"])
    rows = list(csv.DictReader((run_dir / "scaling.csv").open()))
    assert [(r["method"], float(r["phi"])) for r in rows] == [("baseline", 0.0)] + [
        (m, p) for p in (1.0, 2.0) for m in ("compound", "width", "depth", "resolution")]
    assert all(abs(float(r["macs_vs_compound"])) <= 0.05 for r in rows[1:])
    assert all(r["n"] == "2" and r["test_mean"] and r["test_sd"] for r in rows)
    # the stand-in rewards balanced scaling: compound beats the best single dimension at both φ
    assert [r["words"] for r in rows if r["method"] == "compound"] == ["better", "better"]
    assert out.count("compound better (at p < 0.05)") == 2 and "test accuracy (mean ± sd)" in out
    assert (run_dir / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (run_dir / "scaling.md").read_text()
    assert "mnist5k are 28px" in md and "interpolated" in md
    # rerun: nothing trains again; a third seed and φ = 3 add only what is missing
    rc, out2, _ = _run(capsys, "verify", str(run_dir), "--phi", "1,2", "--seeds", "2", "--quiet")
    assert rc == 0 and out2 == out
    rc, _, _ = _run(capsys, "verify", str(run_dir), "--phi", "1-3", "--seeds", "3", "--quiet")
    with Store.open(run_dir) as st:
        assert rc == 0 and len(st.trials("verify")) == 13 * 3
    # best.yaml changed since the family was derived (nas.final chose another B0): said, the family checked
    SEARCHED.save(run_dir / "best.yaml")
    rc, _, err = _run(capsys, "verify", str(run_dir), "--phi", "1", "--seeds", "3", "--no-progress")
    assert rc == 0 and "is another network than the family's B0" in err


KILLED_VERIFY = ("import sys, tests.kill_hooks as k; k.install(after_write={n}); "
                 "from scaling.__main__ import main; sys.exit(main(sys.argv[1:]))")


def test_verify_resumes_after_sigkill(run_dir, capsys):
    argv = ["verify", str(run_dir), "--phi", "1", "--seeds", "2", "--workers", "1", "--quiet"]
    proc = subprocess.run([sys.executable, "-c", KILLED_VERIFY.format(n=5), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with Store.open(run_dir) as st:
        before = {r["proposal_id"]: r for r in st.trials("verify")}
        assert 0 < len(before) < 10 and st.pending("verify")
    assert not (run_dir / "scaling.md").exists()
    capsys.readouterr()
    assert cli.main(argv + ["--no-progress"]) == 0
    with Store.open(run_dir) as st:
        after = {r["proposal_id"]: r for r in st.trials("verify")}
        assert st.pending("verify") == []
    assert len(after) == 10 and all(after[k] == v for k, v in before.items())   # kept, not retrained
    assert "φ = 1: compound" in capsys.readouterr().out


def test_verify_bad_input_is_one_line(tmp_path, run_dir, capsys):
    bare = tmp_path / "bare"
    assert search_main(FAST + ["--no-final", "--no-scale", "--out", str(bare)]) == 0
    cases = [([str(bare)], "has no family"),
             ([str(run_dir), "--phi", "9"], "--phi 9: out of range; the run's family has φ = 1, 2, 3"),
             ([str(run_dir), "--phi", "0"], "out of range"),
             ([str(run_dir), "--phi", "5-1"], "empty"),
             ([str(tmp_path / "nope")], "not a search run"),
             ([str(run_dir), "--seeds", "0,1"], "search seed"),
             ([str(run_dir), "--seeds", "auto"], "a count"),
             ([str(run_dir), "--final-epochs", "-1"], "--final-epochs"),
             ([str(run_dir), "--workers", "x"], "--workers")]
    for argv, words in cases:
        capsys.readouterr()
        rc, out, err = _run(capsys, "verify", *argv)
        assert rc == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("scaling: error: ") and words in lines[0], (argv, err)
    with Store.open(run_dir) as st:
        assert st.trials("verify") == []


def test_search_verify_scaling_runs_the_check_at_the_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert search_main(FAST + ["--no-final", "--verify-scaling", "--verify-phi", "1", "--verify-seeds", "2",
                               "--out", str(out)]) == 0
    assert "φ = 1: compound" in capsys.readouterr().out
    with Store.open(out) as st:
        assert len(st.trials("verify")) == 5 * 2
    assert (out / "scaling.md").is_file() and (out / "scaling.png").is_file()
    for argv, words in ((["--verify-scaling", "--no-scale"], "needs the family"),
                        (["--verify-scaling", "--verify-phi", "9"], "--verify-phi 9: out of range")):
        capsys.readouterr()
        assert search_main(FAST + argv + ["--out", str(tmp_path / "other")]) == 2
        assert words in capsys.readouterr().err
