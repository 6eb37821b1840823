"""Controllers: ask/tell protocol, de-duplication, learning, exact resume, failures."""
from __future__ import annotations

import random

import pytest
import torch

from controllers import (RLController, RandomSearch, RegularizedEvolution, SpaceExhausted,
                         make)
from controllers.base import is_plain
from nas.store.codec import decode_state, encode_state
from search_space import Decision

SIZES = [3, 2, 3, 2, 3, 3, 2, 4]
SMALL = {"evolution": {"population_size": 8, "sample_size": 3}, "rl": {"batch_size": 4},
         "random": {}}
NAMES = ["random", "evolution", "rl"]


def zeros_reward(choices):
    """Toy objective: the fraction of decisions taking choice 0."""
    return sum(c == 0 for c in choices) / len(choices)


def test_make_builds_each_and_names_the_choices_for_unknown():
    assert isinstance(make("random", SIZES), RandomSearch)
    assert isinstance(make("evolution", SIZES), RegularizedEvolution)
    assert isinstance(make("rl", SIZES), RLController)
    with pytest.raises(ValueError, match="evolution, predictor, random, rl"):
        make("bayes", SIZES)


def test_decision_objects_and_ints_are_equivalent():
    decisions = [Decision(f"d{i}", tuple(range(s))) for i, s in enumerate(SIZES)]
    for name in NAMES:
        a, b = make(name, decisions, seed=3), make(name, SIZES, seed=3)
        assert [p.choices for p in a.ask_batch(5)] == [p.choices for p in b.ask_batch(5)]


@pytest.mark.parametrize("name", NAMES)
def test_choices_in_range_and_seed_controls_the_sequence(name):
    a, b, c = (make(name, SIZES, seed=s, **SMALL[name]) for s in (1, 1, 2))
    seq = []
    for ctl in (a, b, c):
        props = []
        for _ in range(12):
            p = ctl.ask()
            ctl.tell(p, zeros_reward(p.choices))
            props.append(p.choices)
        seq.append(props)
    assert seq[0] == seq[1] and seq[0] != seq[2]
    for choices in seq[0]:
        assert len(choices) == len(SIZES)
        assert all(0 <= k < s for k, s in zip(choices, SIZES))


@pytest.mark.parametrize("name", NAMES)
def test_batch_asks_told_out_of_order_and_bad_tells_rejected(name):
    ctl = make(name, SIZES, seed=0, **SMALL[name])
    for _ in range(3):
        batch = ctl.ask_batch(6)
        assert len({p.id for p in batch}) == 6
        random.Random(1).shuffle(batch)
        for p in batch:
            ctl.tell(p, zeros_reward(p.choices))
    p = ctl.ask()
    ctl.tell(p, 0.5)
    with pytest.raises(ValueError, match="already told"):
        ctl.tell(p, 0.5)
    with pytest.raises(ValueError, match="already told"):
        ctl.tell_failure(p, "failed")
    q = ctl.ask()
    forged = type(q)(q.id + 1000, q.choices)
    with pytest.raises(ValueError, match="unknown"):
        ctl.tell(forged, 0.1)
    with pytest.raises(ValueError, match="finite"):
        ctl.tell(q, float("nan"))
    ctl.tell(q, 0.1)  # the rejected NaN left q pending


@pytest.mark.parametrize("name", NAMES)
def test_failures_do_not_crash(name):
    ctl = make(name, SIZES, seed=0, **SMALL[name])
    for _ in range(40):
        batch = ctl.ask_batch(3)
        ctl.tell_failure(batch[0], "oom")
        ctl.tell(batch[1], zeros_reward(batch[1].choices))
        ctl.tell_failure(batch[2], "diverged")
    assert ctl.n_failed == 80 and ctl.n_told == 40


def test_evolution_failures_stay_out_of_population_and_are_not_reproposed():
    evo = RegularizedEvolution(SIZES, seed=0, population_size=8, sample_size=3)
    failed, asked = set(), set()
    for i in range(60):
        p = evo.ask()
        assert p.choices not in asked
        asked.add(p.choices)
        if i % 3 == 0:
            evo.tell_failure(p, "failed")
            failed.add(p.choices)
        else:
            evo.tell(p, zeros_reward(p.choices))
    assert not failed & {c for c, _ in evo.population}
    assert len(evo.population) == 8


