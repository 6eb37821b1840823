"""The MnasNet reward and the target parser."""
import math

import pytest

from nas.errors import UserError
from nas.cli.args import parse_count
from nas.search.objective import PRESETS, preset, reward


def test_reward_at_target_is_accuracy():
    assert reward(0.8, 400_000_000, 400_000_000) == pytest.approx(0.8)


def test_soft_reward_trades_accuracy_for_cost():
    # Soft constraint: 2x the MACs costs a factor 2^-0.07 (about 4.7 %), on both sides of T.
    assert reward(0.5, 800, 400) == pytest.approx(0.5 * 2 ** -0.07)
    assert reward(0.5, 200, 400) == pytest.approx(0.5 * 0.5 ** -0.07)
    assert reward(0.5, 200, 400) > reward(0.5, 400, 400) > reward(0.5, 800, 400)


def test_hard_reward_ignores_cost_below_target_and_punishes_above():
    alpha, beta = PRESETS["hard"]
    assert reward(0.7, 100, 400, alpha, beta) == pytest.approx(0.7)
    assert reward(0.7, 800, 400, alpha, beta) == pytest.approx(0.35)
    assert PRESETS["soft"] == (-0.07, -0.07)


def test_reward_rejects_nonpositive_cost():
    with pytest.raises(ValueError):
        reward(0.5, 0, 400)


@pytest.mark.parametrize("text, value", [
    ("400M", 400_000_000), ("400m", 400_000_000), ("0.4G", 400_000_000), ("0.4g", 400_000_000),
    ("4e8", 400_000_000), ("4E8", 400_000_000), ("400000000", 400_000_000), ("400k", 400_000),
    ("0.39B", 390_000_000), (" 1.5M ", 1_500_000), (".5G", 500_000_000), (400_000_000, 400_000_000),
])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["400X", "-1M", "0", "", "nan", "inf", "M", "4e8.5", "1e-9", "0.0M", True])
def test_parse_count_errors_are_one_line(text):
    with pytest.raises(UserError) as info:
        parse_count(text)
    message = str(info.value)
    assert "\n" not in message and "target" in message and repr(str(text)) in message


def test_unknown_preset():
    assert preset("hard") == (0.0, -1.0)
    with pytest.raises(UserError, match="soft, hard"):
        preset("medium")


def test_reward_is_finite_for_large_ratios():
    assert math.isfinite(reward(1.0, 10**12, 1))
