"""A latency table: each distinct layer configuration measured once, a spec's latency predicted by a sum.

Timing a whole network costs tens of milliseconds per candidate and needs the device to
be quiet; the search prices thousands. The table measures each part (stem, block layer,
head, see `search_space.latency.LayerConfig`) once, keeps it on disk, and predicts a
spec as the sum of its parts in microseconds (about 0.1 ms, no network built or run once
its entries are there), optionally corrected by a calibration fitted on whole-network
measurements of specs kept apart from any evaluation.

Entries only hold for the conditions they were measured under, so a table file carries a
key (device name, torch version, thread count, dtype, batch, memory format, allocator
mode) and opening it under other conditions is refused with one line naming what
differs. Entries are per input size, so one table serves several resolutions. The file is JSON,
written atomically (temporary file + rename), merged with what is on disk at save time
so two processes filling the same table lose nothing but a race on the very same entry.

File format (`format` = search_space.latency_table/1):

    {"format": "search_space.latency_table/1",
     "key": {"device": "Intel(R) Xeon(R) Processor (AVX512)", "torch": "2.13.0+cpu",
             "threads": 1, "dtype": "float32", "batch": 1, "channels_last": false,
             "allocator": "glibc-steady"},
     "timing": {"warmup": 10, "repeats": 30, "group": 20},
     "calibration": {"kind": "scale", "scale": 1.02, "offset_us": 0.0, "specs": 20},
     "entries": {"<LayerConfig.key()>": {"us": 812.3, "iqr_us": 10.2, "min_us": 798.1,
                                         "repeats": 30}, ...}}

`timing` records how the entries were taken (informational); the key decides validity.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .fileio import write_atomic
from .latency import (DEFAULT_MAX_SPREAD, DEFAULT_REPEATS, DEFAULT_TRIES, DEFAULT_WARMUP, Latency, LatencyError,
                      LayerConfig, allocator_name, device_name, distinct, fixed_threads, layer_configs, least_spread, measure, measure_parts,
                      network_order, resolve_device, space_configs, torch_dtype)
from .spec import ArchSpec

FORMAT = "search_space.latency_table/1"
CALIBRATIONS = ("none", "scale", "offset", "affine")
KEY_DOC = "the device, torch version, threads, dtype, batch, memory format and allocator it was measured with"


@dataclass(frozen=True)
class TableKey:
    """The conditions a table's entries hold for; two tables are interchangeable iff keys are equal."""

    device: str
    torch: str
    threads: int
    dtype: str
    batch: int
    channels_last: bool
    allocator: str

    @classmethod
    def current(cls, device: str = "cpu", threads: int | None = 1, dtype: str = "float32", batch: int = 1,
                channels_last: bool = False, steady: bool = True) -> "TableKey":
        """The key of this machine and process for these settings (threads None: torch's current count)."""
        import torch
        dev = resolve_device(device)
        torch_dtype(dtype, dev)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise LatencyError(f"batch must be a positive integer, got {batch!r}")
        with fixed_threads(threads) as used:
            pass
        return cls(device_name(dev), torch.__version__, used, dtype, batch, bool(channels_last), allocator_name(steady))

    def mismatches(self, other: "TableKey") -> list[str]:
        """`threads 2 (file) vs 1 (here)` for every field that differs."""
        return [f"{f.name} {getattr(other, f.name)!r} (file) vs {getattr(self, f.name)!r} (here)"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


@dataclass(frozen=True)
class Entry:
    """One measured part in microseconds: the median (what predictions sum), its IQR and the minimum.

    The minimum is kept for judging a table measured on a loaded machine, where it is
    the less disturbed figure (bench/latency.py reports both).
    """

    us: float
    iqr_us: float = 0.0
    min_us: float | None = None
    repeats: int = 0


@dataclass(frozen=True)
class Calibration:
    """`predicted = scale * sum_of_entries + offset_us`; identity until fitted.

    A network is a little more than its parts: the calls through its nested Sequentials,
    and caches left by its actual neighbours rather than by the parts timed alongside.
    One factor (or one per-network constant) fitted on whole-network timings absorbs that.
    """

    kind: str = "none"
    scale: float = 1.0
    offset_us: float = 0.0
    specs: int = 0

    def apply(self, us: float) -> float:
        return self.scale * us + self.offset_us


def fit_calibration(raw_us: Sequence[float], measured_us: Sequence[float], kind: str = "scale") -> Calibration:
    """Fit `kind` on (sum of entries, measured end to end) pairs of calibration specs.

    `scale` is the median ratio measured/raw and `offset` the median difference (medians,
    so one spec timed during a burst of load does not move the fit); `affine` is least squares.
    """
    if kind not in CALIBRATIONS:
        raise LatencyError(f"unknown calibration {kind!r} (expected one of {', '.join(CALIBRATIONS)})")
    if len(raw_us) != len(measured_us):
        raise LatencyError("calibration needs as many measurements as predictions")
    n = len(raw_us)
    if kind == "none" or n == 0:
        return Calibration(specs=n)
    if kind == "scale":
        return Calibration("scale", statistics.median(m / r for r, m in zip(raw_us, measured_us)), 0.0, n)
    if kind == "offset":
        return Calibration("offset", 1.0, statistics.median(m - r for r, m in zip(raw_us, measured_us)), n)
    if n < 2:
        raise LatencyError("an affine calibration needs at least 2 specs")
    mr, mm = statistics.fmean(raw_us), statistics.fmean(measured_us)
    var = sum((r - mr) ** 2 for r in raw_us)
    slope = sum((r - mr) * (m - mm) for r, m in zip(raw_us, measured_us)) / var if var else 1.0
    return Calibration("affine", slope, mm - slope * mr, n)


class LatencyTable:
    """Per-part latencies for one `TableKey`, filled lazily and kept in a JSON file.

    `path` None keeps the table in memory. Parts are timed in groups of about `group`
    (a network's worth) round-robin, see `latency.measure_parts`; a fill with few missing
    parts times them among the other parts it was given, which are not re-recorded.
    `measure_fn(configs) -> [Latency | float us, ...]` replaces the real timing of one
    group (tests count calls with it). Every fill is saved at its end (and every
    `save_every_s` during a long one) when `autosave` and a path are given.
    """

    def __init__(self, path: str | Path | None = None, *, device: str = "cpu", threads: int | None = 1,
                 dtype: str = "float32", batch: int = 1, channels_last: bool = False,
                 warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
                 steady: bool = True, group: int = 20, tries: int = DEFAULT_TRIES,
                 max_spread: float = DEFAULT_MAX_SPREAD,
                 measure_fn: Callable[[list[LayerConfig]], Sequence[Any]] | None = None,
                 autosave: bool = True, save_every_s: float = 30.0) -> None:
        self.device = resolve_device(device)
        self.steady = steady
        self.key = TableKey.current(self.device, threads, dtype, batch, channels_last, steady)
        if repeats < 1 or warmup < 0:
            raise LatencyError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise LatencyError(f"group must be a positive integer, got {group!r}")
        self.warmup, self.repeats, self.group = warmup, repeats, group
        self.tries, self.max_spread = tries, max_spread
        self.path = Path(path) if path is not None else None
        self.measure_fn = measure_fn
        self.autosave, self.save_every_s = autosave, save_every_s
        self.entries: dict[str, Entry] = {}
        self.calibration = Calibration()
        self.measurements = 0  # parts this object has timed (lazy fill measures each once)
        if self.path is not None and self.path.exists():
            key, entries, calibration = read_table(self.path)
            self._check_key(key, self.path)
            self.entries, self.calibration = entries, calibration

    # -- lookup and prediction -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, config: LayerConfig) -> bool:
        return config.key() in self.entries

    def missing(self, configs: Iterable[LayerConfig]) -> list[LayerConfig]:
        """The distinct configs without an entry, in first-seen order."""
        return [c for c in distinct(configs) if c.key() not in self.entries]

    def breakdown(self, spec: ArchSpec, resolution: int | None = None) -> list[tuple[LayerConfig, float]]:
        """(part, microseconds) for the stem, every layer and the head; measures missing parts first."""
        configs = layer_configs(spec, resolution)
        self.fill(configs)
        return [(c, self.entries[c.key()].us) for c in configs]

    def predict(self, spec: ArchSpec, resolution: int | None = None, calibrated: bool = True) -> float:
        """Predicted end-to-end latency of `spec` in microseconds (resolution default: the spec's own).

        The sum of its parts' entries, through the table's calibration unless `calibrated` is False.
        """
        total = math.fsum(us for _, us in self.breakdown(spec, resolution))
        return self.calibration.apply(total) if calibrated else total

    def sum_of_minimums(self, spec: ArchSpec, resolution: int | None = None) -> float:
        """Sum of the parts' minimum times (us), uncalibrated: the load-robust counterpart of `predict`."""
        configs = layer_configs(spec, resolution)
        self.fill(configs)
        return math.fsum(self.entries[c.key()].min_us or self.entries[c.key()].us for c in configs)

    def predict_ms(self, spec: ArchSpec, resolution: int | None = None, calibrated: bool = True) -> float:
        return self.predict(spec, resolution, calibrated) / 1e3

    # -- filling ---------------------------------------------------------------------------
    def fill(self, configs: Iterable[LayerConfig],
             progress: Callable[[int, int, LayerConfig], None] | None = None) -> int:
        """Measure every distinct config not yet in the table; returns how many were measured.

        Each missing config is recorded once, from the first group it is timed in.
        Threads are fixed for the whole fill; `progress(done, total, config)` after each group.
        Whatever was measured is saved even when the fill is interrupted (Ctrl-C).
        """
        given = distinct(configs)
        todo = [c for c in given if c.key() not in self.entries]
        if not todo:
            return 0
        wanted = {c.key() for c in todo}
        done, last_save = 0, time.monotonic()
        try:
            with fixed_threads(self.key.threads):
                for group in self._groups(given, todo):
                    for config, entry in zip(group, self._measure(group)):
                        if config.key() in wanted and config.key() not in self.entries:
                            self.entries[config.key()] = entry
                            self.measurements += 1
                            done += 1
                    if progress is not None:
                        progress(done, len(todo), group[-1])
                    if self._saving and time.monotonic() - last_save > self.save_every_s:
                        self.save()
                        last_save = time.monotonic()
        finally:
            if done and self._saving:
                self.save()
        return done

    def _groups(self, given: list[LayerConfig], todo: list[LayerConfig]) -> list[list[LayerConfig]]:
        """Network-like groups of at most `group` parts covering `todo`, each in network order.

        Everything given fits one group: time it all. Few missing: time them among a spread
        of the given parts already known. Many: deal the missing ones, sorted by input size,
        into equal groups, so each group spans the sizes as a network does.
        """
        g = self.group
        if len(given) <= g:
            return [network_order(given)]
        if len(todo) <= g:
            missing = {c.key() for c in todo}
            known = network_order(c for c in given if c.key() not in missing)
            want = min(len(known), g - len(todo))
            pick = [known[i * len(known) // want] for i in range(want)] if want else []
            return [network_order(todo + pick)]
        ordered = network_order(todo)
        n = -(-len(ordered) // g)
        return [network_order(ordered[i::n]) for i in range(n)]

    def build(self, space: Any, resolution: int | None = None,
              progress: Callable[[int, int, LayerConfig], None] | None = None) -> int:
        """Measure every config `space` (a SearchSpace) can produce at `resolution`; returns how many were new."""
        return self.fill(space_configs(space, resolution), progress)

    def calibrate(self, specs: Sequence[ArchSpec], resolution: int | None = None, kind: str = "scale",
                  measured_ms: Sequence[float] | None = None) -> Calibration:
        """Fit and keep a calibration on whole-network latencies of `specs` (measured here unless given).

        Use specs that are not the ones the table is judged on (bench/latency.py samples its
        calibration set with another seed).
        """
        if measured_ms is None:
            measured_ms = [self.measure_spec(s, resolution).median_ms for s in specs]
        raw = [self.predict(s, resolution, calibrated=False) for s in specs]
        self.calibration = fit_calibration(raw, [m * 1e3 for m in measured_ms], kind)
        if self._saving:
            self.save()
        return self.calibration

    def measure_spec(self, spec: ArchSpec, resolution: int | None = None) -> Latency:
        """End-to-end latency of `spec` under this table's conditions (for checks and calibration)."""
        return measure(spec, resolution, batch=self.key.batch, device=self.device, threads=self.key.threads,
                       dtype=self.key.dtype, channels_last=self.key.channels_last, warmup=self.warmup,
                       repeats=self.repeats, steady=self.steady, tries=self.tries, max_spread=self.max_spread)

    def _measure(self, group: list[LayerConfig]) -> list[Entry]:
        if self.measure_fn is not None:
            results = list(self.measure_fn(list(group)))
        else:
            def run() -> list[Latency]:
                return measure_parts(group, batch=self.key.batch, device=self.device, threads=self.key.threads,
                                     dtype=self.key.dtype, channels_last=self.key.channels_last, warmup=self.warmup,
                                     repeats=self.repeats, steady=self.steady)

            def spread(lats: list[Latency]) -> float:  # of the group's sum: one disturbed round shows
                total = sum(lat.median_ms for lat in lats)
                return sum(lat.iqr_ms for lat in lats) / total if total > 0 else 0.0

            results = least_spread(run, spread, self.tries, self.max_spread)
        if len(results) != len(group):
            raise LatencyError(f"measuring {len(group)} parts gave {len(results)} results")
        entries = []
        for config, result in zip(group, results):
            if isinstance(result, Latency):
                entries.append(Entry(result.median_ms * 1e3, result.iqr_ms * 1e3, result.min_ms * 1e3, result.repeats))
                continue
            us = float(result)
            if not math.isfinite(us) or us < 0:
                raise LatencyError(f"measuring {config.key()} gave {us!r} us")
            entries.append(Entry(us))
        return entries

    # -- the file ----------------------------------------------------------------------------
    @property
    def _saving(self) -> bool:
        return self.autosave and self.path is not None

    def _check_key(self, key: TableKey, path: Path) -> None:
        diff = self.key.mismatches(key)
        if diff:
            raise LatencyError(f"{path}: latency table was measured under other conditions: {'; '.join(diff)} "
                               f"(a table only holds for {KEY_DOC}; use another --table file)")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "key": asdict(self.key),
                "timing": {"warmup": self.warmup, "repeats": self.repeats, "group": self.group},
                "calibration": asdict(self.calibration),
                "entries": {k: asdict(self.entries[k]) for k in sorted(self.entries)}}

    def save(self, path: str | Path | None = None) -> Path:
        """Write the table atomically, first merging entries another process saved to the same file."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise LatencyError("save: the table has no path")
        if target.exists():
            try:
                key, entries, calibration = read_table(target)
            except LatencyError:
                key = None  # unreadable: overwrite it with our complete table
            if key is not None:
                self._check_key(key, target)
                for k, e in entries.items():
                    self.entries.setdefault(k, e)
                if self.calibration.kind == "none" and calibration.kind != "none":
                    self.calibration = calibration
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, json.dumps(self.to_dict(), indent=1) + "\n")
        return target


def read_table(path: str | Path) -> tuple[TableKey, dict[str, Entry], Calibration]:
    """(key, entries, calibration) of a table file; one-line LatencyError for anything malformed."""
    path = Path(path)

    def bad(problem: str) -> LatencyError:
        return LatencyError(f"{path}: not a valid latency table ({problem})")

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise LatencyError(f"{path}: cannot read the latency table ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise bad(f"JSON does not parse: line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise bad("expected a JSON object at the top level")
    if data.get("format") != FORMAT:
        raise bad(f"format {data.get('format')!r}, expected {FORMAT!r}")
    raw_key = data.get("key")
    types = {"device": str, "torch": str, "threads": int, "dtype": str, "batch": int, "channels_last": bool,
             "allocator": str}
    if not isinstance(raw_key, dict) or set(raw_key) != set(types):
        raise bad(f"key must be an object with exactly {', '.join(types)}")
    for name, t in types.items():
        v = raw_key[name]
        if not isinstance(v, t) or (t is int and isinstance(v, bool)):
            raise bad(f"key.{name} must be a {t.__name__}, got {v!r}")
    raw_entries = data.get("entries")
    if not isinstance(raw_entries, dict):
        raise bad("entries must be an object of part -> {us, iqr_us, repeats}")
    entries = {}
    for name, e in raw_entries.items():
        us = e.get("us") if isinstance(e, dict) else None
        if not _finite(us) or us < 0:
            raise bad(f"entries[{name!r}].us must be a non-negative number, got {us!r}")
        iqr, low, reps = e.get("iqr_us", 0.0), e.get("min_us"), e.get("repeats", 0)
        entries[name] = Entry(float(us), float(iqr) if _finite(iqr) else 0.0, float(low) if _finite(low) else None,
                              reps if isinstance(reps, int) and not isinstance(reps, bool) else 0)
    raw_cal = data.get("calibration", {})
    try:
        calibration = Calibration(**raw_cal)
        ok = (calibration.kind in CALIBRATIONS and _finite(calibration.scale) and _finite(calibration.offset_us)
              and isinstance(calibration.specs, int))
    except TypeError:
        ok = False
    if not ok:
        raise bad(f"calibration must be {{kind: {'|'.join(CALIBRATIONS)}, scale, offset_us, specs}}, got {raw_cal!r}")
    return TableKey(**raw_key), entries, calibration


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
