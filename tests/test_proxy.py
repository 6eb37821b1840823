"""The proxy check (`python -m nas.proxy check`) and the zero-cost scores (`nas.evaluate.zero_cost`):
sampling from the cost window, the statistics on known inputs, deterministic scores,
the budgets each kind of run trains with, resume, bad input, and one real `--quick` run.

torch and scipy are imported inside the tests that use them: worker processes import this
module for `budget_probe`, and should start fast."""
import csv
import hashlib
import json

import numpy as np
import pytest

from nas.cli import proxy as P
from nas.proxy import sampling
from nas.proxy import stats as S
from nas.evaluate import zero_cost as Z
from nas.evaluate.budget import ProxyBudget
from nas.evaluate.result import TrialResult
from nas.store import Store
from search_space import cost, zoo
from search_space.space import SearchSpace

FAKE = ["--evaluator", "tests.fake_evaluators:ok", "--scores", "params,macs", "--device", "cpu", "--quiet",
        "--workers", "2", "--bootstrap", "200"]


def budget_probe(spec, budget):
    """Evaluator that shows which budget a run got: accuracy = epochs / 10 + a small
    key-dependent offset (so architectures differ); fails if it is handed the test part."""
    if budget.test:
        raise AssertionError("the proxy check must never score the test part")
    offset = int(hashlib.sha256(spec.key().encode()).hexdigest()[:6], 16) / 16**6 / 100
    return TrialResult(status="ok", accuracy=budget.epochs / 10 + offset, wall_time=0.01 * budget.epochs)


# -- sampling -----------------------------------------------------------------------------------
def test_sampled_architectures_lie_in_the_window_spread_over_macs_and_repeat_for_a_seed():
    space = SearchSpace.default()
    target, k = 400_000_000, 8
    specs = sampling.sample_architectures(space, target, (0.5, 1.0), k=k, seed=3)
    macs = [cost.macs(s, 224) for s in specs]
    assert len(specs) == k and all(0.5 * target <= m <= target for m in macs)
    assert macs == sorted(macs) and len({s.key() for s in specs}) == k
    assert all(s.num_classes == 1000 and s.resolution == 224 for s in specs)
    gaps = np.diff([0.5 * target, *macs, target]) / (0.5 * target)
    assert gaps.max() < 0.35  # spread over the window, not clustered at one end
    again = sampling.sample_architectures(space, target, (0.5, 1.0), k=k, seed=3)
    assert [s.key() for s in again] == [s.key() for s in specs]
    other = sampling.sample_architectures(space, target, (0.5, 1.0), k=k, seed=4)
    assert [s.key() for s in other] != [s.key() for s in specs]


def test_sampling_picks_mid_quantiles_of_the_pool():
    """With a pool of exactly the in-window architectures found, the picks are those at
    ranks floor((i + 1/2) n / k) of the MAC-sorted pool."""
    space = SearchSpace.default()
    pool = sampling.sample_architectures(space, 400_000_000, (0.5, 1.0), k=40, seed=5, pool=40)
    picks = sampling.sample_architectures(space, 400_000_000, (0.5, 1.0), k=4, seed=5, pool=40)
    assert [s.key() for s in picks] == [pool[i].key() for i in (5, 15, 25, 35)]


def test_sampling_an_empty_window_is_an_error():
    with pytest.raises(ValueError, match="cost window"):
        sampling.sample_architectures(SearchSpace.default(), 20_000_000, (0.5, 1.0), k=4, max_draws=300)


# -- statistics on known inputs -------------------------------------------------------------------
def test_rank_correlations_and_their_intervals_on_known_inputs():
    x = [0.1, 0.4, 0.2, 0.9, 0.5, 0.7]
    same = [v * 2 + 1 for v in x]
    assert S.kendall(x, same) == pytest.approx(1) and S.spearman(x, same) == pytest.approx(1)
    rev = [-v for v in x]
    assert S.kendall(x, rev) == pytest.approx(-1) and S.spearman(x, rev) == pytest.approx(-1)
    assert S.interval(S.bootstrap(x, same, "kendall", 300)) == pytest.approx((1, 1))
    assert S.interval(S.bootstrap(x, rev, "spearman", 300)) == pytest.approx((-1, -1))
    rng = np.random.default_rng(0)
    a = rng.normal(size=20)
    b = a + rng.normal(scale=0.8, size=20)
    tau = S.kendall(a, b)
    lo, hi = S.interval(S.bootstrap(a, b, "kendall", 1000, seed=1))
    assert lo < tau < hi and 0 < lo and hi < 1
    lo2, hi2 = S.interval(S.bootstrap(a, b, "kendall", 1000, seed=1), level=0.5)
    assert lo < lo2 < hi2 < hi  # a lower level gives a narrower interval


