"""The one exception a CLI turns into a one-line message and exit status 2.

Raise `UserError` for bad user input (arguments, files, folders); the message names the
problem on one line. Everything else is a bug or a trial failure, reported differently.
"""


class UserError(Exception):
    """Bad user input; `str(exc)` is the whole message the user sees."""


class EngineError(RuntimeError):
    """An engine cannot go on (e.g. workers die at start-up); the store stays resumable."""


class RunIOError(Exception):
    """The run could not write its files (disk full, read-only, permissions): one line with
    the path and the way on; exit status 1 (the input was fine, the machine was not)."""


def cli_main(prog: str, body, interrupted: str = "interrupted") -> int:
    """Run a CLI's `body()` and turn the errors every command shares into one line on
    stderr and its exit status: bad input 2, an engine that stopped or a machine that
    cannot write 1, Ctrl-C 130 (`interrupted` is that line)."""
    import sys

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
