"""``MathReward``: checks the final answer of a response against the label with math-verify.

The answer is the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), else the last
number in the text. Plain numbers are compared directly; anything else goes through
math-verify (``parse`` + ``verify``), which knows that ``\\frac{1}{2}``, ``1/2`` and ``0.5``
are equal, and that ``2x+x`` is ``3x``.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from ..interfaces import RewardInput, RewardOutput
from .base import RuleReward, labels_of

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")


def extract_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (balanced braces), or ``None``."""
    found = None
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found = text[start:i]
                    break
    return found


def last_number(text: str) -> str | None:
    """The last number in ``text`` (``-3``, ``1,000``, ``2.5``, ``3/4``), or ``None``."""
    matches = _NUMBER.findall(text)
    return matches[-1] if matches else None


def extract_answer(text: str, *, fallback_last_number: bool = True) -> str | None:
    """The final answer of a response: the last boxed content, else (optionally) the last
    number."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed.strip()
    return last_number(text) if fallback_last_number else None


def as_plain_number(value: Any) -> float | None:
    """``value`` as a float when it is a plain number (``42``, ``-3.5``, ``"1,000"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip().strip("$").strip()
        if _PLAIN_NUMBER.fullmatch(text):
            return float(text.replace(",", ""))
    return None


def _math_verify_timeout(seconds: int | None) -> int | None:
    """math-verify's timeouts use ``signal.alarm``, which works only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return seconds


def answers_match(answer: str, label: Any, *, timeout_seconds: int | None = 5) -> bool:
    """Whether ``answer`` equals ``label``: numerically for plain numbers, else symbolically."""
    a, g = as_plain_number(answer), as_plain_number(label)
    if a is not None and g is not None:
        return math.isclose(a, g, rel_tol=1e-9, abs_tol=1e-9)
    from math_verify import parse, verify

    gold_text = str(label).strip()
    gold_text = extract_boxed(gold_text) or gold_text.strip("$")
    timeout = _math_verify_timeout(timeout_seconds)
    gold = parse(f"\\boxed{{{gold_text}}}", parsing_timeout=timeout)
    pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)
    if not gold or not pred:  # math-verify found nothing to compare: compare the text
        return " ".join(answer.split()) == " ".join(gold_text.split())
    return bool(verify(gold, pred, timeout_seconds=timeout))


class MathReward(RuleReward):
    """``correct_reward`` when the final answer equals the label, else ``incorrect_reward``.

    Sub-scores: ``math`` (the reward) and ``accuracy`` (1 for a correct answer, else 0).
    A list label accepts any of its items; a ``None`` label is never matched.
    """

    name = "math"
    requires_label = True

    @dataclass
    class Config:
        correct_reward: float = field(
            default=1.0, metadata={"help": "Reward of a response whose answer is right."}
        )
        incorrect_reward: float = field(
            default=0.0, metadata={"help": "Reward of a wrong or missing answer."}
        )
        fallback_last_number: bool = field(
            default=True,
            metadata={"help": "Without a \\boxed{} answer, use the last number in the response."},
        )
        timeout_seconds: int | None = field(
            default=5,
            metadata={
                "help": "math-verify time limit per parse/comparison (null: none). Off "
                "automatically outside the main thread (it relies on signal.alarm)."
            },
        )

        def __post_init__(self) -> None:
            for key in ("correct_reward", "incorrect_reward"):
                if not math.isfinite(getattr(self, key)):
                    raise ValueError(f"{key} must be finite, got {getattr(self, key)}")
            if self.timeout_seconds is not None and self.timeout_seconds <= 0:
                raise ValueError(
                    f"timeout_seconds must be positive or null, got {self.timeout_seconds}"
                )

    def is_correct(self, response: str, label: Any) -> bool:
        """Whether the final answer of ``response`` matches ``label`` (or one of its items)."""
        answer = extract_answer(response, fallback_last_number=self.config.fallback_last_number)
        if not answer:
            return False
        return any(
            answers_match(answer, gold, timeout_seconds=self.config.timeout_seconds)
            for gold in labels_of(label)
            if str(gold).strip()
        )

    def score_one(self, prompt: str, response: str, label: Any, metadata: dict[str, Any]) -> float:
        right = self.is_correct(response, label)
        return self.config.correct_reward if right else self.config.incorrect_reward

    def score(self, batch: RewardInput) -> RewardOutput:
        correct = torch.tensor(
            [self.is_correct(r, lab) for r, lab in zip(batch.responses, batch.labels, strict=True)],
            dtype=torch.bool,
        )
        rewards = torch.where(
            correct,
            torch.tensor(self.config.correct_reward, dtype=torch.float32),
            torch.tensor(self.config.incorrect_reward, dtype=torch.float32),
        )
        return RewardOutput(
            rewards=rewards, sub_scores={self.name: rewards.clone(), "accuracy": correct.float()}
        )
