"""Simple rule rewards: exact match with the label, and a regular-expression format check."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .base import RuleReward, labels_of
from .math import extract_boxed

#: DeepSeek-R1 style: reasoning in <think>, the answer in <answer>.
DEFAULT_FORMAT = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"


class ExactMatchReward(RuleReward):
    """1 when the (stripped) response, or its boxed answer, equals the label; else 0.

    A list label accepts any of its items; a ``None`` label is never matched.
    """

    name = "exact_match"
    requires_label = True

    @dataclass
    class Config:
        ignore_case: bool = field(default=False, metadata={"help": "Compare case-insensitively."})
        extract_boxed: bool = field(
            default=False,
            metadata={
                "help": "Compare the content of the last \\boxed{} instead of the whole "
                "response (no boxed answer scores 0)."
            },
        )

    def _normalize(self, text: str) -> str:
        text = text.strip()
        return text.casefold() if self.config.ignore_case else text

    def score_one(self, prompt: str, response: str, label: Any, metadata: dict[str, Any]) -> float:
        answer = extract_boxed(response) if self.config.extract_boxed else response
        if answer is None:
            return 0.0
        answer = self._normalize(answer)
        return float(any(answer == self._normalize(str(gold)) for gold in labels_of(label)))


class FormatReward(RuleReward):
    """1 when the response matches ``pattern`` (searched, or matched whole), else 0."""

    name = "format"

    @dataclass
    class Config:
        pattern: str = field(
            default=DEFAULT_FORMAT,
            metadata={
                "help": "Python regular expression, compiled with re.DOTALL ('.' matches "
                "newlines). The default asks for <think>...</think><answer>...</answer>."
            },
        )
        full_match: bool = field(
            default=True,
            metadata={"help": "The whole response must match (false: anywhere in it)."},
        )

        def __post_init__(self) -> None:
            try:
                re.compile(self.pattern, re.DOTALL)
            except re.error as exc:
                raise ValueError(
                    f"pattern {self.pattern!r} is not a valid regular expression: {exc}"
                ) from None

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._regex = re.compile(self.config.pattern, re.DOTALL)

    def score_one(self, prompt: str, response: str, label: Any, metadata: dict[str, Any]) -> float:
        match = self._regex.fullmatch if self.config.full_match else self._regex.search
        return float(match(response) is not None)