def test_vectorized_resample_statistics_equal_scipy_with_ties():
    from scipy import stats

    rng = np.random.default_rng(2)
    x = np.round(rng.normal(size=12), 1)   # ties in x
    y = np.round(x + rng.normal(size=12), 1)
    idx = S.resamples(12, 50, seed=3)      # duplicates: ties in both
    taus = S.bootstrap(x, y, "kendall", index=idx)
    rhos = S.bootstrap(x, y, "spearman", index=idx)
    for t, r, i in zip(taus, rhos, idx):
        assert t == pytest.approx(stats.kendalltau(x[i], y[i]).statistic)
        assert r == pytest.approx(stats.spearmanr(x[i], y[i]).statistic)
    big = rng.normal(size=100)                  # 450 resamples of 100: computed in chunks of 200
    idx = S.resamples(100, 450, seed=4)
    taus = S.bootstrap(big, -big ** 2, "kendall", index=idx)
    assert len(taus) == 450
    for i in (0, 199, 200, 449):
        assert taus[i] == pytest.approx(stats.kendalltau(big[idx[i]], -big[idx[i]] ** 2).statistic)


def test_seed_noise_top_overlap_and_words_on_known_inputs():
    noise = S.seed_noise([[0.5, 0.7], [0.8, 0.8], [0.3, None]])
    assert noise["within_sd"] == pytest.approx(0.1)               # sqrt(mean(0.02, 0))
    assert noise["between_sd"] == pytest.approx(np.std([0.6, 0.8, 0.3], ddof=1))
    assert noise["ratio"] == pytest.approx(0.1 / np.std([0.6, 0.8, 0.3], ddof=1))
    assert noise["architectures"] == 2
    assert S.top_overlap([1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1], k=3) == 0
    assert S.top_overlap([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 7, 6, 5], k=3) == 3
    assert S.top_overlap([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 7, 4, 6, 5], k=3) == 2
    assert S.interpret(0.62, 0.45, 0.75) == "ranks architectures usefully"
    assert "weakly" in S.interpret(0.3, 0.1, 0.5)
    assert "includes 0" in S.interpret(0.3, -0.1, 0.6)
    assert "reverse" in S.interpret(-0.5, -0.8, -0.2)


# -- zero-cost scores ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits32():
    from nas.evaluate import data as D
    return D.load(ProxyBudget(dataset="digits", resolution=32, seed=0))


def test_balanced_batch_has_equal_counts_per_class_and_is_fixed(digits32):
    import torch

    b = Z.balanced_batch(digits32, 32)
    assert b.x.shape == (30, 3, 32, 32) and b.num_classes == 10
    assert np.bincount(b.y.numpy(), minlength=10).tolist() == [3] * 10
    again = Z.balanced_batch(digits32, 32)
    assert torch.equal(b.x, again.x) and torch.equal(b.y, again.y)
    assert not torch.equal(b.x, Z.balanced_batch(digits32, 32, seed=1).x)


def test_every_zero_cost_score_is_deterministic_finite_and_leaves_the_global_rng_alone(digits32):
    import torch

    space = SearchSpace.default()
    specs = [zoo.get("efficientnet-b0"), zoo.get("mnasnet-a1"),
             space.decode(space.sample(7), num_classes=1000, resolution=224)]
    batch = Z.balanced_batch(digits32)
    threads = torch.get_num_threads()
    for spec in specs:
        for name in Z.SCORES:
            state = torch.get_rng_state()
            first = Z.score(name, spec, batch)
            assert torch.equal(torch.get_rng_state(), state), name   # no draw from the global RNG
            torch.rand(5)                                            # move the global RNG in between
            np.random.rand(3)
            assert Z.score(name, spec, batch) == first, (name, spec.name)
            assert np.isfinite(first), (name, spec.name)
            assert torch.get_num_threads() == threads
    b0 = specs[0]
    assert Z.score("macs", b0) == cost.macs(b0, 224) and Z.score("params", b0) == 5_288_548
    assert Z.score("naswot", b0, batch, seed=1) != Z.score("naswot", b0, batch, seed=0)  # the init seed counts


