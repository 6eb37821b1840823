"""Measured latency and the latency table: real timings at 32x32 with few repeats, fake timers
for counting, the table file's key and format, and the CLI's one-line errors. No speed asserts."""
import itertools
import json
import math

import pytest
import torch

from search_space import SearchSpace, zoo
from search_space.__main__ import main
from search_space.latency import (LatencyError, layer_configs, measure, measure_parts, resolve_device,
                                  space_configs)
from search_space.latency_table import Calibration, LatencyTable, fit_calibration, read_table

B0 = zoo.get("efficientnet-b0")
FAST = {"warmup": 1, "repeats": 3}

TINY_SPACE = """
stem_channels: 8
head_channels: 16
num_classes: 10
resolution: 32
choices:
  conv_op: [mbconv, conv]
  kernel: [3, 5]
  expand_ratio: [3]
  se_ratio: [0]
  skip: [identity, none]
  filter_multiplier: [1.0]
  layers_delta: [0]
blocks:
  - {repeats: 1, kernel: 3, stride: 1, expand_ratio: 3, out_channels: 8}
  - {repeats: 2, kernel: 3, stride: 2, expand_ratio: 3, out_channels: 16,
     choices: {filter_multiplier: [0.5, 1.0], layers_delta: [-1, 0]}}
"""
# stem 1; block 0 (8 -> 8, stride 1, residual possible): 2 ops x 2 kernels x skip/noskip = 8;
# block 1 first layer (8 -> 8 or 16, stride 2, never residual): 2 widths x 4 = 8; its second
# layer (stride 1, out -> out): 2 widths x 4 x skip/noskip = 16; head: 2 input widths.
TINY_CONFIGS = 1 + 8 + 8 + 16 + 2


class FakeTimer:
    """Stands in for the timing of one group; every answer is new, so an overwrite would show."""

    def __init__(self):
        self.timed = []
        self.next = 100.0

    def __call__(self, configs):
        out = []
        for c in configs:
            self.timed.append(c.key())
            out.append(self.next)
            self.next += 1.0
        return out


def fake_table(path=None, **kw):
    timer = FakeTimer()
    return LatencyTable(path, measure_fn=timer, **kw), timer


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sample_specs(n, seed=0):
    space = SearchSpace.default()
    return [space.decode(space.sample(seed + i)) for i in range(n)]


# -- measurement --------------------------------------------------------------------------
def test_measure_is_positive_finite_with_the_threads_asked_and_restores_them():
    before = torch.get_num_threads()
    lat = measure(B0, 32, threads=2, tries=1, **FAST)
    assert torch.get_num_threads() == before
    assert lat.threads == 2 and lat.device == "cpu" and lat.batch == 1 and lat.resolution == 32
    assert lat.torch == torch.__version__ and lat.dtype == "float32" and lat.repeats == 3
    for v in (lat.median_ms, lat.p25_ms, lat.p75_ms, lat.min_ms):
        assert math.isfinite(v) and v > 0
    assert lat.min_ms <= lat.p25_ms <= lat.median_ms <= lat.p75_ms and lat.iqr_ms >= 0
    assert json.loads(json.dumps(lat.to_dict()))["iqr_ms"] == lat.iqr_ms
    assert "ms median" in lat.summary()


def test_channels_last_batch_and_parts():
    lat = measure(B0, 32, batch=2, channels_last=True, threads=1, **FAST)
    assert lat.channels_last and lat.batch == 2 and lat.median_ms > 0
    parts = layer_configs(B0, 32)[:3] + layer_configs(B0, 32)[-1:]
    lats = measure_parts(parts, threads=1, **FAST)
    assert [x.resolution for x in lats] == [c.size for c in parts]
    assert all(math.isfinite(x.median_ms) and x.median_ms > 0 and x.threads == 1 for x in lats)


def test_parts_cover_the_network_geometry():
    configs = layer_configs(B0, 224)
    assert len(configs) == B0.num_layers + 2
    assert configs[0].key() == "stem_i3_o32_r224_swish" and configs[-1].key() == "head_i320_o1280_c1000_r7_swish"
    assert configs[1].key() == "dsconv_k3_s1_e1_se0.25_i32_o16_r112_noskip_swish"
    assert configs[3].key() == "mbconv_k3_s1_e6_se0.25_i24_o24_r56_skip_swish"  # block 2's second layer
    # each part's module maps its input shape to the next part's
    with torch.inference_mode():
        x = torch.zeros(configs[0].input_shape(1))
        for c in configs[:-1]:
            assert tuple(x.shape) == c.input_shape(1)
            x = c.module().eval()(x)


