"""The one exception a CLI turns into a one-line message and exit status 2.

Raise `UserError` for bad user input (arguments, files, folders); the message names the
problem on one line. Everything else is a bug or a trial failure, reported differently.
"""


class UserError(Exception):
    """Bad user input; `str(exc)` is the whole message the user sees."""
