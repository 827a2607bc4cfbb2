"""RLOO: REINFORCE Leave-One-Out (A. Ahmadian et al., "Back to Basics: Revisiting
REINFORCE Style Optimization for Learning from Human Feedback in LLMs", arXiv 2402.14740;
the estimator goes back to Kool et al. 2019).

Advantages: each prompt's ``G`` samples are scored; every sample's baseline is the mean
reward of the *other* ``G − 1`` samples::

    A_i = r_i − (Σ_G r − r_i) / (G − 1)        (= G/(G−1)·(r_i − mean_G r))

copied to every response token of sample ``i``. With ``kl_mode: reward`` and ``β > 0`` the
reward is first penalised by the sequence KL, ``r_i ← r_i − β·Σ_t kl(lp_old_t, lp_ref_t)``,
as the paper's sequence-level reward does.

Loss: the PPO clip on ``A`` (``lightrft_core.algorithms.clipped_loss``).

Where this implementation departs from the paper, or lets configuration depart from it:

* The paper optimises the plain REINFORCE objective ``−A_i·log π(y_i)``, one update per
  rollout. The PPO clip used here has exactly that gradient on policy (``ρ = 1``) and
  stays stable when ``trainer.epochs > 1`` or the batch is split into several optimizer
  steps.
* ``kl_coef`` defaults to 0 (no reference model); the paper trains with a KL-penalised
  reward, which is ``kl_coef > 0`` here. ``kl_mode: loss`` adds ``β·KL`` to the loss instead.
* Loss aggregation: ``token-mean`` by default (the paper averages sequence log-likelihood
  terms, closest to ``seq-mean-token-sum``; every mode is available).

Parts: the estimator ``rloo`` (``RLOOEstimator``) and the core's ``ppo_clip`` loss; ``RLOO``
is their preset.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from lightrft_core.algorithms.clipped_loss import ClippedPolicyLoss, KLOptions, rollout_kl
from lightrft_core.algorithms.groups import (
    broadcast_to_tokens,
    check_rewards,
    leave_one_out,
    zero_std_groups,
)
from lightrft_core.algorithms.kl import step_kl_coef
from lightrft_core.algorithms.parts import KLShapedEstimator, preset
from lightrft_core.interfaces import AdvantageInput, AdvantageOutput


class RLOOEstimator(KLShapedEstimator):
    """``rloo``: the leave-one-out group baseline, copied to every response token."""

    name: ClassVar[str] = "rloo"
    requires_groups: ClassVar[bool] = True
    Config: ClassVar[type] = KLOptions
    config: KLOptions

    @torch.no_grad()
    def __call__(self, batch: AdvantageInput) -> AdvantageOutput:
        cfg = self.config
        mask = batch.action_mask.bool()  # [B, T]
        rewards = check_rewards(batch.rewards)  # [B]
        metrics: dict[str, float] = {}
        if cfg.kl_in_reward:
            sequence_kl = rollout_kl(cfg, batch, self.label).sum(dim=-1)  # [B]
            beta = step_kl_coef(batch.kl_coef, cfg.kl_coef)
            rewards = rewards - beta * sequence_kl
            metrics["kl_sequence_mean"] = sequence_kl.mean().item()
            metrics["kl_penalty_mean"] = (beta * sequence_kl).mean().item()
        advantages = leave_one_out(rewards, batch.group_size)  # [B]
        metrics["reward_mean"] = rewards.mean().item()
        metrics["advantage_mean"] = advantages.mean().item()
        metrics["advantage_std"] = advantages.std(correction=0).item()
        metrics["zero_std_group_fraction"] = (
            zero_std_groups(rewards, batch.group_size).float().mean().item()
        )
        return AdvantageOutput(advantages=broadcast_to_tokens(advantages, mask), metrics=metrics)


RLOO = preset(
    "rloo",
    advantage=RLOOEstimator,
    loss=ClippedPolicyLoss,
    doc="Leave-one-out group baseline and the PPO-clip policy loss.",
    module=__name__,
    class_name="RLOO",
)
