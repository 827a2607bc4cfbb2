"""The run's watch over reward failures: counts for the end-of-run summary, and one clear
error when failures persist (``reward.max_failure_rate`` on ``reward.max_failure_steps``
consecutive steps) instead of a whole run trained on the failure reward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports the error without torch
    from ..rewards.safe import SafeScore


class RewardFailureError(RuntimeError):
    """The reward kept failing: the run stops."""


@dataclass
class RewardFailureWatch:
    """Fed every training round's ``SafeScore`` (``record``) and every step's global counts
    (``end_step``); ``errors`` and ``streak_errors`` hold the first error of each failure
    kind seen on this rank over the run and over the current streak of failing steps."""

    reward: str
    max_rate: float
    max_steps: int
    failures: int = 0
    worst_rate: float = 0.0
    failed_steps: int = 0
    steps: int = 0
    streak: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    streak_errors: dict[str, str] = field(default_factory=dict)

    def record(self, scored: SafeScore) -> None:
        for kind, message in scored.errors.items():
            self.errors.setdefault(kind, message)
            self.streak_errors.setdefault(kind, message)

    def end_step(self, step: int, failures: float, rate: float) -> None:
        """Count a step (``failures`` samples, ``rate`` their share of the samples generated,
        over every rank); raise ``RewardFailureError`` when it ends ``max_steps``
        consecutive failing steps."""
        self.steps += 1
        self.failures += int(failures)
        self.failed_steps += failures > 0
        self.worst_rate = max(self.worst_rate, rate)
        if failures > 0 and rate >= self.max_rate:
            self.streak += 1
        else:
            self.streak = 0
            self.streak_errors = {}
        if self.max_steps and self.streak >= self.max_steps:
            raise RewardFailureError(self._stop_message(step, rate))

    def _stop_message(self, step: int, rate: float) -> str:
        if self.streak_errors:
            kind, message = next(iter(self.streak_errors.items()))
            first = f"first error ({kind}): {message}"
        else:
            first = "the errors were logged by another rank"
        return (
            f"reward {self.reward!r} failed on {rate:.0%} of the samples of step {step} and on "
            f"at least reward.max_failure_rate={self.max_rate:g} of them for "
            f"{self.streak} consecutive steps; {first}. Fix the reward, or set "
            "reward.max_failure_steps=0 to train on the failure reward anyway"
        )

    def summary(self) -> str | None:
        """One line for the end-of-run summary, or ``None`` when nothing failed."""
        if not self.failures:
            return None
        kinds = "; ".join(f"{kind}: {message}" for kind, message in self.errors.items())
        return (
            f"reward failures: {self.failures} samples got reward.failure_reward, on "
            f"{self.failed_steps} of {self.steps} steps (worst step: {self.worst_rate:.0%} "
            "failed)" + (f"; first errors: {kinds}" if kinds else "")
        )
