"""One exception type per package boundary, so CLIs can turn them into one-line errors."""


class SpecError(ValueError):
    """A spec, block string or space file that is malformed; the message names the field."""
