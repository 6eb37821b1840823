"""The NNI engine, for real: a local-service experiment on loopback, records checked
against what each trial trained, clean stop on SIGTERM, resume, and the tuner's
defences against NNI's parameter/result mix-ups.

The evaluator is `nas.trial:hash_evaluate(_jitter)`: accuracy is a hash of the
architecture's key, so any record whose accuracy != f(its key) was misattributed.
HOME points to a temporary folder (NNI writes a manifest under ~/nni-experiments).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import psutil
import pytest

from nas.evaluate.budget import ProxyBudget
from nas.engines.protocol import EvalContext
from nas.errors import UserError
from nas.search.loop import SearchLoop
from nas.search.recipe import ControllerRecipe
from nas.search.objective import Objective
from nas.search.settings import CostWindow, LoopSettings, StopRule
from nas.nni import config as engine_nni
from nas.nni.engine import NniEngine, _stop, node_require
from nas.nni.trial import run_trial
from nas.trial import hash_accuracy
from nas.store import Store
from search_space.space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent
TARGET = 400_000_000


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


def _loop(out: Path, trials: int, create: bool = True):
    space = SearchSpace.default()
    store = Store.create(out, {"test": "nni"}) if create else Store.open(out)
    loop = SearchLoop(store, space, ControllerRecipe("random", seed=3), LoopSettings(Objective(TARGET), CostWindow(0.0, 1e9), StopRule(trials=trials)))
    return space, store, loop


def _ctx(evaluator: str = "nas.trial:hash_evaluate_jitter") -> EvalContext:
    return EvalContext(budget=ProxyBudget(), evaluator=evaluator)


def _nni_processes(out: Path) -> list:
    """Processes of this test's experiment still alive (manager, dispatcher, trials)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
        except (psutil.Error, TypeError):
            continue
        if str(out) in text and p.pid != os.getpid() and p.status() != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def _listening(port: int) -> list[str]:
    return [c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]


def _check_records(space, store, trials: int) -> list[dict]:
    rows = store.trials("search")
    assert len(rows) == trials
    assert len({r["proposal_id"] for r in rows}) == trials          # none repeated
    assert store.pending() == []
    for r in rows:
        assert r["status"] == "ok", r["message"]
        spec = space.decode(r["choices"], num_classes=1000, resolution=224)
        assert r["key"] == spec.key()                                  # choices, key, spec agree
        assert r["spec"] == spec.to_dict()
        assert r["accuracy"] == pytest.approx(hash_accuracy(r["key"]), abs=1e-12)  # its own accuracy
        assert r["worker"].startswith("nni:")
    return rows


def test_real_experiment_records_match_what_each_trial_trained(tmp_path):
    out = tmp_path / "run"
    space, store, loop = _loop(out, trials=6)
    port = engine_nni.free_port()
    seen_bind: list[list[str]] = []
    loop.listeners.append(lambda rec: seen_bind.append(_listening(port)))
    engine = NniEngine(concurrency=3, port=port, watchdog=90, log=lambda m: None)
    engine.run(loop, _ctx())
    assert engine.experiment_id and engine.url == f"http://127.0.0.1:{port}"
    _check_records(space, store, 6)
    # the web UI listened on loopback only while the experiment ran
    assert seen_bind and all(addrs and set(addrs) <= {"127.0.0.1"} for addrs in seen_bind), seen_bind
    # experiment files live under --out, and nothing of NNI survives
    assert (out / "nni" / "experiments" / engine.experiment_id / "log").is_dir()
    assert _nni_processes(out) == []
    assert _listening(port) == []


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_nni_engine import _loop, _ctx
    from nas.nni.engine import NniEngine
    from pathlib import Path
    space, store, loop = _loop(Path({out!r}), trials=6, create={create})
    NniEngine(concurrency=1, port={port}, watchdog=90).run(loop, _ctx())
