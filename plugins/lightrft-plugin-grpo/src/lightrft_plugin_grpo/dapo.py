"""DAPO: Decoupled Clip and Dynamic sAmpling Policy Optimization (Q. Yu et al., *DAPO: An
Open-Source LLM Reinforcement Learning System at Scale*, arXiv 2503.14476).

GRPO's group-normalised advantages and PPO-clip loss with the paper's four changes:

* **Clip-higher**: ``ε_low = 0.2``, ``ε_high = 0.28``.
* **Token-level loss**: ``token-mean`` over the whole optimizer batch.
* **Overlong reward shaping** (eq. 13): before the group normalisation,
  ``r_i += factor · clamp(−(L_i − (L_max − L_buf)) / L_buf, −1, 0)`` with ``L_i`` the
  response length in tokens, ``L_max`` the maximum response length and ``L_buf`` the
  buffer.
* **Dynamic sampling**: ``filter_groups`` drops the groups whose rewards are all equal (all
  right or all wrong: zero advantage, no gradient); the training loop draws more prompts,
  at most ``max_resample_rounds`` extra rounds per step (the contract is in
  ``lightrft_core.interfaces.algorithm``).

No KL term by default (``kl_coef: 0``), as the paper.

Parts: the estimator ``dapo`` (``DAPOEstimator``: GRPO's with overlong shaping and dynamic
sampling) and the core's ``ppo_clip`` loss; ``DAPO`` is their preset with
``clip_eps_high: 0.28``.

Departures: ``L_max`` is ``max_response_length`` if set, else the engine's
``max_new_tokens`` (``AlgorithmContext.max_new_tokens``); the buffer defaults to a fifth of
``L_max`` (the paper: 4096 of 20480). Dynamic sampling filters on the outcome reward the
reward model returned (the paper: accuracy), before overlong shaping. The paper resamples
until the batch is full; here the number of extra rounds is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from lightrft_core.algorithms.clipped_loss import ClippedPolicyLoss
from lightrft_core.algorithms.groups import zero_std_groups
from lightrft_core.algorithms.parts import preset
from lightrft_core.interfaces import AdvantageInput

from .advantages import overlong_length_penalty
from .grpo import GRPO_KL_DEFAULTS, GroupNormalizedEstimator

#: ``L_buf = L_max // OVERLONG_BUFFER_DIVISOR`` when ``overlong_buffer`` is not set.
OVERLONG_BUFFER_DIVISOR = 5


class DAPOEstimator(GroupNormalizedEstimator):
    """``dapo``: GRPO's advantages of overlong-shaped rewards, with dynamic sampling."""

    name: ClassVar[str] = "dapo"

    @dataclass
    class Config(GroupNormalizedEstimator.Config):
        """Options of the ``dapo`` estimator (the ``grpo`` estimator's, plus its own)."""

        # ------------------------------------------------------------ overlong shaping
        overlong_penalty_factor: float = field(
            default=1.0,
            metadata={
                "help": "Weight of the overlong penalty (in [-1, 0]) added to each reward. "
                "0 disables overlong shaping."
            },
        )
        overlong_buffer: int | None = field(
            default=None,
            metadata={
                "help": "L_buf, the length in tokens of the punishment interval before "
                "L_max. None: a fifth of L_max (the paper: 4096 of 20480)."
            },
        )
        max_response_length: int | None = field(
            default=None,
            metadata={
                "help": "L_max in tokens. None: engine.max_new_tokens, as the training loop "
                "gives it."
            },
        )
        # ------------------------------------------------------------ dynamic sampling
        dynamic_sampling: bool = field(
            default=True,
            metadata={
                "help": "Drop groups whose rewards are all equal and let the loop draw new "
                "prompts to refill the batch."
            },
        )
        max_resample_rounds: int = field(
            default=3,
            metadata={
                "help": "With dynamic_sampling: at most this many extra rollout rounds per "
                "step to replace dropped groups."
            },
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.overlong_penalty_factor < 0.0:
                raise ValueError(
                    f"overlong_penalty_factor must be >= 0, got {self.overlong_penalty_factor}"
                )
            if self.overlong_buffer is not None and self.overlong_buffer < 1:
                raise ValueError(f"overlong_buffer must be >= 1, got {self.overlong_buffer}")
            if self.max_response_length is not None and self.max_response_length < 1:
                raise ValueError(
                    f"max_response_length must be >= 1, got {self.max_response_length}"
                )
            if (
                self.overlong_buffer is not None
                and self.max_response_length is not None
                and self.overlong_buffer > self.max_response_length
            ):
                raise ValueError(
                    f"overlong_buffer ({self.overlong_buffer}) must not exceed "
                    f"max_response_length ({self.max_response_length})"
                )
            if self.max_resample_rounds < 0:
                raise ValueError(
                    f"max_resample_rounds must be >= 0, got {self.max_resample_rounds}"
                )

    config: Config

    # ------------------------------------------------------------------ dynamic sampling
    def filter_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[B // G]`` bool: with ``dynamic_sampling``, False for groups whose rewards are all
        equal; otherwise every group is kept."""
        if not self.config.dynamic_sampling:
            return super().filter_groups(rewards, group_size)
        return ~zero_std_groups(rewards, group_size)

    @property
    def max_resample_rounds(self) -> int:
        cfg = self.config
        return cfg.max_resample_rounds if cfg.dynamic_sampling else 0

    # ------------------------------------------------------------------ overlong shaping
    def shaped_rewards(self, batch: AdvantageInput, metrics: dict[str, float]) -> torch.Tensor:
        rewards = super().shaped_rewards(batch, metrics)  # [B]
        cfg = self.config
        if cfg.overlong_penalty_factor == 0.0:
            return rewards
        max_length, buffer = self.overlong_limits()
        lengths = batch.action_mask.bool().sum(dim=-1)  # [B]
        penalty = cfg.overlong_penalty_factor * overlong_length_penalty(
            lengths, max_length, buffer
        ).to(rewards.device)  # [B], <= 0
        metrics["overlong_penalty_mean"] = penalty.mean().item()
        metrics["overlong_fraction"] = (penalty < 0).float().mean().item()
        return rewards + penalty

    def overlong_limits(self) -> tuple[int, int]:
        """``(L_max, L_buf)`` in tokens, from the options or the engine's ``max_new_tokens``."""
        cfg = self.config
        max_length = (
            cfg.max_response_length
            if cfg.max_response_length is not None
            else self.context.max_new_tokens
        )
        if max_length is None:
            raise ValueError(
                "dapo's overlong reward shaping needs the maximum response length: set "
                "algorithm.max_response_length, let the training loop pass "
                "engine.max_new_tokens (AlgorithmContext.max_new_tokens), or disable the "
                "shaping with algorithm.overlong_penalty_factor=0"
            )
        buffer = cfg.overlong_buffer
        if buffer is None:
            buffer = max(1, max_length // OVERLONG_BUFFER_DIVISOR)
        if buffer > max_length:
            raise ValueError(
                f"dapo: overlong_buffer ({buffer}) exceeds the maximum response length "
                f"({max_length}); lower algorithm.overlong_buffer"
            )
        return max_length, buffer


DAPO = preset(
    "dapo",
    advantage=DAPOEstimator,
    loss=ClippedPolicyLoss,
    defaults={**GRPO_KL_DEFAULTS, "clip_eps_high": 0.28},
    doc="Clip-higher, token-level loss, overlong shaping and dynamic sampling.",
    module=__name__,
    class_name="DAPO",
)
