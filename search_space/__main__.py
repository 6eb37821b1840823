"""`python -m search_space describe SPEC [--resolution R] [--json]`: look at a network.

SPEC is a zoo name (`efficientnet-b0`, `mnasnet-a1`) or a spec YAML file. Prints the
per-stage table in the layout of the EfficientNet paper's Table 1 with the analytic
cost of each stage, then total parameters and multiply-adds. Builds no module and
imports no torch. Bad input is one line `describe: error: ...` and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import cost, zoo
from .errors import SpecError
from .spec import ArchSpec

COMMANDS = ("describe",)


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


def _describe(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    info = describe(spec, args.resolution)
    print(json.dumps(info) if args.json else format_table(info))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "describe")  # `effnas-describe SPEC` is `describe SPEC`
    command = argv[0] if argv and argv[0] in COMMANDS else "search_space"
    try:
        args = _parser().parse_args(argv)
        return _describe(args)
    except (UsageError, SpecError) as exc:
        message = " ".join(str(exc).split())
        print(f"{command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `describe ... | head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
