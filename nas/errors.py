"""The errors a command turns into one line and an exit status (`nas.cli.args.cli_main`).

Raise `UserError` for bad user input (arguments, files, folders); the message names the
problem on one line (exit 2). Everything else is a bug or a trial failure, reported
differently.
"""


class UserError(Exception):
    """Bad user input; `str(exc)` is the whole message the user sees."""


class EngineError(RuntimeError):
    """An engine cannot go on (e.g. workers die at start-up); the store stays resumable."""


class RunIOError(Exception):
    """The run could not write its files (disk full, read-only, permissions): one line with
    the path and the way on; exit status 1 (the input was fine, the machine was not)."""
