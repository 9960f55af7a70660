"""The errors the analysis package raises for bad input.

The CLI turns any :class:`AnalysisError` into a one-line message and exit code 2; anything
else is a bug and keeps its traceback.
"""


class AnalysisError(ValueError):
    """Input the analysis cannot use. The message names the bad value and the fix."""


class DataError(AnalysisError):
    """Rows, columns or files that are missing, malformed or out of range."""


class TooFewPointsError(DataError):
    """Fewer data points than the law needs; the message says how many are needed."""
