"""What REINFORCE++ and RLOO share: the loss options and the policy loss of a micro-batch.

Loss per token: the core's PPO clip (``lightrft_core.algorithms.ppo_clip_loss``)::

    L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)     (+ optional dual clip)

aggregated over the optimizer batch with ``aggregate_loss`` (exact under gradient
accumulation and data parallel), plus ``β·aggregate(kl(lp, lp_ref))`` when the KL is a loss
term (``kl_mode: loss``). With ``kl_mode: reward`` the KL is in the advantages instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from lightrft_core.algorithms import (
    AGGREGATION_MODES,
    KL_ESTIMATORS,
    AggregationMode,
    KLEstimator,
    aggregate_loss,
    check_clip_parameters,
    kl_estimate,
    masked_mean,
    ppo_clip_loss,
)
from lightrft_core.algorithms.options import check_aggregation, check_kl, check_one_of
from lightrft_core.interfaces import AdvantageInput, PolicyLossInput, PolicyLossOutput

KLMode = Literal["reward", "loss"]
KL_MODES: tuple[str, ...] = get_args(KLMode)


@dataclass
class ClippedLossOptions:
    """Options every algorithm of this plugin has (each algorithm's ``Config`` extends it)."""

    # ------------------------------------------------------------ clipping
    clip_eps_low: float = field(
        default=0.2,
        metadata={"help": "PPO clip: the ratio is clipped below at 1 - clip_eps_low."},
    )
    clip_eps_high: float = field(
        default=0.2,
        metadata={"help": "PPO clip: the ratio is clipped above at 1 + clip_eps_high."},
    )
    dual_clip: float | None = field(
        default=None,
        metadata={
            "help": "Dual-clip constant c > 1: the loss of a token with negative advantage is "
            "capped at c*|A|. None disables it."
        },
    )
    # ------------------------------------------------------------ loss aggregation
    loss_aggregation: AggregationMode = field(
        default="token-mean",
        metadata={
            "help": "How per-token losses are averaged: one of "
            + ", ".join(AGGREGATION_MODES)
            + "."
        },
    )
    max_tokens_norm: int | None = field(
        default=None,
        metadata={
            "help": "The constant token sums are divided by in seq-mean-token-sum-norm (the "
            "maximum generation length). Required for that mode."
        },
    )
    # ------------------------------------------------------------ KL to the reference
    kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "β, the weight of KL(policy || reference). 0 disables the reference model."
        },
    )
    kl_estimator: KLEstimator = field(
        default="k1",
        metadata={"help": "Per-token KL estimator: one of " + ", ".join(KL_ESTIMATORS) + "."},
    )
    kl_mode: KLMode = field(
        default="reward",
        metadata={
            "help": "'reward': the KL penalises the reward (token-level for REINFORCE++, "
            "summed per sequence for RLOO). 'loss': kl_coef * KL is added to the loss."
        },
    )

    def __post_init__(self) -> None:
        check_clip_parameters(self.clip_eps_low, self.clip_eps_high, self.dual_clip)
        check_aggregation(self.loss_aggregation, self.max_tokens_norm, norm_required=True)
        check_kl(self.kl_coef, self.kl_estimator)
        check_one_of("kl_mode", self.kl_mode, KL_MODES)

    @property
    def kl_in_reward(self) -> bool:
        return self.kl_mode == "reward" and self.kl_coef > 0.0


def rollout_kl(options: ClippedLossOptions, batch: AdvantageInput, algorithm: str) -> torch.Tensor:
    """``[B, T]`` per-token ``kl(lp_old, lp_ref)`` of a rollout, 0 outside the mask."""
    if batch.old_log_probs is None or batch.ref_log_probs is None:
        raise ValueError(
            f"{algorithm} with kl_mode 'reward' and kl_coef > 0 needs old_log_probs and "
            "ref_log_probs in AdvantageInput (the loop computes them when needs_reference() "
            "is True)"
        )
    kl = kl_estimate(batch.old_log_probs, batch.ref_log_probs, options.kl_estimator)
    return torch.where(batch.action_mask.bool(), kl, torch.zeros_like(kl))


def clipped_policy_loss(
    options: ClippedLossOptions, batch: PolicyLossInput, algorithm: str
) -> PolicyLossOutput:
    """This micro-batch's share of the loss (module docstring) and its metrics."""
    mask = batch.action_mask.bool()  # [B, T]
    ppo = ppo_clip_loss(
        batch.log_probs,
        batch.old_log_probs,
        batch.advantages,
        clip_eps_low=options.clip_eps_low,
        clip_eps_high=options.clip_eps_high,
        dual_clip=options.dual_clip,
    )
    aggregation, max_tokens = options.loss_aggregation, options.max_tokens_norm
    loss = aggregate_loss(ppo.loss, mask, aggregation, batch.scale, max_tokens=max_tokens)
    kl = None
    if options.kl_mode == "loss" and options.kl_coef > 0.0:
        if batch.ref_log_probs is None:
            raise ValueError(
                f"{algorithm} with kl_mode 'loss' and kl_coef > 0 needs ref_log_probs in "
                "PolicyLossInput (the loop computes them when needs_reference() is True)"
            )
        kl = kl_estimate(batch.log_probs, batch.ref_log_probs, options.kl_estimator)  # [B, T]
        loss = loss + options.kl_coef * aggregate_loss(
            kl, mask, aggregation, batch.scale, max_tokens=max_tokens
        )

    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean(ppo.clipped.float(), mask),
            "approx_kl": masked_mean(kl_estimate(batch.log_probs, batch.old_log_probs, "k3"), mask),
            "ratio_mean": masked_mean(ppo.ratio.detach(), mask),
        }
        if options.dual_clip is not None:
            metrics["dual_clip_fraction"] = masked_mean(ppo.dual_clipped.float(), mask)
        if kl is None and batch.ref_log_probs is not None:
            kl = kl_estimate(batch.log_probs, batch.ref_log_probs, options.kl_estimator)
        if kl is not None:
            metrics["kl"] = masked_mean(kl.detach(), mask)
    return PolicyLossOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})