""")


def test_sigterm_stops_cleanly_and_resume_finishes_without_repeats(tmp_path):
    out = tmp_path / "run"
    port = engine_nni.free_port()
    script = DRIVER.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(out), create=True, port=port)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            if Store.is_run(out) and len(Store.open(out).trials()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "interrupted" in output, output[-2000:]
    assert _nni_processes(out) == [] and _listening(port) == []
    with Store.open(out) as store:
        before = {r["proposal_id"]: r for r in store.trials()}
    assert 2 <= len(before) < 6

    # --resume: a new experiment continues from the store
    space, store, loop = _loop(out, trials=6, create=False)
    NniEngine(concurrency=2, watchdog=90, log=lambda m: None).run(loop, _ctx())
    rows = _check_records(space, store, 6)
    after = {r["proposal_id"]: r for r in rows}
    for pid, rec in before.items():  # finished trials kept as they were, not rerun
        assert after[pid] == rec
    assert _nni_processes(out) == []


# -- the tuner without NNI's manager: NNI's mix-ups fed in directly ---------------------------
def _session(tmp_path, loop, name: str = "session.json"):
    from nas.nni.engine import write_session

    session = tmp_path / name
    write_session(session, {"source": loop.handover(), "ctx": _ctx().to_dict(),
                            "out_dir": str(loop.store.path.parent), "token": "tok"})
    return session


def _tuner(tmp_path, trials: int = 3):
    from nas.nni.tuner import ControllerTuner

    space, store, loop = _loop(tmp_path / "run", trials=trials)
    return space, store, ControllerTuner(session=str(_session(tmp_path, loop)))


def _report(params: dict) -> dict:
    params = dict(params, ctx=dict(params["ctx"], evaluator="nas.trial:hash_evaluate"))
    return run_trial(params, lambda value: None)


def test_tuner_records_by_what_the_trial_reports_not_by_nni_ids(tmp_path):
    space, store, tuner = _tuner(tmp_path)
    p0, p1, p2 = (tuner.generate_parameters(i) for i in range(3))
    # NNI hands result of the trial that ran p1 under parameter id 0, and vice versa
    tuner.receive_trial_result(0, p0, _report(p1))
    tuner.receive_trial_result(1, p1, _report(p0))
    bad = _report(p2)
    tuner.receive_trial_result(2, p2, dict(bad, session="other-run"))   # stale session: ignored
    assert len(store.trials()) == 2
    tuner.receive_trial_result(2, p2, dict(bad, choices=p0["job"]["choices"]))  # claims another arch
    tuner.receive_trial_result(2, p2, bad)                                   # duplicate: ignored
    rows = {r["proposal_id"]: r for r in store.trials()}
    assert len(rows) == 3
    for p in (p0, p1):
        job = p["job"]
        assert rows[job["proposal_id"]]["accuracy"] == pytest.approx(hash_accuracy(job["key"]))
    assert rows[p2["job"]["proposal_id"]]["status"] == "failed"
    assert tuner.source.controller.ledger.pending == {}        # every proposal told exactly once
    assert store.pending() == []


class _Dispatcher:
    """NNI's own MsgDispatcher (no channel) around our tuner and assessor: the real call order."""

    def __init__(self, tuner, medianstop: bool = False):
        from nni.runtime.msg_dispatcher import MsgDispatcher

        from nas.nni.assessor import TrackingAssessor

        self.run = f"{id(self)}-"  # NNI keeps trial histories in module globals: unique trial ids
        self.d = MsgDispatcher("ws://_unittest_", tuner, TrackingAssessor(medianstop=medianstop))
        self.tuner = tuner

    def generate(self, parameter_id: int) -> dict:
        """What handle_request_trial_jobs does, minus sending the parameters to the manager."""
        from nni.runtime.msg_dispatcher import _pack_parameter

        params = self.tuner.generate_parameters(parameter_id)
        _pack_parameter(parameter_id, params)
        return params

    def epoch(self, trial: str, parameter_id: int, params: dict, acc: float = 0.5, seq: int = 0):
        from nni.common.serializer import dump

        job = params["job"]
        value = {"default": acc, "proposal_id": job["proposal_id"], "kind": job["kind"], "session": params["session"]}
        self.d.handle_report_metric_data({"parameter_id": parameter_id, "trial_job_id": self.run + trial,
                                          "type": "PERIODICAL", "sequence": seq, "value": dump(value)})

    def start(self, trial: str, parameter_id: int, params: dict):
        """The trial's first report, exactly as `run_trial` sends it."""
        from nni.common.serializer import dump

        reports = []
        run_trial(dict(params, ctx=dict(params["ctx"], evaluator="nas.trial:hash_evaluate")), reports.append)
        assert "default" not in reports[0] and reports[0]["proposal_id"] == params["job"]["proposal_id"]
        self.d.handle_report_metric_data({"parameter_id": parameter_id, "trial_job_id": self.run + trial,
                                          "type": "PERIODICAL", "sequence": 0, "value": dump(reports[0])})

    def final(self, trial: str, parameter_id: int, value: dict):
        from nni.common.serializer import dump

        self.d.handle_report_metric_data({"parameter_id": parameter_id, "trial_job_id": self.run + trial,
                                          "type": "FINAL", "sequence": 0, "value": dump(value)})

    def end(self, trial: str, nni_parameter_id: int, event: str):
        from nni.common.serializer import dump

        self.d.handle_trial_end({"trial_job_id": self.run + trial, "event": event,
                                 "hyper_params": dump({"parameter_id": nni_parameter_id, "parameters": {}})})