def test_synflow_needs_no_images_and_loss_scores_do(digits32):
    b0 = zoo.get("efficientnet-b0")
    batch = Z.balanced_batch(digits32)
    other = Z.balanced_batch(digits32, seed=5)
    assert Z.score("synflow", b0, batch) == Z.score("synflow", b0, other)  # all-ones input: data-free
    assert Z.score("snip", b0, batch) != Z.score("snip", b0, other)
    with pytest.raises(ValueError, match="needs data"):
        Z.score("naswot", b0, None)
    with pytest.raises(ValueError, match="unknown zero-cost score"):
        Z.score("jacov", b0, batch)
    assert Z.parse_names("all") == list(Z.SCORES) and Z.parse_names("none") == []
    assert Z.parse_names("snip,grad-norm") == ["snip", "grad_norm"]


# -- the command ----------------------------------------------------------------------------------
def _json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_check_trains_each_budget_as_asked_and_resume_trains_nothing_new(tmp_path, capsys):
    out = str(tmp_path / "check")
    argv = ["check", "--target-flops", "400M", "--k", "5", "--dataset", "digits", "--proxy-epochs", "2",
            "--final-epochs", "4", "--seed", "10", "--out", out, "--json", *FAKE,
            "--evaluator", "tests.test_proxy:budget_probe"]
    assert P.main(argv) == 0
    first = _json(capsys.readouterr().out)
    with Store.open(out) as st:
        proxy, ref = st.trials(P.KIND), st.trials(P.REF_KIND)
        last = st.last_trial_id()
    assert len(proxy) == 10 and len(ref) == 5 and all(r["status"] == "ok" for r in proxy + ref)
    assert all(0.2 <= r["accuracy"] < 0.21 for r in proxy) and all(0.4 <= r["accuracy"] < 0.41 for r in ref)
    assert sorted({r["extra"]["overrides"]["seed"] for r in proxy}) == [11, 12]   # --seed + 1 .. + R
    assert {r["extra"]["overrides"]["seed"] for r in ref} == {10}                # the reference on --seed
    # same offset per architecture on every budget: the rankings agree exactly
    assert first["tau"] == pytest.approx(1) and first["top5_overlap"] == 5 and first["trained_now"] == 15
    assert first["noise"]["within_sd"] == pytest.approx(0) and first["seeds"] == [11, 12]
    assert first["cost"]["proxy"]["wall_s"] == pytest.approx(10 * 0.02)
    assert first["cost"]["reference"]["epochs"] == 4

    assert P.main(["check", "--resume", "--out", out, "--json"]) == 0   # everything from the stored check
    again = _json(capsys.readouterr().out)
    with Store.open(out) as st:
        assert st.last_trial_id() == last and st.count(P.KIND) == 10
    assert again["trained_now"] == 0 and again["tau"] == first["tau"]

    assert P.main(["check", "--resume", "--out", out, "--seeds", "3", "--json"]) == 0
    more = _json(capsys.readouterr().out)
    with Store.open(out) as st:   # one more proxy seed: 5 runs, the reference untouched
        assert st.count(P.KIND) == 15 and st.count(P.REF_KIND) == 5
    assert more["trained_now"] == 5 and more["seeds"] == [11, 12, 13]


