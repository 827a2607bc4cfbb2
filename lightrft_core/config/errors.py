"""Configuration errors that say which key, where, what was expected, and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class ConfigIssue:
    """One problem: ``key`` is dotted (``trainer.max_steps``); ``location`` is
    ``file:line``, ``command line 'k=v'`` or ``None``."""

    key: str
    message: str
    location: str | None = None

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.key}: {self.message}" if self.key else f"{where}{self.message}"


class ConfigError(ValueError):
    """The configuration is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=_file_order)
        count = len(self.issues)
        lines = [f"invalid configuration ({count} problem{'s' if count != 1 else ''}):"]
        lines += [f"  {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


def _file_order(issue: ConfigIssue) -> tuple[int, str, int]:
    """File problems first, in line order; command-line problems after them."""
    file, sep, line = (issue.location or "").rpartition(":")
    if sep and line.isdigit():
        return (0, file, int(line))
    return (1, issue.location or "", 0)


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """`` did you mean 'x'?`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""
