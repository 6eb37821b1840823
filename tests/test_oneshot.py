"""`python -m nas.search --strategy oneshot` and `python -m nas.proxy check --proxy supernet`:
end to end on a tiny supernet (digits at 8 px trains it in seconds), resume after a kill in
phase 1 and in phase 2, and the one-line errors of a supernet that does not fit."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas.cli.options import parse
from nas.cli.search import main
from nas.evaluate.budget import ProxyBudget
from nas.store import Store
from nas.supernet.checkpoint import read_weights
from nas.supernet.oneshot import TRIALS, oneshot_space_file, train_phase
from nas.supernet.train import Settings, train
from search_space import zoo
from search_space.space import SearchSpace
from search_space.spec import ArchSpec
from tests.spaces import TINY_ONESHOT as TINY

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ProxyBudget(dataset="digits", resolution=8)
# the tiny space's networks are 6-99M multiply-adds at 224 px: a 60M target with an open window
DATA = ["--dataset", "digits", "--proxy-resolution", "8", "--target-flops", "60M", "--cost-window", "0,1"]
QUIET = ["--no-tensorboard", "--no-progress", "--quiet", "--no-scale", "--device", "cpu"]
STAGE2 = ["--evaluator", "tests.fake_evaluators:ok", "--final-seeds", "2", "--final-top-k", "2", "--workers", "1"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def supernet(tiny_file, tmp_path_factory):
    """A tiny supernet trained one epoch on digits at 8 px (8 steps), as phase 1 would."""
    folder = tmp_path_factory.mktemp("trained") / "supernet"
    result = train(SearchSpace.from_yaml(tiny_file), BUDGET, folder, Settings(epochs=1))
    assert result.status == "ok"
    return folder


def _rows(out, kind="oneshot"):
    con = sqlite3.connect(f"file:{out}/search.db?mode=ro", uri=True)
    try:
        return con.execute("SELECT kind, proposal_id, key, reward, status, source FROM trials WHERE kind = ?",
                           (kind,)).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def test_the_oneshot_space_is_the_default_with_one_op_and_identity_skips_and_holds_b0():
    default, oneshot = SearchSpace.default(), SearchSpace.from_yaml(oneshot_space_file())
    assert tuple(oneshot.choices["conv_op"]) == ("mbconv",) and tuple(oneshot.choices["skip"]) == ("identity",)
    kept = {k: v for k, v in default.choices.items() if k not in ("conv_op", "skip")}
    assert {k: v for k, v in oneshot.choices.items() if k not in ("conv_op", "skip")} == kept
    assert [d.name for d in oneshot.decisions] == [d.name for d in default.decisions
                                                   if not d.name.endswith((".conv_op", ".skip"))]
    b0 = zoo.get("efficientnet-b0")
    choices = oneshot.encode(b0)
    assert choices is not None and oneshot.decode(choices).key() == b0.key()


def test_oneshot_defaults_to_thousands_of_scores_and_trials_still_wins():
    opts, _ = parse(["--strategy", "oneshot", "--target-flops", "400M"])
    assert opts["trials"] == TRIALS >= 1000
    opts, _ = parse(["--strategy", "oneshot", "--target-flops", "400M", "--trials", "7"])
    assert opts["trials"] == 7
    assert parse(["--target-flops", "400M"])[0]["trials"] == 40  # per trial: unchanged


def test_oneshot_search_end_to_end_with_stage2(tiny_file, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--strategy", "oneshot", "--space", str(tiny_file), *DATA, "--trials", "20", "--supernet-epochs", "0.5",
               "--out", str(out), "--controller", "evolution", *QUIET, *STAGE2])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert (out / "supernet" / "supernet.safetensors").is_file()  # phase 1 trained into --out/supernet
    with Store.open(out) as st:
        scored = st.trials("oneshot", "trained")
        assert st.trials("search") == []
        finals = st.trials("final")
    assert len(scored) == 20 and all(r["status"] == "ok" and 0 <= r["accuracy"] <= 1 for r in scored)
    assert len({r["key"] for r in scored}) == 20  # distinct architectures
    # stage 2 retrained the top 2 (and the reference) from scratch on 2 fresh seeds each
    assert len(finals) == 6 and {r["extra"]["overrides"]["seed"] for r in finals} == {1, 2}
    b0 = ArchSpec.load(out / "best.yaml")
    assert b0.key() in {r["key"] for r in scored}
    for name in ("final.md", "trials.csv", "pareto.png"):
        assert (out / name).is_file()
    assert "oneshot" in (out / "trials.csv").read_text()
    assert "20 scored with inherited weights" in cap.out


def test_reusing_a_supernet_and_its_errors(tiny_file, supernet, tmp_path, capsys):
    out = tmp_path / "reuse"
    rc = main(["--strategy", "oneshot", "--space", str(tiny_file), "--supernet", str(supernet), *DATA,
               "--trials", "12", "--out", str(out), "--no-final",
               *[a for a in QUIET if a not in ("--no-progress", "--quiet")]])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "scored 12/12 | failed 0 | best reward " in err  # the scores show progress as trials do
    assert not (out / "supernet").exists() and len(_rows(out)) >= 12
    other = tmp_path / "other.yaml"  # the tiny space with one kernel size fewer
    other.write_text(TINY.replace("kernel: [3, 5]", "kernel: [3]"))
    bad = [
        (["--space", str(other), "--supernet", str(supernet)], "another search space"),
        (["--space", str(tiny_file), "--supernet", str(supernet), "--proxy-resolution", "16"], "resolution"),
        (["--space", str(tiny_file), "--supernet", str(tmp_path)], "no finished supernet"),
        (["--space", str(tiny_file), "--early-stop", "asha"], "--early-stop asha: not with --strategy oneshot"),
    ]
    for extra, words in bad:
        target = tmp_path / "never"
        rc = main(["--strategy", "oneshot", *DATA, *extra, "--out", str(target), *QUIET])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and words in err and len(err.splitlines()) == 1, err
        assert not target.exists()
    rc = main([*DATA, "--space", str(tiny_file), "--supernet", str(supernet), "--out", str(tmp_path / "never"), *QUIET])
    assert rc == 2 and "--supernet goes with --strategy oneshot" in capsys.readouterr().err


def _start(args, hook=()):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    entry = ["-m", "tests.kill_hooks", *hook, "--"] if hook else ["-m", "nas.search"]
    return subprocess.Popen([sys.executable, *entry, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_kill_in_phase_2_loses_no_scored_architecture(tiny_file, supernet, tmp_path):
    args = ["--strategy", "oneshot", "--space", str(tiny_file), "--supernet", str(supernet), *DATA,
            "--trials", "30", "--controller", "random", "--seed", "3", "--no-final", *QUIET]
    whole = tmp_path / "whole"
    assert main([*args, "--out", str(whole)]) == 0
    out = tmp_path / "killed"
    proc = _start([*args, "--out", str(out)], ("after-write", "25"))
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-800:]
    before = _rows(out)
    assert 0 < len([r for r in before if r[5] == "trained"]) < 30
    assert main(["--resume", "--out", str(out)]) == 0
    after = _rows(out)
    assert set(before) <= set(after)                              # nothing scored before the kill is lost
    assert len({r[1] for r in after}) == len(after)               # nor scored twice
    assert sorted(r[2] for r in after if r[5] == "trained") == sorted(r[2] for r in _rows(whole) if r[5] == "trained")
    with Store.open(out) as st:
        assert st.pending() == [] and st.get_meta("state") == "finished"


def test_a_kill_in_phase_1_resumes_the_supernet_training(tiny_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--strategy", "oneshot", "--space", str(tiny_file), *DATA, "--trials", "10", "--supernet-epochs", "3",
            "--no-final", *[a for a in QUIET if a != "--quiet"], "--out", str(out)]
    proc = _start(args)
    checkpoint = out / "supernet" / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not checkpoint.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert checkpoint.is_file() and not (out / "supernet" / "supernet.safetensors").exists()
    assert main(["--resume", "--out", str(out)]) == 0
    assert "(resumed from its checkpoint)" in capsys.readouterr().err
    with Store.open(out) as st:
        assert len(st.trials("oneshot", "trained")) == 10
    # the resumed training ends with the weights of an uninterrupted one, bit for bit (CPU)
    whole = tmp_path / "whole"
    assert train_phase(SearchSpace.from_yaml(tiny_file), ProxyBudget(dataset="digits", resolution=8, device="cpu"),
                       whole, 3.0).status == "ok"
    _, resumed = read_weights(out / "supernet" / "supernet.safetensors")
    _, uninterrupted = read_weights(whole / "supernet.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_proxy_check_with_the_supernet_column(tiny_file, tmp_path, capsys):
    from nas.cli.proxy import main as proxy_main
    folder = tmp_path / "mnist" / "supernet"  # --quick checks on mnist5k at 32 px: a supernet of that data
    assert train(SearchSpace.from_yaml(tiny_file), ProxyBudget(), folder, Settings(epochs=0.08)).status == "ok"
    out = tmp_path / "check"
    rc = proxy_main(["check", "--proxy", "supernet", "--supernet", str(folder), "--quick", "--target-flops", "60M",
                     "--cost-window", "0,1", "--evaluator", "tests.fake_evaluators:ok", "--scores", "params",
                     "--workers", "1", "--device", "cpu", "--out", str(out), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    text = (out / "proxy.md").read_text()
    assert "| supernet |" in text and "same architectures" in text
    with Store.open(out) as st:
        refs = st.trials("proxy-reference")
    tiny = SearchSpace.from_yaml(tiny_file)  # the sample is of the supernet's space
    assert len(refs) == 6 and all(tiny.encode(ArchSpec.from_dict(r["spec"])) is not None for r in refs)
    rc = proxy_main(["check", "--supernet", str(folder), "--target-flops", "60M", "--out", str(tmp_path / "x")])
    assert rc == 2 and "--supernet goes with --proxy supernet" in capsys.readouterr().err
