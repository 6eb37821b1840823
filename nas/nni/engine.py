"""The NNI engine's process control: run a job source as an NNI experiment.

Why it is built this way (NNI 3.0 is unmaintained; see docs/nni.md):

* The tuner is `nas.nni.tuner.ControllerTuner`, run by NNI's dispatcher on this
  machine; it rebuilds the job source from a plain-data session file and writes every
  result into the run's SQLite store under `--out`, from the final-result dict each
  trial reports about itself. The store stays the record of truth and works whatever
  machine a trial ran on (local, remote, Kubernetes).
* The experiment is polled with `get_status()` (not `run(wait_completion)`), under a
  watchdog: NNI is known to stall silently; when no trial runs and nothing progresses
  for `--nni-watchdog` seconds the experiment is stopped with a clear error, the store
  intact and resumable.
* Ctrl-C and SIGTERM stop the experiment and NNI's manager (a Node.js process in its
  own process group) and anything left of its process tree. A SIGKILLed launcher can
  stop nothing, so a guard process (`nas.nni.guard`) kills the manager's tree when the
  launcher is gone, and a new run first ends any process left over from an earlier
  one on the same folder, so no trial of a dead run can write into the store.
* NNI's REST server/web UI listens on every interface and has no option to change
  that; a tiny Node.js preload (`NODE_OPTIONS=--require`) makes its `listen()` on the
  experiment's port use `--nni-bind` (127.0.0.1 by default).
* Resume starts a *new* experiment that continues from the store: the tuner restores
  the controller checkpoint and re-issues pending proposals; finished ones never rerun.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from search_space.fileio import write_atomic

from ..engines.protocol import sigterm_as_interrupt
from ..errors import EngineError, UserError
from . import config as nc

TERMINAL = {"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"}
SESSION_NAME = "session.json"
SESSION_VERSION = 1

_BIND_JS = r"""// Written by nas.nni.engine: bind NNI's REST server (web UI) to one address.
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


class StartFailed(RuntimeError):
    """The experiment failed before any trial started (retried with a fresh port)."""


