"""ArchSpec / BlockSpec: round trips (dict, YAML, JSON, TF and timm block strings) and bad input."""
from __future__ import annotations

import math

import pytest

from search_space import ArchSpec, BlockSpec, SpecError, zoo
from search_space.space import SearchSpace

ONE = "r1_k3_s11_e1_i32_o16"


def _specs():
    space = SearchSpace.default()
    return [zoo.get(n) for n in zoo.names()] + [space.decode(space.sample(seed)) for seed in range(300)]


def test_round_trips_of_zoo_and_space_samples():
    for spec in _specs():
        assert ArchSpec.from_json(spec.to_json()) == spec
        assert ArchSpec.from_yaml(spec.to_yaml()) == spec
        kw = dict(stem_channels=spec.stem_channels, head_channels=spec.head_channels,
                  num_classes=spec.num_classes, activation=spec.activation)
        assert ArchSpec.from_tf_strings(spec.to_tf_strings(), **kw).key() == spec.key()
        assert ArchSpec.from_timm_arch_def(spec.to_timm_arch_def(), **kw).key() == spec.key()


def test_save_writes_json_or_yaml_by_suffix_and_load_reads_both(tmp_path):
    import json
    spec = zoo.get("mnasnet-a1")
    spec.save(tmp_path / "a.json")
    spec.save(tmp_path / "a.yaml")
    assert json.loads((tmp_path / "a.json").read_text())["blocks"]  # real JSON
    assert not (tmp_path / "a.yaml").read_text().lstrip().startswith("{")
    assert ArchSpec.load(tmp_path / "a.json") == spec == ArchSpec.load(tmp_path / "a.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.yaml"]  # no .tmp left


def test_timm_strings_of_the_zoo():
    assert zoo.get("efficientnet-b0").to_timm_arch_def()[:2] == [["ds_r1_k3_s1_e1_c16_se0.25"],
                                                                 ["ir_r2_k3_s2_e6_c24_se0.25"]]


def test_timm_plain_conv_has_a_residual_only_with_skip():
    # timm's `cn` block (ConvBnAct) adds its input only when the string says `skip`
    # (EfficientNetV2's `cn_r2_k3_s1_e1_c24_skip`); `ds`/`ir` add it unless `noskip`.
    plain = BlockSpec.from_timm_string("cn_r2_k3_s1_c24", in_channels=24)
    assert plain.conv_op == "conv" and not plain.has_residual()
    skipped = BlockSpec.from_timm_string("cn_r2_k3_s1_e1_c24_skip", in_channels=24)
    assert skipped.has_residual()
    assert BlockSpec.from_timm_string("ir_r2_k3_s1_e6_c24", in_channels=24).has_residual()
    assert not BlockSpec.from_timm_string("ir_r2_k3_s1_e6_c24_noskip", in_channels=24).has_residual()
    with_res = BlockSpec(2, 3, 1, 1, 24, 24, skip=True, conv_op="conv")
    without = BlockSpec(2, 3, 1, 1, 24, 24, skip=False, conv_op="conv")
    assert with_res.to_timm_string() == "cn_r2_k3_s1_c24_skip"
    assert without.to_timm_string() == "cn_r2_k3_s1_c24"
    for block in (with_res, without, BlockSpec(1, 3, 2, 1, 24, 32, conv_op="conv")):
        again = BlockSpec.from_timm_string(block.to_timm_string(), in_channels=block.in_channels)
        assert again.canonical() == block.canonical()


@pytest.mark.parametrize("text, words", [
    ("r1_k3.5_s11_e1_i32_o16", "'k3.5' needs a whole number"),
    ("r1.7_k3_s11_e1_i32_o16", "'r1.7' needs a whole number"),
    ("r1_k3_s11_e1_i32.9_o16", "'i32.9' needs a whole number"),
    ("r1_k3_s12_e1_i32_o16", "stride '12'"),
    ("r1_k3_s123_e1_i32_o16", "stride '123'"),
    ("r1_k3_e1_i32_o16", "missing stride"),
    ("r1_k3_s11_e1_i32_o16_zz", "cannot read token 'zz'"),
    ("r1_k3_k5_s11_e1_i32_o16", "'k3' and 'k5' give the same field twice"),
    ("r1_k3_s11_e1_i32_o16_se0.25_se0.5", "'se0.25' and 'se0.5'"),
])
def test_bad_tf_strings(text, words):
    with pytest.raises(SpecError) as info:
        BlockSpec.from_tf_string(text)
    assert words in str(info.value)


