"""Project errors. Each message names the key or file, the bad value and the fix."""

from __future__ import annotations


class ScalingError(Exception):
    """Base class for errors a user can act on. CLIs print them without a traceback."""


class ConfigError(ScalingError):
    """One or more config keys are invalid. Raised before anything expensive starts."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config ({len(self.problems)} problem(s)):\n{lines}")


class DataError(ScalingError):
    """A dataset, shard or manifest is missing, corrupt or inconsistent."""


def raise_if(problems: list[str]) -> None:
    """Raise one ConfigError listing every problem, if there are any."""
    if problems:
        raise ConfigError(problems)
