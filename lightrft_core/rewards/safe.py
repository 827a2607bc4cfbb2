"""Scoring that survives a failing reward function: the failing samples get a fixed reward.

* A reward that raises is retried one sample at a time to find the samples at fault (said
  once per reward and error type, with the error: a reward that fails on whole batches only,
  e.g. sub-scores of the wrong length, is slow but not silent);
* a reward that raises ``BatchFailure`` (a missing endpoint, a service that is down) fails
  the whole batch at once: no sample is scored again on its own;
* a sample whose reward raises or is NaN/inf gets ``failure_reward`` (its sub-scores 0);
  its texts (``RewardOutput.texts``) stay aligned: a sample that raised gets ``""``, a
  NaN/inf one keeps its text (a judge's unreadable verdict); a batch that fails as a whole
  has no texts;
* with ``timeout_s``, the reward runs in a daemon thread and a batch without an answer after
  ``timeout_s`` seconds fails as a whole (logged each time). Python cannot stop a thread: the
  call goes on in the background, its result is dropped, and it does not keep the process
  from exiting; the next batch calls the reward again while it may still run.

The first failure of each kind (exception type, ``non-finite``, a ``BatchFailure``'s kind)
of each reward is logged once per process; every failure is counted for the metrics, and
``SafeScore.errors`` holds the first error of each kind in the batch.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from ..interfaces import RewardInput, RewardModel, RewardOutput

logger = logging.getLogger("lightrft.reward")

_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()

T = TypeVar("T")


class BatchFailure(RuntimeError):
    """The whole batch failed for a reason no single sample causes (an endpoint that does not
    exist, a service that is down): every sample gets ``failure_reward`` and the batch is not
    scored again one sample at a time. ``kind`` names the failure in logs and errors."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind or type(self).__qualname__


@dataclass
class SafeScore:
    """The rewards (finite, failures replaced), how many samples failed, and the first error
    of each failure kind in the batch (``{kind: message}``)."""

    output: RewardOutput
    failures: int = 0
    errors: dict[str, str] = field(default_factory=dict)


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


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__qualname__}: {exc}"


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


def _log_batch_failure(
    reward: RewardModel, exc: BatchFailure, size: int, failure_reward: float
) -> None:
    if _first_time(reward.name, f"batch:{exc.kind}"):
        logger.error(
            "reward %r failed a whole batch of %d samples (%s): %s; every sample gets "
            "failure_reward=%s and the batch is not re-sent one sample at a time "
            "(later %s failures of this reward are only counted)",
            reward.name,
            size,
            exc.kind,
            exc,
            failure_reward,
            exc.kind,
        )


