"""The errors the analysis package raises for bad input.

The CLI turns any :class:`AnalysisError` into a one-line message and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable


class AnalysisError(ValueError):
    """Input the analysis cannot use. The message names the bad value and the fix."""


class DataError(AnalysisError):
    """Rows, columns or files that are missing, malformed or out of range."""


class TooFewPointsError(DataError):
    """Fewer data points than the law needs; the message says how many are needed."""


def cli_exit_code(prog: str, run: Callable[[], int]) -> int:
    """Run a command's body; an AnalysisError or an unreadable file becomes one line on stderr,
    prefixed with the command's name, and exit code 2."""
    try:
        return run()
    except AnalysisError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
