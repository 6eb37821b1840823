"""The benchmarks still run: each `bench/*.py --quick --json` exits 0 and ends with its figures.

Figures are not asserted against speed goals (that is what BENCHMARKS.md records); only
that they exist, are positive, and that the self-checks the benchmarks make hold.
bench/controllers.py has its own tests in test_controllers.py.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _figures(script: str, tmp_path: Path, *extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HOME=str(tmp_path))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", "--json", *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cost_model_bench_agrees_with_counting(tmp_path):
    f = _figures("cost_model.py", tmp_path)
    assert f["consistent"] is True and f["specs"] >= 2
    assert {r["spec"] for r in f["rows"]} >= {"efficientnet-b0", "mnasnet-a1"}
    assert f["speedup_vs_build_hooks"] > 0 and f["speedup_vs_flop_counter"] > 0


def test_engine_overhead_bench(tmp_path):
    f = _figures("engine_overhead.py", tmp_path)
    assert f["overhead_inline_ms"] > 0 and f["overhead_pool_ms"] > 0
    assert set(f["throughput_per_s"]) == {"1", "2", "4"} and f["speedup_vs_1_worker"]["1"] == 1.0


def test_proxy_train_bench(tmp_path):
    f = _figures("proxy_train.py", tmp_path)
    assert f["nas_train_images_per_sec"] > 0 and f["hand_loop_images_per_sec"] > 0 and f["ratio"] > 0
    # the fp32 / bf16 study: peak, per-architecture rates, rank fidelity, and a decision that follows its rule
    p = f["precision_study"]
    assert p["gemm_gflops"]["fp32"] > 0 and p["gemm_gflops"]["bf16"] > 0
    table = p["speed"]["table"]
    assert [e["arch"] for e in table] == ["efficientnet-b0", "random-1", "random-2"]
    import dataclasses

    from search_space import zoo
    from search_space.cost import macs
    assert table[0]["macs_per_image"] == macs(dataclasses.replace(zoo.get("efficientnet-b0"), num_classes=10), 32)
    for e in table:
        for prec in ("fp32", "bf16"):
            assert e[prec]["images_per_sec"] > 0 and 0 < e[prec]["of_peak"] < 1
        assert abs(e["bf16_speedup"] - e["bf16"]["images_per_sec"] / e["fp32"]["images_per_sec"]) < 0.01
    fid = p["fidelity"]
    assert fid["archs"] == 3 and fid["seeds"] == [0, 1] and fid["failed_archs"] == []
    for key in ("tau_fp32_bf16", "tau_seed_noise"):
        assert fid[key] is None or -1 <= fid[key] <= 1
    assert p["bf16_cpu_default"] == (p["faster"] and fid["faithful"])


@pytest.mark.skipif(sys.platform != "linux", reason="NNI's local service is tested on Linux")
def test_nni_engine_overhead_bench(tmp_path):
    f = _figures("engine_overhead_nni.py", tmp_path)
    assert f["nni"]["per_trial_s"] > 0 and f["local"]["per_trial_s"] > 0 and f["nni_over_local_per_trial"] > 0


def test_scale_bench(tmp_path):
    f = _figures("scale.py", tmp_path)
    assert f["sizes"] == [200, 1000]
    assert {(r["controller"], r["engine"]) for r in f["runs"]} >= {("random", "inproc"), ("evolution", "inproc"),
                                                                   ("evolution", "pool"), ("rl", "inproc")}
    for r in f["runs"]:  # every search ran its proposals, each recorded once
        assert r["ms_per_proposal"] > 0 and r["trained"] + r["cached"] == r["proposals"]
        assert r["cached"] == 0 or r["controller"] == "rl"
    assert all(s["exponent"] > 0 and s["rss_vs_smallest"] > 0 for s in f["summary"].values())
    assert {r["controller"] for r in f["resume"]} == {"random", "evolution", "rl"}
    assert all(r["first_new_record_s"] > 0 and r["new_records"] > 0 for r in f["resume"])
    assert f["tensorboard"]["first_ms"] > 0 and f["machine"]["cores"] >= 1


def test_fidelity_bench(tmp_path):
    f = _figures("fidelity.py", tmp_path, "--out", str(tmp_path / "runs"))
    runs = f["runs"]
    assert {r["arm"] for r in runs} == {"base", "asha", "prefilter"} and all(r["rc"] == 0 for r in runs)
    budget = 6 * 2.0  # --quick: the baseline's 6 trials x 2 epochs
    for r in runs:
        assert budget <= r["epochs"] < budget + 2.0 and r["b0_test_accuracy"] is not None  # equal compute
        if r["arm"] == "base":
            assert r["trained"] == 6 and r["stopped"] == r["prefiltered"] == 0
        if r["arm"] == "asha":
            assert r["stopped"] > 0 and r["trained"] > 6
        if r["arm"] == "prefilter":
            assert r["considered"] == 3 * r["trained"]
    assert f["arms"]["asha"]["trained_vs_base"] > 1 and f["arms"]["prefilter"]["considered_vs_base"] == 3


def test_decode_bench(tmp_path):
    f = _figures("decode.py", tmp_path, "--resolutions", "64")
    row = f["resolutions"]["64"]["backends"]
    assert {"pillow", "pillow-draft", "pillow+torch"} <= set(row) and row["pillow"]["vs_pillow"] == 1.0
    assert all(b["images_per_s"] > 0 for b in row.values()) and row["pillow"]["mad"] == 0
    # every backend lands within a few grey levels of plain Pillow (the geometry is the same)
    assert all(b["mad"] < 3 for b in row.values()) and f["resolutions"]["64"]["filter_yardstick"] > 0


def test_data_bench(tmp_path):
    f = _figures("data.py", tmp_path, "--data-root", str(tmp_path / "data"))
    assert f["build_64px"]["one_core"]["images"] > 0 and f["build_64px"]["one_core"]["images_per_s"] > 0
    assert set(f["feed"]) == set(f["baseline"]) == {"64", "128"} and min(f["feed"].values()) > 0
    assert f["trainer"]["fp32"] > 0 and f["trainer"]["bf16"] > 0
    assert all(u["uss_mb"] > 0 and u["epoch_images"] > 0 for u in f["uss"].values())
    peers = f["uss_peers"]  # workers started at once all read their epoch, then measured
    assert peers["workers"] >= 2 and all(peers[n]["epoch_images"] > 0 for n in f["uss"])
    hit = f["cache_hit"]  # the second run found the entry: no image file opened, nothing rebuilt
    assert hit["image_files_opened"] == 0 and hit["rebuilt"] is False and hit["train_images"] > 0
    assert hit["hook_sees_a_decode"] is True  # ... and the counter would have seen one
    assert not any((tmp_path / "data").glob("caches-*"))  # its cache entries are removed afterwards


def test_oneshot_bench(tmp_path):
    f = _figures("oneshot.py", tmp_path)
    runs = {r["paradigm"]: r for r in f["runs"]}
    assert set(runs) == {"pertrial", "oneshot"} and all(r["rc"] == 0 and r["wall_s"] > 0 for r in runs.values())
    assert runs["pertrial"]["evaluated"] == 6 and runs["oneshot"]["evaluated"] == 40
    for r in runs.values():  # stage 2 judged each paradigm's B0 against EfficientNet-B0 on test
        assert 0 < r["b0_test"] <= 1 and 0 < r["reference_test"] <= 1
        assert abs(r["delta"] - (r["b0_test"] - r["reference_test"])) < 1e-12
    assert f["paradigms"]["oneshot"]["evaluated"]["mean"] == 40 and f["wall_ratio"]["n"] == 1


def test_size_bias_bench(tmp_path):
    # synthetic: the score is size plus the reference's signal, so removing the size trend must help
    f = _figures("size_bias.py", tmp_path)["synthetic"]
    assert f["residual_reference"]["tau"] > 0.9 > f["score_reference"]["tau"]
    assert f["macs_score"]["tau"] > 0.4 and abs(f["macs_reference"]["tau"]) < 0.3
    # a proxy-check table whose score is a size trend plus the reference: the residual ranks it better
    pairs = [(2e8, 0.90), (3e8, 0.91), (2.5e8, 0.85), (3.5e8, 0.95), (2.2e8, 0.93), (3.1e8, 0.88)]
    rows = ["index,macs,supernet,reference_acc"] + [f"{i},{m},{0.2 * math.log(m / 2e8) + r - 0.9},{r}"
                                                    for i, (m, r) in enumerate(pairs)]
    table = tmp_path / "proxy.csv"
    table.write_text("\n".join(rows) + "\n")
    f = _figures("size_bias.py", tmp_path, str(table))
    assert set(f) == {"synthetic", str(table)} and f[str(table)]["architectures"] == 6
    assert f[str(table)]["residual_reference"]["tau"] > f[str(table)]["score_reference"]["tau"] + 0.2
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "size_bias.py"), str(tmp_path / "missing.csv")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    (tmp_path / "other.csv").write_text("index,macs\n0,1\n")
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "size_bias.py"), str(tmp_path / "other.csv")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a proxy-check table" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
