"""The weight-sharing supernet (nas.supernet): exact extraction, sandwich training, resume
after SIGKILL, two gloo processes, failures as results, scoring, and the CLI's errors."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.cli.supernet import main
from nas.errors import UserError
from nas.evaluate.budget import ProxyBudget
from nas.evaluate.data import load
from nas.evaluate.train import evaluate_accuracy, recalibrate_bn
from nas.supernet import checkpoint as files
from nas.supernet.model import Supernet, largest, sample, smallest
from nas.supernet.score import Scorer, score
from nas.supernet.train import Settings, load_supernet, train
from search_space import cost, zoo
from search_space.model import count_by_hooks
from search_space.space import SearchSpace
from tests.spaces import TINY

ROOT = Path(__file__).resolve().parents[1]

BUDGET = ProxyBudget(dataset="digits", resolution=8, batch_size=128, lr=0.4)  # a tiny net takes a larger rate


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_file):
    return SearchSpace.from_yaml(tiny_file)


@pytest.fixture(scope="module")
def digits():
    return load(BUDGET)


@pytest.fixture(scope="module")
def trained(tiny, digits, tmp_path_factory):
    """A tiny supernet trained 4 epochs (shared by the tests that need trained weights)."""
    folder = tmp_path_factory.mktemp("trained") / "supernet"
    result = train(tiny, BUDGET, folder, Settings(epochs=4), data=digits)
    return result, folder


def _scramble(net: Supernet) -> None:
    """BN statistics and kernel transforms away from their initial values, so that an
    extraction that dropped or misplaced them would change the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if name.endswith("running_mean") or "transforms" in name or name.endswith("bias"):
                t.add_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("running_var"):
                t.mul_(torch.rand(t.shape, generator=g) + 0.5)


def _check_extraction(net: Supernet, spec, resolution: int) -> None:
    extracted = net.extract(spec).eval()
    macs, params = count_by_hooks(extracted, resolution)
    assert params == cost.params(spec) == sum(p.numel() for p in extracted.parameters())
    assert macs == cost.macs(spec, resolution)
    x = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(extracted(x), net(x, spec), rtol=1e-4, atol=1e-5)


def test_extraction_is_exact_on_the_zoo_and_50_random_specs_of_the_default_space():
    space = SearchSpace.default()
    net = Supernet(space, 10)
    _scramble(net)
    net.eval()
    b0 = dataclasses.replace(zoo.get("efficientnet-b0"), num_classes=10)
    assert space.encode(b0) is not None  # the default space holds EfficientNet-B0
    rng = np.random.default_rng(0)
    specs = [b0, largest(space, 10), smallest(space, 10)] + [sample(space, rng, 10) for _ in range(50)]
    assert len({s.key() for s in specs}) == len(specs)
    for spec in specs:
        _check_extraction(net, spec, 32)
    # MnasNet-A1 (ReLU) is not in the default (swish) space: one line saying why
    with pytest.raises(UserError, match="activation") as info:
        net.extract(dataclasses.replace(zoo.get("mnasnet-a1"), num_classes=10))
    assert "\n" not in str(info.value)


def test_separate_kernels_extract_exactly_and_differ_from_the_transform(tiny):
    net = Supernet(tiny, 10, kernel_mode="separate")
    _scramble(net)
    net.eval()
    rng = np.random.default_rng(1)
    for spec in [largest(tiny, 10), smallest(tiny, 10)] + [sample(tiny, rng, 10) for _ in range(10)]:
        _check_extraction(net, spec, 8)
    # transform mode: the 3x3 kernel is the 5x5's centre times a learned matrix (identity at init)
    t = Supernet(tiny, 10)
    layer = t.blocks[1][0].families["mbconv"].depthwise
    assert torch.equal(layer.get(3, 4, 1), layer.weight[:4, :, 1:4, 1:4])
    with torch.no_grad():
        layer.transforms["3"].mul_(2)
    torch.testing.assert_close(layer.get(3, 4, 1), 2 * layer.weight[:4, :, 1:4, 1:4])