def _log_one_by_one(reward: RewardModel, exc: Exception, size: int) -> None:
    if _first_time(reward.name, f"one-by-one:{type(exc).__qualname__}"):
        logger.warning(
            "reward %r failed on a batch of %d samples (%s); its samples are scored one at a "
            "time to find those at fault, which is slow when every batch fails this way "
            "(logged once)",
            reward.name,
            size,
            _describe(exc),
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
        raise ValueError(
            f"returned {rewards.numel()} rewards for {size} samples; expected one per sample"
        )
    subs = {}
    for name, scores in output.sub_scores.items():
        scores = torch.as_tensor(scores).detach().float().reshape(-1)
        if scores.numel() != size:
            raise ValueError(
                f"returned sub-score {name!r} with {scores.numel()} values for {size} samples; "
                "expected one per sample"
            )
        subs[name] = scores
    texts = {}
    for name, values in output.texts.items():
        values = list(values)
        if len(values) != size or not all(isinstance(v, str) for v in values):
            raise ValueError(
                f"returned text {name!r} as {len(values)} values for {size} samples; "
                "expected one string per sample"
            )
        texts[name] = values
    return RewardOutput(rewards=rewards, sub_scores=subs, texts=texts)


@dataclass
class _Scored:
    output: RewardOutput
    failed: torch.Tensor  # [B] bool: the samples whose call raised
    errors: dict[str, str] = field(default_factory=dict)


def _all_failed(size: int, kind: str, message: str) -> _Scored:
    return _Scored(
        RewardOutput(rewards=torch.full((size,), float("nan")), sub_scores={}),
        torch.ones(size, dtype=torch.bool),
        {kind: message},
    )


def _score_one_by_one(reward: RewardModel, batch: RewardInput, failure_reward: float) -> _Scored:
    n = len(batch)
    rewards = torch.full((n,), float("nan"), dtype=torch.float32)
    failed = torch.zeros(n, dtype=torch.bool)
    errors: dict[str, str] = {}
    subs: dict[str, torch.Tensor] = {}
    texts: dict[str, list[str]] = {}
    for i in range(n):
        one = RewardInput(
            prompts=[batch.prompts[i]],
            responses=[batch.responses[i]],
            labels=[batch.labels[i]],
            metadata=[batch.metadata[i]],
            multimodal=[batch.multimodal[i]],
        )
        try:
            out = _checked(reward.score(one), 1)
        except Exception as exc:
            _log_exception(reward, exc, failure_reward)
            errors.setdefault(type(exc).__qualname__, _describe(exc))
            failed[i] = True
            continue
        rewards[i] = out.rewards[0]
        for name, scores in out.sub_scores.items():
            subs.setdefault(name, torch.zeros(n, dtype=torch.float32))[i] = scores[0]
        for name, values in out.texts.items():
            texts.setdefault(name, [""] * n)[i] = values[0]
    return _Scored(RewardOutput(rewards=rewards, sub_scores=subs, texts=texts), failed, errors)


def _score(reward: RewardModel, batch: RewardInput, failure_reward: float) -> _Scored:
    n = len(batch)
    try:
        return _Scored(_checked(reward.score(batch), n), torch.zeros(n, dtype=torch.bool))
    except BatchFailure as exc:
        _log_batch_failure(reward, exc, n, failure_reward)
        return _all_failed(n, exc.kind, str(exc))
    except Exception as exc:
        if n == 1:
            _log_exception(reward, exc, failure_reward)
            return _all_failed(1, type(exc).__qualname__, _describe(exc))
        _log_one_by_one(reward, exc, n)
        return _score_one_by_one(reward, batch, failure_reward)


def _call_with_timeout(fn: Callable[[], T], timeout_s: float, name: str) -> tuple[bool, T | None]:
    """``(True, fn())``, or ``(False, None)`` when ``fn`` is still running after
    ``timeout_s`` seconds (it goes on in a daemon thread; its result is dropped)."""
    box: list[T] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    thread = threading.Thread(target=work, name=f"lightrft-reward-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return False, None
    if errors:
        raise errors[0]
    return True, box[0]


def _timed_out(reward: RewardModel, size: int, timeout_s: float, failure_reward: float) -> str:
    message = f"no answer within reward.timeout_s={timeout_s:g} s for a batch of {size} samples"
    logger.error(
        "reward %r: %s; every sample gets failure_reward=%s (the call goes on in a background "
        "thread and its result is dropped)",
        reward.name,
        message,
        failure_reward,
    )
    return message


def score_safely(
    reward: RewardModel,
    batch: RewardInput,
    failure_reward: float,
    *,
    timeout_s: float | None = None,
) -> SafeScore:
    """``reward.score(batch)`` with failing samples replaced by ``failure_reward``; with
    ``timeout_s``, a batch without an answer in time fails as a whole (module docstring)."""
    if not math.isfinite(failure_reward):
        raise ValueError(f"failure_reward must be finite, got {failure_reward}")
    n = len(batch)
    if timeout_s is None:
        scored = _score(reward, batch, failure_reward)
    else:
        done, result = _call_with_timeout(
            lambda: _score(reward, batch, failure_reward), timeout_s, reward.name
        )
        if not done or result is None:
            scored = _all_failed(n, "timeout", _timed_out(reward, n, timeout_s, failure_reward))
        else:
            scored = result
    output, failed, errors = scored.output, scored.failed, dict(scored.errors)
    non_finite = ~torch.isfinite(output.rewards) & ~failed
    for i in non_finite.nonzero().flatten().tolist():
        value = float(output.rewards[i])
        _log_non_finite(reward, value, failure_reward)
        errors.setdefault("non-finite", f"returned {value} for a sample")
    bad = failed | non_finite
    rewards = torch.where(bad, torch.tensor(float(failure_reward)), output.rewards)
    subs = {
        name: torch.where(bad | ~torch.isfinite(s), torch.tensor(0.0), s)
        for name, s in output.sub_scores.items()
    }
    return SafeScore(
        RewardOutput(rewards=rewards, sub_scores=subs, texts=output.texts),
        failures=int(bad.sum()),
        errors=errors,
    )
