"""Latency as a search target: `--target-latency 20ms` parsed, the latency table for the target
device opened and checked, and a spec's predicted latency (ms) for `nas.search.records`.

Why a module of its own: cost and reward are counted in one place, `nas.search.records` (`Objective`,
`new_job`); this module only supplies the figure that place multiplies in, and refuses bad
settings before `--out` exists. The table is opened (and any missing part measured) in the
process that makes jobs: the search itself, or NNI's dispatcher on the same machine (it reads
the same table file). Trials never see it: a job carries its predicted latency as a number,
so NNI trials and remote workers never measure latency.

Two kinds of table (`--latency-table FILE`):
- measured here (`--latency-device cpu|cuda|cuda:N`, the default table `--out/latency_table.json`):
  its key must be this machine's (device name, torch, threads, dtype, batch); parts a proposal
  needs and the table lacks are measured on first use and saved (each part once);
- measured on the deployment device (`--latency-device table`): built there with
  `python -m search_space latency build`, copied here, read only; it must hold every part the
  space can produce at the target resolution, and its batch, threads and dtype must be the
  search's.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Optional

from nas.errors import UserError

TABLE_DEVICE = "table"       # --latency-device table: the device the --latency-table file was measured on
DTYPE = "float32"
DEFAULT_TABLE_NAME = "latency_table.json"  # under --out, when no --latency-table is given
_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(e[+-]?\d+)?\s*(us|µs|ms|s)", re.IGNORECASE)
_TABLES: dict[tuple, Any] = {}  # one open table per settings, per process (predictions stay ~0.1 ms)


def parse_duration(text: Any, what: str = "--target-latency") -> float:
    """`20ms`, `1.5s`, `800us` (`µs`), `2e1ms` -> milliseconds (a positive float); a unit is required.

    Anything else is a one-line `UserError` naming `what` and the bad text.
    """
    hint = f"{what} {str(text)!r}: expected a positive duration with a unit, such as 20ms, 1.5s or 800us"
    m = _DURATION.fullmatch(str(text).strip()) if isinstance(text, str) else None
    if m is None:
        raise UserError(hint)
    number, exponent, unit = m.groups()
    value = float(number + (exponent or "")) * _UNITS[unit.lower()]
    if not math.isfinite(value) or value <= 0:
        raise UserError(hint)
    return value


def fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def table_path(latency_table: Optional[str], out: str | Path) -> str:
    """The table file a run uses: the one given, else `--out/latency_table.json`."""
    return str(latency_table) if latency_table else str(Path(out) / DEFAULT_TABLE_NAME)


def check_device(device: str) -> str:
    """`cpu`, `cuda`, `cuda:N` (resolved, CUDA must be there) or `table`; one line otherwise."""
    from search_space.latency import LatencyError, resolve_device
    if str(device).strip().lower() == TABLE_DEVICE:
        return TABLE_DEVICE
    try:
        return resolve_device(device)
    except LatencyError as exc:
        raise UserError(f"--latency-device {device}: {exc} (or '{TABLE_DEVICE}': the device --latency-table "
                        "was measured on)") from None


def table_for(device: str, batch: int, threads: int, path: str) -> Any:
    """The process's `LatencyTable` for these settings (opened once; later calls get the same object)."""
    ident = (device, int(batch), int(threads), str(path))
    table = _TABLES.get(ident)
    if table is None:
        table = _open(device, int(batch), int(threads), str(path))
        _TABLES[ident] = table
    return table


def forget_tables() -> None:
    """Close this process's tables (tests; a later `table_for` reads the files again)."""
    _TABLES.clear()


def _open(device: str, batch: int, threads: int, path: str) -> Any:
    from search_space.latency import LatencyError
    from search_space.latency_table import LatencyTable, read_table
    if device != TABLE_DEVICE:
        try:
            # a new file is written only once the run has started (`start_saving`); one that
            # exists (the run's own, or a table of this machine) is extended in place
            return LatencyTable(path, device=device, threads=threads, dtype=DTYPE, batch=batch,
                                autosave=Path(path).is_file())
        except LatencyError as exc:
            text = str(exc).replace("use another --table file", "use another --latency-table file")
            if "device " in text and "(file) vs" in text:
                text += f"; a table measured on the deployment device is used with --latency-device {TABLE_DEVICE}"
            raise UserError(f"--latency-table {text}") from None
    try:
        key, entries, calibration = read_table(path)
    except LatencyError as exc:
        raise UserError(f"--latency-table {exc}") from None
    want = {"threads": threads, "dtype": DTYPE, "batch": batch, "channels_last": False}
    diff = [f"{k} {getattr(key, k)!r} (file) vs {v!r} (this search)" for k, v in want.items() if getattr(key, k) != v]
    if diff:
        raise UserError(f"--latency-table {path}: latency table was measured under other conditions: "
                        f"{'; '.join(diff)} (set --latency-batch/--latency-threads, or build the table with them)")

    def refuse(configs: list) -> list:
        raise LatencyError(f"{path}: part {configs[0].key()} is not in the table, and it can only be measured on "
                           f"{key.device}: extend the table there (python -m search_space latency build)")

    table = LatencyTable(None, device="cpu", threads=1, measure_fn=refuse, autosave=False)
    table.key, table.entries, table.calibration = key, entries, calibration
    return table