def test_a_spec_outside_the_space_is_one_line_naming_the_block_and_agrees_with_encode(tiny):
    net = Supernet(tiny, 10)
    spec = largest(tiny, 10)
    b = spec.blocks[1]
    outside = {
        "kernel 7": dataclasses.replace(b, kernel=7),
        "output channels": dataclasses.replace(b, out_channels=24),
        "layers": dataclasses.replace(b, repeats=5),
        "expansion 4": dataclasses.replace(b, expand_ratio=4),
        "squeeze-excite": dataclasses.replace(b, se_ratio=0.5),
        "stride": dataclasses.replace(b, stride=1),
    }
    for words, block in outside.items():
        bad = dataclasses.replace(spec, blocks=(spec.blocks[0], block))
        assert tiny.encode(bad) is None
        with pytest.raises(UserError) as info:
            net(torch.zeros(1, 3, 8, 8), bad)
        assert words in str(info.value) and "blocks[1]" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="num_classes"):
        net.extract(largest(tiny, 1000))  # a spec for another number of classes
    with pytest.raises(UserError, match="no sub-network"):
        net(torch.zeros(1, 3, 8, 8))
    rng = np.random.default_rng(2)
    for _ in range(30):  # everything the space decodes runs
        net.plan(sample(tiny, rng, 10))


