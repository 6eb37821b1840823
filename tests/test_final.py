"""Stage 2 and the three-way split: a test part fixed by the dataset and read by nothing
but stage 2; B0 chosen on search-validation before any test score is read; the verdict's
statistics on known inputs; resume after SIGKILL; `python -m nas.final`."""
import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from nas.evaluate import data as D
from nas.evaluate import splits
from nas.cli import final as FC
from nas.final import plan as F
from nas.final import report as R
from nas.final import stats as S
from nas.evaluate.budget import ProxyBudget
from nas.search.objective import Objective
from nas.cli.search import main
from nas.store import Store
from search_space import zoo
from search_space.spec import ArchSpec

FAST = ["--evaluator", "tests.fake_evaluators:ok", "--device", "cpu", "--no-tensorboard", "--no-scale",
        "--quiet"]
ROOT = Path(__file__).resolve().parents[1]


# -- the split --------------------------------------------------------------------------------
def test_test_part_is_disjoint_stratified_and_fixed_across_search_seeds():
    labels = np.repeat(np.arange(10), [480, 520, 500, 510, 490, 500, 505, 495, 500, 500])
    search0, test0 = splits.parts(labels)
    assert len(test0) == 1000 and not set(test0) & set(search0) and len(test0) + len(search0) == len(labels)
    for c in range(10):  # 20 % of every class
        assert (labels[test0] == c).sum() == round(0.2 * (labels == c).sum())
    train, val = splits.split(labels[search0], 0.2, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == len(search0)
    capped0, capped_test = splits.parts(labels, max_images=500)
    assert set(capped_test) <= set(test0) and not set(capped0) & set(test0)
    assert len(capped0) == 500 and len(capped_test) == 100


def test_search_data_holds_no_test_part_and_stage2_data_does():
    search = D.load(ProxyBudget(dataset="digits", resolution=8, seed=0))
    assert not search.has_test
    with pytest.raises(ValueError, match="no test part"):
        next(search.val_batches(part="test"))
    a = D.load(ProxyBudget(dataset="digits", resolution=8, seed=0, test=True))
    b = D.load(ProxyBudget(dataset="digits", resolution=8, seed=3, test=True))
    assert a.part_size("test") == 359 and a.n_train + a.n_val == 1797 - 359
    test_a, test_b = (torch.cat([x for x, _ in d.val_batches(512, "test")]) for d in (a, b))
    test_y = torch.cat([y for _, y in a.val_batches(512, "test")])
    assert torch_equal(test_y, torch.cat([y for _, y in b.val_batches(512, "test")]))
    assert torch_equal(a.test.images, b.test.images)               # the same test images whatever the seed
    assert torch_equal(a.train_labels(), search.train_labels())    # and the search part unchanged by test=True
    train_rows = {tuple(r) for r in torch.cat(list(a.calibration_batches(a.n_train, 512))).flatten(1).tolist()}
    assert not any(tuple(r) in train_rows for r in test_a.flatten(1).tolist()[:50])
    assert test_b.shape == test_a.shape


def torch_equal(x, y):
    return x.shape == y.shape and bool((x == y).all())


def test_trainer_scores_test_only_when_the_budget_asks():
    from nas.trial import evaluate

    from search_space.spec import BlockSpec
    spec = ArchSpec(blocks=(BlockSpec(1, 3, 2, 4, 8, 16),), stem_channels=8, head_channels=32, num_classes=1000,
                    dropout=0.0, drop_connect=0.0)
    budget = ProxyBudget(dataset="digits", resolution=8, steps=3, batch_size=64)
    assert evaluate(spec, budget).test_accuracy is None
    scored = evaluate(spec, dataclasses.replace(budget, test=True))
    assert scored.status == "ok" and 0.0 <= scored.test_accuracy <= 1.0


# -- choosing and judging ------------------------------------------------------------------------
def _rec(key, macs, acc, test):
    return {"key": key, "macs": macs, "params": 1, "status": "ok", "accuracy": acc, "test_accuracy": test}


def test_b0_is_chosen_on_search_validation_whatever_the_test_scores_say():
    b0 = zoo.get("efficientnet-b0")
    other = dataclasses.replace(b0, head_channels=1024)
    cands = [F.Candidate("a", b0, 1), F.Candidate("b", other, 2), F.Candidate("ref", b0)]
    obj = Objective(400_000_000)
    val_best_a = [_rec("a", 300e6, 0.90, 0.50)] * 2 + [_rec("b", 300e6, 0.80, 0.99)] * 2 + \
                 [_rec("r", 380e6, 0.85, 0.85)] * 2
    summary = S.summarize(cands, [1, 2], val_best_a, obj)
    assert summary["chosen"] == 0 and summary["verdict"]["b0"] == "a"
    flipped = [dict(r, test_accuracy=1.0 - r["test_accuracy"]) for r in val_best_a]
    assert S.summarize(cands, [1, 2], flipped, obj)["chosen"] == 0      # test scores never move the choice
    with pytest.raises(AssertionError, match="must not see test"):
        S.choose(cands, [val_best_a[:2], val_best_a[2:4], val_best_a[4:]], obj)


def test_welch_verdict_on_known_inputs():
    a, b = [0.90, 0.91, 0.93], [0.80, 0.83, 0.81]
    t = S.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert t["diff"] == pytest.approx(np.mean(a) - np.mean(b)) and t["p"] == pytest.approx(ref.pvalue)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)                 # Welch–Satterthwaite
    assert t["high"] - t["diff"] == pytest.approx(stats.t.ppf(0.975, df) * np.sqrt(va + vb))
    assert t["low"] > 0 and S.words(t) == "better" and S.words(S.welch(b, a)) == "worse"
    close = S.welch([0.90, 0.92, 0.88], [0.91, 0.89, 0.90])
    assert close["low"] < 0 < close["high"] and S.words(close) == "no significant difference"
    assert S.welch([0.9, 0.9], [0.9, 0.9])["p"] == 1.0 and S.welch([0.9, 0.9], [0.8, 0.8])["p"] == 0.0