def predict_ms(device: str, batch: int, threads: int, path: str, spec: Any, resolution: int) -> float:
    """Predicted latency of `spec` at `resolution` in ms (parts the table lacks are measured first)."""
    return float(table_for(device, batch, threads, path).predict_ms(spec, int(resolution)))


def smallest_spec(space: Any, resolution: int) -> Any:
    """The space's smallest network: per decision the option with the fewest multiply-adds
    (fewest layers, smallest kernels, expansion and filters), one pass block by block."""
    from search_space import cost
    choices = [0] * len(space.decisions)
    for i, d in enumerate(space.decisions):
        best = None
        for j in range(d.size):
            trial = choices[:i] + [j] + choices[i + 1:]
            macs = cost.macs(space.decode(trial, num_classes=1000, resolution=resolution), resolution)
            if best is None or macs < best[0]:
                best = (macs, j)
        choices[i] = best[1]
    return space.decode(choices, num_classes=1000, resolution=resolution)


def check_target(target_ms: float, device: str, batch: int, threads: int, path: str, space: Any,
                 resolution: int, reference: Any = None) -> float:
    """Refuse what cannot work, before --out exists; returns the fastest predicted latency (ms).

    A table from the deployment device must hold every part of the space (and of the reference)
    at `resolution`; a target below the prediction of the space's smallest network is refused
    with one line naming that prediction.
    """
    from search_space.latency import LatencyError, layer_configs, space_configs
    table = table_for(device, batch, threads, path)
    if device == TABLE_DEVICE:
        configs = [dataclasses.replace(c, num_classes=1000) if c.kind == "head" else c
                   for c in space_configs(space, resolution)]
        if reference is not None:
            configs += layer_configs(dataclasses.replace(reference, num_classes=1000), resolution)
        missing = table.missing(configs)
        if missing:
            raise UserError(f"--latency-table {path}: lacks {len(missing)} of the {len(configs)} parts the search "
                            f"needs at {resolution}x{resolution} (e.g. {missing[0].key()}); build it on that "
                            f"device with: python -m search_space latency build --resolution {resolution} "
                            f"--batch {batch} --threads {threads} --table FILE")
    small = smallest_spec(space, resolution)
    saving, table.autosave = table.autosave, False  # bad input writes nothing; `start_saving` saves it
    try:
        fastest = float(table.predict_ms(small, resolution))
    except LatencyError as exc:
        raise UserError(f"--latency-table: {exc}") from None
    finally:
        table.autosave = saving
    if target_ms < fastest:
        from search_space import cost
        raise UserError(f"--target-latency {fmt_ms(target_ms)} is below what the search space can reach: the "
                        f"fastest network found, its smallest ({small.num_layers} layers, "
                        f"{cost.macs(small, resolution) / 1e6:.0f}M MACs at {resolution}x{resolution}), is predicted "
                        f"at {fmt_ms(fastest)} ({_where(table, batch)})")
    return fastest


def _where(table: Any, batch: int) -> str:
    k = table.key
    return f"{k.device}, batch {batch}, {k.threads} thread{'s' if k.threads != 1 else ''}"


def start_saving(device: str, batch: int, threads: int, path: str) -> None:
    """Once `--out` exists: the table measured here saves what it measured (and will measure)."""
    table = table_for(device, batch, threads, path)
    if device != TABLE_DEVICE:
        table.autosave = True
        if len(table):
            table.save()


def measured_ms(device: str, batch: int, threads: int, spec: Any, resolution: int) -> Optional[float]:
    """End-to-end measured latency (median ms) of `spec` here, or None when the target is another device."""
    if device == TABLE_DEVICE:
        return None
    from search_space.latency import measure
    return float(measure(spec, int(resolution), batch=int(batch), device=device, threads=int(threads),
                         dtype=DTYPE).median_ms)


LATENCY_OPTIONS = ("latency_device", "latency_batch", "latency_threads", "latency_table")


def settings_from(opts: dict, given: set, space: Any, reference: Any = None) -> dict:
    """The latency fields of the search's `Objective` from the search's options, every one
    checked (one-line `UserError`, nothing written); {} without `--target-latency`."""
    if opts.get("target_latency") is None:
        stray = [k for k in LATENCY_OPTIONS if k in given]
        if stray:
            raise UserError(f"--{stray[0].replace('_', '-')} only applies with --target-latency")
        return {}
    device = check_device(opts["latency_device"])
    if device == TABLE_DEVICE and not opts.get("latency_table"):
        raise UserError(f"--latency-device {TABLE_DEVICE} needs --latency-table FILE (a table built on the "
                        "deployment device with python -m search_space latency build)")
    path = table_path(opts.get("latency_table"), opts["out"])
    if opts.get("latency_table"):
        p = Path(path)
        if device == TABLE_DEVICE and not p.is_file():
            raise UserError(f"--latency-table {path}: no such file")
        if p.exists() and not p.is_file():
            raise UserError(f"--latency-table {path}: not a file")
    path = str(Path(path).absolute())  # NNI's dispatcher opens it too, from another folder
    batch, threads, res = int(opts["latency_batch"]), int(opts["latency_threads"]), int(opts["target_resolution"])
    check_target(float(opts["target_latency"]), device, batch, threads, path, space, res, reference)
    return dict(latency_ms=float(opts["target_latency"]), latency_device=device, latency_batch=batch,
                latency_threads=threads, latency_table=path)
