"""What every command shares: one-line errors, exit statuses, and the argument types.

Each type parses one option's text and raises `argparse.ArgumentTypeError` with a one-line
message naming the option; `Parser` turns any parse error into a `UserError`, and `cli_main`
turns a `UserError` into that line on stderr and exit status 2. `checked` applies a type
outside the parser (a run's stored settings read back).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Any, Callable

from nas.errors import EngineError, RunIOError, UserError

MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds

# Suffixes are decimal: k = 1e3, M = 1e6, G = B = 1e9 ("0.39B FLOPS" in the EfficientNet paper).
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
_COUNT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(e[+-]?\d+)?\s*([kmgb]?)", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse that raises `UserError` (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # noqa: D401
        raise UserError(message)


def cli_main(prog: str, body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run a CLI's `body()` and turn the errors every command shares into one line on
    stderr and its exit status: bad input 2, an engine that stopped or a machine that
    cannot write 1, Ctrl-C 130 (`interrupted` is that line)."""
    try:
        return body()
    except UserError as exc:
        print(f"{prog}: error: {str(exc).splitlines()[0] if str(exc) else 'bad input'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except EngineError as exc:
        print(f"{prog}: engine stopped: {exc} (the run can be continued with --resume)", file=sys.stderr)
        return 1
    except RunIOError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def checked(parse: Callable[[Any], Any], value: Any) -> Any:
    """`parse(value)` with one of the types here, its error as a one-line `UserError`."""
    try:
        return parse(value)
    except argparse.ArgumentTypeError as exc:
        raise UserError(str(exc)) from None


def parse_count(text: str | int | float, what: str = "target") -> int:
    """`400M`, `0.4G`, `0.4B`, `4e8`, `400000000`, `400k` (any case) -> a positive int.

    Anything else raises `UserError` with one line naming `what` and the bad text.
    """
    hint = f"{what} {str(text)!r}: expected a positive count such as 400M, 0.4G, 4e8 or 400000000"
    if isinstance(text, bool):
        raise UserError(hint)
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _COUNT.fullmatch(str(text).strip())
        if not m:
            raise UserError(hint)
        number, exponent, suffix = m.groups()
        value = float(number + (exponent or "")) * _SUFFIX[suffix.lower()]
    if not math.isfinite(value) or round(value) < 1:
        raise UserError(hint)
    return int(round(value))


def count(text: str) -> int:
    """`--target-flops`."""
    return parse_count(text, "--target-flops")


def duration(text: str) -> float:
    """`--target-latency` in ms."""
    from nas.search.latency import parse_duration
    return parse_duration(text, "--target-latency")


def positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(str(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}")
        return value
    return parse


def int_at_least(name: str, low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        want = f"an integer >= {low}" + ("" if high is None else f" and <= {high}")
        try:
            value = int(str(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {want}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{name} must be {want}, got {text!r}")
        return value
    return parse


def seed_count(name: str) -> Callable[[str], Any]:
    """`auto` (sequential seeds, `nas.final.sequential`) or a positive count (a fixed design)."""
    count = positive_int(name)

    def parse(text: str) -> Any:
        if str(text).strip().lower() == "auto":
            return "auto"
        try:
            return count(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{name} must be auto or a positive integer, got {text!r}") from None
    return parse


def number(name: str, low: float | None = None, strict: bool = False) -> Callable[[str], float]:
    """A finite float, `>= low` (or `> low` when `strict`)."""
    def parse(text: str) -> float:
        try:
            value = float(str(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if strict else value < low)):
            bound = "" if low is None else (f" > {low:g}" if strict else f" >= {low:g}")
            raise argparse.ArgumentTypeError(f"{name} must be a finite number{bound}, got {text!r}")
        return value
    return parse


def parse_window(text: str) -> tuple[float, float]:
    """`--cost-window LO,HI` relative to the target (e.g. `0.5,1.0`); HI may be `inf`."""
    parts = str(text).replace(" ", "").split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise UserError(f"--cost-window {text!r}: expected LO,HI relative to the target, e.g. 0.5,1.0") from None
    if not (0 <= lo < hi) or math.isnan(hi) or not math.isfinite(lo):
        raise UserError(f"--cost-window {text!r}: need 0 <= LO < HI")
    return lo, hi


def parse_phis(text: str, what: str = "--phis") -> list[float]:
    """The family's φ values, in the grammar of `python -m scaling derive --phis` (one parser)."""
    from scaling.compound import parse_phis as parse
    from scaling.errors import ScalingError
    try:
        return parse(str(text))
    except ScalingError as exc:
        raise UserError(f"{what} {text!r}: {exc}") from None


def member_phis(text: Any, family: Any, what: str = "--phi") -> list[float]:
    """The φ values of `text` (`1,2`, `1-3`) for `scaling verify`, each one of `family`'s φ other than 0."""
    from scaling.compound import format_phi
    have = [float(p) for p in family if float(p) > 0]
    phis = parse_phis(str(text), what)
    for p in phis:
        if p not in have:
            shown = ", ".join(format_phi(x) for x in have) or "none"
            raise UserError(f"{what} {format_phi(p)}: out of range; the run's family has φ = {shown}")
    return phis


def log(opts: dict, msg: str) -> None:
    """A progress line on stderr unless `--quiet`."""
    if not opts.get("quiet"):
        print(msg, file=sys.stderr, flush=True)