def test_unknown_device_and_dtype_are_refused():
    for bad in ("tpu", "mps", "gpu", "cuda:x"):
        with pytest.raises(LatencyError, match="unknown device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(LatencyError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(LatencyError, match="dtype"):
        measure(B0, 32, dtype="float64", **FAST)


# -- the table ------------------------------------------------------------------------------
def test_prediction_is_the_sum_of_its_entries():
    table, _ = fake_table()
    spec = sample_specs(1)[0]
    predicted = table.predict(spec, 224)
    configs = layer_configs(spec, 224)
    assert predicted == pytest.approx(sum(table.entries[c.key()].us for c in configs))
    assert [us for _, us in table.breakdown(spec, 224)] == [table.entries[c.key()].us for c in configs]
    table.calibration = Calibration("scale", 2.0, 0.0, 5)
    assert table.predict(spec, 224) == pytest.approx(2 * predicted)
    assert table.predict(spec, 224, calibrated=False) == pytest.approx(predicted)


def test_lazy_fill_measures_each_distinct_configuration_once():
    table, timer = fake_table(group=8)
    specs = sample_specs(6) + [B0, B0]
    wanted = {c.key() for s in specs for c in layer_configs(s, 224)}
    first = {}
    for spec in specs:
        table.predict(spec, 224)
        for k, e in table.entries.items():
            assert first.setdefault(k, e.us) == e.us  # never re-measured into the table
    assert set(table.entries) == wanted and table.measurements == len(wanted)
    assert set(timer.timed) == wanted
    n = len(timer.timed)
    for spec in specs:
        table.predict(spec, 224)
    assert len(timer.timed) == n  # a full table times nothing


def test_groups_are_network_sized_and_ordered():
    sizes = []
    table = LatencyTable(measure_fn=lambda cs: sizes.append([c.size for c in cs]) or [1.0] * len(cs), group=20)
    assert table.build(SearchSpace.default(), 64) > 0
    assert all(len(g) <= 20 for g in sizes) and min(len(g) for g in sizes) >= 10
    assert all(g == sorted(g, reverse=True) for g in sizes)  # stem (64) first, head (2) last


def test_build_enumerates_the_distinct_configurations_of_a_tiny_space(tmp_path):
    space = SearchSpace.from_yaml_text(TINY_SPACE)
    configs = space_configs(space)
    assert len(configs) == TINY_CONFIGS == len({c.key() for c in configs})
    every = set()  # the union over every network of the space is exactly what build enumerates
    for choices in itertools.product(*(range(d.size) for d in space.decisions)):
        every |= {c.key() for c in layer_configs(space.decode(list(choices)))}
    assert every == {c.key() for c in configs}
    table, timer = fake_table(tmp_path / "t.json")
    assert table.build(space) == TINY_CONFIGS and len(timer.timed) == TINY_CONFIGS
    assert table.build(space) == 0
    assert len(read_table(tmp_path / "t.json")[1]) == TINY_CONFIGS


def test_default_space_samples_are_covered_by_its_enumeration():
    space = SearchSpace.default()
    known = {c.key() for c in space_configs(space, 224)}
    for spec in sample_specs(50, seed=7):
        assert {c.key() for c in layer_configs(spec, 224)} <= known


def test_table_file_round_trips_and_merges(tmp_path):
    path = tmp_path / "table.json"
    a, _ = fake_table(path)
    b, _ = fake_table(path)  # another process with the same file
    s1, s2 = sample_specs(2, seed=3)
    a.predict(s1, 224)
    b.predict(s2, 224)  # b saves after a: a's entries must survive
    key, entries, _ = read_table(path)
    assert set(entries) == {c.key() for s in (s1, s2) for c in layer_configs(s, 224)}
    assert key == a.key
    assert not list(tmp_path.glob("*.tmp"))
    c, timer = fake_table(path)
    assert c.predict(s1, 224) == pytest.approx(a.predict(s1, 224)) and timer.timed == []


@pytest.mark.parametrize("field, value", [("threads", 7), ("device", "Some Other CPU"), ("torch", "0.1.0"),
                                          ("batch", 64)])
def test_table_from_other_conditions_is_refused_in_one_line(tmp_path, field, value):
    path = tmp_path / "table.json"
    table, _ = fake_table(path)
    table.predict(B0, 32)
    data = json.loads(path.read_text())
    data["key"][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyError) as exc:
        LatencyTable(path)
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and field in message and str(value) in message


@pytest.mark.parametrize("text, needle", [("{not json", "JSON does not parse"), ("[]", "JSON object"),
                                          ('{"format": "x"}', "format"),
                                          ('{"format": "search_space.latency_table/1", "key": {}}', "key")])
def test_malformed_table_is_one_line(tmp_path, text, needle):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(LatencyError) as exc:
        LatencyTable(path)
    assert len(str(exc.value).splitlines()) == 1 and needle in str(exc.value) and "bad.json" in str(exc.value)


def test_calibration_fits():
    raw = [10.0, 20.0, 30.0, 40.0]
    assert fit_calibration(raw, [11.0, 22.0, 33.0, 400.0], "scale").scale == pytest.approx(1.1)
    assert fit_calibration(raw, [12.0, 22.0, 32.0, 42.0], "offset").offset_us == pytest.approx(2.0)
    affine = fit_calibration(raw, [2 * r + 5 for r in raw], "affine")
    assert (affine.scale, affine.offset_us) == (pytest.approx(2.0), pytest.approx(5.0))
    assert fit_calibration(raw, raw, "none").apply(7.0) == 7.0


def test_calibrate_on_real_timings_is_kept_in_the_file(tmp_path):
    path = tmp_path / "t.json"
    table = LatencyTable(path, **FAST)
    cal = table.calibrate([B0, zoo.get("mnasnet-a1")], 32)
    assert cal.kind == "scale" and cal.specs == 2 and cal.scale > 0
    assert read_table(path)[2] == cal
    assert all(e.us > 0 for e in table.entries.values())


# -- command line ------------------------------------------------------------------------------
def test_describe_latency_prints_a_latency(capsys):
    code, out, err = run(capsys, "describe", "efficientnet-b0", "--resolution", "32", "--latency",
                         "--repeats", "3", "--warmup", "1")
    assert code == 0, err
    line = out.splitlines()[-1]
    assert line.startswith("latency: ") and " ms median" in line and "1 thread" in line
    assert "multiply-adds: " in out.splitlines()[-2]
    code, out, _ = run(capsys, "describe", "mnasnet-a1", "--resolution", "32", "--latency", "--json",
                       "--repeats", "2", "--warmup", "0", "--batch", "2")
    info = json.loads(out)
    assert code == 0 and info["latency"]["median_ms"] > 0 and info["latency"]["batch"] == 2
    assert info["macs"] > 0 and info["latency"]["threads"] == 1


def test_latency_build_measure_predict(capsys, tmp_path):
    space_file = tmp_path / "tiny.yaml"
    space_file.write_text(TINY_SPACE)
    table = tmp_path / "t.json"
    code, out, err = run(capsys, "latency", "build", "--space", str(space_file), "--table", str(table),
                         "--repeats", "2", "--warmup", "0")
    assert code == 0, err
    assert f"{TINY_CONFIGS} configurations" in out and "latency build" in err
    assert len(read_table(table)[1]) == TINY_CONFIGS
    spec = SearchSpace.from_yaml(space_file).decode([0] * len(SearchSpace.from_yaml(space_file).decisions))
    spec.save(tmp_path / "spec.yaml")
    code, out, err = run(capsys, "latency", "predict", str(tmp_path / "spec.yaml"), "--table", str(table), "--json",
                         "--repeats", "2", "--warmup", "0", "--breakdown")
    info = json.loads(out)
    assert code == 0 and info["measured_now"] == 0 and len(info["parts"]) == spec.num_layers + 2
    assert info["predicted_ms"] == pytest.approx(sum(p["us"] for p in info["parts"]) / 1e3)
    code, out, err = run(capsys, "latency", "measure", str(tmp_path / "spec.yaml"), "--table", str(table),
                         "--repeats", "2", "--warmup", "0")
    assert code == 0 and " ms median" in out and "predicted by" in out


def test_cli_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    good = tmp_path / "t.json"
    table, _ = fake_table(good)
    table.predict(B0, 32)
    other = json.loads(good.read_text())
    other["key"]["threads"] = 5
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "junk.json").write_text("{junk")
    cases = [
        (["latency", "measure", "efficientnet-b0", "--device", "tpu"], "tpu"),
        (["latency", "build", "--device", "tpu"], "tpu"),
        (["latency", "measure", "efficientnet-b0", "--threads", "0"], "--threads"),
        (["latency", "measure", "efficientnet-b0", "--dtype", "int8"], "int8"),
        (["latency", "measure", "nonet"], "nonet"),
        (["latency", "predict", "efficientnet-b0", "--resolution", "32", "--table", str(tmp_path / "other.json")],
         "threads 5 (file)"),
        (["latency", "build", "--table", str(tmp_path / "other.json")], "threads"),
        (["latency", "predict", "efficientnet-b0", "--table", str(tmp_path / "junk.json")], "junk.json"),
        (["latency", "build", "--space", str(tmp_path / "missing.yaml")], "missing.yaml"),
        (["latency", "frob"], "frob"),
        (["describe", "efficientnet-b0", "--threads", "2"], "--latency"),
    ]
    if not torch.cuda.is_available():
        cases.append((["latency", "measure", "efficientnet-b0", "--device", "cuda"], "CUDA"))
        cases.append((["describe", "efficientnet-b0", "--latency", "--device", "cuda"], "CUDA"))
    for argv, needle in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", argv
        assert len(err.splitlines()) == 1 and ": error: " in err and needle in err, (argv, err)


def test_block_shortcut_matches_layer_by_layer():
    from search_space.cost import out_size
    from search_space.latency import layer_config
    for spec in sample_specs(30, seed=11) + [B0, zoo.get("mnasnet-a1")]:
        slow, size = [], out_size(224, 2)
        for block in spec.blocks:
            for layer in block.layers():
                slow.append(layer_config(layer, size, spec.activation))
                size = out_size(size, layer.stride)
        assert layer_configs(spec, 224)[1:-1] == slow
