"""Latency targets in the search (`--target-latency`): the reward's two terms on known numbers,
the cost window per target, predicted latency in the records, bad input as one line with
nothing written, resume, and stage 2's measured latency. Tables are filled by a fake timer
(`fake_us`) except in the one test that measures for real (a tiny space at 32x32)."""
import csv
import json
import shutil

import pytest
import torch

from nas.search import latency as L
from nas.errors import UserError
from nas.search.loop import SearchLoop
from nas.search.recipe import ControllerRecipe
from nas.search.settings import CostWindow, LoopSettings, StopRule
from nas.search.objective import Objective
from nas.search.records import new_job, trial_record
from nas.evaluate.result import TrialResult
from nas.cli.search import main
from nas.store import Store
from search_space import SearchSpace, zoo
from search_space.latency import layer_configs
from search_space.latency_table import LatencyTable

RES = 64
B0 = zoo.get("efficientnet-b0")
FAST = ["--evaluator", "tests.fake_evaluators:ok", "--device", "cpu", "--no-tensorboard", "--no-scale", "--quiet",
        "--no-progress", "--workers", "1", "--target-resolution", str(RES)]
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
  skip: [identity]
  filter_multiplier: [0.5, 1.0]
  layers_delta: [0]
blocks:
  - {repeats: 1, kernel: 3, stride: 1, expand_ratio: 3, out_channels: 8}
  - {repeats: 2, kernel: 3, stride: 2, expand_ratio: 3, out_channels: 16}
"""


def fake_us(configs):
    """A made-up but deterministic timing: bigger inputs and more channels take longer."""
    return [20.0 + c.size * c.out_channels / 40.0 for c in configs]


@pytest.fixture(autouse=True)
def fresh_tables():
    L.forget_tables()
    yield
    L.forget_tables()


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    """This machine's key, every part of the default space (and B0) at RES, fake figures."""
    path = tmp_path_factory.mktemp("lat") / "table.json"
    table = LatencyTable(path, measure_fn=fake_us)
    table.build(SearchSpace.default(), RES)
    table.fill(layer_configs(B0, RES))
    table.save()
    return path


def predicted(path, spec):
    table = LatencyTable(path, measure_fn=lambda cs: pytest.fail(f"measured {cs[0].key()}"))
    return table.predict_ms(spec, RES)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def edited(table_file, tmp_path, **key):
    data = json.loads(table_file.read_text())
    data["key"].update(key)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


# -- the reward and the cost window -----------------------------------------------------------
def test_reward_multiplies_one_mnasnet_term_per_target():
    soft = Objective(400_000_000, -0.07, -0.07, latency_ms=20.0)
    assert soft.reward(0.8, 200_000_000, 10.0) == pytest.approx(0.8 * 0.5 ** -0.07 * 0.5 ** -0.07)
    hard = Objective(400_000_000, 0.0, -1.0, latency_ms=20.0)
    assert hard.reward(0.8, 200_000_000, 40.0) == pytest.approx(0.8 * 1.0 * 0.5)   # only latency is over
    assert hard.reward(0.8, 800_000_000, 10.0) == pytest.approx(0.8 * 0.5 * 1.0)   # only MACs are over
    assert hard.reward(0.8, 800_000_000, 40.0) == pytest.approx(0.8 * 0.5 * 0.5)
    alone = Objective(None, -0.07, -0.07, latency_ms=20.0)
    assert alone.reward(0.8, 10 ** 12, 40.0) == pytest.approx(0.8 * 2.0 ** -0.07)   # MACs do not count
    assert Objective(400_000_000).reward(0.8, 200_000_000) == pytest.approx(0.8 * 0.5 ** -0.07)
    with pytest.raises(ValueError, match="predicted latency"):
        alone.reward(0.8, 1, None)
    with pytest.raises(ValueError, match="target"):
        Objective(None).reward(0.8, 1)
    assert hard.cost_only_reward(200_000_000, 80.0, 0.1) == pytest.approx(0.1 * 0.5 * 0.25)