def test_check_outputs_with_fake_evaluator(tmp_path, capsys):
    out = tmp_path / "c"
    assert P.main(["check", "--target-flops", "400M", "--k", "4", "--seeds", "2", "--out", str(out), *FAKE]) == 0
    text = capsys.readouterr().out
    assert "Kendall τ" in text
    rows = list(csv.DictReader((out / "proxy.csv").open()))
    assert len(rows) == 4 and [int(r["macs"]) for r in rows] == sorted(int(r["macs"]) for r in rows)
    assert all(float(r["proxy_acc_mean"]) == float(r["reference_acc"]) for r in rows)  # fake: same accuracy
    for name in ("proxy", "params", "macs"):
        assert (out / f"scatter-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ranks architectures usefully" in (out / "proxy.md").read_text()


def test_check_without_any_successful_run_exits_1_with_undefined_statistics(tmp_path, capsys):
    out = tmp_path / "failing"
    argv = ["check", "--target-flops", "400M", "--k", "3", "--out", str(out), "--json", *FAKE,
            "--evaluator", "tests.fake_evaluators:raises"]
    assert P.main(argv) == 1
    captured = capsys.readouterr()
    summary = _json(captured.out)
    assert summary["n"] == 0 and summary["tau"] is None and summary["cost"]["proxy"]["failed"] == 6
    assert "statistics are undefined" in captured.err
    assert "no rank statistic is meaningful" in (out / "proxy.md").read_text()


BAD = [
    ("no command", [], "command"),
    ("unknown command", ["run", "--target-flops", "400M"], "invalid choice"),
    ("missing target", ["check"], "--target-flops"),
    ("bad target", ["check", "--target-flops", "400Q"], "400Q"),
    ("bad window", ["check", "--target-flops", "400M", "--cost-window", "2,1"], "--cost-window"),
    ("k too small", ["check", "--target-flops", "400M", "--k", "2"], "--k"),
    ("zero seeds", ["check", "--target-flops", "400M", "--seeds", "0"], "--seeds"),
    ("unknown score", ["check", "--target-flops", "400M", "--scores", "naswot,jacov"], "jacov"),
    ("unknown dataset", ["check", "--target-flops", "400M", "--dataset", "imagenet"], "imagenet"),
    ("below stride", ["check", "--target-flops", "400M", "--proxy-resolution", "16"], "stride 32"),
    ("missing space", ["check", "--target-flops", "400M", "--space", "{tmp}/nope.yaml"], "nope.yaml"),
    ("bad evaluator", ["check", "--target-flops", "400M", "--evaluator", "tests.fake_evaluators:nothing"],
     "--evaluator"),
    ("resume nothing", ["check", "--resume"], "is not a proxy check"),
    ("resume a search run", ["check", "--resume", "--out", "{tmp}/search"], "search run"),
    ("existing run", ["check", "--target-flops", "400M", "--out", "{tmp}/search"], "already holds a run"),
]


@pytest.mark.parametrize("name,argv,words", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, name, argv, words):
    with Store.create(tmp_path / "search", {"target_flops": 400_000_000}):
        pass
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "new")]
    assert P.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nas.proxy: error:") and words in err[0], err
    assert not (tmp_path / "new").exists()


def test_quick_check_end_to_end_with_the_real_trainer(tmp_path, capsys):
    """`--quick` as CI runs it (on digits and a smaller target here, to keep this file fast)."""
    out = tmp_path / "quick"
    assert P.main(["check", "--quick", "--target-flops", "200M", "--dataset", "digits", "--device", "cpu",
                   "--workers", "2", "--out", str(out), "--json", "--quiet"]) == 0
    summary = _json(capsys.readouterr().out)
    assert summary["k"] == 6 and summary["n"] == 6 and summary["seeds"] == [1, 2]
    assert -1 <= summary["tau"] <= 1 and summary["tau_ci"][0] <= summary["tau_ci"][1]
    assert set(summary["proxies"]) >= set(Z.SCORES) | {"proxy", "proxy_seed_1", "proxy_seed_2"}
    assert summary["cost"]["proxy"]["runs"] == 12 and summary["cost"]["reference"]["runs"] == 6
    assert summary["cost"]["proxy"]["epochs"] == 0.25 and summary["cost"]["reference"]["epochs"] == 0.5
    rows = list(csv.DictReader((out / "proxy.csv").open()))
    assert len(rows) == 6
    for r in rows:
        accs = [float(r[c]) for c in ("proxy_acc_seed_1", "proxy_acc_seed_2", "reference_acc")]
        assert all(0 <= a <= 1 for a in accs)
        assert all(np.isfinite(float(r[s])) for s in ("naswot", "synflow", "grad_norm", "snip"))
    files = set(summary["files"])
    assert {"proxy.csv", "proxy.md"} | {f"scatter-{n}.png" for n in ("proxy", *Z.SCORES)} <= files
    assert all((out / f).stat().st_size > 0 for f in files)
    with Store.open(out) as st:
        assert st.count(P.KIND) == 12 and st.count(P.REF_KIND) == 6
