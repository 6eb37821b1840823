"""The NNI engine's configuration: the user's YAML, the CLI options, the ExperimentConfig.

Kept apart from process control (`nas.nni.engine`) so that every option is checked,
and every NNI field validated by NNI itself, before `--out` exists and before any
process starts.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from search_space.fileio import yaml_problem

from ..errors import UserError

PACKAGES = ("nas", "search_space", "controllers", "scaling")
OWNED_FIELDS = {"searchSpace", "searchSpaceFile", "tuner", "trialCodeDirectory", "experimentWorkingDirectory",
                "advisor", "useAnnotation"}
# Fields the engine sets from nas.search options (a value in the YAML would be overridden).
FROM_OPTIONS = {"trialConcurrency": "--concurrency", "maxTrialNumber": "--trials"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TRIAL_MODULE = "nas.nni.trial"
TUNER_CLASS = "nas.nni.tuner.ControllerTuner"
ASSESSOR_CLASS = "nas.nni.assessor.TrackingAssessor"


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """The `--engine nni` options of `python -m nas.search` (defaults applied by
    `NniEngine.from_args`, so that a resumed run can tell options given from defaulted)."""
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


def load_nni_config(path: str | None) -> dict[str, Any]:
    """The user's NNI YAML as a dict of camelCase experiment fields (one-line errors)."""
    import yaml

    if not path:
        return {"trainingService": {"platform": "local"}}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--nni-config: no such file {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"--nni-config {path}: not valid YAML ({yaml_problem(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--nni-config {path}: cannot read ({exc})") from None
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


def services(cfg: dict) -> list[dict]:
    ts = cfg["trainingService"]
    return ts if isinstance(ts, list) else [ts]


def platforms(cfg: dict) -> list[str]:
    return [s["platform"] for s in services(cfg)]


def all_hosts_loopback(cfg: dict) -> bool:
    """True when every training service is local or a remote one whose machines are this one."""
    for svc in services(cfg):
        if svc["platform"] == "local":
            continue
        machines = svc.get("machineList") if svc["platform"] == "remote" else None
        if not machines or any(str(m.get("host")) not in LOOPBACK for m in machines if isinstance(m, dict)):
            return False
    return True


def trials_run_elsewhere(cfg: dict) -> bool:
    """True when trials may run on other machines, whose GPUs and data folders this one cannot see."""
    return not all_hosts_loopback(cfg)


def _camel(key: str) -> str:
    head, *rest = str(key).split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


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
    root = Path(__file__).resolve().parent.parent.parent
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for pkg in PACKAGES:
        if (root / pkg).is_dir():
            shutil.copytree(root / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def trial_python(cfg: dict) -> str:
    """This Python on `local`; on remote machines sharing one `pythonPath`, the Python
    there (NNI 3.0 does not put pythonPath on the trials' PATH); else `python3`."""
    if all(p == "local" for p in platforms(cfg)):
        return sys.executable
    paths = {m.get("pythonPath") or m.get("python_path") for svc in services(cfg)
             for m in (svc.get("machineList") or []) if isinstance(m, dict)}
    if len(paths) == 1 and None not in paths:
        return str(Path(paths.pop()) / "python3")
    return "python3"


def build_config(nni_cfg: dict, *, code_dir: Path, work_dir: Path, session: Path, concurrency: int,
                 max_trials: int, assessor: str, python: str | None = None) -> Any:
    """An `ExperimentConfig` from the user's YAML plus the fields the engine owns."""
    from nni.experiment import CustomAlgorithmConfig, ExperimentConfig

    fields = dict(nni_cfg)
    exe = python or trial_python(fields)
    fields.setdefault("trialCommand", f"{shlex.quote(exe)} -m {TRIAL_MODULE}")
    fields["trialConcurrency"] = int(concurrency)
    fields["maxTrialNumber"] = max(1, int(max_trials))
    fields.setdefault("experimentName", "nas-search")
    config = _experiment_config(ExperimentConfig, fields)
    config.trial_code_directory = str(code_dir)
    config.experiment_working_directory = str(work_dir)
    config.search_space = {"proposal": {"_type": "choice", "_value": [0]}}  # mandatory, unused
    config.tuner = CustomAlgorithmConfig(class_name=TUNER_CLASS, code_directory=str(code_dir),
                                         class_args={"session": str(session)})
    # always ours: it also tells the tuner which job an ending trial ran (nas.nni.assessor)
    config.assessor = CustomAlgorithmConfig(class_name=ASSESSOR_CLASS, code_directory=str(code_dir),
                                            class_args={"medianstop": assessor == "medianstop",
                                                        "optimize_mode": "maximize", "start_step": 1})
    return config


def check_config(nni_cfg: dict) -> None:
    """What NNI would refuse only once the experiment is built, checked up front (before
    `--out` exists): an unknown field, a malformed service, a GPU rule NNI never reports."""
    from nni.experiment import ExperimentConfig
    _experiment_config(ExperimentConfig, {**nni_cfg, "trialCommand": "python3", "trialConcurrency": 1})


def _experiment_config(factory: Any, fields: dict) -> Any:
    for svc in services(fields):
        if svc["platform"] == "local" and fields.get("trialGpuNumber") and "useActiveGpu" not in svc:
            raise UserError("--nni-config: trainingService.useActiveGpu must be set when trialGpuNumber is "
                            "(NNI never schedules the trial otherwise)")
    try:
        return factory(**fields)
    except Exception as exc:  # NNI's own validation: one line
        raise UserError(f"--nni-config: {str(exc).splitlines()[0]}") from None