def test_an_ended_trial_fails_the_job_it_ran_not_the_one_nni_names(tmp_path):
    """NNI pairs trial ends with parameters by submission order; the trial's own reports decide."""
    space, store, tuner = _tuner(tmp_path, trials=4)
    nni_side = _Dispatcher(tuner)
    p0, p1 = nni_side.generate(10), nni_side.generate(11)
    # trial A was submitted for parameter 10 but read p1; trial B the other way round
    nni_side.epoch("A", 11, p1)
    nni_side.epoch("B", 10, p0)
    nni_side.end("A", 10, "EARLY_STOPPED")                  # NNI names parameter 10: p0
    rows = {r["proposal_id"]: r for r in store.trials()}
    assert list(rows) == [p1["job"]["proposal_id"]] and rows[p1["job"]["proposal_id"]]["status"] == "failed"
    nni_side.final("B", 10, _report(p0))                    # p0 was still in flight: its result counts
    nni_side.end("B", 11, "SUCCEEDED")
    rows = {r["proposal_id"]: r for r in store.trials()}
    assert rows[p0["job"]["proposal_id"]]["status"] == "ok"
    assert rows[p0["job"]["proposal_id"]]["accuracy"] == pytest.approx(hash_accuracy(p0["job"]["key"]))
    # a trial that ended before naming a job held none; one killed after its first report did
    p2, p3 = nni_side.generate(12), nni_side.generate(13)
    nni_side.end("C", 12, "FAILED")
    assert len(store.trials()) == 2
    nni_side.start("D", 12, p3)
    nni_side.start("E", 13, p2)
    nni_side.final("D", 12, _report(p3))
    nni_side.end("D", 12, "SUCCEEDED")
    nni_side.end("E", 12, "USER_CANCELED")                  # killed before its first epoch
    rows = {r["proposal_id"]: r for r in store.trials()}
    assert rows[p2["job"]["proposal_id"]]["status"] == "failed"
    assert rows[p3["job"]["proposal_id"]]["status"] == "ok"
    assert tuner.source.controller.ledger.pending == {} and store.pending() == []


def test_tracking_assessor_runs_medianstop_only_when_asked(tmp_path):
    from nni.assessor import AssessResult

    from nas.nni.assessor import TrackingAssessor

    def bad_after_good_ones(assessor):
        for t in ("a", "b"):
            assessor.assess_trial(t, [{"default": 0.9, "proposal_id": 1, "kind": "search"}] * 2)
            assessor.trial_end(t, True)
        return assessor.assess_trial("c", [{"default": 0.1, "proposal_id": 3, "kind": "search"}] * 2)

    assert bad_after_good_ones(TrackingAssessor(medianstop=True, start_step=1)) == AssessResult.Bad
    assert bad_after_good_ones(TrackingAssessor(medianstop=False)) == AssessResult.Good