def _welch_power(diff, sd, n, reps=4000):
    rng = np.random.default_rng(0)
    a = rng.normal(diff, sd, size=(reps, n))
    b = rng.normal(0.0, sd, size=(reps, n))
    return float(np.mean(stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < S.ALPHA))


def test_seeds_to_tell_is_where_welch_reaches_the_power():
    """The seeds the verdict names for an inconclusive result: at that count a simulated
    Welch test finds the gap about 80 % of the time, one seed fewer clearly less often."""
    n = S.seeds_to_tell(0.02, 0.008, 0.008)
    assert n is not None and 3 < n < 10
    assert _welch_power(0.02, 0.008, n) >= 0.77 and _welch_power(0.02, 0.008, n - 1) < 0.8
    assert S.seeds_to_tell(-0.02, 0.008, 0.008) == n  # the sign does not matter
    assert S.seeds_to_tell(0.04, 0.008, 0.008) < n < S.seeds_to_tell(0.01, 0.008, 0.008)
    assert S.seeds_to_tell(0.0, 0.01, 0.01) is None and S.seeds_to_tell(1e-6, 0.1, 0.1) is None  # beyond the cap
    summary = {"seeds": [1, 2, 3], "candidates": [{"label": "b0"}, {"label": "ref"}],
               "verdict": {**S.welch([0.93, 0.94, 0.95], [0.92, 0.93, 0.91]), "words": "no significant difference",
                           "b0": "b0", "reference": "ref", "macs_ratio": 0.7, "seeds_to_tell": 6}}
    assert "with 6 seeds each (python -m nas.final RUN --seeds 6)" in R.verdict_line(summary)
    summary["verdict"]["words"] = "better"
    assert "seeds each" not in R.verdict_line(summary)


