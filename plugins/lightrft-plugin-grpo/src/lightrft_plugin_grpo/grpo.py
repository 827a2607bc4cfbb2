"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", arXiv
2402.03300) -- and the base of the plugin's other algorithms (Dr.GRPO, DAPO, GSPO, GMPO).

Advantages: each prompt's ``G`` samples are scored; ``A_i = (r_i − mean_G r) / (std_G r +
ε)`` (unbiased std) is given to every response token of sample ``i`` (the paper's
"outcome supervision"). Loss: the PPO clipped surrogate per token, aggregated over the
optimizer batch, plus ``β·KL(π ‖ π_ref)`` estimated per token.

Where this implementation departs from the paper, or lets configuration depart from it:

* Loss aggregation: the paper averages each sequence's token mean, then over sequences
  (``seq-mean-token-mean``). The default here is ``token-mean`` (as DAPO and most
  frameworks); every mode of ``lightrft_core.algorithms.AGGREGATION_MODES`` is available.
  ``seq-mean-token-sum-norm`` divides by ``max_tokens_norm``, or by the engine's
  ``max_new_tokens`` (``AlgorithmContext.max_new_tokens``) when that is not set.
* Clip-higher (``clip_eps_high > clip_eps_low``, DAPO) and the dual clip (arXiv 1912.09729)
  are options; the paper uses one symmetric ε and no dual clip.
* KL: the paper adds ``β·k3`` to the loss (``kl_mode: loss``, the default, with estimator
  ``k3``). ``kl_mode: reward`` instead subtracts ``β·Σ_t kl_t`` (the per-token penalty
  ``R_t −= β·kl_t`` summed over the response, i.e. the return with γ = 1, estimated with the
  rollout-time log-probs) from each sample's reward *before* the group normalisation, so the
  penalty is normalised together with the outcome reward.
* The paper's default ``β = 0.04``; here ``kl_coef`` defaults to 0 (no reference model),
  as in DAPO, Dr.GRPO and most recent recipes.
* Options from later work: high-entropy token selection (arXiv 2506.01939) and an entropy
  bonus (``lightrft_core.algorithms.token_selection``).

Parts: the advantage estimator ``grpo`` (``GroupNormalizedEstimator``, here) and the core's
clipped policy loss ``ppo_clip`` (``lightrft_core.algorithms.clipped_loss``). ``GRPO`` is
the preset of the two with GRPO's KL defaults. The plugin's variants are presets too: of the
same parts with other defaults (``dr_grpo``), of a derived estimator (``dapo``: overlong
shaping, dynamic sampling) or of other losses (``gspo``, ``gspo_token``, ``gmpo``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from lightrft_core.algorithms import kl_estimate
from lightrft_core.algorithms.clipped_loss import ClippedPolicyLoss, KLOptions
from lightrft_core.algorithms.groups import (
    broadcast_to_tokens,
    group_normalized_advantages,
    zero_std_groups,
)
from lightrft_core.algorithms.kl import step_kl_coef
from lightrft_core.algorithms.parts import KLShapedEstimator, preset
from lightrft_core.interfaces import AdvantageInput, AdvantageOutput


class GroupNormalizedEstimator(KLShapedEstimator):
    """``grpo``: group-normalised outcome rewards, copied to every response token."""

    name: ClassVar[str] = "grpo"
    requires_groups: ClassVar[bool] = True

    @dataclass
    class Config(KLOptions):
        """Options of the ``grpo`` estimator: the KL options (``kl_mode: reward`` subtracts
        ``kl_coef * (sum of token KL)`` from each reward before normalising), then these."""

        scale_rewards_by_std: bool = field(
            default=True,
            metadata={
                "help": "Divide group-centred rewards by the group std (GRPO). False gives "
                "Dr.GRPO's unscaled advantages."
            },
        )
        advantage_eps: float = field(
            default=1e-6,
            metadata={"help": "Added to the group std before dividing by it."},
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.advantage_eps < 0.0:
                raise ValueError(f"advantage_eps must be >= 0, got {self.advantage_eps}")

    config: Config

    @torch.no_grad()
    def __call__(self, batch: AdvantageInput) -> AdvantageOutput:
        cfg = self.config
        mask = batch.action_mask.bool()  # [B, T]
        metrics: dict[str, float] = {}
        rewards = self.shaped_rewards(batch, metrics)  # [B]
        advantages = group_normalized_advantages(
            rewards,
            batch.group_size,
            eps=cfg.advantage_eps,
            scale_by_std=cfg.scale_rewards_by_std,
        )  # [B]
        metrics["reward_mean"] = rewards.mean().item()
        metrics["advantage_mean"] = advantages.mean().item()
        metrics["advantage_std"] = advantages.std(correction=0).item()
        metrics["zero_std_group_fraction"] = (
            zero_std_groups(rewards, batch.group_size).float().mean().item()
        )
        return AdvantageOutput(advantages=broadcast_to_tokens(advantages, mask), metrics=metrics)

    def shaped_rewards(self, batch: AdvantageInput, metrics: dict[str, float]) -> torch.Tensor:
        """``[B]`` the rewards the group normalisation sees: the outcome rewards, minus
        ``β·Σ_t kl_t`` with ``kl_mode: reward``. Derived estimators add their own shaping;
        they may add metrics to ``metrics``."""
        cfg = self.config
        rewards = batch.rewards.float()  # [B]
        if cfg.kl_in_reward:
            if batch.ref_log_probs is None or batch.old_log_probs is None:
                raise ValueError(
                    f"{self.label} with kl_mode 'reward' and kl_coef > 0 needs old_log_probs "
                    "and ref_log_probs in AdvantageInput (the loop computes them when "
                    "needs_reference() is True)"
                )
            mask = batch.action_mask.bool()
            kl = kl_estimate(batch.old_log_probs, batch.ref_log_probs, cfg.kl_estimator)
            seq_kl = torch.where(mask, kl, torch.zeros_like(kl)).sum(dim=-1)  # [B]
            beta = step_kl_coef(batch.kl_coef, cfg.kl_coef)
            rewards = rewards - beta * seq_kl
            metrics["kl_penalty_mean"] = (beta * seq_kl).mean().item()
        return rewards


#: GRPO's KL defaults: the paper's k3 estimator, in the loss.
GRPO_KL_DEFAULTS = {"kl_estimator": "k3", "kl_mode": "loss"}

GRPO = preset(
    "grpo",
    advantage=GroupNormalizedEstimator,
    loss=ClippedPolicyLoss,
    defaults=GRPO_KL_DEFAULTS,
    doc="Group-normalised outcome advantages and the PPO-clip policy loss.",
    module=__name__,
    class_name="GRPO",
)
