"""REINFORCE++ and REINFORCE++-baseline (J. Hu et al., "REINFORCE++: A Simple and
Efficient Approach for Aligning Large Language Models", arXiv 2501.03262).

Advantages (once per rollout batch, no critic)::

    r_i ← r_i − mean_G r                        (REINFORCE++-baseline only)
    R_t = −β·kl_t + r_i·[t is the last response token],   kl_t = kl(lp_old_t, lp_ref_t)
    G_t = Σ_{k≥t} γ^{k−t} R_k
    A_t = (G_t − μ) / (σ + ε)     μ, σ: masked mean / population std over every response
                                  token of the *global* batch (all ranks)

Loss: the PPO clip on ``A_t`` (``lightrft_core.algorithms.clipped_loss``), aggregated over the
optimizer batch.

Where this implementation departs from the paper, or lets configuration depart from it:

* Global statistics: with several ranks the whitening all-reduces its sums through
  ``AlgorithmContext.all_reduce`` (the strategy's ``all_reduce``, which the loop gives when
  ``world_size > 1``); without it each rank would whiten its own shard.
* REINFORCE++-baseline whitens without re-centring by default (``whiten_center: false``):
  the group mean already centres the outcome reward, and re-centring by the batch's token
  mean would give the samples of an all-equal group a non-zero advantage, which this
  project forbids (ALGORITHMS.md). ``whiten_center: true`` gives the formula above exactly.
* A batch whose returns are all equal is whitened to exactly 0 (no division of a rounding
  residue by ε); ``advantage_clip`` optionally clamps the whitened advantages.
* ``kl_coef`` (β) defaults to 0, so no reference model runs unless asked for; the paper's
  token-level KL penalty is ``kl_coef > 0`` (estimator ``k1``, ``kl(lp_old, lp_ref) = lp_old −
  lp_ref``, by default). Mind that the whitening rescales the returns to unit spread: in a
  batch without any outcome signal (all rewards equal) the KL penalty alone then sets the
  advantages, at full scale, whatever β is.
* ``kl_mode: loss`` moves the KL from the token rewards to a ``β·KL`` loss term (as GRPO).

Parts: the estimators ``reinforce_pp`` and ``reinforce_pp_baseline`` (here) and the core's
``ppo_clip`` loss; ``ReinforcePP`` and ``ReinforcePPBaseline`` are their presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from lightrft_core.algorithms import clip_advantages, masked_mean, masked_whiten
from lightrft_core.algorithms.clipped_loss import ClippedPolicyLoss, KLOptions, rollout_kl
from lightrft_core.algorithms.groups import check_rewards, group_centered, zero_std_groups
from lightrft_core.algorithms.kl import step_kl_coef
from lightrft_core.algorithms.parts import KLShapedEstimator, preset
from lightrft_core.algorithms.token_rewards import token_level_rewards
from lightrft_core.interfaces import AdvantageInput, AdvantageOutput

from .returns import discounted_returns


class ReinforcePPEstimator(KLShapedEstimator):
    """``reinforce_pp``: KL-shaped token rewards, discounted returns, global whitening."""

    name: ClassVar[str] = "reinforce_pp"
    #: REINFORCE++-baseline subtracts the group mean from the rewards first.
    group_baseline: ClassVar[bool] = False

    @dataclass
    class Config(KLOptions):
        """Options of the ``reinforce_pp`` estimator: the KL options (``kl_mode: reward``
        puts ``-kl_coef * kl_t`` in the token rewards), then these."""

        # ------------------------------------------------------------ returns
        gamma: float = field(
            default=1.0,
            metadata={"help": "Discount γ of the token returns G_t = Σ γ^(k-t) R_k; in [0, 1]."},
        )
        # ------------------------------------------------------------ whitening
        whiten_center: bool = field(
            default=True,
            metadata={
                "help": "Subtract the global token mean of the returns before dividing by "
                "their std (the paper). False: divide by the std only."
            },
        )
        advantage_eps: float = field(
            default=1e-8,
            metadata={"help": "Added to the global std of the returns before dividing by it."},
        )
        advantage_clip: float | None = field(
            default=None,
            metadata={"help": "Clamp the whitened advantages to [-c, c]. None disables it."},
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.gamma <= 1.0:
                raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
            if self.advantage_eps < 0.0:
                raise ValueError(f"advantage_eps must be >= 0, got {self.advantage_eps}")
            if self.advantage_clip is not None and self.advantage_clip <= 0.0:
                raise ValueError(
                    f"advantage_clip must be > 0 (or null to disable it), got {self.advantage_clip}"
                )

    config: Config

    @torch.no_grad()
    def __call__(self, batch: AdvantageInput) -> AdvantageOutput:
        """The advantages of the module docstring, with their metrics."""
        cfg = self.config
        mask = batch.action_mask.bool()  # [B, T]
        rewards = check_rewards(batch.rewards)  # [B]
        metrics: dict[str, float] = {"reward_mean": rewards.mean().item()}
        if self.group_baseline:
            metrics["zero_std_group_fraction"] = (
                zero_std_groups(rewards, batch.group_size).float().mean().item()
            )
            rewards = group_centered(rewards, batch.group_size)  # [B]
        kl = rollout_kl(cfg, batch, self.label) if cfg.kl_in_reward else None  # [B, T]
        beta = step_kl_coef(batch.kl_coef, cfg.kl_coef)
        token_rewards = token_level_rewards(rewards, mask, kl=kl, kl_coef=beta)  # [B, T]
        returns = discounted_returns(token_rewards, mask, cfg.gamma)  # [B, T]
        whitened = masked_whiten(
            returns,
            mask,
            center=cfg.whiten_center,
            eps=cfg.advantage_eps,
            all_reduce=self.context.all_reduce,
        )
        advantages = clip_advantages(whitened.values, cfg.advantage_clip)  # [B, T]

        if kl is not None:
            sequence_kl = kl.sum(dim=-1)  # [B]
            metrics["kl_sequence_mean"] = sequence_kl.mean().item()
            metrics["kl_penalty_mean"] = (beta * sequence_kl).mean().item()
        metrics["return_mean"] = whitened.mean
        metrics["return_std"] = whitened.std
        metrics["advantage_mean"] = float(masked_mean(advantages, mask))
        metrics["advantage_abs_max"] = float(advantages.abs().max()) if advantages.numel() else 0.0
        return AdvantageOutput(advantages=advantages, metrics=metrics)


class ReinforcePPBaselineEstimator(ReinforcePPEstimator):
    """``reinforce_pp_baseline``: the group mean is subtracted from the rewards first."""

    name: ClassVar[str] = "reinforce_pp_baseline"
    requires_groups: ClassVar[bool] = True
    group_baseline: ClassVar[bool] = True

    @dataclass
    class Config(ReinforcePPEstimator.Config):
        """Options of the ``reinforce_pp_baseline`` estimator."""

        whiten_center: bool = field(
            default=False,
            metadata={
                "help": "Also subtract the global token mean when whitening (the paper). "
                "Default false: an all-equal group keeps exactly zero advantage."
            },
        )

    config: Config


ReinforcePP = preset(
    "reinforce_pp",
    advantage=ReinforcePPEstimator,
    loss=ClippedPolicyLoss,
    doc="REINFORCE++: KL-shaped token rewards, discounted returns, global whitening.",
    module=__name__,
    class_name="ReinforcePP",
)

ReinforcePPBaseline = preset(
    "reinforce_pp_baseline",
    advantage=ReinforcePPBaselineEstimator,
    loss=ClippedPolicyLoss,
    doc="REINFORCE++-baseline: the group mean is subtracted from the rewards first.",
    module=__name__,
    class_name="ReinforcePPBaseline",
)
