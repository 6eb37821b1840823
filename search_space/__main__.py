"""`python -m search_space describe SPEC [--resolution R] [--json] [--latency]`: look at a network.

SPEC is a zoo name (`efficientnet-b0`, `mnasnet-a1`) or a spec YAML file. Prints the
per-stage table in the layout of the EfficientNet paper's Table 1 with the analytic
cost of each stage, then total parameters and multiply-adds. Builds no module and
imports no torch, unless `--latency` asks for the network to be timed as well.
Bad input is one line `describe: error: ...` and exit status 2.

`python -m search_space latency build|measure|predict ...`: measured inference latency
and the per-layer latency table (`search_space.latency`, `search_space.latency_table`).

`python -m search_space export SPEC [--weights W] --onnx FILE [--resolution R] [--opset N]`:
the network (random init, or trained weights from a safetensors file of
`search_space.weights`) as ONNX with a dynamic batch, checked against PyTorch with
onnxruntime (`search_space.export`); exit status 1 when the check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import cost, zoo
from .errors import SpecError
from .spec import ArchSpec

COMMANDS = ("describe", "latency", "export")
DEFAULT_TABLE = "latency_table.json"


class UsageError(Exception):
    """Bad command-line input; `main` prints it as one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit
        raise UsageError(message)


def _resolution(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _count(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {value}")
    return value


def _timing_options(p: argparse.ArgumentParser, what: str = "") -> None:
    """Where and how to time; shared by describe --latency and the latency actions."""
    # Defaults are None here and filled in by `_timing`, so describe can tell a given flag.
    p.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=_count, metavar="N",
                   help="torch intra-op threads while timing, restored afterwards (default: 1)")
    p.add_argument("--batch", type=_count, metavar="B", help="batch size (default: 1)")
    p.add_argument("--dtype", metavar="T", help="float32 (default), bfloat16, float16 (cuda only)")
    p.add_argument("--channels-last", action="store_true", default=None, help="time with channels_last tensors")
    p.add_argument("--warmup", type=lambda t: _count(t, 0), metavar="N", help="untimed calls first (default: 10)")
    p.add_argument("--repeats", type=_count, metavar="N",
                   help=f"timed calls{what}, the median is the figure (default: 30)")
    p.add_argument("--system-allocator", action="store_true", default=None,
                   help="keep the C allocator's own settings (default: glibc keeps freed memory while timing)")


def _parser() -> _Parser:
    parser = _Parser(prog="python -m search_space", description="Tools for architecture specs.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True
    d = sub.add_parser("describe", prog="python -m search_space describe",
                       help="per-stage table, parameters and multiply-adds of a network",
                       description="Per-stage table (EfficientNet Table 1 layout), parameters and multiply-adds.")
    d.add_argument("spec", metavar="SPEC", help=f"zoo name ({', '.join(zoo.names())}) or a spec YAML file")
    d.add_argument("--resolution", type=_resolution, metavar="R",
                   help="input resolution (default: the spec's own)")
    d.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    d.add_argument("--latency", action="store_true",
                   help="also build the network and measure its inference latency (imports torch)")
    _timing_options(d)

    lat = sub.add_parser("latency", prog="python -m search_space latency",
                         help="measured inference latency and the per-layer latency table",
                         description="Measured inference latency of specs and the per-layer latency table.")
    lsub = lat.add_subparsers(dest="action", parser_class=_Parser, metavar="ACTION")
    lsub.required = True
    table_help = f"latency table file (JSON; default: {DEFAULT_TABLE})"
    b = lsub.add_parser("build", prog="python -m search_space latency build",
                        help="measure every layer configuration a search space can produce",
                        description="Fill a latency table with every distinct stem, layer and head "
                                    "configuration of a search space (entries already there are kept).")
    b.add_argument("--space", metavar="FILE", help="search space YAML file (default: the packaged default space)")
    b.add_argument("--resolution", type=_resolution, metavar="R", help="input resolution (default: the space's)")
    b.add_argument("--table", default=DEFAULT_TABLE, metavar="FILE", help=table_help)
    b.add_argument("--calibrate", type=lambda t: _count(t, 0), default=0, metavar="N",
                   help="then time N sampled networks end to end and fit a scale factor (default: 0)")
    b.add_argument("--seed", type=lambda t: _count(t, 0), default=12345, metavar="S",
                   help="seed of the --calibrate samples (default: 12345)")
    _timing_options(b, " per configuration")
    m = lsub.add_parser("measure", prog="python -m search_space latency measure",
                        help="time a network end to end",
                        description="Time a network end to end (eval mode, inference_mode, warm-up, median).")
    m.add_argument("spec", metavar="SPEC", help=f"zoo name ({', '.join(zoo.names())}) or a spec YAML file")
    m.add_argument("--resolution", type=_resolution, metavar="R", help="input resolution (default: the spec's own)")
    m.add_argument("--table", metavar="FILE", help="also show this table's prediction (measures missing entries)")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    _timing_options(m)
    pr = lsub.add_parser("predict", prog="python -m search_space latency predict",
                         help="predict a network's latency from the table",
                         description="Predict a network's latency as the sum of its table entries "
                                     "(missing entries are measured and saved first).")
    pr.add_argument("spec", metavar="SPEC", help=f"zoo name ({', '.join(zoo.names())}) or a spec YAML file")
    pr.add_argument("--resolution", type=_resolution, metavar="R", help="input resolution (default: the spec's own)")
    pr.add_argument("--table", default=DEFAULT_TABLE, metavar="FILE", help=table_help)
    pr.add_argument("--breakdown", action="store_true", help="list every part with its time")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    _timing_options(pr, " per configuration")

    e = sub.add_parser("export", prog="python -m search_space export",
                       help="the network as ONNX (dynamic batch), checked against PyTorch with onnxruntime",
                       description="Export a network, with trained weights or randomly initialised, to ONNX "
                                   "with a dynamic batch dimension, then run it with onnxruntime against PyTorch "
                                   "(exit status 1 when the max abs difference is 1e-4 or more). "
                                   "Needs: pip install 'effnas[export]'.")
    e.add_argument("spec", metavar="SPEC",
                   help=f"zoo name ({', '.join(zoo.names())}) or a spec YAML/JSON file (a run's best.yaml, family/b3.yaml)")
    e.add_argument("--weights", metavar="W",
                   help="trained weights (.safetensors, written by stage 2); their num_classes is used "
                        "(default: the builder's random init)")
    e.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write")
    e.add_argument("--resolution", type=_resolution, metavar="R", help="input resolution (default: the spec's own)")
    e.add_argument("--opset", type=_count, metavar="N", help="ONNX opset (default: search_space.export.OPSET)")
    return parser


def load_spec(text: str) -> ArchSpec:
    """A zoo name, else a YAML/JSON spec file; `SpecError` naming the file or the name."""
    if zoo.has(text):
        return zoo.get(text)
    path = Path(text)
    if path.exists() or path.suffix.lower() in (".yaml", ".yml", ".json") or "/" in text:
        return ArchSpec.load(path)
    raise SpecError(f"{text!r} is neither a zoo name ({', '.join(zoo.names())}) nor an existing spec file")


def human(n: int, unit: str = "") -> str:
    """5288548 -> '5.29M', 385814752 -> '0.39G' (G from 0.1 G up)."""
    if unit == "G" or (not unit and n >= 10 ** 8):
        return f"{n / 1e9:.2f}G"
    if unit == "M" or (not unit and n >= 10 ** 4):
        return f"{n / 1e6:.2f}M"
    return str(n)


def describe(spec: ArchSpec, resolution: int | None = None) -> dict:
    """Everything `describe` prints, as a JSON-ready dict."""
    res = spec.resolution if resolution is None else resolution
    rows = cost.stage_table(spec, res)
    return {
        "name": spec.name, "resolution": res, "params": cost.params(spec), "macs": cost.macs(spec, res),
        "layers": spec.num_layers, "stages": [r.to_dict() for r in rows], "key": spec.key(),
    }


def format_table(info: dict) -> str:
    header = ("Stage", "Operator", "Resolution", "#Channels", "#Layers", "Params", "MACs")
    lines = [header]
    for r in info["stages"]:
        res = f"{r['resolution']}x{r['resolution']}"
        lines.append((str(r["stage"]), r["operator"], res, str(r["channels"]), str(r["layers"]),
                      f"{r['params']:,}", human(r["macs"], "M")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {0, 3, 4, 5, 6}
    out = []
    for n, line in enumerate(lines):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    title = info["name"] or "spec"
    out.insert(0, f"{title} at {info['resolution']}x{info['resolution']} ({info['layers']} block layers)")
    out.append("")
    out.append(f"params: {human(info['params'])} ({info['params']:,})")
    out.append(f"multiply-adds: {human(info['macs'])} ({info['macs']:,})")
    return "\n".join(out)


TIMING_FLAGS = ("device", "threads", "batch", "dtype", "channels_last", "warmup", "repeats", "system_allocator")


def _timing(args: argparse.Namespace) -> dict:
    """The timing options as keyword arguments of `latency.measure` (defaults filled in)."""
    from . import latency

    def given(name: str, default):
        value = getattr(args, name)
        return default if value is None else value

    return {"device": latency.resolve_device(given("device", "cpu")), "threads": given("threads", 1),
            "batch": given("batch", 1), "dtype": given("dtype", "float32"),
            "channels_last": given("channels_last", False), "steady": not given("system_allocator", False),
            "warmup": given("warmup", latency.DEFAULT_WARMUP), "repeats": given("repeats", latency.DEFAULT_REPEATS)}


def _table(args: argparse.Namespace, path: str | None):
    from .latency_table import LatencyTable
    t = _timing(args)
    return LatencyTable(path, device=t["device"], threads=t["threads"], dtype=t["dtype"], batch=t["batch"],
                        channels_last=t["channels_last"], steady=t["steady"], warmup=t["warmup"],
                        repeats=t["repeats"])


def _describe(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if not args.latency:
        given = [f"--{f.replace('_', '-')}" for f in TIMING_FLAGS if getattr(args, f) is not None]
        if given:
            raise UsageError(f"{given[0]} only applies with --latency")
    info = describe(spec, args.resolution)
    if args.latency:
        from . import latency
        lat = latency.measure(spec, info["resolution"], **_timing(args))
        info["latency"] = lat.to_dict()
        print(json.dumps(info) if args.json else format_table(info) + f"\nlatency: {lat.summary()}")
        return 0
    print(json.dumps(info) if args.json else format_table(info))
    return 0


class _Progress:
    """A progress bar on stderr (redrawn in place on a terminal, a line per 10 % otherwise)."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream = label, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start, self.shown = time.monotonic(), -1

    def __call__(self, done: int, total: int, config) -> None:
        elapsed = time.monotonic() - self.start
        left = elapsed / done * (total - done)
        pct = 100 * done // total
        if self.tty:
            bar = "#" * (30 * done // total)
            self.stream.write(f"\r{self.label} [{bar:<30}] {done}/{total} {pct:3d}%  {_duration(left)} left  ")
            if done == total:
                self.stream.write("\n")
        elif pct // 10 != self.shown or done == total:
            self.shown = pct // 10
            self.stream.write(f"{self.label}: {done}/{total} ({pct}%), {_duration(left)} left, last {config.key()}\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _key_line(table) -> str:
    k = table.key
    return (f"{k.device}, torch {k.torch}, {k.threads} thread{'s' if k.threads != 1 else ''}, {k.dtype}, "
            f"batch {k.batch}{', channels_last' if k.channels_last else ''}, {k.allocator} allocator")


def _latency(args: argparse.Namespace) -> int:
    from . import latency
    if args.action == "build":
        from .space import SearchSpace
        space = SearchSpace.from_yaml(args.space) if args.space else SearchSpace.default()
        res = space.resolution if args.resolution is None else args.resolution
        table = _table(args, args.table)
        configs = latency.space_configs(space, res)
        before = len(table.missing(configs))
        start = time.monotonic()
        try:
            table.fill(configs, progress=_Progress("latency build") if before else None)
            print(f"{args.table}: {len(configs)} configurations of {space.source} at {res}x{res} ({before} measured "
                  f"now in {_duration(time.monotonic() - start)}, {len(configs) - before} already there; "
                  f"{len(table)} entries in all)")
            print(f"key: {_key_line(table)}")
            if args.calibrate:
                import random
                rng = random.Random(args.seed)
                specs = [space.decode(space.sample(rng), resolution=res) for _ in range(args.calibrate)]
                cal = table.calibrate(specs, res)
                print(f"calibration: predicted = {cal.scale:.4f} x sum of entries (median ratio over {cal.specs} "
                      f"networks timed end to end, seed {args.seed})")
        except KeyboardInterrupt:  # the fill has saved what it measured
            print(f"latency: interrupted; {len(configs) - len(table.missing(configs))} of {len(configs)} "
                  f"configurations are in {args.table}: run the same command again to go on", file=sys.stderr)
            return 130
        return 0
    spec = load_spec(args.spec)
    res = spec.resolution if args.resolution is None else args.resolution
    if args.action == "measure":
        t = _timing(args)
        table = _table(args, args.table) if args.table else None  # a bad table is refused before timing
        lat = latency.measure(spec, res, **t)
        info = {"name": spec.name, "resolution": res, "key": spec.key(), "latency": lat.to_dict()}
        if table is not None:
            info["predicted_ms"] = table.predict_ms(spec, res)
            info["sum_of_entries_ms"] = table.predict_ms(spec, res, calibrated=False)
        if args.json:
            print(json.dumps(info))
        else:
            print(f"{spec.name or 'spec'} at {res}x{res}: {lat.summary()}")
            if table is not None:
                print(f"predicted by {args.table}: {info['predicted_ms']:.2f} ms "
                      f"(sum of entries {info['sum_of_entries_ms']:.2f} ms, calibration {table.calibration.kind})")
        return 0
    table = _table(args, args.table)
    parts = table.breakdown(spec, res)
    info = {"name": spec.name, "resolution": res, "key": spec.key(), "predicted_ms": table.predict_ms(spec, res),
            "sum_of_entries_ms": sum(us for _, us in parts) / 1e3, "calibration": table.calibration.kind,
            "table": str(args.table), "table_key": asdict(table.key), "measured_now": table.measurements}
    if args.breakdown:
        info["parts"] = [{"part": c.key(), "us": us} for c, us in parts]
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{spec.name or 'spec'} at {res}x{res}: predicted {info['predicted_ms']:.2f} ms (sum of {len(parts)} "
          f"entries {info['sum_of_entries_ms']:.2f} ms, calibration {table.calibration.kind}; "
          f"{table.measurements} entries measured now)")
    print(f"key: {_key_line(table)}")
    if args.breakdown:
        width = max(len(c.key()) for c, _ in parts)
        for c, us in parts:
            print(f"  {c.key():<{width}}  {us / 1e3:8.3f} ms")
    return 0


def _export(args: argparse.Namespace) -> int:
    from . import export
    export.require()  # before any work: a missing package is one line
    out = Path(args.onnx)
    export.check_writable(out)
    spec = load_spec(args.spec)
    trained = ""
    if args.weights is not None:
        from . import weights
        model = weights.load_model(args.spec, args.weights)
        res_trained = weights.read_spec(args.weights).resolution
        trained = f" (trained at {res_trained}x{res_trained})"
    else:
        import torch

        from .model import build
        torch.manual_seed(0)
        model = build(spec).eval()
    spec = model.spec  # num_classes from the weights
    res = spec.resolution if args.resolution is None else args.resolution
    opset = export.OPSET if args.opset is None else args.opset
    export.export_onnx(model, res, out, opset=opset)
    try:
        diff, scale = export.compare(model, out, res, batches=(1, 3))
    except BaseException:
        out.unlink(missing_ok=True)  # an export that cannot be checked is not left behind
        raise
    limit = export.tolerance(scale)
    origin = f"weights {args.weights}{trained}" if args.weights is not None else "random init (no --weights)"
    verdict = "" if diff < limit else "; NOT below the tolerance: the export does not match PyTorch"
    print(f"{out}: opset {opset}, input '{export.INPUT}' float32 [batch, 3, {res}, {res}] (batch dynamic), "
          f"output '{export.OUTPUT}' [batch, {spec.num_classes}], {origin}; max abs difference to PyTorch "
          f"{diff:.1e} on batches of 1 and 3, outputs up to {scale:.2g} (tolerance {limit:.1e}){verdict}")
    return 0 if diff < limit else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0, 2 for bad input, 1 for an export that fails its check)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "describe")  # `effnas-describe SPEC` is `describe SPEC`
    command = argv[0] if argv and argv[0] in COMMANDS else "search_space"
    try:
        args = _parser().parse_args(argv)
        if args.command == "export":
            return _export(args)
        return _latency(args) if args.command == "latency" else _describe(args)
    except (UsageError, SpecError) as exc:
        message = " ".join(str(exc).split())
        print(f"{command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `describe ... | head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
