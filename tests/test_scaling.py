"""Compound scaling: rounding rules, fidelity to the reference B1..B7, φ parsing, the grid search."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from scaling import compound, grid
from scaling.compound import (PUBLISHED, derive_family, parse_phis, published_family, round_filters,
                              round_repeats, scale, scaled_dropout)
from scaling.errors import ScalingError
from search_space import cost, zoo

ROOT = Path(__file__).resolve().parents[1]

# Oracle: torchvision/models/efficientnet.py (pytorch/vision, EfficientNet_B*_Weights.IMAGENET1K_V1 meta):
# "num_params" of efficientnet_b1..b7 (1000 classes) and "_ops" (GFLOPS = conv+linear multiply-adds, in 1e9)
# measured at the weights' eval crop size (crop_size in the same entry; B2's is 288, not its 260).
TORCHVISION = {
    # name: (num_params, _ops, crop_size)
    "b0": (5_288_548, 0.386, 224),
    "b1": (7_794_184, 0.687, 240),
    "b2": (9_109_994, 1.088, 288),
    "b3": (12_233_232, 1.827, 300),
    "b4": (19_341_616, 4.394, 380),
    "b5": (30_389_784, 10.266, 456),
    "b6": (43_040_704, 19.068, 528),
    "b7": (66_347_960, 37.746, 600),
}
# EfficientNet paper (arXiv 1905.11946 v5) Table 2, FLOPS in 1e9 at the published resolutions.
PAPER_FLOPS = {"b1": 0.70, "b2": 1.0, "b3": 1.8, "b4": 4.2, "b5": 9.9, "b6": 19, "b7": 37}
# B4 and B5 count 4.39 B and 10.27 B by conv+linear multiply-adds (docs/reference.md; torchvision agrees).
CONV_LINEAR_B4_B5 = {"b4": 4.39, "b5": 10.27}


@pytest.fixture(scope="module")
def b0():
    return zoo.get("efficientnet-b0")


@pytest.fixture(scope="module")
def family(b0):
    return {m.name.rsplit("-", 1)[-1]: m for m in published_family(b0, range(8))}


# -- rounding -------------------------------------------------------------------------
def test_round_filters_follows_the_reference_rule():
    assert round_filters(32, 1.0) == 32
    assert round_filters(32, 1.1) == 32          # 35.2 -> 32, within 10 %
    assert round_filters(40, 1.1) == 48          # 44 rounds half up to 48
    assert round_filters(11, 1.0) == 16          # 8 would be > 10 % below 11
    assert round_filters(2, 1.0) == 8            # never below the divisor
    assert round_filters(320, 1.8) == 576
    assert round_filters(1280, 2.0) == 2560
    assert round_filters(24, 1.0, divisor=16) == 32


def test_round_filters_is_a_multiple_never_10_percent_below():
    for c in range(1, 400, 7):
        for w in (0.5, 0.75, 1.0, 1.1, 1.37, 2.0):
            new = round_filters(c, w)
            assert new % 8 == 0 and new >= 8
            assert new >= 0.9 * c * w


def test_round_repeats_is_ceil_without_float_noise():
    assert [round_repeats(r, 3.1) for r in (1, 2, 2, 3, 3, 4, 1)] == [4, 7, 7, 10, 10, 13, 4]
    assert round_repeats(10, 1.1) == 11          # 1.1 * 10 == 11.000000000000002 in floats
    assert round_repeats(3, 1.0) == 3
    assert round_repeats(1, 1.01) == 2


def test_scale_widens_every_channel_stem_and_head(b0):
    b4 = scale(b0, 1.4, 1.8, 380)
    # torchvision's efficientnet_b4: stem 48, stage outputs 24 32 56 112 160 272 448, head 1792
    assert b4.stem_channels == 48
    assert [b.out_channels for b in b4.blocks] == [24, 32, 56, 112, 160, 272, 448]
    assert b4.head_channels == 1792
    assert [b.repeats for b in b4.blocks] == [2, 4, 4, 6, 6, 8, 2]
    assert b4.resolution == 380
    assert [(b.kernel, b.stride, b.expand_ratio, b.se_ratio) for b in b4.blocks] == \
        [(b.kernel, b.stride, b.expand_ratio, b.se_ratio) for b in b0.blocks]
    assert scale(b0, 1.0, 1.0, 224).key() == b0.key()


def test_scale_rejects_bad_factors(b0):
    with pytest.raises(ScalingError, match="width"):
        scale(b0, 0, 1.0, 224)
    with pytest.raises(ScalingError, match="resolution"):
        scale(b0, 1.0, 1.0, 0)


# -- fidelity to the reference --------------------------------------------------------
@pytest.mark.parametrize("k", ["b1", "b2", "b3", "b4", "b5", "b6", "b7"])
def test_published_family_has_torchvisions_parameter_counts(family, k):
    assert cost.params(family[k].spec) == TORCHVISION[k][0]


@pytest.mark.parametrize("k", ["b1", "b2", "b3", "b4", "b5", "b6", "b7"])
def test_published_family_has_torchvisions_ops_at_its_crop(family, k):
    _, ops, crop = TORCHVISION[k]
    assert round(cost.macs(family[k].spec, crop) / 1e9, 3) == ops


@pytest.mark.parametrize("k", ["b1", "b2", "b3", "b4", "b5", "b6", "b7"])
def test_published_family_matches_paper_table_2(family, k):
    m = family[k]
    assert m.resolution == PUBLISHED[k].resolution
    g = cost.macs(m.spec, m.resolution) / 1e9
    if k in CONV_LINEAR_B4_B5:
        assert round(g, 2) == CONV_LINEAR_B4_B5[k]
        assert abs(g / PAPER_FLOPS[k] - 1) < 0.05
    else:
        # Table 2 gives two significant figures; the footnote allows rounding differences.
        assert abs(g / PAPER_FLOPS[k] - 1) < 0.025


def test_published_family_baseline_and_dropout(family, b0):
    assert family["b0"].spec.key() == b0.key()
    assert cost.params(family["b0"].spec) == TORCHVISION["b0"][0]
    assert [family[f"b{k}"].spec.dropout for k in range(8)] == [PUBLISHED[f"b{k}"].dropout for k in range(8)]
    assert [family[f"b{k}"].spec.name for k in range(8)] == [f"efficientnet-b{k}" for k in range(8)]


def test_published_family_rejects_phis_outside_the_table(b0):
    with pytest.raises(ScalingError, match="0..7"):
        published_family(b0, [1.5])
    with pytest.raises(ScalingError, match="0..7"):
        published_family(b0, [8])


# -- the formula mode -----------------------------------------------------------------
def test_derive_family_follows_the_formula(b0):
    members = derive_family(b0, 1.2, 1.1, 1.15, [0, 1, 2, 3])
    assert [m.phi for m in members] == [0, 1, 2, 3]
    assert members[0].spec.key() == b0.key() and members[0].resolution == 224
    m1 = members[1]
    assert (m1.width, m1.depth) == (1.1, 1.2)
    assert m1.resolution == 256                  # 224 * 1.15 = 257.6 -> nearest multiple of 4
    assert m1.spec == scale(b0, 1.1, 1.2, 256, dropout=0.2, name="efficientnet-b1")
    assert members[3].resolution == 340          # 224 * 1.15^3 = 340.7
    for m in members:
        assert m.resolution % 4 == 0
    params = [cost.params(m.spec) for m in members]
    macs = [cost.macs(m.spec, m.resolution) for m in members]
    assert params == sorted(params) and macs == sorted(macs) and len(set(macs)) == 4
    # α·β²·γ² ≈ 2 means each φ step roughly doubles multiply-adds (rounding makes it approximate)
    assert 1.5 < macs[2] / macs[1] < 2.8


def test_scaled_dropout_reproduces_the_published_column():
    assert [scaled_dropout(0.2, k) for k in range(8)] == [PUBLISHED[f"b{k}"].dropout for k in range(8)]
    assert scaled_dropout(0.3, 20) == 0.5


def test_member_names():
    assert compound.member_name("efficientnet-b0", 3) == "efficientnet-b3"
    assert compound.member_name("found", 1.5) == "found-b1.5"
    assert compound.member_name("", 2) == "b2"


@pytest.mark.parametrize("bad", [(0.9, 1.1, 1.15), (1.2, 0.5, 1.15), (1.2, 1.1, float("nan"))])
def test_derive_family_rejects_coefficients_below_one(b0, bad):
    with pytest.raises(ScalingError, match="must be a number >= 1"):
        derive_family(b0, *bad, phis=[1])


def test_derive_family_rejects_empty_or_negative_phis(b0):
    with pytest.raises(ScalingError, match="empty"):
        derive_family(b0, 1.2, 1.1, 1.15, [])
    with pytest.raises(ScalingError, match=">= 0"):
        derive_family(b0, 1.2, 1.1, 1.15, [-1])


@pytest.mark.parametrize("text, expected", [
    ("1-7", [1, 2, 3, 4, 5, 6, 7]), ("1,2,5", [1, 2, 5]), ("0.5-3", [0.5, 1.5, 2.5]),
    ("0-1:0.25", [0, 0.25, 0.5, 0.75, 1]), ("3", [3]), ("5,1-2", [1, 2, 5]), ("2-2", [2]),
])
def test_parse_phis(text, expected):
    assert parse_phis(text) == expected


@pytest.mark.parametrize("text, message", [
    ("7-1", "empty"), ("-1-3", "negative"), ("1--3", "negative"), ("", "empty"), ("a-b", "cannot read"),
    ("1-3:0", "step"), ("1..2", "cannot read"), ("0-1000000:0.000001", "more than 1000 values"),
    ("1-2000", "more than 1000 values"),
])
def test_parse_phis_rejects(text, message):
    with pytest.raises(ScalingError, match=message):
        parse_phis(text)


# -- the grid search -------------------------------------------------------------------
def test_grid_candidates_keep_the_constraint():
    cands = grid.grid_candidates(step=0.05, tol=0.1)
    assert (1.2, 1.1, 1.15) in cands
    assert len(cands) == len(set(cands)) > 20
    for a, b, g in cands:
        assert min(a, b, g) >= 1 and abs(a * b * b * g * g - 2) <= 0.1 + 1e-9
    gaps = [round(abs(a * b * b * g * g - 2), 6) for a, b, g in cands]
    assert gaps == sorted(gaps)                  # closest to 2 first
    # 1.3 * 1.1^2 * 1.15^2 = 2.080: kept at tol 0.1, dropped at tol 0.05
    assert (1.3, 1.1, 1.15) not in grid.grid_candidates(step=0.05, tol=0.05)
    assert (1.3, 1.1, 1.15) in cands


def test_grid_candidates_bad_input():
    with pytest.raises(ScalingError, match="keeps no point"):
        grid.grid_candidates(step=0.05, alpha_range=(1, 1.1), beta_range=(1, 1.1), gamma_range=(1, 1.1))
    with pytest.raises(ScalingError, match=">= 1"):
        grid.grid_candidates(alpha_range=(0.8, 2.0))
    with pytest.raises(ScalingError, match="step"):
        grid.grid_candidates(step=0)
    with pytest.raises(ScalingError, match="empty"):
        grid.grid_candidates(beta_range=(1.5, 1.0))
    with pytest.raises(ScalingError, match="finite"):
        grid.grid_candidates(alpha_range=(1.0, float("inf")))
    with pytest.raises(ScalingError, match="too fine"):       # would enumerate 10^27 points
        grid.grid_candidates(step=1e-9)
    with pytest.raises(ScalingError, match="points"):          # 1001 x 501 x 501
        grid.grid_candidates(step=1e-3)


def test_derive_family_overflow_is_a_scaling_error(b0):
    with pytest.raises(ScalingError, match="overflows"):
        derive_family(b0, 2.0, 1.0, 1.0, phis=[2000])
    with pytest.raises(ScalingError, match="overflows"):
        derive_family(b0, 1.0, 1.0, 1e300, phis=[2])


def _fake_results(specs, base_res=224):
    """Accuracy rises with depth and falls with width: a deterministic, spec-derived oracle."""
    out = []
    for s in specs:
        depth = sum(b.repeats for b in s.blocks)
        out.append(SimpleNamespace(status="ok", accuracy=depth / 100 - s.stem_channels / 1000 + s.resolution / 1e5))
    return out


def test_grid_search_ranks_by_accuracy_and_evaluates_each_network_once(b0):
    cands = grid.grid_candidates(step=0.1, tol=0.15)
    calls = []

    def evaluate(specs):
        calls.append(list(specs))
        return _fake_results(specs)

    result = grid.grid_search(b0, evaluate, cands)
    assert len(calls) == 1
    keys = [(s.key(), s.resolution) for s in calls[0]]
    assert len(keys) == len(set(keys)) <= len(cands) + 1
    assert len(result.rows) == len(cands) + 1                 # the paper's point is always added
    assert (result.rows[-1]["alpha"], result.rows[-1]["beta"], result.rows[-1]["gamma"]) == grid.PAPER
    top = max(result.rows, key=lambda r: (r["accuracy"], -abs(r["constraint"] - 2), -r["macs"]))
    assert top["role"] == "best mean, not adopted" and top["accuracy"] == max(r["accuracy"] for r in result.rows)
    # one run each: no test is possible, so the paper's coefficients are kept
    assert result.best is result.rows[-1] and result.decision["adopted"] == "paper"
    assert "no test" in result.decision["text"]
    for row in result.rows:
        spec = grid.candidate_spec(b0, row["alpha"], row["beta"], row["gamma"])
        assert row["macs"] == cost.macs(spec, spec.resolution) and row["params"] == cost.params(spec)
        assert row["resolution"] == spec.resolution and row["status"] == "ok" and row["n"] == 1


def test_grid_search_ignores_failures_and_reports_none_when_nothing_trained(b0):
    cands = [(1.2, 1.1, 1.15), (2.0, 1.0, 1.0), (1.0, 1.0, 1.4)]

    def evaluate(specs):
        res = _fake_results(specs)
        # the deepest network (best by the oracle) fails
        worst = max(range(len(specs)), key=lambda i: res[i].accuracy)
        res[worst] = SimpleNamespace(status="oom", accuracy=None)
        return res

    result = grid.grid_search(b0, evaluate, cands)
    assert len(result.rows) == 3                              # the paper's point was given: not added twice
    assert result.best is not None and result.best["status"] == "ok"
    assert [r["status"] for r in result.rows].count("oom") == 1
    none = grid.grid_search(b0, lambda specs: [SimpleNamespace(status="failed", accuracy=None)] * len(specs), cands)
    assert none.best is None and none.decision["adopted"] is None
    with pytest.raises(ScalingError, match="returned 0 results"):
        grid.grid_search(b0, lambda specs: [], cands)


def test_save_grid_table(tmp_path, b0):
    result = grid.grid_search(b0, _fake_results, [(1.2, 1.1, 1.15), (2.0, 1.0, 1.0)])
    md, csv_path = grid.save_grid_table(result.rows, tmp_path, decision=result.decision)
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",") == list(grid.GRID_COLUMNS)
    assert len(lines) == 3 and lines[1].startswith("1.2,1.1,1.15,")
    text = md.read_text()
    assert text.count("\n") == 6 and "α·β²·γ²" in text and "accuracy (mean ± sd)" in text
    assert "Decision (Welch's test at p < 0.05" in text


def test_library_modules_import_no_training_code():
    code = ("import sys, scaling, scaling.compound, scaling.grid, scaling.family, scaling.plot, scaling.tables, "
            "scaling.stats, scaling.verify;"
            "print(sorted(m for m in sys.modules if m == 'nas' or m.startswith('nas.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
