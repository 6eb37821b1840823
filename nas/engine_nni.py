"""The NNI engine: the same controller and trial code, run as an NNI experiment.

Why it is built this way (NNI 3.0 is unmaintained; see README.md, "Distributed search with NNI"):

* The tuner is `nas.nni_tuner.ControllerTuner`, run by NNI's dispatcher on this
  machine; it writes every result into the run's SQLite store under `--out` from the
  final-result dict each trial reports about itself. The store stays the record of
  truth and works whatever machine a trial ran on (local, remote, Kubernetes).
* The experiment is polled with `get_status()` (not `run(wait_completion)`), under a
  watchdog: NNI is known to stall silently; when no trial runs and nothing progresses
  for `--nni-watchdog` seconds the experiment is stopped with a clear error, the store
  intact and resumable.
* Ctrl-C and SIGTERM stop the experiment and NNI's manager (a Node.js process in its
  own process group) and anything left of its process tree.
* NNI's REST server/web UI listens on every interface and has no option to change
  that; a tiny Node.js preload (`NODE_OPTIONS=--require`) makes its `listen()` on the
  experiment's port use `--nni-bind` (127.0.0.1 by default).
* Resume starts a *new* experiment that continues from the store: the tuner restores
  the controller checkpoint and re-issues pending proposals; finished ones never rerun.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import secrets
import shlex
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .store import Store

KIND = "search"
TERMINAL = {"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"}
PACKAGES = ("nas", "search_space", "controllers", "scaling")
OWNED_FIELDS = {"searchSpace", "searchSpaceFile", "tuner", "trialCodeDirectory", "experimentWorkingDirectory",
                "advisor", "useAnnotation"}
# Fields the engine sets from nas.search options (a value in the YAML would be overridden).
FROM_OPTIONS = {"trialConcurrency": "--concurrency", "maxTrialNumber": "--trials"}

_BIND_JS = r"""// Written by nas.engine_nni: bind NNI's REST server (web UI) to one address.
const net = require('net');
const host = process.env.NAS_NNI_BIND_HOST;
const port = Number(process.env.NAS_NNI_BIND_PORT);
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (host && typeof args[0] === 'number' && args[0] === port && typeof args[1] !== 'string') {
    args.splice(1, 0, host);
  }
  return listen.apply(this, args);
};
"""


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """The `--engine nni` options of `python -m nas.search` (defaults applied by `from_args`,
    so that a resumed run can tell options given from options defaulted)."""
    g = parser.add_argument_group("NNI engine (--engine nni)")
    g.add_argument("--nni-config", metavar="YAML",
                   help="YAML with a trainingService section (local/remote/kubernetes...) and any other NNI "
                        "experiment field (trialGpuNumber, nniManagerIp, ...); default: local service")
    g.add_argument("--concurrency", type=int,
                   help="trials running at once (default: the local worker-slot count: one per core, at most 4, "
                        "or GPUs x --workers-per-gpu)")
    g.add_argument("--assessor", choices=("none", "medianstop"),
                   help="early-stop trials on their per-epoch accuracy (default: none)")
    g.add_argument("--nni-port", type=int, help="web UI / manager port (default: a free port)")
    g.add_argument("--nni-bind",
                   help="address the web UI listens on (default: 127.0.0.1; 0.0.0.0 opens it to the network, "
                        "needed by the remote and Kubernetes services)")
    g.add_argument("--nni-watchdog", type=float,
                   help="stop with an error when no trial runs and nothing progresses for this many seconds "
                        "(default: 300)")


# -- configuration ------------------------------------------------------------------------
def load_nni_config(path: str | None) -> dict[str, Any]:
    """The user's NNI YAML as a dict of camelCase experiment fields (one-line errors)."""
    if not path:
        return {"trainingService": {"platform": "local"}}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--nni-config: no such file {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"--nni-config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--nni-config {path}: expected a mapping at the top level")
    data = {_camel(k): v for k, v in data.items()}
    ts = data.get("trainingService")
    if not isinstance(ts, (dict, list)):
        raise UserError(f"--nni-config {path}: needs a trainingService section with a platform")
    services = []
    for svc in ts if isinstance(ts, list) else [ts]:
        if not isinstance(svc, dict) or "platform" not in svc:
            raise UserError(f"--nni-config {path}: every trainingService needs a platform")
        # snake_case inside the section too (NNI accepts both; the engine reads camelCase)
        svc = {_camel(k): v for k, v in svc.items()}
        if "machines" in svc:  # friendlier alias of NNI's machineList
            svc["machineList"] = svc.pop("machines")
        if isinstance(svc.get("machineList"), list):
            svc["machineList"] = [{_camel(k): v for k, v in m.items()} if isinstance(m, dict) else m
                                  for m in svc["machineList"]]
        services.append(svc)
    data["trainingService"] = services if isinstance(ts, list) else services[0]
    owned = sorted(OWNED_FIELDS & set(data))
    if owned:
        raise UserError(f"--nni-config {path}: field {owned[0]!r} is set by the engine, remove it")
    from_options = sorted(set(FROM_OPTIONS) & set(data))
    if from_options:
        raise UserError(f"--nni-config {path}: field {from_options[0]!r} comes from the command line "
                        f"({FROM_OPTIONS[from_options[0]]}), remove it")
    return data


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _all_hosts_loopback(cfg: dict) -> bool:
    """True when every training service is local or a remote one whose machines are this one."""
    ts = cfg["trainingService"]
    for svc in ts if isinstance(ts, list) else [ts]:
        if svc["platform"] == "local":
            continue
        machines = svc.get("machineList") if svc["platform"] == "remote" else None
        if not machines or any(str(m.get("host")) not in LOOPBACK for m in machines if isinstance(m, dict)):
            return False
    return True


