"""A judge's verdicts as scores in [0, 1]: parsers of its text, the probability of its "yes"
token, and the win rates of pairwise verdicts (``reward.name: judge``, ``judge.py``).

A parser returns ``None`` when the text holds no verdict it can read (a parse failure).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .math import as_plain_number, extract_boxed

#: A parser: the score of a verdict text, ``None`` when it has none.
VerdictParser = Callable[[str], float | None]

#: ``Score: 7/10``, ``score = 0.8``: the value, and the scale after a ``/`` when written.
DEFAULT_SCORE_PATTERN = r"(?i)score\s*[:=]?\s*(-?\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?"


def _in_unit_range(value: float) -> float | None:
    return value if 0.0 <= value <= 1.0 else None


def parse_score(text: str, pattern: re.Pattern[str], max_score: float) -> float | None:
    """The last match of ``pattern`` (group 1 the value, optional group 2 the scale): value /
    scale when the text writes one (``7/10`` -> 0.7), else value / ``max_score``; ``None``
    without a match or outside [0, 1]."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    value = float(last.group(1))
    written = last.group(2) if last.re.groups >= 2 else None
    scale = float(written) if written is not None else max_score
    return _in_unit_range(value / scale) if scale > 0 else None


def parse_boxed(text: str, max_score: float) -> float | None:
    """The number in the last ``\\boxed{...}`` divided by ``max_score``; ``None`` without a
    boxed number or outside [0, 1]."""
    boxed = extract_boxed(text)
    value = as_plain_number(boxed) if boxed is not None else None
    return None if value is None else _in_unit_range(value / max_score)


def verdict_pattern(yes_words: Sequence[str], no_words: Sequence[str]) -> re.Pattern[str]:
    """Any of the words, whole and case-insensitive."""
    words = sorted({*yes_words, *no_words}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(" + "|".join(map(re.escape, words)) + r")(?!\w)", re.IGNORECASE)


def parse_verdict(text: str, pattern: re.Pattern[str], yes_words: Sequence[str]) -> float | None:
    """1.0 when the last verdict word of ``text`` (``verdict_pattern``) is a yes-word, 0.0
    when it is a no-word, ``None`` when there is none."""
    found = pattern.findall(text)
    if not found:
        return None
    yes = {word.lower() for word in yes_words}
    return 1.0 if found[-1].lower() in yes else 0.0


def yes_probability(last_logits: torch.Tensor, yes_id: int, no_id: int | None) -> torch.Tensor:
    """``[B]`` probability of the yes-token as the next token, from the judge's logits at the
    last prompt position ``[B, V]``: against the no-token only (a softmax over the two) when
    ``no_id`` is given, else over the whole vocabulary."""
    logits = last_logits.float()
    if no_id is None:
        return torch.softmax(logits, dim=-1)[:, yes_id]
    pair = torch.stack([logits[:, yes_id], logits[:, no_id]], dim=-1)
    return torch.softmax(pair, dim=-1)[:, 0]


# ---------------------------------------------------------------------- pairwise verdicts
@dataclass(frozen=True)
class Match:
    """One pairwise judgement inside a group: response ``a`` shown first (A), ``b`` second."""

    a: int
    b: int


def matches(mode: str, size: int) -> list[Match]:
    """The judgements of a group of ``size`` responses: ``first`` -- each other response (as
    A) against the group's first (as B); ``round_robin`` -- every ordered pair, so that each
    response is shown first as often as second."""
    if mode == "first":
        return [Match(i, 0) for i in range(1, size)]
    if mode == "round_robin":
        return [Match(i, j) for i in range(size) for j in range(size) if i != j]
    raise ValueError(f"unknown pairwise mode {mode!r}; choose first or round_robin")


def win_rates(size: int, judged: Sequence[tuple[Match, float | None]]) -> torch.Tensor:
    """``[size]`` win rates of a group: each judgement gives A the score ``p`` (the
    probability that A is better) and B ``1 - p``; a response's win rate is the mean over
    the judgements it took part in that were read (``p`` not ``None``), NaN when none was."""
    wins = torch.zeros(size, dtype=torch.float64)
    games = torch.zeros(size, dtype=torch.float64)
    for match, p in judged:
        if p is None:
            continue
        wins[match.a] += p
        wins[match.b] += 1.0 - p
        games[match.a] += 1
        games[match.b] += 1
    rates = torch.where(games > 0, wins / games.clamp(min=1), torch.tensor(float("nan")))
    return rates.float()


def groups_of(prompts: Sequence[str]) -> list[range]:
    """The groups of a rollout batch: runs of consecutive samples with the same prompt (the
    loop keeps the samples of a prompt together)."""
    groups: list[range] = []
    start = 0
    for index in range(1, len(prompts) + 1):
        if index == len(prompts) or prompts[index] != prompts[start]:
            groups.append(range(start, index))
            start = index
    return groups