def test_tuner_trial_end_failure_and_resume_requeues_pending(tmp_path):
    import nni

    space, store, tuner = _tuner(tmp_path, trials=3)
    p0, p1 = tuner.generate_parameters(10), tuner.generate_parameters(11)
    nni_side = _Dispatcher(tuner)
    nni_side.epoch("A", 10, p0)
    nni_side.end("A", 10, "EARLY_STOPPED")                  # stopped by the assessor
    nni_side.end("A", 10, "EARLY_STOPPED")                  # repeated: nothing more
    rows = store.trials()
    assert [(r["proposal_id"], r["status"]) for r in rows] == [(p0["job"]["proposal_id"], "failed")]
    # the dispatcher dies with p1 running; a new tuner re-issues p1 first (same proposal)
    _, store2, tuner2 = _tuner_reopen(tmp_path)
    again = tuner2.generate_parameters(0)
    assert again["job"]["proposal_id"] == p1["job"]["proposal_id"]
    assert again["job"]["choices"] == p1["job"]["choices"]
    tuner2.receive_trial_result(0, again, _report(again))
    p2 = tuner2.generate_parameters(1)
    with pytest.raises(nni.NoMoreTrialError):               # budget of 3 reached
        tuner2.generate_parameters(2)
    tuner2.receive_trial_result(1, p2, _report(p2))
    ids = [r["proposal_id"] for r in store2.trials()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 3


def _tuner_reopen(tmp_path):
    from nas.nni.tuner import ControllerTuner

    space, store, loop = _loop(tmp_path / "run", trials=3, create=False)
    return space, store, ControllerTuner(session=str(_session(tmp_path, loop, "session2.json")))


def test_trial_failures_are_results_that_name_the_job():
    out = run_trial({"job": {"kind": "search", "proposal_id": 7, "choices": [1], "key": "k", "spec": {}},
                     "ctx": {}}, lambda v: None)
    assert out["status"] == "failed" and out["proposal_id"] == 7 and out["default"] == 0.0 and out["message"]
    assert run_trial(None, lambda v: None)["status"] == "failed"


# -- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, problem", [
    ("trainingService: [", "not valid YAML"),
    ("trialConcurrency: 2", "trainingService"),
    ("trainingService: {gpuIndices: [0]}", "platform"),
    ("trainingService: {platform: local}\ntuner: {name: TPE}", "'tuner'"),
    ("- 1", "mapping"),
])
def test_bad_nni_config_is_one_line_user_error(tmp_path, text, problem):
    path = tmp_path / "nni.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=problem) as info:
        engine_nni.load_nni_config(str(path))
    assert "\n" not in str(info.value)


