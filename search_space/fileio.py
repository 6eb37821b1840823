"""File helpers shared by every package: atomic writes and one-line YAML errors.

Outputs (specs, spaces, tables, plots, reports) are written through `write_atomic` so a
killed process never leaves half a file; YAML parse errors become one line through
`yaml_problem` so every CLI reports them the same way.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync, then rename over `path`.

    Readers see the old file or the new one, never half of one; on any failure the
    temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def yaml_line(exc: BaseException) -> int | None:
    """The 1-based line a `yaml.YAMLError` points at, or None where it has no mark."""
    mark = getattr(exc, "problem_mark", None)
    return None if mark is None else mark.line + 1


def yaml_problem(exc: BaseException, with_line: bool = True) -> str:
    """A `yaml.YAMLError` as one line: `line N: what is wrong` (no `line N: ` without a mark).

    PyYAML's own message spans several lines (context, a quote of the text, a caret);
    only its `problem` is kept. `with_line=False` leaves the line out for callers that
    put it elsewhere in their message.
    """
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    line = yaml_line(exc)
    return f"line {line}: {problem}" if with_line and line is not None else problem
