"""Rule rewards (math answers, exact match, format), their weighted combination, a scalar
reward model (``model``), rewards from an HTTP service (``remote``), and failure-tolerant
scoring."""

from __future__ import annotations

from .base import RuleReward
from .combined import CombinedReward
from .math import MathReward, answers_match, extract_answer, extract_boxed, last_number
from .model import ScalarRewardModel
from .remote import RemoteReward, RemoteRewardError
from .rules import ExactMatchReward, FormatReward
from .safe import BatchFailure, SafeScore, reset_failure_log, score_safely

#: The reward classes this package provides (for registration).
RULE_REWARDS = (MathReward, ExactMatchReward, FormatReward, CombinedReward)

__all__ = [
    "RULE_REWARDS",
    "BatchFailure",
    "CombinedReward",
    "ExactMatchReward",
    "FormatReward",
    "MathReward",
    "RemoteReward",
    "RemoteRewardError",
    "RuleReward",
    "SafeScore",
    "ScalarRewardModel",
    "answers_match",
    "extract_answer",
    "extract_boxed",
    "last_number",
    "reset_failure_log",
    "score_safely",
]