def test_cost_window_applies_to_each_target(tmp_path, table_file):
    space = SearchSpace.default()
    store = Store.create(tmp_path / "run", {})

    def loop_for(macs_ratio, latency_ratio):
        ctl = ControllerRecipe("random", seed=1)
        probe = ctl.build(space).ask()
        spec = space.decode(list(probe.choices), num_classes=1000, resolution=RES)
        from search_space import cost
        macs, lat = cost.macs(spec, RES), predicted(table_file, spec)
        settings = LoopSettings(Objective(int(macs / macs_ratio), latency_ms=lat / latency_ratio,
                                          latency_table=str(table_file)), CostWindow(0.5, 1.0), StopRule(trials=4),
                                target_resolution=RES)
        return SearchLoop(store, space, ctl, settings), lat

    loop, lat = loop_for(1.0, 0.3)      # MACs on target, latency far below its window
    loop.next_job()
    rec = store.trials("search", "cost-only")[0]
    assert "latency 0.30x target" in rec["message"] and "MACs" not in rec["message"]
    assert rec["latency_ms"] == pytest.approx(lat)
    assert rec["reward"] == pytest.approx(loop.s.window.chance * 0.3 * 1.0)
    store.close()
    store = Store.create(tmp_path / "run2", {})
    loop, lat = loop_for(1.3, 0.9)      # latency inside, MACs above
    loop.next_job()
    rec = store.trials("search", "cost-only")[0]
    assert "MACs 1.30x target" in rec["message"] and "latency" not in rec["message"]
    store.close()
    store = Store.create(tmp_path / "run3", {})
    loop, lat = loop_for(0.9, 0.9)      # both inside: trained
    job = loop.next_job()
    assert job is not None and job.latency_ms == pytest.approx(lat) and store.trials() == []
    store.close()


def test_the_record_carries_the_predicted_latency_and_the_reward_uses_it(table_file):
    obj = Objective(400_000_000, latency_ms=5.0, latency_table=str(table_file))
    job = new_job("search", 3, B0, RES, objective=obj)
    assert job.latency_ms == pytest.approx(predicted(table_file, B0))
    rec = trial_record(job, TrialResult(status="ok", accuracy=0.7), obj, told=True)
    assert rec["latency_ms"] == job.latency_ms
    assert rec["reward"] == pytest.approx(obj.reward(0.7, job.macs, job.latency_ms))
    assert new_job("search", 3, B0, RES).latency_ms is None               # no latency target: none predicted


def test_a_handed_over_loop_predicts_with_the_same_table(tmp_path, table_file):
    """NNI's dispatcher rebuilds the loop from plain data: it predicts from the same table file,
    and the job a trial gets carries the latency as a number (a trial never opens a table)."""
    from nas.engines.protocol import Job
    from nas.search.handover import source_from_handover
    store = Store.create(tmp_path / "run", {})
    settings = LoopSettings(Objective(None, latency_ms=100.0, latency_table=str(table_file)),
                            CostWindow(0.0, float("inf")), StopRule(trials=2), target_resolution=RES)
    loop = SearchLoop(store, SearchSpace.default(), ControllerRecipe("random", seed=2), settings)
    L.forget_tables()
    there = source_from_handover(loop.handover(), store)
    job = there.next_job()
    spec = SearchSpace.default().decode(job.choices, num_classes=1000, resolution=RES)
    assert job.latency_ms == pytest.approx(predicted(table_file, spec))
    assert Job.from_dict(job.to_dict()).latency_ms == job.latency_ms
    store.close()


def test_durations_parse():
    assert L.parse_duration("20ms") == 20.0 and L.parse_duration("1.5s") == 1500.0
    assert L.parse_duration("800us") == pytest.approx(0.8) and L.parse_duration("800µs") == pytest.approx(0.8)
    assert L.parse_duration("2e1MS") == 20.0
    for bad in ("20", "fast", "-1ms", "0ms", "20 parsecs", "", "infms", "nanms"):
        with pytest.raises(UserError, match="expected a positive duration"):
            L.parse_duration(bad)


# -- the search ----------------------------------------------------------------------------------
def test_search_records_predicted_latency_and_stage2_measures_b0_and_the_reference(tmp_path, table_file, capsys):
    lat_b0 = predicted(table_file, B0)
    out = tmp_path / "run"
    code, printed, err = run(capsys, "--target-latency", f"{lat_b0 * 1.05:.5f}ms", "--latency-table", str(table_file),
                             "--trials", "4", "--cost-window", "0,1", "--final-top-k", "1", "--final-seeds", "2",
                             "--out", str(out), *FAST)
    assert code == 0, err
    obj = Objective(None, -0.07, -0.07, latency_ms=float(f"{lat_b0 * 1.05:.5f}"))
    with Store.open(out) as st:
        trained = st.trials("search", "trained")
        ref = st.trial("reference", 0)
        finals = st.trials("final")
        assert st.config["target_latency"] == pytest.approx(lat_b0 * 1.05)
    from search_space.spec import ArchSpec
    for r in trained + [ref]:
        assert r["latency_ms"] == pytest.approx(predicted(table_file, ArchSpec.from_dict(r["spec"])))
        assert r["reward"] == pytest.approx(obj.reward(r["accuracy"], r["macs"], r["latency_ms"]))
    assert all(r["latency_ms"] <= obj.latency_ms for r in trained)          # window (0, 1]: nothing slower
    assert ref["latency_ms"] == pytest.approx(lat_b0)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert all(float(r["latency_ms"]) > 0 for r in rows if r["kind"] == "search")
    final = list(csv.DictReader((out / "final.csv").open()))
    measured = {r["label"]: r["measured_latency_ms"] for r in final}
    assert len(finals) == 4 and set(measured) == {next(r["label"] for r in final if r["trial"]), "efficientnet-b0"}
    assert all(float(v) > 0 for v in measured.values())                    # B0 and the reference, measured
    md = (out / "final.md").read_text()
    assert "latency predicted / measured" in md and "(B0)" in md and "of its measured latency" in md
    assert "latency predicted / measured" in printed                       # the closing summary
    assert (out / "pareto.png").stat().st_size > 0


