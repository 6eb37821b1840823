"""What every benchmark's command line shares: bad options are one line and exit 2."""
from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are `PROG: error: MESSAGE` on one line (no usage dump),
    with the `--quick` and `--json` options every benchmark has."""

    def __init__(self, prog: str, description: str, quick_help: str) -> None:
        super().__init__(prog=prog, description=description)
        self.add_argument("--quick", action="store_true", help=quick_help)
        self.add_argument("--json", action="store_true", help="last line printed is one JSON object of the figures")

    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
