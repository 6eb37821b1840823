"""`python -m search_space describe`: the table, --json, and one-line errors for bad input."""
import json
import subprocess
import sys

import pytest

from search_space import cost, zoo
from search_space.__main__ import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_for_b0(capsys):
    code, out, err = run(capsys, "describe", "efficientnet-b0")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert any(l.split()[:4] == ["1", "Conv3x3", "224x224", "32"] for l in lines)
    assert any(l.split()[:6] == ["2", "MBConv1", "k3x3", "SE0.25", "112x112", "16"] for l in lines)
    assert any(l.split()[:6] == ["7", "MBConv6", "k5x5", "SE0.25", "14x14", "192"] for l in lines)
    assert any(l.split()[:2] == ["9", "Conv1x1"] and "7x7" in l and "1280" in l for l in lines)
    assert "5.29M (5,288,548)" in out
    assert f"0.39G ({cost.macs(zoo.get('efficientnet-b0')):,})" in out


def test_json_and_resolution(capsys):
    code, out, _ = run(capsys, "describe", "mnasnet_a1", "--json", "--resolution", "227")
    info = json.loads(out.strip().splitlines()[-1])
    spec = zoo.get("mnasnet-a1")
    assert code == 0
    assert (info["params"], info["macs"], info["resolution"]) == (cost.params(spec), cost.macs(spec, 227), 227)
    assert len(info["stages"]) == len(spec.blocks) + 2
    assert sum(s["macs"] for s in info["stages"]) == info["macs"]


def test_yaml_spec(capsys, tmp_path):
    spec = zoo.get("efficientnet-b0")
    spec.save(tmp_path / "b0.yaml")
    code, out, _ = run(capsys, "describe", str(tmp_path / "b0.yaml"), "--json")
    info = json.loads(out)
    assert code == 0 and info["params"] == 5_288_548 and info["resolution"] == 224


def test_bare_spec_argument_means_describe(capsys):
    code, out, _ = run(capsys, "efficientnet-b0", "--json")
    assert code == 0 and json.loads(out)["params"] == 5_288_548


BAD_YAML = {
    "parse.yaml": ("stem_channels: [32\nblocks: [r1_k3_s11_e1_i32_o16]\n", "does not parse"),
    "unknown.yaml": ("stem_channels: 32\nblocks: [r1_k3_s11_e1_i32_o16]\nwidth: 2\n", "unknown key 'width'"),
    "kernel.yaml": ("stem_channels: 32\nblocks:\n  - {repeats: 1, kernel: 4, stride: 1, expand_ratio: 1, "
                    "in_channels: 32, out_channels: 16}\n", "blocks[0].kernel"),
    "ratio.yaml": ("stem_channels: 32\nblocks:\n  - {repeats: 1, kernel: 3, stride: 1, expand_ratio: x, "
                   "in_channels: 32, out_channels: 16}\n", "blocks[0].expand_ratio"),
    "dropout.yaml": ("stem_channels: 32\ndropout: high\nblocks: [r1_k3_s11_e1_i32_o16]\n", "dropout"),
    "channels.yaml": ("stem_channels: 32\nblocks: [r1_k3_s11_e1_i32_o16, r1_k3_s11_e1_i24_o16]\n",
                      "blocks[1].in_channels"),
    "string.yaml": ("blocks: [r1_k3_s11_e1_i32_o16_zz]\n", "blocks[0]"),
    "empty.yaml": ("", "mapping"),
}


@pytest.mark.parametrize("name", sorted(BAD_YAML))
def test_bad_yaml_is_one_line_naming_file_and_field(capsys, tmp_path, name):
    text, field = BAD_YAML[name]
    (tmp_path / name).write_text(text)
    code, out, err = run(capsys, "describe", str(tmp_path / name))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("describe: error: ")
    assert name in err and field in err


@pytest.mark.parametrize("argv, needle", [
    (["describe", "efficientnet-b9"], "efficientnet-b9"),
    (["describe", "missing/spec.yaml"], "missing/spec.yaml"),
    (["describe", "efficientnet-b0", "--resolution", "0"], "--resolution"),
    (["describe", "efficientnet-b0", "--resolution", "big"], "--resolution"),
    (["describe"], "SPEC"),
])
def test_bad_arguments(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("describe: error: ") and needle in err


def test_module_entry_point_has_no_traceback():
    ok = subprocess.run([sys.executable, "-m", "search_space", "describe", "efficientnet-b0", "--json"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout.splitlines()[-1])["params"] == 5_288_548
    bad = subprocess.run([sys.executable, "-m", "search_space", "describe", "nonet"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("describe: error: ") and "Traceback" not in bad.stderr
    assert "efficientnet-b0" in bad.stderr  # names the known zoo networks
