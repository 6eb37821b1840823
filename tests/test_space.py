"""The MnasNet search space: B0 inside it, decode validity, sampling, mutation, size, file errors."""
from __future__ import annotations

import copy
import itertools
import math
import random

import numpy as np
import pytest
import yaml

from search_space import ArchSpec, Decision, SpecError
from search_space.space import SearchSpace

B0_TF_STRINGS = [  # docs/reference.md, "EfficientNet-B0": the TF reference's efficientnet-b0
    "r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25", "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]
B0_BASE = [(1, 16, 1), (2, 24, 2), (2, 40, 2), (3, 80, 2), (3, 112, 1), (4, 192, 2), (1, 320, 1)]


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.default()


def _b0() -> ArchSpec:
    try:
        from search_space import zoo
        return zoo.get("efficientnet-b0")
    except ImportError:
        return ArchSpec.from_tf_strings(B0_TF_STRINGS)


def _round8(c: float) -> int:
    new = max(8, int(c + 4) // 8 * 8)
    return new + 8 if new < 0.9 * c else new


def _tiny(**choices) -> dict:
    return {"stem_channels": 16, "head_channels": 64, "num_classes": 10,
            "choices": {"conv_op": ["mbconv", "dsconv", "conv"], "kernel": [3], "expand_ratio": [1, 6],
                        "se_ratio": [0, 0.25], "skip": ["identity"], "filter_multiplier": [0.75, 1.0],
                        "layers_delta": [-1, 0], **choices},
            "blocks": [{"repeats": 1, "kernel": 3, "stride": 1, "expand_ratio": 1, "out_channels": 16},
                       {"repeats": 2, "kernel": 3, "stride": 2, "expand_ratio": 6, "out_channels": 24,
                        "choices": {"kernel": [3, 5]}}]}


# -- EfficientNet-B0 --------------------------------------------------------------------

def test_default_space_contains_efficientnet_b0(space):
    b0 = _b0()
    assert b0.key() == ArchSpec.from_tf_strings(B0_TF_STRINGS).key()
    choices = space.encode(b0)
    assert choices is not None
    assert space.decode(choices).key() == b0.key()
    assert space.key(choices) == b0.key()
    named = {d.name: d.choices[c] for d, c in zip(space.decisions, choices)}
    assert named["b0.filter_multiplier"] == 1.0 and named["b5.layers_delta"] == 0 and named["b2.kernel"] == 5
    assert space.base_choices() == choices  # the skeleton is B0
    assert space.skeleton().key() == b0.key()


def test_default_space_shape(space):
    assert len(space.blocks) == 7 and len(space.decisions) == 7 * 7
    assert all(isinstance(d, Decision) for d in space.decisions)
    names = [d.name for d in space.decisions]
    assert len(set(names)) == len(names) and "b3.kernel" in names
    assert dict((d.name, d.choices) for d in space.decisions)["b3.filter_multiplier"] == (0.75, 1.0, 1.25)
    assert (space.stem_channels, space.head_channels, space.activation) == (32, 1280, "swish")
    assert space.log10_size == pytest.approx(7 * math.log10(3 * 2 * 3 * 2 * 2 * 3 * 3))


def test_encode_rejects_specs_outside_the_space(space):
    b0 = _b0()
    strings = list(B0_TF_STRINGS)
    strings[3] = strings[3].replace("k3", "k7")
    assert space.encode(ArchSpec.from_tf_strings(strings)) is None
    assert space.encode(ArchSpec.from_tf_strings(B0_TF_STRINGS[:6])) is None  # one block short
    assert space.encode(ArchSpec.from_dict({**b0.to_dict(), "activation": "relu"})) is None
    strings = list(B0_TF_STRINGS)
    strings[5] = "r6_k5_s22_e6_i112_o192_se0.25"  # base 4 + 2 layers: outside delta {-1, 0, 1}
    assert space.encode(ArchSpec.from_tf_strings(strings)) is None


# -- decode -----------------------------------------------------------------------------

def test_decode_2000_random_samples_are_valid_and_follow_the_choices(space):
    rng = np.random.default_rng(0)
    conv_ops = set()
    for _ in range(2000):
        choices = space.sample(rng)
        spec = space.decode(choices)
        named = {d.name: d.choices[c] for d, c in zip(space.decisions, choices)}
        cin = 32
        for i, (block, (base_r, base_c, stride)) in enumerate(zip(spec.blocks, B0_BASE)):
            v = {k.split(".", 1)[1]: val for k, val in named.items() if k.startswith(f"b{i}.")}
            assert block.in_channels == cin
            assert block.out_channels == _round8(base_c * v["filter_multiplier"]) and block.out_channels % 8 == 0
            assert block.repeats == max(1, base_r + v["layers_delta"])
            assert (block.kernel, block.stride) == (v["kernel"], stride)
            no_residual_possible = block.repeats == 1 and (stride != 1 or block.in_channels != block.out_channels)
            assert block.skip == (v["skip"] == "identity" or no_residual_possible)  # canonical fold
            if v["conv_op"] == "conv":
                assert (block.conv_op, block.se_ratio, block.expand_ratio) == ("conv", 0, 1)
            else:
                assert block.se_ratio == v["se_ratio"]
                e = 1 if v["conv_op"] == "dsconv" else v["expand_ratio"]
                assert block.expand_ratio == e and block.conv_op == ("dsconv" if e == 1 else "mbconv")
            conv_ops.add(block.conv_op)
            cin = block.out_channels
        again = ArchSpec.from_dict(spec.to_dict())  # passes ArchSpec's validation from scratch
        assert again.key() == spec.key()
        assert space.decode(space.encode(spec)).key() == spec.key()
    assert conv_ops == {"mbconv", "dsconv", "conv"}


def test_decode_overrides_and_bad_choices(space):
    c = space.sample(1)
    spec = space.decode(c, num_classes=10, resolution=128)
    assert (spec.num_classes, spec.resolution) == (10, 128)
    assert space.decode(c).num_classes == 1000
    assert space.encode(spec) == space.encode(space.decode(c))  # num_classes is not a decision
    with pytest.raises(SpecError, match="expected 49 choices"):
        space.decode(c[:-1])
    bad = list(c)
    bad[1] = 2  # b0.kernel has two options
    with pytest.raises(SpecError, match=r"b0\.kernel"):
        space.decode(bad)


# -- sample / mutate --------------------------------------------------------------------

def test_sample_is_reproducible_by_seed(space):
    assert space.sample(7) == space.sample(7)
    assert space.sample(np.random.default_rng(3)) == space.sample(np.random.default_rng(3))
    assert space.sample(random.Random(5)) == space.sample(random.Random(5))
    draws = [tuple(space.sample(s)) for s in range(20)]
    assert len(set(draws)) == 20
    for d in draws:
        assert all(0 <= c < dec.size for c, dec in zip(d, space.decisions))
    rng = np.random.default_rng(11)
    first = [space.sample(rng) for _ in range(3)]
    rng = np.random.default_rng(11)
    assert [space.sample(rng) for _ in range(3)] == first


def test_mutate_changes_exactly_one_decision_and_the_network(space):
    rng = np.random.default_rng(1)
    changed_names = set()
    for _ in range(300):
        parent = space.sample(rng)
        child = space.mutate(parent, rng)
        diff = [i for i, (a, b) in enumerate(zip(parent, child)) if a != b]
        assert len(diff) == 1
        assert 0 <= child[diff[0]] < space.decisions[diff[0]].size
        assert space.key(child) != space.key(parent)
        changed_names.add(space.decisions[diff[0]].name.split(".")[1])
    assert changed_names == {"conv_op", "kernel", "expand_ratio", "se_ratio", "skip", "filter_multiplier", "layers_delta"}
    b0 = _b0()
    child = space.mutate(b0, random.Random(0))
    assert sum(a != b for a, b in zip(space.encode(b0), child)) == 1
    assert space.key(child) != b0.key()
    assert space.mutate(space.encode(b0), 4) == space.mutate(space.encode(b0), 4)


def test_mutate_when_no_single_change_alters_the_network():
    # A plain conv ignores expansion: the only decision cannot change the network.
    d = _tiny(conv_op=["conv"], expand_ratio=[3, 6], se_ratio=[0], filter_multiplier=[1.0], layers_delta=[0])
    d["blocks"][1]["choices"] = {}
    s = SearchSpace.from_dict(d)
    assert [x.name for x in s.decisions] == ["b0.expand_ratio", "b1.expand_ratio"]
    child = s.mutate([0, 1], 0)
    assert sum(a != b for a, b in zip([0, 1], child)) == 1
    assert s.key(child) == s.key([0, 1])


# -- size -------------------------------------------------------------------------------

def test_log10_size_matches_direct_enumeration():
    s = SearchSpace.from_dict(_tiny())
    vectors = list(itertools.product(*[range(d.size) for d in s.decisions]))
    assert 10 ** s.log10_size == pytest.approx(len(vectors))
    assert len(vectors) == (3 * 2 * 2 * 2 * 2) * (3 * 2 * 2 * 2 * 2 * 2)
    keys = {s.key(v) for v in vectors}
    assert 10 ** s.log10_distinct_size == pytest.approx(len(keys))
    assert len(keys) < len(vectors)  # dsconv/conv duplicates, 0.75x16 rounds to 16, max(1, 1-1)


def test_log10_distinct_size_counts_skip_only_where_a_residual_can_exist():
    # Block 1 strides, and with delta -1 has one layer: identity and none are then the same
    # network. Block 2 (stride 1, one layer) has a residual only when its width equals block 1's
    # (24, at either multiplier), i.e. at multiplier 0.75 (32 -> 24): skip matters there only.
    d = _tiny(skip=["identity", "none"], conv_op=["mbconv", "conv"], expand_ratio=[6])
    d["blocks"].append({"repeats": 1, "kernel": 3, "stride": 1, "expand_ratio": 6, "out_channels": 32,
                        "choices": {"layers_delta": [0]}})
    s = SearchSpace.from_dict(d)
    keys = {s.key(v) for v in itertools.product(*[range(x.size) for x in s.decisions])}
    assert 10 ** s.log10_distinct_size == pytest.approx(len(keys))
    assert SearchSpace.default().log10_distinct_size == pytest.approx(15.713, abs=1e-3)


def test_fixed_choices_give_no_decision():
    d = _tiny()
    d["blocks"][0]["choices"] = {"conv_op": "conv", "se_ratio": [0]}
    s = SearchSpace.from_dict(d)
    names = [x.name for x in s.decisions]
    assert "b0.conv_op" not in names and "b0.se_ratio" not in names and "b1.conv_op" in names
    assert all(b.conv_op == "conv" for b in [s.decode(s.sample(i)).blocks[0] for i in range(10)])


# -- the file ---------------------------------------------------------------------------

def test_yaml_round_trip(space, tmp_path):
    path = tmp_path / "space.yaml"
    space.save(path)
    again = SearchSpace.from_yaml(path)
    assert again == space
    assert again.decisions == space.decisions
    for seed in range(20):
        c = space.sample(seed)
        assert again.key(c) == space.key(c)
    custom = SearchSpace.from_dict(_tiny(kernel=[3, 5, 7]))
    custom.save(path)
    back = SearchSpace.from_yaml(path)
    assert back == custom and back.decisions == custom.decisions
    assert dict(back.blocks[1].choices) == {"kernel": (3, 5)}
    assert yaml.safe_load(path.read_text())["blocks"][1]["choices"] == {"kernel": [3, 5]}


def _default_dict() -> dict:
    return yaml.safe_load(SearchSpace.default().to_yaml())


def _set(path: str, value):
    def edit(d):
        *parents, last = path.split("/")
        for p in parents:
            d = d[int(p)] if p.isdigit() else d.setdefault(p, {})
        d[last] = value
    return edit


BAD_INPUTS = [  # (edit of the default file, field named, words of the problem)
    (_set("colour", "red"), "colour", "unknown key"),
    (_set("blocks/2/kernal", 5), "blocks[2].kernal", "unknown key"),
    (_set("blocks/1/choices/kernal", [3]), "blocks[1].choices.kernal", "unknown choice"),
    (_set("choices/width", [1]), "choices.width", "unknown choice"),
    (_set("blocks/2/choices/kernel", [3, 4]), "blocks[2].choices.kernel", "odd"),
    (_set("choices/kernel", [-3, 5]), "choices.kernel", "positive odd"),
    (_set("choices/kernel", [0]), "choices.kernel", "positive odd"),
    (_set("blocks/0/kernel", 4), "blocks[0].kernel", "odd"),
    (_set("blocks/3/out_channels", -80), "blocks[3].out_channels", "positive integer"),
    (_set("blocks/3/out_channels", 0), "blocks[3].out_channels", "positive integer"),
    (_set("stem_channels", -32), "stem_channels", "positive integer"),
    (_set("head_channels", 0), "head_channels", "positive integer"),
    (_set("choices/expand_ratio", []), "choices.expand_ratio", "empty choice list"),
    (_set("blocks/4/choices/se_ratio", []), "blocks[4].choices.se_ratio", "empty choice list"),
    (_set("blocks/0/choices/filter_multiplier", [0.2, 1.0]), "blocks[0].choices.filter_multiplier", "0 channels"),
    (_set("choices/filter_multiplier", [0, 1.0]), "choices.filter_multiplier", "positive"),
    (_set("choices/filter_multiplier", [-0.5]), "choices.filter_multiplier", "positive"),
    (_set("choices/skip", ["identity", "pooling"]), "choices.skip", "unknown skip op"),
    (_set("choices/conv_op", ["mbconv", "sepconv"]), "choices.conv_op", "unknown conv op"),
    (_set("choices/kernel", [3, 3]), "choices.kernel", "duplicate"),
    (_set("blocks/1/stride", 3), "blocks[1].stride", "1 or 2"),
    (_set("blocks", []), "blocks", "empty"),
    (lambda d: d["blocks"][5].pop("repeats"), "blocks[5]", "missing repeats"),
]


@pytest.mark.parametrize("edit,field,problem", BAD_INPUTS, ids=[b[1] + ":" + b[2] for b in BAD_INPUTS])
def test_bad_space_file(tmp_path, edit, field, problem):
    data = copy.deepcopy(_default_dict())
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError) as info:
        SearchSpace.from_yaml(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: ")
    assert problem in message


def test_yaml_that_does_not_parse(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("stem_channels: 32\nblocks:\n  - {repeats: 1, kernel: 3\n  - [\n")
    with pytest.raises(SpecError) as info:
        SearchSpace.from_yaml(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: line ") and "does not parse" in message


def test_missing_file_and_non_mapping(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope\.yaml: cannot read the space file"):
        SearchSpace.from_yaml(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        SearchSpace.from_yaml(path)