def test_config_checks_and_examples(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        engine_nni.load_nni_config(str(tmp_path / "missing.yaml"))
    gpu = engine_nni.load_nni_config(str(ROOT / "examples" / "nni_local_gpu.yaml"))
    cfg = engine_nni.build_config(gpu, code_dir=tmp_path, work_dir=tmp_path, session=tmp_path / "s",
                                  concurrency=2, max_trials=5, assessor="medianstop")
    assert cfg.training_service.use_active_gpu is not None
    assert cfg.assessor.class_name == "nas.nni.assessor.TrackingAssessor" and cfg.assessor.class_args["medianstop"]
    bad = {"trainingService": {"platform": "local"}, "trialGpuNumber": 1}
    with pytest.raises(UserError, match="useActiveGpu"):
        engine_nni.build_config(bad, code_dir=tmp_path, work_dir=tmp_path, session=tmp_path / "s",
                                concurrency=1, max_trials=1, assessor="none")
    remote = engine_nni.load_nni_config(str(ROOT / "examples" / "nni_remote.yaml"))
    assert len(remote["trainingService"]["machineList"]) == 2
    with pytest.raises(UserError, match="--nni-bind"):
        NniEngine(nni_config=str(ROOT / "examples" / "nni_remote.yaml"))
    with pytest.raises(UserError, match="concurrency"):
        NniEngine(concurrency=0)


def test_remote_trials_resolve_device_and_data_on_their_own_machines(tmp_path, capsys):
    """The launching machine may have no GPU and no copy of the data: with a remote service
    `--device cuda` and a workers' `--data-dir` pass through to the trials unchecked here."""
    from nas.cli import options as cfg
    from nas.cli.setup import validate
    argv = ["--target-flops", "400M", "--engine", "nni", "--nni-config", str(ROOT / "examples" / "nni_remote.yaml"),
            "--nni-bind", "0.0.0.0", "--device", "cuda", "--dataset", "cifar10", "--data-dir", "/data/workers/cifar10",
            "--out", str(tmp_path / "run")]
    opts, given = cfg.parse(argv)
    setup = validate(opts, given)
    assert setup.budget.device == "cuda" and setup.budget.data_dir == "/data/workers/cifar10"
    assert "not on this machine" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # on the local service the same options are checked here (this machine has no CUDA in CI)
    local = [a if a != str(ROOT / "examples" / "nni_remote.yaml") else str(ROOT / "examples" / "nni_local_gpu.yaml")
             for a in argv]
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda"):
            validate(*cfg.parse(local))


# -- NNI's remote (SSH) training service, against an sshd on 127.0.0.1 -------------------------
def _start_sshd(tmp_path: Path, port: int) -> subprocess.Popen:
    d = tmp_path / "ssh"
    d.mkdir()
    for name in ("hostkey", "userkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "userkey.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    (d / "sshd_config").write_text(textwrap.dedent(f"""
        ListenAddress 127.0.0.1
        Port {port}
        HostKey {d / 'hostkey'}
        AuthorizedKeysFile {d / 'authorized_keys'}
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        StrictModes no
        UsePAM no
        PidFile {d / 'sshd.pid'}
        Subsystem sftp /usr/lib/openssh/sftp-server
        # NNI runs `pip install nni --upgrade` on every worker: keep it offline and pinned
        SetEnv PIP_NO_INDEX=1
    """))
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not _listening(port) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    return proc


@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists() or os.geteuid() != 0,
                    reason="needs root and Debian's openssh-server (apt-get install openssh-server)")
def test_remote_training_service_over_ssh_on_loopback(tmp_path):
    ssh_port = engine_nni.free_port()
    sshd = _start_sshd(tmp_path, ssh_port)
    out = tmp_path / "run"
    cfg = tmp_path / "remote.yaml"
    cfg.write_text(textwrap.dedent(f"""
        nniManagerIp: 127.0.0.1
        trainingService:
          platform: remote
          machines:
            - host: 127.0.0.1
              port: {ssh_port}
              user: root
              sshKeyFile: {tmp_path / 'ssh' / 'userkey'}
              pythonPath: {Path(sys.executable).parent}
    """))
    engine = None
    try:
        assert sshd.poll() is None and _listening(ssh_port) == ["127.0.0.1"]
        space, store, loop = _loop(out, trials=3)
        engine = NniEngine(nni_config=str(cfg), concurrency=2, watchdog=90, log=lambda m: None)
        engine.run(loop, _ctx("nas.trial:hash_evaluate"))
        _check_records(space, store, 3)
        assert _nni_processes(out) == []
    finally:
        sshd.terminate()
        sshd.wait(10)
        if engine is not None and engine.experiment_id:  # the worker side lives in ~root/nni-experiments
            import shutil
            shutil.rmtree(Path(os.path.expanduser("~root")) / "nni-experiments" / engine.experiment_id,
                          ignore_errors=True)


def test_cli_engine_nni_hands_on_the_b0_it_recorded(tmp_path, capsys):
    from nas.cli.search import main
    from search_space.spec import ArchSpec

    out = tmp_path / "cli"
    rc = main(["--target-flops", "400M", "--engine", "nni", "--concurrency", "2", "--trials", "3",
               "--evaluator", "nas.trial:hash_evaluate", "--reference", "none", "--no-scale",
               "--no-progress", "--no-tensorboard", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0 and "web UI http://127.0.0.1:" in captured.out + captured.err
    with Store.open(out) as store:
        trained = store.trials("search", "trained")
        assert len(trained) == 3
        for r in trained:
            assert r["accuracy"] == pytest.approx(hash_accuracy(r["key"]), abs=1e-12)
        best = max(trained, key=lambda r: r["reward"])
    assert ArchSpec.load(out / "best.yaml").key() == best["key"]
    assert _nni_processes(out) == []


def test_real_evaluator_reports_its_curve_while_training():
    """The NNI trial binds its intermediate reporter into `nas.trial.evaluate`'s per-epoch
    hook, so an assessor (Medianstop) sees accuracies before the trial ends."""
    from nas.evaluate import trial
    from nas.engines.evaluator import with_epoch_hook

    seen = []
    fn, hooked = with_epoch_hook(trial.evaluate, lambda epoch, acc: seen.append(acc))
    assert hooked and fn.keywords["on_epoch"] is not None
    fn.keywords["on_epoch"](1, 0.5)
    assert seen == [0.5]
    assert with_epoch_hook(trial.hash_evaluate, seen.append) == (trial.hash_evaluate, False)


# -- review fixes: configuration spelling, paths with spaces, a dying manager -------------------
def test_snake_case_inside_training_service_and_fields_from_options(tmp_path):
    path = tmp_path / "nni.yaml"
    path.write_text("trial_gpu_number: 1\ntraining_service:\n  platform: local\n  use_active_gpu: true\n"
                    "  gpu_indices: [0]\n")
    cfg = engine_nni.build_config(engine_nni.load_nni_config(str(path)), code_dir=tmp_path, work_dir=tmp_path,
                                  session=tmp_path / "s", concurrency=1, max_trials=1, assessor="none",
                                  python="/opt/my env/bin/python3")
    assert cfg.training_service.use_active_gpu is True
    assert cfg.trial_command == "'/opt/my env/bin/python3' -m nas.nni.trial"
    path.write_text("training_service:\n  platform: remote\n  machine_list:\n"
                    "    - {host: 127.0.0.1, user: u, python_path: /opt/venv/bin}\n")
    remote = engine_nni.load_nni_config(str(path))
    assert engine_nni.trial_python(remote) == "/opt/venv/bin/python3"
    assert engine_nni.all_hosts_loopback(remote)
    for field, option in (("trialConcurrency", "--concurrency"), ("max_trial_number", "--trials")):
        path.write_text(f"{field}: 2\ntrainingService: {{platform: local}}\n")
        with pytest.raises(UserError, match=option):
            engine_nni.load_nni_config(str(path))


def test_bind_preload_loads_from_a_path_with_spaces(tmp_path):
    import nni_node

    node = Path(nni_node.__file__).parent / "node"
    folder = tmp_path / 'my "runs" dir'
    folder.mkdir()
    (folder / "bind.js").write_text("console.log('preloaded');")
    env = {**os.environ, "NODE_OPTIONS": node_require(folder / "bind.js")}
    done = subprocess.run([str(node), "-e", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "preloaded", done.stderr[-500:]


def test_stop_stops_the_experiment_and_kills_what_is_left_of_its_tree(monkeypatch):
    stopped = []

    class Exp:
        def stop(self):
            stopped.append(True)

    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    try:
        _stop(Exp(), procs[0])
        assert stopped == [True] and procs[0].wait(10) is not None      # the manager left behind: gone

        def gone(self):
            raise psutil.NoSuchProcess(self.pid)

        monkeypatch.setattr(psutil.Process, "status", gone)              # exits while it is checked
        _stop(Exp(), procs[1])
        assert stopped == [True, True]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


class _Boom:
    """Unpickling this creates a file: a stand-in for any code a planted pickle could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_tuner_refuses_a_session_file_that_is_not_our_json(tmp_path):
    import pickle

    from nas.nni.tuner import ControllerTuner

    space, store, loop = _loop(tmp_path / "run", trials=2)
    marker = tmp_path / "pwned"
    session = _session(tmp_path, loop)
    session.write_bytes(pickle.dumps({"source": _Boom(marker)}))
    with pytest.raises(UserError, match="not a JSON session file"):
        ControllerTuner(session=str(session))
    assert not marker.exists()
    session.write_text(json.dumps({"version": 99}))
    with pytest.raises(UserError, match="unknown session version 99"):
        ControllerTuner(session=str(session))
    session.write_text(json.dumps({"version": 1, "source": {"type": "search"}}))
    with pytest.raises(UserError, match="malformed"):
        ControllerTuner(session=str(session))
    good = _session(tmp_path, loop, "good.json")
    assert good.stat().st_mode & 0o077 == 0                               # owner only
    assert ControllerTuner(session=str(good)).source.s.stop.trials == 2


class _FakeExperiment:
    """What `NniEngine._poll` asks of an experiment; `status()` says what the manager answers."""

    id = "abc"

    def __init__(self, tmp_path, status):
        self.config = types.SimpleNamespace(experiment_working_directory=str(tmp_path))
        self.get_status = status

    def list_trial_jobs(self):
        return []


def _poll_source(tmp_path):
    return types.SimpleNamespace(store=Store.create(tmp_path / "run", {"test": "nni"}), listeners=[], done=False,
                                 refresh=lambda: None)


def test_unreachable_manager_is_a_one_line_runtime_error(tmp_path):
    import requests

    def refused():
        raise requests.ConnectionError("connection refused\nsecond line")

    source = _poll_source(tmp_path)
    engine = NniEngine(log=lambda m: None)
    with pytest.raises(RuntimeError, match="not reachable .*--resume") as info:
        engine._poll(_FakeExperiment(tmp_path, refused), source)
    assert "\n" not in str(info.value)
    source.store.close()


def test_experiment_that_ends_before_the_search_is_done_is_an_error(tmp_path):
    source, exp = _poll_source(tmp_path), _FakeExperiment(tmp_path, lambda: "DONE")
    engine = NniEngine(log=lambda m: None)
    engine.poll, engine.watchdog = 0.01, 0.05
    with pytest.raises(RuntimeError, match="ended \\(DONE\\) before the search was done.*--resume"):
        engine._poll(exp, source)
    source.done = True
    engine._poll(exp, source)                              # done: returns quietly
    source.store.close()
