"""Malformed invocations: one line on stderr naming the problem, exit status 2, no
traceback, and nothing left in --out that a later --resume could take for a run."""
import os

import pytest

from nas.cli.search import main
from nas.store import Store

FAST = ["--evaluator", "tests.fake_evaluators:ok", "--device", "cpu", "--no-tensorboard", "--reference", "none"]


def _files(tmp):
    (tmp / "broken.yaml").write_text("trials: [1, 2\n")
    (tmp / "unknown.yaml").write_text("trials: 3\nwarp_speed: 9\n")
    (tmp / "badvalue.yaml").write_text("trials: many\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "space_bad.yaml").write_text("blocks: nope\n")
    (tmp / "afile").write_text("x")
    (tmp / "notrun").mkdir()
    (tmp / "notrun" / "search.db").write_text("not a database")
    (tmp / "nni_remote.yaml").write_text("trainingService:\n  platform: remote\n  machineList:\n"
                                         "    - {host: 10.0.0.2, user: me, sshKeyFile: ~/.ssh/id_rsa}\n")
    (tmp / "nni_gpu.yaml").write_text("trialGpuNumber: 1\ntrainingService: {platform: local}\n")
    (tmp / "nni_field.yaml").write_text("trainingService: {platform: local}\nwarpFactor: 9\n")
    for folder, classes in (("train", ("ant", "bee")), ("val", ("ant", "wasp"))):
        for c in classes:  # listed, never decoded: the check of the class folders comes first
            (tmp / folder / c).mkdir(parents=True)
            (tmp / folder / c / "0.png").write_bytes(b"x")
    ro = tmp / "readonly"
    ro.mkdir()
    os.chmod(ro, 0o555)


# (name, argv, words the one-line message must contain)
CASES = [
    ("missing target", [], "--target-flops"),
    ("bad unit", ["--target-flops", "400Q"], "400Q"),
    ("no number", ["--target-flops", "M"], "target-flops"),
    ("zero target", ["--target-flops", "0"], "target-flops"),
    ("negative target", ["--target-flops=-400M"], "-400M"),
    ("unknown controller", ["--target-flops", "400M", "--controller", "bayes"], "bayes"),
    ("unknown reward", ["--target-flops", "400M", "--reward", "medium"], "medium"),
    ("trials 0", ["--target-flops", "400M", "--trials", "0"], "--trials"),
    ("trials not a number", ["--target-flops", "400M", "--trials", "ten"], "--trials"),
    ("negative workers", ["--target-flops", "400M", "--workers", "-1"], "--workers"),
    ("alpha not a number", ["--target-flops", "400M", "--alpha", "abc"], "--alpha"),
    ("nan beta", ["--target-flops", "400M", "--beta", "nan"], "--beta must be a finite number"),
    ("unknown device", ["--target-flops", "400M", "--device", "tpu"], "tpu"),
    ("unknown engine", ["--target-flops", "400M", "--engine", "ray"], "ray"),
    ("zero epochs", ["--target-flops", "400M", "--proxy-epochs", "0"], "--proxy-epochs"),
    ("tiny resolution", ["--target-flops", "400M", "--proxy-resolution", "2"], "--proxy-resolution"),
    ("proxy resolution below stride", ["--target-flops", "400M", "--proxy-resolution", "16"], "stride 32"),
    ("zero timeout", ["--target-flops", "400M", "--trial-timeout", "0"], "--trial-timeout"),
    ("bad cost window", ["--target-flops", "400M", "--cost-window", "2,1"], "--cost-window"),
    ("cost window words", ["--target-flops", "400M", "--cost-window", "wide"], "--cost-window"),
    ("missing space file", ["--target-flops", "400M", "--space", "{tmp}/nope.yaml"], "nope.yaml"),
    ("broken space file", ["--target-flops", "400M", "--space", "{tmp}/space_bad.yaml"], "--space"),
    ("missing config", ["--target-flops", "400M", "--config", "{tmp}/none.yaml"], "none.yaml"),
    ("broken YAML config", ["--target-flops", "400M", "--config", "{tmp}/broken.yaml"], "not valid YAML"),
    ("unknown config key", ["--target-flops", "400M", "--config", "{tmp}/unknown.yaml"], "warp_speed"),
    ("bad config value", ["--target-flops", "400M", "--config", "{tmp}/badvalue.yaml"], "--trials"),
    ("config not a mapping", ["--target-flops", "400M", "--config", "{tmp}/list.yaml"], "mapping"),
    ("unknown dataset", ["--target-flops", "400M", "--dataset", "imagenet-1k"], "imagenet-1k"),
    ("missing data dir", ["--target-flops", "400M", "--dataset", "cifar10", "--data-dir", "{tmp}/nodata"], "nodata"),
    ("out is a file", ["--target-flops", "400M", "--out", "{tmp}/afile"], "afile"),
    ("unwritable out", ["--target-flops", "400M", "--out", "{tmp}/readonly/run"], "not writable"),
    ("resume of a non-run", ["--resume", "--out", "{tmp}/notrun"], "cannot be read as a run's store"),
    ("resume of a missing dir", ["--resume", "--out", "{tmp}/missing"], "not a search run"),
    ("unknown option", ["--target-flops", "400M", "--warp"], "--warp"),
    ("bad evaluator", ["--target-flops", "400M", "--evaluator", "nowhere.module:fn"], "--evaluator"),
    ("unknown reference", ["--target-flops", "400M", "--reference", "resnet-50"], "resnet-50"),
    ("missing NNI config", ["--target-flops", "400M", "--engine", "nni", "--nni-config", "{tmp}/nni.yaml"],
     "nni.yaml"),
    ("NNI port out of range", ["--target-flops", "400M", "--engine", "nni", "--nni-port", "80"], "--nni-port"),
    ("NNI watchdog zero", ["--target-flops", "400M", "--engine", "nni", "--nni-watchdog", "0"], "--nni-watchdog"),
    ("NNI concurrency zero", ["--target-flops", "400M", "--engine", "nni", "--concurrency", "0"], "--concurrency"),
    ("NNI remote on loopback", ["--target-flops", "400M", "--engine", "nni", "--nni-config",
                                "{tmp}/nni_remote.yaml"], "--nni-bind 0.0.0.0"),
    ("NNI GPU without useActiveGpu", ["--target-flops", "400M", "--engine", "nni", "--nni-config",
                                      "{tmp}/nni_gpu.yaml"], "useActiveGpu"),
    ("NNI unknown field", ["--target-flops", "400M", "--engine", "nni", "--nni-config", "{tmp}/nni_field.yaml"],
     "warpfactor"),
    ("scale below 1", ["--target-flops", "400M", "--alpha-scale", "0.9"], "--alpha-scale"),
    ("grid keeps no point", ["--target-flops", "400M", "--scale-grid", "--grid-step", "0.3", "--grid-tol", "0"],
     "--scale-grid"),
    ("empty phis", ["--target-flops", "400M", "--phis", "7-1"], "--phis"),
    ("seed too large for the RL controller", ["--target-flops", "400M", "--controller", "rl", "--seed",
                                              "99999999999999999999"], "--seed"),
    ("empty out", ["--target-flops", "400M", "--out", ""], "--out"),
    ("final top-k 0", ["--target-flops", "400M", "--final-top-k", "0"], "--final-top-k"),
    ("final seeds not a number", ["--target-flops", "400M", "--final-seeds", "three"], "--final-seeds"),
    ("final epochs 0", ["--target-flops", "400M", "--final-epochs", "0"], "--final-epochs"),
    ("final resolution too small", ["--target-flops", "400M", "--final-resolution", "4"], "--final-resolution"),
    ("proxy images not a number", ["--target-flops", "400M", "--proxy-images", "lots"], "--proxy-images"),
    ("proxy images 1", ["--target-flops", "400M", "--proxy-images", "1/class"], "--proxy-images"),
    ("missing test data dir", ["--target-flops", "400M", "--dataset", "imagefolder", "--data-dir", "{tmp}/train",
                               "--test-data-dir", "{tmp}/noval"], "--test-data-dir {tmp}/noval: no such folder"),
    ("test folder of other classes", ["--target-flops", "400M", "--dataset", "imagefolder", "--data-dir",
                                      "{tmp}/train", "--test-data-dir", "{tmp}/val"],
     "class folders differ from --data-dir's (missing: bee; not in --data-dir: wasp)"),
    ("test data dir of another dataset", ["--target-flops", "400M", "--test-data-dir", "{tmp}/val"],
     "--test-data-dir is for --dataset imagefolder"),
    ("cache dir cannot be created", ["--target-flops", "400M", "--cache-dir", "{tmp}/afile/cache"],
     "--cache-dir {tmp}/afile/cache: cannot create it"),
]


@pytest.mark.parametrize("name,argv,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, capsys, name, argv, words):
    _files(tmp_path)
    out_default = tmp_path / "out"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(out_default)]
    if name == "unwritable out" and os.geteuid() == 0:
        argv[argv.index("--out") + 1] = "/sys/effnas-cannot-write-here/run"  # root ignores mode bits
    extra = [] if any(a in argv for a in ("--evaluator", "--reference", "--device")) else FAST
    rc = main(argv + extra)
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert rc == 2, cap.err
    assert len(lines) == 1, cap.err
    assert "Traceback" not in cap.err and cap.out == ""
    assert words.replace("{tmp}", str(tmp_path)).lower() in lines[0].lower(), lines[0]
    assert lines[0].startswith("effnas-search: error: ")
    assert not out_default.exists()
    if "--resume" not in argv:
        for p in (tmp_path / "afile", tmp_path / "readonly" / "run"):
            assert not Store.is_run(p)


def test_case_table_keeps_all_its_rows():
    # 48 rows today: deleting one must be a visible decision, and a repeated name would
    # make pytest quietly suffix its id
    names = [c[0] for c in CASES]
    assert len(set(names)) == len(names) >= 48