@pytest.mark.parametrize("text, words", [
    ("ir_r1_k3_s2.5_e6_c24", "stride '2.5'"),
    ("ir_r1_k3_s1_e6_c24.5", "'c24.5' needs a whole number"),
    ("xx_r1_k3_s1_c24", "block type"),
    ("ir_r1_k3_s1_e6_c24_skip_noskip", "'skip' and 'noskip' give the same field twice"),
])
def test_bad_timm_strings(text, words):
    with pytest.raises(SpecError) as info:
        BlockSpec.from_timm_string(text, in_channels=24)
    assert words in str(info.value)


BLOCK = {"repeats": 1, "kernel": 3, "stride": 1, "expand_ratio": 6, "in_channels": 32, "out_channels": 16}


@pytest.mark.parametrize("data, words", [
    ({"blocks": [ONE], "name": 5}, "name: must be a string"),
    ({"blocks": [ONE], "resolution": True}, "resolution: must be a positive integer"),
    ({"blocks": [ONE], "dropout": math.nan}, "dropout"),
    ({"blocks": [{**BLOCK, "stride": 1.0}]}, "blocks[0].stride: must be 1 or 2"),
    ({"blocks": [{**BLOCK, "stride": True}]}, "blocks[0].stride: must be 1 or 2"),
    ({"blocks": [{**BLOCK, "kernel": True}]}, "blocks[0].kernel"),
    ({"blocks": [{**BLOCK, "expand_ratio": math.inf}]}, "blocks[0].expand_ratio: must be a finite number"),
    ({"blocks": [{**BLOCK, "se_ratio": math.nan}]}, "blocks[0].se_ratio: must be a finite number"),
    ({"blocks": ONE}, "blocks: expected a list"),
])
def test_bad_spec_fields(data, words):
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict(data)
    assert words in str(info.value)


def test_blocks_and_block_strings_must_agree():
    b0 = zoo.get("efficientnet-b0")
    d = b0.to_dict()
    assert ArchSpec.from_dict(d) == b0
    d["block_strings"][1] = d["block_strings"][1].replace("k3", "k5")   # edited one, not the other
    with pytest.raises(SpecError, match=r"block_strings\[1\].*does not match blocks\[1\]"):
        ArchSpec.from_dict(d)
    d = b0.to_dict()
    d["blocks"][2]["kernel"] = 3
    with pytest.raises(SpecError, match=r"block_strings\[2\]"):
        ArchSpec.from_dict(d)
    d.pop("block_strings")                                              # only one: it is used
    assert ArchSpec.from_dict(d).blocks[2].kernel == 3
    d = b0.to_dict()
    d.pop("blocks")
    assert ArchSpec.from_dict(d) == b0


def test_a_file_that_is_not_text_is_one_spec_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SpecError, match="not a text file"):
        ArchSpec.load(path)
    with pytest.raises(SpecError, match="not a text file"):
        SearchSpace.from_yaml(path)


# -- search_space.fileio: the shared atomic write and YAML error line ---------------------
def test_write_atomic_replaces_whole_files_and_cleans_up_on_failure(tmp_path, monkeypatch):
    import os

    from search_space.fileio import write_atomic
    path = tmp_path / "out.png"
    write_atomic(path, "text\n")
    write_atomic(path, b"\x89PNG\r\n")                       # bytes are written untranslated
    assert path.read_bytes() == b"\x89PNG\r\n"
    assert path.stat().st_mode & 0o777 == 0o644               # not mkstemp's 0600

    def full(*_):
        raise OSError(28, "disk full")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert path.read_bytes() == b"\x89PNG\r\n"               # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # and no temporary is left


def test_yaml_problem_is_one_line_naming_the_line():
    import yaml

    from search_space.fileio import yaml_line, yaml_problem
    with pytest.raises(yaml.YAMLError) as info:
        yaml.safe_load("name: b0\nblocks: [r1_k3\n")
    exc = info.value
    assert yaml_line(exc) == 3 and "\n" in str(exc)           # PyYAML's own text spans lines
    text = yaml_problem(exc)
    assert text.startswith("line 3: ") and "\n" not in text
    assert yaml_problem(exc, with_line=False) == text[len("line 3: "):]
    assert yaml_problem(yaml.YAMLError("no mark here")) == "no mark here"
    with pytest.raises(SpecError, match=r"^spec YAML does not parse: line 3: "):
        ArchSpec.from_yaml("name: b0\nblocks: [r1_k3\n")