class NniEngine:
    """`nas.engines.protocol.Engine` on NNI: `run(source, ctx)` runs the JobSource as an experiment.

    `nni_config` is the path of the user's YAML or its loaded dict (`load_nni_config`);
    every option is checked here, so an engine built during set-up is known to be valid.
    `run` returns when the source is done; raises `UserError` for bad options,
    `EngineError` when NNI stalls (watchdog) or fails, and `KeyboardInterrupt` after a
    clean stop on Ctrl-C/SIGTERM; in every case the experiment and NNI's processes are gone.
    """

    name = "nni"

    def __init__(self, nni_config: str | dict | None = None, concurrency: int = 1, assessor: str = "none",
                 port: int | None = None, bind: str = "127.0.0.1", watchdog: float = 300.0,
                 log: Any = None, poll: float = 0.5) -> None:
        self.nni_cfg = nni_config if isinstance(nni_config, dict) else nc.load_nni_config(nni_config)
        nc.check_config(self.nni_cfg)
        if int(concurrency) < 1:
            raise UserError(f"--concurrency must be at least 1, got {concurrency}")
        if watchdog <= 0:
            raise UserError(f"--nni-watchdog must be positive, got {watchdog}")
        if port is not None and not 1024 <= int(port) <= 65534:
            raise UserError(f"--nni-port must lie in 1024..65534, got {port}")
        self.concurrency, self.assessor, self.port = int(concurrency), assessor or "none", port
        self.bind, self.watchdog, self.poll = bind or "127.0.0.1", float(watchdog), poll
        self.log = log or (lambda msg: print(msg, flush=True))
        self.remote = any(p != "local" for p in nc.platforms(self.nni_cfg))
        if self.remote and self.bind in nc.LOOPBACK and not nc.all_hosts_loopback(self.nni_cfg):
            raise UserError("the remote/cluster training services need workers to reach the NNI manager: "
                            "pass --nni-bind 0.0.0.0 (and set nniManagerIp in --nni-config)")
        self.experiment_id: str | None = None
        self.url: str | None = None
        self.start_attempts = 3

    @classmethod
    def from_args(cls, args: Any, nni_config: dict | None = None, log: Any = None) -> "NniEngine":
        """From the CLI options (an argparse Namespace or a dict); absent ones take defaults.
        `nni_config`, when given, is the already loaded `--nni-config` (read once)."""
        def opt(name: str, default: Any = None) -> Any:
            value = args.get(name) if isinstance(args, dict) else getattr(args, name, None)
            return default if value is None else value
        return cls(nni_config=nni_config if nni_config is not None else opt("nni_config"),
                   concurrency=opt("concurrency", opt("workers") or 1), assessor=opt("assessor", "none"),
                   port=opt("nni_port"), bind=opt("nni_bind", "127.0.0.1"),
                   watchdog=float(opt("nni_watchdog", 300.0)), log=log)

    @property
    def trials_run_elsewhere(self) -> bool:
        return nc.trials_run_elsewhere(self.nni_cfg)

    def run(self, source: Any, ctx: Any) -> None:
        source.refresh()  # the dispatcher of an earlier run may have stopped the loop
        if source.done:
            return
        out_dir = Path(source.store.path).resolve().parent
        nni_dir = out_dir / "nni"
        end_leftovers(nni_dir, self.log)
        nni_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(nni_dir, 0o700)  # the session and the user's config (SSH key paths): owner only
        code_dir = nc.stage_code(nni_dir / "code")
        session = nni_dir / SESSION_NAME
        write_session(session, {"source": source.handover(), "ctx": ctx.to_dict(), "out_dir": str(out_dir),
                                "token": secrets.token_hex(8)})
        config = nc.build_config(self.nni_cfg, code_dir=code_dir, work_dir=nni_dir / "experiments",
                                 session=session, concurrency=self.concurrency, max_trials=source.max_jobs(),
                                 assessor=self.assessor)
        bind_js = nni_dir / "bind.js"
        write_atomic(bind_js, _BIND_JS)
        with sigterm_as_interrupt():
            for attempt in range(1, self.start_attempts + 1):
                port = self.port or nc.free_port(need_next=self.remote)
                try:
                    self._run_experiment(config, port, bind_js, source)
                    return
                except StartFailed as exc:
                    if attempt == self.start_attempts:
                        raise EngineError(f"{exc}; gave up after {attempt} starts") from None
                    self.log(f"NNI engine: {exc}; starting again ({attempt + 1} of {self.start_attempts})")

    # -- internals --------------------------------------------------------------------------
    def _run_experiment(self, config: Any, port: int, bind_js: Path, source: Any) -> None:
        from nni.experiment import Experiment, RunMode

        logging.getLogger("nni").setLevel(logging.WARNING)
        exp = Experiment(config)
        node_opts = (os.environ.get("NODE_OPTIONS", "") + " " + node_require(bind_js)).strip()
        manager = guard = None
        try:
            with _env(NODE_OPTIONS=node_opts, NAS_NNI_BIND_HOST=self.bind, NAS_NNI_BIND_PORT=str(port)):
                try:
                    exp.start(port, run_mode=RunMode.Background)
                except Exception as exc:
                    raise StartFailed(f"NNI experiment {exp.id} failed to start ({type(exc).__name__}); see "
                                      f"{config.experiment_working_directory}/{exp.id}/log") from None
            manager = getattr(exp, "_proc", None)
            guard = _start_guard(manager)
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
            if guard is not None:
                with contextlib.suppress(Exception):
                    guard.kill()
                    guard.wait(5)

    def _poll(self, exp: Any, source: Any) -> None:
        """Until the source is done; feeds its listeners; watchdog on stalls."""
        store = source.store
        last_id = store.last_trial_id()
        count = first_count = store.count_all()
        started = False
        last_progress, last_sig = time.monotonic(), None
        while True:
            for rec in store.trials_after(last_id):
                last_id, count = rec["id"], count + 1
                for listener in source.listeners:
                    with contextlib.suppress(Exception):
                        listener(rec)
            source.refresh()
            if source.done:
                return
            logs = f"{exp.config.experiment_working_directory}/{exp.id}/log"
            try:
                status = exp.get_status()
                jobs = (exp.list_trial_jobs() or []) if status != "ERROR" else []
            except Exception as exc:  # the manager died or stopped answering its REST API
                raise EngineError(f"NNI manager of experiment {exp.id} not reachable ({type(exc).__name__}; logs: "
                                  f"{logs}); the store is intact: rerun with --resume") from None
            if status == "ERROR" and not started and count == first_count:
                # e.g. "Tuner did not connect in 10 seconds" on a busy machine: nothing ran yet
                raise StartFailed(f"NNI experiment {exp.id} failed while starting (logs: {logs})")
            if status == "ERROR":
                raise EngineError(f"NNI experiment {exp.id} reported ERROR (logs: {logs}); the store is "
                                  "intact: rerun with --resume")
            started = started or bool(jobs)
            active = [j for j in jobs if j.status not in TERMINAL]
            sig = (count, tuple(sorted((j.trialJobId, j.status) for j in jobs)))
            if sig != last_sig or active:
                last_sig, last_progress = sig, time.monotonic()
            elif status in ("DONE", "STOPPED") and time.monotonic() - last_progress > min(self.watchdog, 10.0):
                # nothing runs, nothing arrives, and the search is not done: say so, never "finished"
                raise EngineError(f"NNI experiment {exp.id} ended ({status}) before the search was done "
                                  f"({count} records; logs: {logs}); the store is intact: rerun with --resume")
            elif time.monotonic() - last_progress > self.watchdog:
                raise EngineError(f"NNI made no progress for {self.watchdog:g} s (status {status}, no trial "
                                  f"running, {count} records): experiment stopped; the store is intact: "
                                  "rerun with --resume")
            time.sleep(self.poll)