def test_seeds_are_fresh_and_parsed():
    assert F.fresh_seeds(0, 3) == [1, 2, 3] and 4 not in F.fresh_seeds(4, 3)
    assert F.fresh_seeds(4, 2, taken=[5]) == [6, 7]
    assert FC.parse_seeds("3", 0) == (3, None) and FC.parse_seeds("4,5,6", 0) == (3, [4, 5, 6])
    from nas.errors import UserError
    for bad in ("0,5", "x", "4,4", "0"):
        with pytest.raises(UserError):
            FC.parse_seeds(bad, 0)


# -- end to end ---------------------------------------------------------------------------------
def test_search_runs_stage2_and_b0_is_its_winner(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--target-flops", "400M", "--trials", "8", "--workers", "2", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    with Store.open(out) as st:
        finals = st.trials("final")
        search = {r["id"]: r for r in st.trials("search", "trained")}
    assert len(finals) == (3 + 1) * 3
    assert {r["extra"]["overrides"]["seed"] for r in finals} == {1, 2, 3}          # none is the search seed 0
    assert all(r["test_accuracy"] is not None and r["told"] is False for r in finals)
    rows = list(csv.DictReader((out / "final.csv").open()))
    assert len(rows) == 12 and {r["label"] for r in rows} >= {"efficientnet-b0"}
    md = (out / "final.md").read_text()
    assert "(B0)" in md and "verdict on test (sequential, 3 fresh seeds each" in md and "verdict on test" in printed
    chosen = next(r for r in rows if f"| {r['label']} (B0) |" in md)
    assert ArchSpec.load(out / "best.yaml").key() == search[int(chosen["trial"])]["key"]
    top3 = sorted(search.values(), key=lambda r: -r["reward"])[:3]
    assert {r["key"] for r in top3} <= {r["key"] for r in finals}


def test_no_final_skips_stage2(tmp_path):
    out = tmp_path / "run"
    assert main(["--target-flops", "400M", "--trials", "4", "--workers", "1", "--no-final", "--out", str(out),
                 *FAST]) == 0
    with Store.open(out) as st:
        assert st.trials("final") == []
    assert not (out / "final.md").exists()


KILLED_FINAL = ("import sys, tests.kill_hooks as k; k.install(after_write={n}); "
                "from nas.cli.final import main; sys.exit(main(sys.argv[1:]))")


def test_stage2_resumes_after_sigkill_and_extends_with_other_seeds(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--target-flops", "400M", "--trials", "6", "--workers", "1", "--no-final", "--out", str(out),
                 *FAST]) == 0
    proc = subprocess.run([sys.executable, "-c", KILLED_FINAL.format(n=5), str(out), "--workers", "1", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with Store.open(out) as st:
        before = {(r["proposal_id"]): r for r in st.trials("final")}
        pending = st.pending("final")
    assert 0 < len(before) < 12 and pending
    capsys.readouterr()
    assert FC.main([str(out), "--workers", "1", "--quiet", "--no-progress"]) == 0
    with Store.open(out) as st:
        after = {r["proposal_id"]: r for r in st.trials("final")}
        assert st.pending("final") == []
    assert len(after) == 12 and all(after[k] == v for k, v in before.items())  # kept, not retrained
    assert "verdict on test (sequential, 3 fresh seeds each" in capsys.readouterr().out
    # three other seeds: 12 more runs, the same words (the fake evaluator's gap is large)
    words_before = (out / "final.md").read_text().rsplit(": ", 2)[-1]
    assert FC.main([str(out), "--seeds", "7,8,9", "--quiet", "--no-progress"]) == 0
    with Store.open(out) as st:
        assert len(st.trials("final")) == 24
    assert (out / "final.md").read_text().rsplit(": ", 2)[-1].split(",")[0] == words_before.split(",")[0]


def test_nas_final_bad_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--target-flops", "400M", "--trials", "3", "--workers", "1", "--no-final", "--out", str(out),
                 *FAST]) == 0
    for argv, words in (([str(out), "--seeds", "0,1"], "search seed"),
                        ([str(out), "--candidates", "999"], "not a trained, ok search trial"),
                        ([str(tmp_path / "nope")], "not a search run"),
                        ([str(out), "--top-k", "0"], "--top-k")):
        capsys.readouterr()
        assert FC.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err and "Traceback" not in err