def test_rl_failure_reward_defaults_to_lowest_seen():
    rl = RLController(SIZES, seed=0, batch_size=100)
    p, q, f = rl.ask(), rl.ask(), rl.ask()
    rl.tell(p, 0.9)
    rl.tell(q, 0.4)
    rl.tell_failure(f, "timeout")
    assert rl.min_reward == 0.4
    # baseline after rewards 0.9, 0.4 and the failure's 0.4 (decay 0.95)
    b = 0.9
    for r in (0.4, 0.4):
        b = 0.95 * b + 0.05 * r
    assert rl.baseline == pytest.approx(b)
    rl2 = RLController(SIZES, seed=0, batch_size=100, failure_reward=-1.0)
    rl2.tell_failure(rl2.ask(), "failed")
    assert rl2.baseline == -1.0


def test_evolution_never_reproposes_over_300_asks():
    sizes = [3, 3, 3, 2, 2, 2, 2]  # 432 architectures
    evo = RegularizedEvolution(sizes, seed=5, population_size=20, sample_size=5)
    seen = set()
    mutations = 0
    for _ in range(50):
        batch = evo.ask_batch(6)
        for p in batch:
            assert p.choices not in seen
            seen.add(p.choices)
            mutations += evo.ledger.check(p) == "mutation"
        random.Random(0).shuffle(batch)
        for p in batch:
            evo.tell(p, zeros_reward(p.choices))
    assert len(seen) == 300 and mutations > 200


def test_evolution_mutates_exactly_one_decision_of_a_member():
    evo = RegularizedEvolution(SIZES, seed=2, population_size=10, sample_size=4)
    members = set()
    for _ in range(80):
        p = evo.ask()
        if evo.ledger.check(p) == "mutation":
            assert any(sum(a != b for a, b in zip(p.choices, m)) == 1 for m in members)
        evo.tell(p, zeros_reward(p.choices))
        members |= {c for c, _ in evo.population}


def test_evolution_mutates_after_s_random_members_then_grows_and_ages():
    """Default: S random proposals, then children; the population grows to P, then ages."""
    for initial, expected_random in ((None, 3), (8, 8)):
        evo = RegularizedEvolution(SIZES, seed=1, population_size=8, sample_size=3,
                                   initial_random=initial)
        origins, told = [], []
        for _ in range(30):
            p = evo.ask()
            origins.append(evo.ledger.check(p))
            evo.tell(p, zeros_reward(p.choices))
            told.append(p.choices)
            assert len(evo.population) == min(len(told), 8)
        assert origins[:expected_random] == ["random"] * expected_random
        assert origins[expected_random] == "mutation"
        assert [c for c, _ in evo.population] == told[-8:]  # the oldest were removed
    with pytest.raises(ValueError):
        RegularizedEvolution(SIZES, population_size=8, sample_size=3, initial_random=9)


def test_evolution_and_unique_random_exhaust_with_key_fn():
    key = lambda c: tuple(sorted(c))  # noqa: E731  (merges permutations: 10 keys for [3,3,3])
    for ctl in (RegularizedEvolution([3, 3, 3], seed=0, population_size=4, sample_size=2,
                                     key_fn=key),
                RandomSearch([3, 3, 3], seed=0, key_fn=key)):
        keys = set()
        for _ in range(10):
            p = ctl.ask()
            assert key(p.choices) not in keys
            keys.add(key(p.choices))
            ctl.tell(p, zeros_reward(p.choices))
        with pytest.raises(SpaceExhausted) as exc:
            ctl.ask()
        # not a StopIteration: inside a generator that would turn into a RuntimeError
        assert not isinstance(exc.value, StopIteration)

        def gen(c=ctl):
            yield c.ask()
        with pytest.raises(SpaceExhausted):
            next(gen())


def test_rl_probability_of_the_dominant_choice_rises():
    sizes = [3] * 10
    rl = RLController(sizes, seed=0)
    before = sum(p[0] for p in rl.choice_probs()) / len(sizes)
    for _ in range(300):
        p = rl.ask()
        rl.tell(p, zeros_reward(p.choices))
    after = sum(p[0] for p in rl.choice_probs()) / len(sizes)
    assert before < 0.4 and after > 0.6, (before, after)


def test_rl_leaves_the_global_torch_rng_alone():
    """Constructing (nn.LSTMCell's own init draws from the global RNG), asking, telling,
    saving and loading use only the controller's generator."""
    state = torch.get_rng_state()
    rl = RLController(SIZES, seed=0, batch_size=2)
    for i in range(6):
        p = rl.ask()
        rl.tell(p, float(i))
    assert rl.n_updates == 3
    rl.choice_probs()
    RLController(SIZES, seed=5).load_state_dict(rl.state_dict())
    assert torch.equal(state, torch.get_rng_state())