# -- the session file: what the tuner in NNI's dispatcher is built from ---------------------
def write_session(path: Path, session: dict) -> None:
    """Plain JSON, owner-only: a run folder may be shared, and nothing in it is ever executed."""
    write_atomic(path, json.dumps({"version": SESSION_VERSION, **session}))
    os.chmod(path, 0o600)


def read_session(path: str | Path) -> dict:
    """The session written by `write_session`, validated; `UserError` (one line) otherwise."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"NNI session {path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"NNI session {path}: not a JSON session file (refused, nothing loaded)") from None
    if not isinstance(data, dict) or data.get("version") != SESSION_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise UserError(f"NNI session {path}: unknown session version {version!r} (expected {SESSION_VERSION})")
    missing = [k for k in ("source", "ctx", "out_dir", "token") if k not in data]
    if missing or not isinstance(data["source"], dict) or not isinstance(data["ctx"], dict):
        raise UserError(f"NNI session {path}: malformed (missing or bad field {(missing or ['source'])[0]!r})")
    return data


def _start_guard(manager: Any) -> Any:
    """The watcher that kills NNI's tree if this process dies (`nas.nni.guard`)."""
    import subprocess
    import sys

    if manager is None:
        return None
    root = str(Path(__file__).resolve().parent.parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "nas.nni.guard", str(os.getpid()), str(manager.pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def end_leftovers(nni_dir: Path, log: Any = None) -> int:
    """Kill processes of an earlier NNI run on this folder (a manager, dispatcher or trial
    whose command line or working folder lies under `nni_dir`); returns how many."""
    import psutil

    mark = str(Path(nni_dir).resolve())
    mine = {os.getpid()} | {p.pid for p in psutil.Process().parents()}
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if p.pid in mine:
                continue
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
        except (psutil.Error, TypeError):
            continue
        if mark in text and _alive(p):
            found.append(p)
    for p in found:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(found, timeout=10)
    if found and log:
        log(f"NNI engine: ended {len(found)} process(es) left over from an earlier run on {nni_dir}")
    return len(found)


def node_require(path: Path) -> str:
    """`--require PATH` for NODE_OPTIONS, which splits on spaces unless double-quoted."""
    return '--require "' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


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
