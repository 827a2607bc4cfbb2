"""Scoring that survives a failing reward function: the failing samples get a fixed reward.

A reward that raises is retried one sample at a time to find the samples at fault; a sample
whose reward raises or is NaN/inf gets ``failure_reward`` (its sub-scores 0). The first
failure of each kind (exception type, or "non-finite") of each reward is logged once per
process with its traceback; every failure is counted for the metrics.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import torch

from ..interfaces import RewardInput, RewardModel, RewardOutput

logger = logging.getLogger("lightrft.reward")

_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


@dataclass
class SafeScore:
    """The rewards (finite, failures replaced) and how many samples failed."""

    output: RewardOutput
    failures: int = 0


def reset_failure_log() -> None:
    """Forget which failures were logged (tests)."""
    with _logged_lock:
        _logged.clear()


def _first_time(reward: str, kind: str) -> bool:
    with _logged_lock:
        if (reward, kind) in _logged:
            return False
        _logged.add((reward, kind))
        return True


def _log_exception(reward: RewardModel, exc: BaseException, failure_reward: float) -> None:
    kind = type(exc).__qualname__
    if _first_time(reward.name, kind):
        logger.error(
            "reward %r raised %s: %s; the sample gets failure_reward=%s "
            "(later %s failures of this reward are only counted)",
            reward.name,
            kind,
            exc,
            failure_reward,
            kind,
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def _log_non_finite(reward: RewardModel, value: float, failure_reward: float) -> None:
    if _first_time(reward.name, "non-finite"):
        logger.error(
            "reward %r returned %s for a sample; it gets failure_reward=%s "
            "(later non-finite rewards are only counted)",
            reward.name,
            value,
            failure_reward,
        )


def _checked(output: RewardOutput, size: int) -> RewardOutput:
    rewards = torch.as_tensor(output.rewards).detach().float().reshape(-1)
    if rewards.numel() != size:
        raise ValueError(f"returned {rewards.numel()} rewards for {size} samples")
    subs = {}
    for name, scores in output.sub_scores.items():
        scores = torch.as_tensor(scores).detach().float().reshape(-1)
        if scores.numel() != size:
            raise ValueError(f"sub-score {name!r} has {scores.numel()} values for {size} samples")
        subs[name] = scores
    return RewardOutput(rewards=rewards, sub_scores=subs)


def _score_one_by_one(
    reward: RewardModel, batch: RewardInput, failure_reward: float
) -> tuple[RewardOutput, torch.Tensor]:
    """Rewards sample by sample; ``failed`` marks the samples whose call raised."""
    n = len(batch)
    rewards = torch.full((n,), float("nan"), dtype=torch.float32)
    failed = torch.zeros(n, dtype=torch.bool)
    subs: dict[str, torch.Tensor] = {}
    for i in range(n):
        one = RewardInput(
            prompts=[batch.prompts[i]],
            responses=[batch.responses[i]],
            labels=[batch.labels[i]],
            metadata=[batch.metadata[i]],
        )
        try:
            out = _checked(reward.score(one), 1)
        except Exception as exc:
            _log_exception(reward, exc, failure_reward)
            failed[i] = True
            continue
        rewards[i] = out.rewards[0]
        for name, scores in out.sub_scores.items():
            subs.setdefault(name, torch.zeros(n, dtype=torch.float32))[i] = scores[0]
    return RewardOutput(rewards=rewards, sub_scores=subs), failed


def score_safely(reward: RewardModel, batch: RewardInput, failure_reward: float) -> SafeScore:
    """``reward.score(batch)`` with failing samples replaced by ``failure_reward``."""
    if not math.isfinite(failure_reward):
        raise ValueError(f"failure_reward must be finite, got {failure_reward}")
    n = len(batch)
    try:
        output = _checked(reward.score(batch), n)
        failed = torch.zeros(n, dtype=torch.bool)
    except Exception as exc:
        if n == 1:
            _log_exception(reward, exc, failure_reward)
            output = RewardOutput(rewards=torch.full((1,), float("nan")), sub_scores={})
            failed = torch.ones(1, dtype=torch.bool)
        else:
            output, failed = _score_one_by_one(reward, batch, failure_reward)
    non_finite = ~torch.isfinite(output.rewards) & ~failed
    for i in non_finite.nonzero().flatten().tolist():
        _log_non_finite(reward, float(output.rewards[i]), failure_reward)
    bad = failed | non_finite
    rewards = torch.where(bad, torch.tensor(float(failure_reward)), output.rewards)
    subs = {
        name: torch.where(bad | ~torch.isfinite(s), torch.tensor(0.0), s)
        for name, s in output.sub_scores.items()
    }
    return SafeScore(RewardOutput(rewards=rewards, sub_scores=subs), failures=int(bad.sum()))