def test_rl_weights_come_from_the_seed():
    def weights(seed):
        return RLController(SIZES, seed=seed).policy.state_dict()
    a, b, c = weights(4), weights(4), weights(5)
    assert list(a) == list(c) and any("cell.weight_hh" in k for k in a)  # an nn.LSTMCell inside
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a)
    assert all(v.abs().max() <= 0.1 for v in a.values())  # NASNet/ENAS init range


def test_rl_update_cost_does_not_grow_with_the_tells():
    """Every PPO update sees exactly one batch; the buffer never holds more."""
    rl = RLController(SIZES, seed=0, batch_size=4, ppo_epochs=2)
    rows = []
    evaluate = rl.policy.evaluate

    def counting(choices):
        rows.append(choices.shape[0])
        return evaluate(choices)
    rl.policy.evaluate = counting
    for _ in range(25):
        batch = rl.ask_batch(4)
        for p in batch:
            rl.tell(p, zeros_reward(p.choices))
            assert len(rl.buffer) < 4
    assert rows == [4] * (2 * 25)
    assert rl.n_updates == 25


@pytest.mark.parametrize("name", NAMES)
def test_exact_resume_with_pending_proposals(name):
    def drive(ctl, pending, rounds, seed):
        """Tell the pending ones shuffled, then batch-ask/tell, leaving 2 pending."""
        rng = random.Random(seed)
        out = []
        for r in range(rounds):
            batch = pending + ctl.ask_batch(5)
            rng.shuffle(batch)
            pending = batch[:2]
            for i, p in enumerate(batch[2:]):
                if (r + i) % 7 == 3:
                    ctl.tell_failure(p, "failed")
                else:
                    ctl.tell(p, zeros_reward(p.choices) + 0.01 * i)
            out += [(p.id, p.choices) for p in batch]
        return out, pending

    a = make(name, SIZES, seed=7, **SMALL[name])
    _, pending = drive(a, [], 6, seed=0)
    saved = a.state_dict()
    assert is_plain(saved), saved  # no tuples, sets or objects: JSON and tensors only
    state = decode_state(encode_state(saved))  # what the store writes and reads back
    b = make(name, SIZES, seed=99, **SMALL[name])  # another seed: the state must override it
    b.load_state_dict(state)
    cont_a, _ = drive(a, list(pending), 8, seed=1)
    cont_b, _ = drive(b, list(pending), 8, seed=1)
    assert cont_a == cont_b
    assert len(set(cont_a)) > 10
    if name == "rl":
        assert a.n_updates == b.n_updates > 5
        assert a.choice_probs() == b.choice_probs()


def test_load_state_refuses_another_kind_or_space():
    state = make("random", SIZES).state_dict()
    with pytest.raises(ValueError, match="not 'evolution'"):
        make("evolution", SIZES).load_state_dict(state)
    with pytest.raises(ValueError, match="sizes"):
        make("random", [2, 2]).load_state_dict(state)


def test_proposals_on_the_real_space_are_in_range_and_distinct_by_key():
    """On the default space (49 decisions of different sizes) every choice is within its
    decision, and with `key_fn=space.key` no two proposals decode to the same canonical
    architecture (the space maps several choice tuples onto one)."""
    from search_space.space import SearchSpace
    space = SearchSpace.default()
    sizes = [len(d.choices) for d in space.decisions]
    for name in NAMES:
        kwargs = {"key_fn": space.key} if name != "rl" else {}
        ctl = make(name, space.decisions, seed=0, **kwargs)
        keys = []
        for _ in range(25):
            p = ctl.ask()
            assert len(p.choices) == len(sizes) and all(0 <= c < s for c, s in zip(p.choices, sizes))
            spec = space.decode(p.choices)
            keys.append(spec.key())
            ctl.tell(p, zeros_reward(p.choices))
        if kwargs:  # (evolution without key_fn repeats 2-4 canonical keys in 25 asks here)
            assert len(set(keys)) == len(keys), name


# bench/controllers.py: tests/test_bench_controllers.py


@pytest.mark.parametrize("norm", ["batch", "running"])
def test_rl_normalised_advantages_ignore_the_reward_scale(norm):
    """Rewards r and 1000 r + 7 give the same proposals (MnasNet rewards differ by ~1 %)."""
    runs = []
    for scale, shift in ((1.0, 0.0), (1000.0, 7.0)):
        rl = RLController(SIZES, seed=3, batch_size=4, normalize_advantage=norm)
        seq = []
        for _ in range(24):
            p = rl.ask()
            seq.append(p.choices)
            rl.tell(p, scale * zeros_reward(p.choices) + shift)
        runs.append(seq)
    assert runs[0] == runs[1]
    with pytest.raises(ValueError):
        RLController(SIZES, normalize_advantage="std")
