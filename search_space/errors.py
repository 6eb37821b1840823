"""One exception type per package boundary, so CLIs can turn them into one-line errors."""
from __future__ import annotations

from pathlib import Path


class SpecError(ValueError):
    """A spec, block string or space file that is malformed; the message names the field."""


def read_text_file(path: str | Path, what: str = "the file") -> str:
    """The file's text, or one `SpecError` line naming it (missing, unreadable, not UTF-8)."""
    path = Path(path)
    try:
        return path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (not UTF-8)") from None


class WeightsError(SpecError):
    """A weights file that cannot be read, or not into the network asked for; one line naming the file."""


class ExportError(SpecError):
    """An ONNX export that cannot be done: a missing package, an unwritable output, an opset out of range."""