def test_stage2_stored_under_the_earlier_identity_rule_is_found_not_retrained(tmp_path, capsys):
    """Runs made before the identity rule was shared with the proxy check keep their stage 2."""
    import sqlite3

    out = tmp_path / "run"
    assert main(FAST + ["--target-flops", "400M", "--controller", "random", "--trials", "3", "--workers", "1",
                        "--final-top-k", "1", "--final-seeds", "2", "--out", str(out)]) == 0
    with Store.open(out) as st:
        cfg = st.config
        finals = st.trials("final")
    assert len(finals) == 4
    budget = F.final_budget(ProxyBudget(dataset=cfg["dataset"], resolution=cfg["proxy_resolution"],
                                        target_resolution=cfg["target_resolution"], epochs=cfg["proxy_epochs"],
                                        batch_size=cfg["batch_size"], seed=cfg["seed"], device="cpu",
                                        time_limit=cfg["trial_timeout"]), cfg["final_epochs"])
    con = sqlite3.connect(out / "search.db")
    with con:  # as an earlier version stored them
        for r in finals:
            seed = r["extra"]["overrides"]["seed"]
            con.execute("UPDATE trials SET proposal_id = ? WHERE id = ?",
                        (F.legacy_id(r["key"], seed, budget, cfg["evaluator"]), r["id"]))
    con.close()
    capsys.readouterr()
    assert FC.main([str(out), "--quiet", "--no-progress"]) == 0
    with Store.open(out) as st:
        assert sorted(r["id"] for r in st.trials("final")) == sorted(r["id"] for r in finals)


# -- sequential seeds ------------------------------------------------------------------------
def test_sequential_design_keeps_false_decisions_at_5_percent_and_finds_a_real_gap():
    """Proof by simulation, on studies the boundary's calibration never saw: with no true
    difference the sequential design decides (falsely) about 5 % of the time over all looks;
    with a true gap of 2.5 seed sds it says "better" in >= 80 % by the default cap. The fixed
    3-seed design beside it: as rarely false, but it finds that gap only about half the time."""
    from nas.final import sequential as Q

    plan = Q.looks()
    assert plan == (3, 5, 8)
    threshold = Q.boundary(plan)
    assert 0.01 < threshold < S.ALPHA                       # stricter than one look's 0.05
    n = 4000
    null = Q.simulate(plan, 0.0, threshold, studies=n, seed=101)
    mc = 2 * (0.05 * 0.95 / n) ** 0.5                      # two Monte-Carlo standard errors
    assert null["better"] + null["worse"] <= 0.05 + mc
    assert abs(null["better"] - null["worse"]) < 3 * mc     # no side favoured
    real = Q.simulate(plan, 2.5, threshold, studies=n, seed=102)
    assert real["better"] >= 0.80 and real["worse"] == 0.0
    assert real["mean_seeds"] < plan[-1]                    # it stops early when it can
    fixed_null = Q.simulate((3,), 0.0, S.ALPHA, studies=n, seed=101)
    fixed = Q.simulate((3,), 2.5, S.ALPHA, studies=n, seed=102)
    assert fixed_null["better"] + fixed_null["worse"] <= 0.05 + mc
    assert fixed["better"] < 0.65 < real["better"]          # what the sequential design buys


def test_sequential_looks_and_boundary_are_planned_and_deterministic():
    from nas.final import sequential as Q

    assert Q.looks(3, 3) == (3,) and Q.looks(3, 12) == (3, 5, 8, 12) and Q.looks(4, 6) == (4, 6)
    assert Q.boundary((3,)) == S.ALPHA
    assert Q.boundary((3, 5, 8)) == Q.boundary.__wrapped__((3, 5, 8))   # the same on every call and machine
    with pytest.raises(ValueError):
        Q.looks(3, 2)