def test_recalibration_equals_the_builders_cumulative_bn_average(tiny):
    net = Supernet(tiny, 10)
    spec = sample(tiny, 3, 10)
    batches = [torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    reference = net.extract(spec).eval()  # as nas.evaluate.train.recalibrate_bn: no dropout, BN averaging
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    with torch.no_grad():
        for x in batches:
            reference(x)
    net.recalibrate(spec, batches, channels_last=False)
    assert net.training  # the mode is kept
    ours = net.extract(spec).state_dict()
    for name, t in reference.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(ours[name], t, rtol=1e-4, atol=1e-6)


def test_sandwich_training_reduces_the_loss_and_scores_with_inherited_weights(trained, tiny, digits):
    result, folder = trained
    assert result.status == "ok" and result.steps == result.total_steps == 4 * (digits.n_train // 128)
    assert len(result.losses) == 4 and result.losses[-1] < result.losses[0] - 0.2
    manifest = json.loads((folder / files.MANIFEST).read_text())
    assert manifest["result"]["loss"] == result.loss and manifest["seed"] == 0
    net = load_supernet(folder)
    scorer = Scorer(net, digits)
    big = scorer(net.largest())
    assert big > 0.4  # 10 classes: chance is 0.1
    assert scorer(net.smallest()) != big and scorer(net.largest()) == big  # the same spec, the same score
    # the score is the extracted network's accuracy after the trainer's own BN recalibration
    spec = net.sample(5)
    extracted = net.extract(spec)
    recalibrate_bn(extracted, digits, 1024, False, True, images=256)
    expected = evaluate_accuracy(extracted, digits, False, True)
    assert abs(score(net, spec, digits) - expected) <= 2 / digits.n_val


def _kill_script(args: list[str], after: int) -> str:
    """Train through the CLI in a subprocess that SIGKILLs itself right after its
    `after`-th checkpoint is written."""
    return ("import os, signal, sys, torch\n"
            "torch.set_num_threads(1)\n"
            "import nas.supernet.checkpoint as c\n"
            "orig, count = c.save_checkpoint, [0]\n"
            "def hooked(*a, **k):\n"
            "    orig(*a, **k)\n"
            "    count[0] += 1\n"
            f"    if count[0] == {after}:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "c.save_checkpoint = hooked\n"
            "from nas.cli.supernet import main\n"
            f"sys.exit(main({args!r}))\n")


def test_resume_after_sigkill_ends_with_the_weights_of_an_uninterrupted_run(tiny_file, tmp_path):
    # digits: 1,150 train images / batch 128 = 8 steps an epoch; 1.5 epochs = 12 steps;
    # checkpoints at steps 5, 10, 12: the kill after the second is in the middle of epoch 2
    args = ["train", "--space", str(tiny_file), "--dataset", "digits", "--resolution", "8", "--epochs", "1.5",
            "--checkpoint-every", "5", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", _kill_script(args + ["--out", str(killed)], after=2)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    saved = files.read_checkpoint(killed / "supernet")
    assert saved["step"] == 10 and not (killed / "supernet" / files.WEIGHTS).exists()
    assert main(args + ["--out", str(killed)]) == 2  # a supernet is there: --resume or another --out
    assert main(args + ["--out", str(killed), "--resume"]) == 0
    whole = files.read_weights(tmp_path / "whole" / "supernet" / files.WEIGHTS)[1]
    resumed = files.read_weights(killed / "supernet" / files.WEIGHTS)[1]
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    a, b = (json.loads((p / "supernet" / files.MANIFEST).read_text())["result"] for p in (tmp_path / "whole", killed))
    assert a["losses"] == b["losses"] and a["steps"] == b["steps"] == 12


def test_two_gloo_processes_train_identically_and_rank0_writes(tiny_file, tmp_path, capfd):
    out = tmp_path / "ddp"
    code = main(["train", "--space", str(tiny_file), "--dataset", "digits", "--resolution", "8", "--epochs", "1",
                 "--nproc", "2", "--out", str(out)])
    err = capfd.readouterr().err
    assert code == 0, err
    manifest = json.loads((out / "supernet" / files.MANIFEST).read_text())
    # status ok includes the check that both ranks ended with the same weights (train.agree)
    assert manifest["result"]["status"] == "ok" and manifest["result"]["world_size"] == 2
    assert manifest["result"]["steps"] == 8 and np.isfinite(manifest["result"]["loss"])
    assert err.count("epoch 1/1") == 1  # rank 0 alone prints
    assert sorted(p.name for p in (out / "supernet").iterdir()) == sorted([files.CHECKPOINT, files.WEIGHTS,
                                                                           files.MANIFEST])
    load_supernet(out / "supernet")


def test_a_nan_loss_or_the_time_limit_is_a_failed_result_not_a_traceback(tiny, digits, tmp_path):
    result = train(tiny, dataclasses.replace(BUDGET, lr=1e30, warmup_epochs=0), tmp_path / "nan",
                   Settings(epochs=1), data=digits)
    assert result.status == "diverged" and "NaN" in result.message
    manifest = json.loads((tmp_path / "nan" / files.MANIFEST).read_text())
    assert manifest["result"]["status"] == "diverged"
    assert not (tmp_path / "nan" / files.WEIGHTS).exists()
    late = train(tiny, dataclasses.replace(BUDGET, time_limit=1e-3), tmp_path / "late", Settings(epochs=1), data=digits)
    assert late.status == "timeout" and "wall-time limit" in late.message


@pytest.mark.parametrize("argv, words", [
    (["train", "--out", "{tmp}/r", "--epochs", "0"], "--epochs"),
    (["train", "--out", "{tmp}/r", "--space", "{tmp}/nope.yaml"], "no such file"),
    (["train", "--out", "{tmp}/r", "--space", "{tmp}/bad.yaml"], "--space"),
    (["train", "--out", "{tmp}/r", "--dataset", "imagenet"], "--dataset"),
    (["train", "--out", "{tmp}/r", "--resolution", "16"], "total stride"),
    (["train", "--out", "{tmp}/r", "--nproc", "0"], "--nproc"),
    (["train", "--out", "{tmp}/r", "--resume"], "no supernet checkpoint"),
    (["train", "--out", "{tmp}/afile"], "not a folder"),
    (["train"], "--out"),
    (["fly", "--out", "{tmp}/r"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, words):
    (tmp_path / "bad.yaml").write_text("blocks: nope\n")
    (tmp_path / "afile").write_text("x")
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "r").exists()


def test_the_command_runs_as_a_module(tiny_file, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nas.supernet", "train", "--out", str(tmp_path / "r"),
                           "--epochs", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--epochs" in proc.stderr


def test_torchrun_ranks_train_and_exit_zero(tiny_file, tmp_path):
    # `torchrun` starts the ranks itself; each runs `python -m nas.supernet` and leaves
    # through distributed.exit_process (no interpreter teardown, so no gloo abort at exit)
    out = tmp_path / "torchrun"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "nas.supernet", "train", "--space", str(tiny_file), "--dataset", "digits",
                           "--resolution", "8", "--epochs", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("epoch 1/1") == 1  # rank 0 alone prints, and its output is flushed
    manifest = json.loads((out / "supernet" / files.MANIFEST).read_text())
    assert manifest["result"]["status"] == "ok" and manifest["result"]["world_size"] == 2


def test_exit_process_keeps_the_code_and_the_output(tmp_path):
    script = ("import sys; from nas.supernet import distributed as D; D._joined = {joined}; "
              "print('unflushed', end=''); sys.stderr.write('err'); D.exit_process(3)")
    for joined in (True, False):
        proc = subprocess.run([sys.executable, "-c", script.format(joined=joined)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout, proc.stderr) == (3, "unflushed", "err")


def _flag_on_rank_1(_payload) -> None:
    from nas.supernet import distributed as D
    assert D.init_from_env(cuda=False)
    rank = D.rank_world()[0]
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), float(rank))
    assert bool(D.average_gradients([p], torch.tensor(rank == 1)))  # raised on rank 1, seen by both
    assert torch.equal(p.grad, torch.full((3,), 0.5))  # the gradients are averaged in the same all-reduce
    assert not bool(D.average_gradients([p], torch.tensor(False)))
    D.leave()


def test_a_non_finite_loss_on_one_rank_stops_every_rank():
    from nas.supernet import distributed as D
    D.launch(2, _flag_on_rank_1, None)  # an assertion in a rank raises here
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    flag = torch.tensor(True)
    assert D.average_gradients([p], flag) is flag and torch.equal(p.grad, torch.ones(2))  # one process: as is