def trials_run_elsewhere(cfg: dict) -> bool:
    """True when trials may run on other machines, whose GPUs and data folders this one cannot see."""
    return not _all_hosts_loopback(cfg)


def _camel(key: str) -> str:
    head, *rest = str(key).split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _platforms(cfg: dict) -> list[str]:
    ts = cfg["trainingService"]
    return [s["platform"] for s in (ts if isinstance(ts, list) else [ts])]


def free_port(need_next: bool = False) -> int:
    """A free TCP port on loopback (and port+1 too when `need_next`)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535 and (not need_next or _port_free(port + 1)):
            return port
    raise UserError("no free TCP port found for NNI")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stage_code(dest: Path) -> Path:
    """Copy our packages into `dest` (the trial and tuner code directory).

    NNI uploads the trial code directory to remote workers: a small copy of the four
    packages, never the user's working tree or an installed site-packages.
    """
    root = Path(__file__).resolve().parent.parent
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for pkg in PACKAGES:
        if (root / pkg).is_dir():
            shutil.copytree(root / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _trial_python(cfg: dict) -> str:
    """This Python on `local`; on remote machines sharing one `pythonPath`, the Python
    there (NNI 3.0 does not put pythonPath on the trials' PATH); else `python3`."""
    if all(p == "local" for p in _platforms(cfg)):
        return sys.executable
    ts = cfg["trainingService"]
    paths = {m.get("pythonPath") or m.get("python_path") for svc in (ts if isinstance(ts, list) else [ts])
             for m in (svc.get("machineList") or []) if isinstance(m, dict)}
    if len(paths) == 1 and None not in paths:
        return str(Path(paths.pop()) / "python3")
    return "python3"


def build_config(nni_cfg: dict, *, code_dir: Path, work_dir: Path, session: Path, concurrency: int,
                 max_trials: int, assessor: str, python: str | None = None) -> Any:
    """An `ExperimentConfig` from the user's YAML plus the fields the engine owns."""
    from nni.experiment import CustomAlgorithmConfig, ExperimentConfig

    fields = dict(nni_cfg)
    exe = python or _trial_python(fields)
    fields.setdefault("trialCommand", f"{shlex.quote(exe)} -m nas.nni_trial")
    fields["trialConcurrency"] = int(concurrency)
    fields["maxTrialNumber"] = max(1, int(max_trials))
    fields.setdefault("experimentName", "nas-search")
    config = _experiment_config(ExperimentConfig, fields)
    config.trial_code_directory = str(code_dir)
    config.experiment_working_directory = str(work_dir)
    config.search_space = {"proposal": {"_type": "choice", "_value": [0]}}  # mandatory, unused
    config.tuner = CustomAlgorithmConfig(class_name="nas.nni_tuner.ControllerTuner", code_directory=str(code_dir),
                                         class_args={"session": str(session)})
    # always ours: it also tells the tuner which job an ending trial ran (nas.nni_assessor)
    config.assessor = CustomAlgorithmConfig(class_name="nas.nni_assessor.TrackingAssessor", code_directory=str(code_dir),
                                            class_args={"medianstop": assessor == "medianstop",
                                                        "optimize_mode": "maximize", "start_step": 1})
    return config


def check_config(nni_cfg: dict) -> None:
    """What NNI would refuse only once the experiment is built, checked up front (before
    `--out` exists): an unknown field, a malformed service, a GPU rule NNI never reports."""
    from nni.experiment import ExperimentConfig
    _experiment_config(ExperimentConfig, {**nni_cfg, "trialCommand": "python3", "trialConcurrency": 1})


def _experiment_config(factory: Any, fields: dict) -> Any:
    ts = fields["trainingService"]
    for svc in ts if isinstance(ts, list) else [ts]:
        if svc["platform"] == "local" and fields.get("trialGpuNumber") and "useActiveGpu" not in svc:
            raise UserError("--nni-config: trainingService.useActiveGpu must be set when trialGpuNumber is "
                            "(NNI never schedules the trial otherwise)")
    try:
        return factory(**fields)
    except Exception as exc:  # NNI's own validation: one line
        raise UserError(f"--nni-config: {str(exc).splitlines()[0]}") from None


# -- running ------------------------------------------------------------------------------
class NniEngine:
    """`nas.engine.Engine` on NNI: `run(source, ctx)` runs the JobSource as an experiment.

    Built from the CLI namespace (`from_args`). The source is rebuilt inside NNI's
    dispatcher (see nas.nni_tuner), so its listeners are fed here by polling the store.
    `run` returns when the source is done; raises `UserError` for bad options,
    `RuntimeError` when NNI stalls (watchdog) and `KeyboardInterrupt` after a clean stop
    on Ctrl-C/SIGTERM; in every case the experiment and NNI's processes are gone.
    """

    name = "nni"

    def __init__(self, nni_config: str | None = None, concurrency: int = 1, assessor: str = "none",
                 port: int | None = None, bind: str = "127.0.0.1", watchdog: float = 300.0,
                 log: Any = None, poll: float = 0.5) -> None:
        self.nni_cfg = load_nni_config(nni_config)
        check_config(self.nni_cfg)
        if int(concurrency) < 1:
            raise UserError(f"--concurrency must be at least 1, got {concurrency}")
        if watchdog <= 0:
            raise UserError(f"--nni-watchdog must be positive, got {watchdog}")
        if port is not None and not 1024 <= int(port) <= 65534:
            raise UserError(f"--nni-port must lie in 1024..65534, got {port}")
        self.concurrency, self.assessor, self.port = int(concurrency), assessor or "none", port
        self.bind, self.watchdog, self.poll = bind or "127.0.0.1", float(watchdog), poll
        self.log = log or (lambda msg: print(msg, flush=True))
        self.remote = any(p != "local" for p in _platforms(self.nni_cfg))
        if self.remote and self.bind in LOOPBACK and not _all_hosts_loopback(self.nni_cfg):
            raise UserError("the remote/cluster training services need workers to reach the NNI manager: "
                            "pass --nni-bind 0.0.0.0 (and set nniManagerIp in --nni-config)")
        self.experiment_id: str | None = None
        self.url: str | None = None

    @classmethod
    def from_args(cls, args: Any, log: Any = None) -> "NniEngine":
        """From the CLI options (an argparse Namespace or a dict); absent ones take defaults."""
        def opt(name: str, default: Any = None) -> Any:
            value = args.get(name) if isinstance(args, dict) else getattr(args, name, None)
            return default if value is None else value
        return cls(nni_config=opt("nni_config"), concurrency=opt("concurrency", opt("workers") or 1),
                   assessor=opt("assessor", "none"), port=opt("nni_port"), bind=opt("nni_bind", "127.0.0.1"),
                   watchdog=float(opt("nni_watchdog", 300.0)), log=log)

    def run(self, source: Any, ctx: Any) -> None:
        from .nni_tuner import source_state

        store = source.store
        out_dir = Path(store.path).resolve().parent
        if self._refresh_done(source):
            return
        nni_dir = out_dir / "nni"
        nni_dir.mkdir(parents=True, exist_ok=True)
        code_dir = stage_code(nni_dir / "code")
        session = nni_dir / "session.pkl"
        cls, state = source_state(source)
        with open(session, "wb") as fh:
            pickle.dump({"source_cls": cls, "source_state": state, "ctx": ctx.to_dict(),
                         "out_dir": str(out_dir), "token": secrets.token_hex(8)}, fh, protocol=4)
        config = build_config(self.nni_cfg, code_dir=code_dir, work_dir=nni_dir / "experiments", session=session,
                              concurrency=self.concurrency, max_trials=_max_trials(source),
                              assessor=self.assessor)
        port = self.port or free_port(need_next=self.remote)
        bind_js = nni_dir / "bind.js"
        bind_js.write_text(_BIND_JS)
        self._run_experiment(config, port, bind_js, source)

    # -- internals --------------------------------------------------------------------------
    def _refresh_done(self, source: Any) -> bool:
        if hasattr(source, "stop_reason"):  # the dispatcher may have stopped the loop
            source.stop_reason = source.store.get_meta("stop_reason", "") or ""
        return bool(source.done)

    def _run_experiment(self, config: Any, port: int, bind_js: Path, source: Any) -> None:
        from nni.experiment import Experiment, RunMode

        logging.getLogger("nni").setLevel(logging.WARNING)
        exp = Experiment(config)
        node_opts = (os.environ.get("NODE_OPTIONS", "") + " " + node_require(bind_js)).strip()
        manager = None
        with _sigterm_as_interrupt():
            try:
                with _env(NODE_OPTIONS=node_opts, NAS_NNI_BIND_HOST=self.bind, NAS_NNI_BIND_PORT=str(port)):
                    try:
                        exp.start(port, run_mode=RunMode.Background)
                    except Exception as exc:
                        raise RuntimeError(f"NNI experiment {exp.id} failed to start ({type(exc).__name__}); see "
                                           f"{config.experiment_working_directory}/{exp.id}/log") from None
                manager = getattr(exp, "_proc", None)
                host = "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind
                self.experiment_id, self.url = exp.id, f"http://{host}:{port}"
                self.log(f"NNI experiment {exp.id}: web UI {self.url} (listening on {self.bind}); "
                         f"files under {config.experiment_working_directory}")
                self._poll(exp, source)
            except KeyboardInterrupt:
                self.log("NNI engine: interrupted; experiment stopped, the store is intact (resume with --resume)")
                raise
            finally:
                _stop(exp, manager)

    def _poll(self, exp: Any, source: Any) -> None:
        """Until the source is done; feeds its listeners; watchdog on stalls."""
        store = source.store
        seen = {r["id"] for r in store.trials()}
        last_progress, last_sig = time.monotonic(), None
        while True:
            new = [r for r in store.trials() if r["id"] not in seen]
            for rec in new:
                seen.add(rec["id"])
                for listener in getattr(source, "listeners", []):
                    with contextlib.suppress(Exception):
                        listener(rec)
            if self._refresh_done(source):
                return
            logs = f"{exp.config.experiment_working_directory}/{exp.id}/log"
            try:
                status = exp.get_status()
                jobs = (exp.list_trial_jobs() or []) if status != "ERROR" else []
            except Exception as exc:  # the manager died or stopped answering its REST API
                raise RuntimeError(f"NNI manager of experiment {exp.id} not reachable ({type(exc).__name__}; logs: "
                                   f"{logs}); the store is intact: rerun with --resume") from None
            if status == "ERROR":
                raise RuntimeError(f"NNI experiment {exp.id} reported ERROR (logs: {logs}); the store is "
                                   "intact: rerun with --resume")
            active = [j for j in jobs if j.status not in TERMINAL]
            sig = (len(seen), tuple(sorted((j.trialJobId, j.status) for j in jobs)))
            if sig != last_sig or active:
                last_sig, last_progress = sig, time.monotonic()
            elif status in ("DONE", "STOPPED") and time.monotonic() - last_progress > min(self.watchdog, 10.0):
                # nothing runs, nothing arrives, and the search is not done: say so, never "finished"
                raise RuntimeError(f"NNI experiment {exp.id} ended ({status}) before the search was done "
                                   f"({len(seen)} records; logs: {logs}); the store is intact: rerun with --resume")
            elif time.monotonic() - last_progress > self.watchdog:
                raise RuntimeError(f"NNI made no progress for {self.watchdog:g} s (status {status}, no trial "
                                   f"running, {len(seen)} records): experiment stopped; the store is intact: "
                                   "rerun with --resume")
            time.sleep(self.poll)


def node_require(path: Path) -> str:
    """`--require PATH` for NODE_OPTIONS, which splits on spaces unless double-quoted."""
    return '--require "' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _max_trials(source: Any) -> int:
    """An upper bound on the trials NNI will start (the loop decides the real end)."""
    settings = getattr(source, "s", None)
    if settings is not None:
        return max(1, settings.trials - source.trained + len(source.store.pending()) + 1)
    return max(1, len(getattr(source, "jobs", [])) + 1)


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread, so one path stops NNI."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _stop(exp: Any, manager: Any) -> None:
    """Stop the experiment; then make sure nothing of NNI's process tree survives."""
    import psutil

    tree: list = []
    if manager is not None:
        with contextlib.suppress(Exception):
            tree = psutil.Process(manager.pid).children(recursive=True) + [psutil.Process(manager.pid)]
    with contextlib.suppress(Exception):
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
    try:
        with contextlib.suppress(Exception):
            exp.stop()
    finally:
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGINT, previous)
    alive = [p for p in tree if _alive(p)]
    for p in alive:
        with contextlib.suppress(Exception):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        with contextlib.suppress(Exception):
            p.kill()


def _alive(proc: Any) -> bool:
    """Running and not a zombie; False for a process that exits while we look."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run(ctx: dict) -> None:
    """Entry used by `nas.search`: `ctx` holds 'source' (the SearchLoop or BatchSource),
    'eval_ctx' (nas.engine.EvalContext), 'args' (the CLI options) and optionally 'log'."""
    NniEngine.from_args(ctx.get("args") or {}, log=ctx.get("log")).run(ctx["source"], ctx["eval_ctx"])
