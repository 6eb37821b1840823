"""`python -m nas.search` end to end: outputs, --config merging, --help, injected failures
at the search level, and one run with the real proxy trainer."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli.search import main
from nas.store import Store
from search_space import cost
from search_space.spec import ArchSpec
from tests import fake_evaluators as fe

FAST = ["--evaluator", "tests.fake_evaluators:ok", "--device", "cpu"]
ROOT = Path(__file__).resolve().parents[1]


def test_outputs_of_a_search(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--target-flops", "400M", "--trials", "8", "--workers", "2", "--out", str(out), *FAST])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    with Store.open(out) as st:
        trained = st.trials("search", "trained")
        reference = st.trial("reference", 0)
        config = st.config
    assert len(trained) == 8 and config["controller"] == "predictor" and config["target_flops"] == 400_000_000
    best = max(trained, key=lambda r: r["reward"])
    # best.yaml: the best trial's network, 1000 classes, target resolution, within the target
    spec = ArchSpec.load(out / "best.yaml")
    assert spec.key() == ArchSpec.from_dict(best["spec"]).key()
    assert spec.num_classes == 1000 and spec.resolution == 224
    assert cost.macs(spec, 224) == best["macs"] <= 400_000_000
    assert "block_strings" in (out / "best.yaml").read_text()
    # trials.csv: every record, with statuses and sources
    rows = list(csv.DictReader((out / "trials.csv").open()))
    finals = [r for r in rows if r["kind"] == "final"]                  # stage 2: (top 3 + reference) x 3 seeds
    assert len(finals) == 12
    assert len(rows) == len(trained) + 1 + len(finals) + sum(1 for r in rows if r["source"] in ("cost-only", "cache"))
    assert {r["kind"] for r in rows} == {"search", "reference", "final"}
    # times to the millisecond, as in the store (not rounded to 6 digits: 1.79638e+09)
    stored = {(t["kind"], t["id"]): t for t in trained + [reference]}
    for r in rows:
        if (r["kind"], int(r["id"])) in stored:
            assert abs(float(r["finished_at"]) - stored[(r["kind"], int(r["id"]))]["finished_at"]) < 0.001
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    # hand-off: B1..B7 derived from best.yaml
    fam = sorted(p.name for p in (out / "family").glob("b*.yaml"))
    assert fam == [f"b{i}.yaml" for i in range(8)]
    b7 = ArchSpec.load(out / "family" / "b7.yaml")
    assert b7.resolution > 224 and cost.macs(b7, b7.resolution) > 10 * best["macs"]
    # summary: B0 beside EfficientNet-B0 under the same proxy budget, and the family table
    assert "| B0 found |" in cap.out and "| EfficientNet-B0 |" in cap.out and "| b7 |" in cap.out
    assert f"{reference['accuracy']:.4f}" in cap.out
    assert "trials 8/8" in cap.err  # one progress line per trial when not a terminal
    # a second run into the same folder is refused without --resume/--overwrite
    assert main(["--target-flops", "400M", "--out", str(out), *FAST]) == 2


def test_scale_grid_trains_each_candidate_at_its_own_resolution(tmp_path, capsys):
    """γ must change what is learned: a candidate at 280 px trains at 32 * 280 / 224 = 40 px."""
    out = tmp_path / "run"
    rc = main(["--target-flops", "400M", "--trials", "3", "--workers", "1", "--out", str(out), "--reference",
               "none", "--scale-grid", "--grid-step", "0.25", "--grid-tol", "0.2", "--device", "cpu",
               "--evaluator", "tests.fake_evaluators:by_resolution"])
    err = capsys.readouterr().err
    assert rc == 0, err
    # the grid shows progress, names its choice, and its trials reach trials.csv
    # 4 distinct networks (the 3 grid points, 2 of them alike, and the paper's) x 3 seeds (--grid-seeds)
    assert "grid candidates 12/12" in err and "scale grid: α = 1.25, β = 1, γ = 1.25" in err
    assert "Welch p = 0 < 0.05: adopted (1.25, 1, 1.25)" in err     # no seed noise here: the gap is certain
    assert sum(r["kind"] == "grid" for r in csv.DictReader((out / "trials.csv").open())) == 12
    rows = list(csv.DictReader((out / "grid" / "grid.csv").open()))
    assert {int(r["resolution"]) for r in rows} == {224, 256, 280}
    for r in rows:
        assert r["status"] == "ok" and r["n"] == "3"
        assert float(r["accuracy"]) == pytest.approx(round(32 * int(r["resolution"]) / 224) / 1000)
    assert [r["role"] for r in rows if r["role"]] == ["best mean, adopted", "paper's"]
    with Store.open(out) as st:
        assert len(st.trials("grid")) == 12
    # the family is scaled with the grid's winner (α, β, γ) = (1.25, 1.0, 1.25): the one at 280 px
    b1 = next(r for r in csv.DictReader((out / "family" / "family.csv").open()) if r["name"] == "b1")
    assert (float(b1["depth"]), float(b1["width"]), int(b1["resolution"])) == (1.25, 1.0, 280)


def test_config_file_and_command_line_override(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("trials: 5\ncontroller: random\ncost-window: [0.25, 1.0]\nno_scale: true\n"
                    "reference: none\nno-tensorboard: true\nseed: 4\n")
    out = tmp_path / "run"
    assert main(["--config", str(conf), "--target-flops", "0.3G", "--trials", "3", "--out", str(out), *FAST]) == 0
    with Store.open(out) as st:
        c = st.config
        assert st.count("search") == 3  # command line wins over the file
        assert st.trial("reference", 0) is None
    assert c["controller"] == "random" and c["seed"] == 4 and c["target_flops"] == 300_000_000
    assert c["cost_window"] == "0.25,1.0"
    assert not (out / "family").exists() and not (out / "tb").exists()


def test_injected_failures_are_recorded_and_the_search_finishes(tmp_path):
    out = tmp_path / "run"
    rc = main(["--target-flops", "400M", "--controller", "random", "--trials", "12", "--workers", "2",
               "--trial-timeout", "1", "--evaluator", "tests.fake_evaluators:mixed", "--device", "cpu",
               "--no-progress", "--quiet", "--no-scale", "--no-tensorboard", "--reference", "none",
               "--out", str(out), "--seed", "1"])
    assert rc == 0
    with Store.open(out) as st:
        rows = st.trials("search", "trained")
    assert len(rows) == 12
    want = {"raise": "failed", "nan": "diverged", "hang": "timeout", "exit": "failed", "ok": "ok"}
    for r in rows:
        assert r["status"] == want[fe.behaviour(r["key"])], r
        assert (r["reward"] is None) == (r["status"] != "ok")
    assert {r["status"] for r in rows} >= {"ok", "failed"}
    assert len({fe.behaviour(r["key"]) for r in rows}) >= 3


def test_real_proxy_training_tiny_budget(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--target-flops", "400M", "--trials", "1", "--workers", "1", "--proxy-epochs", "0.05",
               "--proxy-resolution", "32", "--device", "cpu", "--no-progress", "--no-scale", "--no-tensorboard",
               "--out", str(out), "--cost-window", "0.5,1", "--reference", "none", "--no-final"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    with Store.open(out) as st:
        (trial,) = st.trials("search", "trained")
    assert trial["status"] == "ok" and 0 <= trial["accuracy"] <= 1 and trial["epoch_accuracies"]
    assert trial["reward"] > 0 and trial["worker"] == "cpu-0"


def test_help_lists_every_option_with_its_default():
    proc = subprocess.run([sys.executable, "-m", "nas.search", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for opt in ("--target-flops", "--reward", "--alpha", "--beta", "--controller", "--trials", "--workers",
                "--device", "--dataset", "--data-dir", "--proxy-epochs", "--proxy-resolution",
                "--target-resolution", "--space", "--config", "--out", "--seed", "--resume", "--engine",
                "--trial-timeout", "--cost-window", "--no-scale", "--scale-grid"):
        assert opt in text, opt
    assert "(default: predictor" in text and "(default: runs/search)" in text and "(default: 224)" in text


def test_phis_speak_the_scaling_grammar():
    """`nas.search --phis` and `scaling derive --phis` accept the same ranges (one parser)."""
    from nas.cli.args import parse_phis
    from nas.errors import UserError
    assert parse_phis("1-7") == [1, 2, 3, 4, 5, 6, 7]
    assert parse_phis("0.5-3") == [0.5, 1.5, 2.5]
    assert parse_phis("0-1:0.5,3") == [0, 0.5, 1, 3]
    with pytest.raises(UserError, match=r"^--phis '7-1': .*empty"):
        parse_phis("7-1")


def test_ctrl_c_after_the_trials_still_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """Interrupted during the hand-off (outside the engine): the hint, then --resume finishes the family."""
    import nas.cli.search as search
    out = tmp_path / "run"

    def interrupted_hand_off(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(search, "_hand_off", interrupted_hand_off)
        assert main(["--target-flops", "400M", "--trials", "3", "--workers", "1", "--reference", "none",
                     "--out", str(out), *FAST]) == 130
    assert f"Continue with: python -m nas.search --resume --out {out}" in capsys.readouterr().err
    assert not (out / "family").exists()
    assert main(["--resume", "--out", str(out)]) == 0
    with Store.open(out) as st:
        assert st.count("search") == 3
    assert (out / "family" / "b7.yaml").is_file()


class _Touch:
    """Unpickling this creates a file: a stand-in for any code a planted pickle could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_resume_refuses_a_planted_pickle_and_changes_nothing(tmp_path, capsys):
    import pickle
    import sqlite3

    out, marker = tmp_path / "run", tmp_path / "pwned"
    assert main(["--target-flops", "400M", "--trials", "3", "--workers", "1", "--out", str(out),
                 "--no-scale", "--quiet", "--no-tensorboard", *FAST]) == 0
    con = sqlite3.connect(out / "search.db")
    con.execute("UPDATE checkpoints SET state=?", (pickle.dumps({"state": _Touch(marker)}),))
    con.commit()
    before = {t: con.execute(f"SELECT * FROM {t}").fetchall() for t in ("meta", "trials", "pending")}
    con.close()
    capsys.readouterr()
    assert main(["--resume", "--out", str(out), "--trials", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "old unsafe format (pickle)" in err and "Traceback" not in err
    assert not marker.exists()
    con = sqlite3.connect(out / "search.db")
    assert {t: con.execute(f"SELECT * FROM {t}").fetchall() for t in ("meta", "trials", "pending")} == before
    con.close()


def test_progress_of_thousands_of_scores_is_about_a_hundred_lines_plus_every_failure():
    import io

    from nas.reports.progress import Progress
    stream = io.StringIO()
    progress = Progress(1000, kind="oneshot", stream=stream)
    for i in range(1, 1001):
        status = "failed" if i in (7, 500) else "ok"
        progress({"kind": "oneshot", "source": "trained", "status": status, "reward": i / 1000, "id": i, "macs": 1e8})
    lines = stream.getvalue().splitlines()
    assert 100 <= len(lines) <= 102
    assert sum(": failed" in line for line in lines) == 2
    assert lines[-1].startswith("scored 1000/1000 | failed 2 | best reward 1.0000")
    few = io.StringIO()
    progress = Progress(40, stream=few)  # a per-trial search: still a line per trial
    for i in range(40):
        progress({"kind": "search", "source": "trained", "status": "ok", "reward": 0.5, "id": i, "macs": 1e8})
    assert len(few.getvalue().splitlines()) == 40