def test_a_table_from_the_deployment_device_is_used_read_only(tmp_path, table_file, capsys):
    phone = edited(table_file, tmp_path, device="ARM Cortex-A76 (phone)", torch="2.1.0")
    before = phone.read_text()
    out = tmp_path / "run"
    code, _, err = run(capsys, "--target-latency", "1s", "--latency-device", "table", "--latency-table", str(phone),
                       "--trials", "3", "--cost-window", "0,1", "--final-top-k", "1", "--final-seeds", "2",
                       "--out", str(out), *FAST)
    assert code == 0, err
    with Store.open(out) as st:
        assert all(r["latency_ms"] > 0 for r in st.trials("search", "trained"))
    assert phone.read_text() == before and not (out / "latency_table.json").exists()
    final = list(csv.DictReader((out / "final.csv").open()))
    assert all(r["measured_latency_ms"] == "" for r in final)      # the target is the phone: nothing timed here


@pytest.mark.parametrize("argv, needle", [
    (["--target-latency", "20"], "--target-latency '20': expected a positive duration"),
    (["--target-latency", "fast"], "expected a positive duration with a unit"),
    (["--target-latency=-1ms"], "--target-latency '-1ms': expected a positive duration"),
    (["--target-latency", "20ms", "--latency-device", "tpu"], "--latency-device tpu: unknown device 'tpu'"),
    (["--target-latency", "20ms", "--latency-device", "table"], "--latency-device table needs --latency-table"),
    (["--target-flops", "400M", "--latency-batch", "4"], "--latency-batch only applies with --target-latency"),
    ([], "a target is required"),
    (["--target-latency", "20ms", "--latency-batch", "0"], "--latency-batch must be a positive integer"),
])
def test_bad_latency_options_are_one_line_and_write_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    code, _, err = run(capsys, *argv, "--out", str(out), *FAST)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is visible here")
def test_cuda_latency_device_without_cuda_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "--target-latency", "20ms", "--latency-device", "cuda", "--out", str(tmp_path / "r"),
                       *FAST)
    assert code == 2 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field, value, device", [
    ("device", "Other CPU (avx2)", "cpu"), ("torch", "1.0.0", "cpu"), ("threads", 2, "cpu"),
    ("dtype", "bfloat16", "cpu"), ("threads", 4, "table"), ("dtype", "bfloat16", "table"), ("batch", 8, "table"),
])
def test_a_table_of_other_conditions_is_refused_naming_what_differs(tmp_path, capsys, table_file, field, value,
                                                                    device):
    table = edited(table_file, tmp_path, **{field: value})
    before = table.read_text()
    out = tmp_path / "run"
    code, _, err = run(capsys, "--target-latency", "1s", "--latency-device", device, "--latency-table", str(table),
                       "--out", str(out), *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{field} {value!r} (file)" in err
    assert not out.exists() and table.read_text() == before


def test_a_deployment_table_that_lacks_parts_is_refused(tmp_path, capsys, table_file):
    data = json.loads(table_file.read_text())
    data["key"]["device"] = "ARM phone"
    data["entries"] = dict(list(data["entries"].items())[:50])
    table = tmp_path / "partial.json"
    table.write_text(json.dumps(data))
    code, _, err = run(capsys, "--target-latency", "1s", "--latency-device", "table", "--latency-table", str(table),
                       "--out", str(tmp_path / "run"), *FAST)
    assert code == 2 and "lacks" in err and "latency build" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_target_no_network_of_the_space_reaches_names_the_fastest(tmp_path, capsys, table_file):
    fastest = predicted(table_file, L.smallest_spec(SearchSpace.default(), RES))
    assert fastest < predicted(table_file, B0)
    out = tmp_path / "run"
    below = f"{fastest * 0.9:.4f}ms"
    code, _, err = run(capsys, "--target-latency", below, "--latency-table", str(table_file), "--out", str(out), *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "below what the search space can reach" in err and f"predicted at {L.fmt_ms(fastest)}" in err
    assert not out.exists()
    code, _, err = run(capsys, "--target-latency", f"{fastest * 1.01:.4f}ms", "--latency-table", str(table_file),
                       "--trials", "1", "--no-final", "--cost-window", "0,inf", "--out", str(out), *FAST)
    assert code == 0, err


def test_resume_keeps_the_latency_settings_and_refuses_a_changed_target(tmp_path, capsys, table_file):
    out = tmp_path / "run"
    argv = ["--target-latency", "900ms", "--latency-table", str(table_file), "--no-final", "--cost-window", "0,inf",
            *FAST]
    assert run(capsys, *argv, "--trials", "2", "--out", str(out))[0] == 0
    code, _, err = run(capsys, "--resume", "--out", str(out), "--target-latency", "800ms")
    assert code == 2 and "--target-latency 800" in err and "cannot change on resume" in err
    code, _, err = run(capsys, "--resume", "--out", str(out), "--latency-batch", "2")
    assert code == 2 and "--latency-batch" in err and "cannot change on resume" in err
    code, _, err = run(capsys, "--resume", "--out", str(out), "--target-latency", "0.9s", "--trials", "3",
                       "--quiet", "--no-progress")
    assert code == 0, err                                                   # the same target, said otherwise
    with Store.open(out) as st:
        rows = st.trials("search", "trained")
    assert len(rows) == 3 and all(r["latency_ms"] > 0 for r in rows)


def test_a_real_search_fills_the_table_lazily_each_part_once(tmp_path, capsys):
    """Measures for real: a tiny space at 32x32; the run's own table is created under --out."""
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    out = tmp_path / "run"
    code, _, err = run(capsys, "--space", str(space), "--target-latency", "10s", "--trials", "4", "--no-final",
                       "--reference", "none", "--cost-window", "0,inf", "--proxy-resolution", "32",
                       "--out", str(out), *FAST[:-2], "--target-resolution", "32")
    assert code == 0, err
    path = out / L.DEFAULT_TABLE_NAME
    live = L.table_for("cpu", 1, 1, str(path.absolute()))
    assert path.is_file() and live.measurements == len(live) > 0          # every part measured exactly once
    with Store.open(out) as st:
        rows = st.trials("search", "trained")
    from search_space.spec import ArchSpec
    table = LatencyTable(path, measure_fn=lambda cs: pytest.fail("a part the search used is not in the table"))
    for r in rows:
        assert r["latency_ms"] == pytest.approx(table.predict_ms(ArchSpec.from_dict(r["spec"]), 32))
    shutil.rmtree(out)


def test_family_md_gives_each_members_latency(tmp_path, table_file, capsys):
    """Issue 25: where a latency table exists, family.md shows each member's predicted latency
    (at its own resolution), and with --measure-family-latency its measured one; a member whose
    parts a table of another device lacks shows none (nothing can be timed for it here)."""
    fast = [a for a in FAST if a != "--no-scale"] + ["--no-final", "--trials", "3", "--cost-window", "0,1",
                                                      "--phis", "1"]
    phone = edited(table_file, tmp_path, device="ARM Cortex-A76 (phone)", torch="2.1.0")
    here = shutil.copy(table_file, tmp_path / "here.json")   # this run extends it with b1's parts
    out = tmp_path / "run"
    code, _, err = run(capsys, "--target-latency", "1s", "--latency-table", str(here),
                       "--measure-family-latency", "--out", str(out), *fast)
    assert code == 0, err
    rows = list(csv.DictReader((out / "family" / "family.csv").open()))
    assert [r["name"] for r in rows] == ["b0", "b1"] and int(rows[1]["resolution"]) > RES
    from search_space.spec import ArchSpec
    b0 = ArchSpec.load(out / "family" / "b0.yaml")
    assert float(rows[0]["latency_ms"]) == pytest.approx(predicted(table_file, b0), rel=1e-3)
    assert all(float(r["latency_ms"]) > 0 and float(r["measured_ms"]) > 0 for r in rows)
    md = (out / "family" / "family.md").read_text()
    assert "predicted latency (ms)" in md and "measured latency (ms)" in md and "batch 1, 1 thread(s)" in md

    out = tmp_path / "phone"
    code, _, err = run(capsys, "--target-latency", "1s", "--latency-device", "table", "--latency-table", str(phone),
                       "--measure-family-latency", "--out", str(out), *fast)
    assert code == 0, err
    rows = list(csv.DictReader((out / "family" / "family.csv").open()))
    assert float(rows[0]["latency_ms"]) > 0 and rows[1]["latency_ms"] == ""   # b1's parts are not in the table
    assert "measured_ms" not in rows[0]                                      # the target is the phone