def test_undecided_stage2_adds_seeds_for_b0_and_the_reference_only_up_to_the_cap(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--target-flops", "400M", "--trials", "6", "--workers", "1", "--out", str(out), *FAST]
    args[args.index("tests.fake_evaluators:ok")] = "tests.fake_evaluators:no_gap"
    assert main(args) == 0
    with Store.open(out) as st:
        finals = st.trials("final")
    seeds: dict = {}
    for r in finals:
        seeds.setdefault(r["key"], set()).add(r["extra"]["overrides"]["seed"])
    counts = sorted(len(v) for v in seeds.values())
    assert counts == [3, 3, 8, 8], counts                  # two others on 3 seeds; B0 and the reference on 8
    assert max(seeds.values(), key=len) == set(range(1, 9))
    md = (out / "final.md").read_text()
    assert "look 3 of at most 3" in md and "undecided at the cap of 8 seeds" in md
    # stage 2 again: the looks replay from the store, nothing is trained
    assert FC.main([str(out), "--quiet", "--no-progress"]) == 0
    with Store.open(out) as st:
        assert len(st.trials("final")) == len(finals)
    # on other seeds, sequential again: 3 each, then B0 and the reference from seed 100 on
    capsys.readouterr()
    FC.main([str(out), "--seeds", "auto", "--first-seed", "100", "--max-seeds", "5", "--quiet", "--no-progress"])
    with Store.open(out) as st:
        new = [r for r in st.trials("final") if r["extra"]["overrides"]["seed"] >= 100]
    assert {r["extra"]["overrides"]["seed"] for r in new} == set(range(100, 105))
    assert len(new) == 4 * 3 + 2 * 2


def test_stage2_keeps_weights_of_b0_and_the_reference_and_best_loads_into_best_yaml(tmp_path, capsys):
    """The real trainer, a few steps: stage 2 saves every run's weights, keeps B0's and the
    reference's, copies B0's best run on search-validation to best.safetensors, which loads
    strictly into best.yaml's network."""
    import torch

    from search_space import weights

    out = tmp_path / "run"
    assert main(["--target-flops", "400M", "--controller", "random", "--trials", "3", "--workers", "1",
                 "--dataset", "digits", "--proxy-epochs", "0.1", "--final-epochs", "0.1", "--final-top-k", "2",
                 "--final-seeds", "1", "--device", "cpu", "--no-tensorboard", "--no-scale", "--quiet",
                 "--out", str(out)]) == 0
    with Store.open(out) as st:
        finals = st.trials("final")
        cands = {r["key"] for r in finals}
    md = (out / "final.md").read_text()
    b0_label = next(line.split("|")[1].strip().removesuffix(" (B0)") for line in md.splitlines() if "(B0)" in line)
    kept = sorted(p.name for p in (out / "weights").iterdir())
    b0_name = b0_label.replace(" ", "-")
    assert kept == sorted([f"{b0_name}-seed1.safetensors", "efficientnet-b0-seed1.safetensors"])
    assert len(cands) == 3                                  # the other candidate's weights were deleted
    b0_runs = [r for r in finals if r["key"] != zoo.get("efficientnet-b0").key() and
               any(f"{b0_name}-seed{r['extra']['overrides']['seed']}" in k for k in kept)]
    best_seed = max(b0_runs, key=lambda r: r["accuracy"])["extra"]["overrides"]["seed"]
    assert (out / "best.safetensors").read_bytes() == (out / "weights" / f"{b0_name}-seed{best_seed}.safetensors").read_bytes()
    model = weights.load_model(out / "best.yaml", out / "best.safetensors")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_weights_that_cannot_be_written_leave_the_run_ok(tmp_path):
    from nas.evaluate.train import train

    budget = ProxyBudget(dataset="digits", resolution=32, epochs=0.1, device="cpu")
    result = train(zoo.get("efficientnet-b0"), budget, weights_path=str(tmp_path / "missing" / "deeper" / "w.safetensors"))
    assert result.status == "ok" and result.accuracy is not None
    assert "weights not saved" in result.message
