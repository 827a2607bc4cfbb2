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

The variants subclass ``GRPO`` and override its hooks: ``shaped_rewards`` (the rewards the
group normalisation sees) and ``surrogate`` (the per-token policy loss before aggregation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch

from lightrft_core.algorithms import (
    KL_ESTIMATORS,
    KLEstimator,
    aggregate_loss,
    kl_estimate,
    masked_mean,
    ppo_clip_loss,
)
from lightrft_core.algorithms.clipped_loss import (
    ClippedLossOptions,
    KLMode,
    resolve_max_tokens,
)
from lightrft_core.algorithms.groups import (
    broadcast_to_tokens,
    group_normalized_advantages,
    zero_std_groups,
)
from lightrft_core.algorithms.kl import step_kl_coef
from lightrft_core.algorithms.token_selection import entropy_bonus_loss, high_entropy_token_mask
from lightrft_core.interfaces import (
    AdvantageInput,
    AdvantageOutput,
    Algorithm,
    PolicyLossInput,
    PolicyLossOutput,
)


class Surrogate(NamedTuple):
    """``loss``: ``[B, T]`` per-token policy loss, already zero on tokens that must not count
    (aggregated over the response mask). ``metrics``: detached scalars."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


class GRPO(Algorithm):
    """Group-normalised outcome advantages and the PPO-clip policy loss."""

    name: ClassVar[str] = "grpo"
    requires_groups: ClassVar[bool] = True

    @dataclass
    class Config(ClippedLossOptions):
        """Options of ``algorithm.name: grpo``: the clipped loss's (``clip_eps_low``,
        ``clip_eps_high``, ``dual_clip``, ``loss_aggregation``, ``max_tokens_norm``,
        ``kl_coef``, ``kl_estimator``, ``kl_mode``; GRPO's KL defaults are k3, in the loss),
        then these."""

        # ------------------------------------------------------------ KL (GRPO's defaults)
        kl_estimator: KLEstimator = field(
            default="k3",
            metadata={"help": "Per-token KL estimator: one of " + ", ".join(KL_ESTIMATORS) + "."},
        )
        kl_mode: KLMode = field(
            default="loss",
            metadata={
                "help": "'loss': add kl_coef * KL to the policy loss (the paper). 'reward': "
                "subtract kl_coef * (sum of token KL) from each reward before normalising."
            },
        )
        # ------------------------------------------------------------ advantages
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
        # ------------------------------------------------------------ entropy
        high_entropy_token_fraction: float | None = field(
            default=None,
            metadata={
                "help": "Only the top fraction (0, 1] of each response's tokens by entropy "
                "enter the policy loss (arXiv 2506.01939 keeps 0.2); at least 1 token per "
                "response. None: every token."
            },
        )
        entropy_coef: float = field(
            default=0.0,
            metadata={
                "help": "Entropy bonus: adds -entropy_coef * entropy (aggregated like the "
                "loss) to the loss. 0 disables it."
            },
        )

        def __post_init__(self) -> None:
            super().__post_init__()  # clipping (``_check_clipping``), aggregation, KL
            if self.advantage_eps < 0.0:
                raise ValueError(f"advantage_eps must be >= 0, got {self.advantage_eps}")
            fraction = self.high_entropy_token_fraction
            if fraction is not None and not 0.0 < fraction <= 1.0:
                raise ValueError(
                    f"high_entropy_token_fraction must be in (0, 1] (or null for every "
                    f"token), got {fraction}"
                )
            if self.entropy_coef < 0.0:
                raise ValueError(f"entropy_coef must be >= 0, got {self.entropy_coef}")

    config: Config

    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0.0

    def initial_kl_coef(self) -> float:
        return self.config.kl_coef

    # ------------------------------------------------------------------ advantages
    @torch.no_grad()
    def compute_advantages(self, batch: AdvantageInput) -> AdvantageOutput:
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
        ``β·Σ_t kl_t`` with ``kl_mode: reward``. Subclasses add their own shaping; they may
        add metrics to ``metrics``."""
        cfg = self.config
        rewards = batch.rewards.float()  # [B]
        if cfg.kl_mode == "reward" and cfg.kl_coef > 0.0:
            if batch.ref_log_probs is None or batch.old_log_probs is None:
                raise ValueError(
                    f"{self.name} with kl_mode 'reward' and kl_coef > 0 needs old_log_probs "
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

    # ------------------------------------------------------------------ loss
    def policy_loss(self, batch: PolicyLossInput) -> PolicyLossOutput:
        cfg = self.config
        mask = batch.action_mask.bool()  # [B, T]
        policy_mask = mask
        if cfg.high_entropy_token_fraction is not None:
            entropy = self._entropy(batch, "high_entropy_token_fraction")
            policy_mask = high_entropy_token_mask(entropy, mask, cfg.high_entropy_token_fraction)
        max_tokens = resolve_max_tokens(
            cfg.loss_aggregation, cfg.max_tokens_norm, self.context, self.name
        )
        surrogate = self.surrogate(batch, policy_mask)
        loss = aggregate_loss(
            surrogate.loss, mask, cfg.loss_aggregation, batch.scale, max_tokens=max_tokens
        )
        kl = None
        if cfg.kl_in_loss:
            if batch.ref_log_probs is None:
                raise ValueError(
                    f"{self.name} with kl_mode 'loss' and kl_coef > 0 needs ref_log_probs in "
                    "PolicyLossInput (the loop computes them when needs_reference() is True)"
                )
            kl = kl_estimate(batch.log_probs, batch.ref_log_probs, cfg.kl_estimator)  # [B, T]
            loss = loss + step_kl_coef(batch.kl_coef, cfg.kl_coef) * aggregate_loss(
                kl, mask, cfg.loss_aggregation, batch.scale, max_tokens=max_tokens
            )
        if cfg.entropy_coef > 0.0:
            entropy = self._entropy(batch, "entropy_coef")
            loss = loss + entropy_bonus_loss(
                entropy.float(),
                mask,
                cfg.loss_aggregation,
                batch.scale,
                coef=cfg.entropy_coef,
                max_tokens=max_tokens,
            )

        with torch.no_grad():
            approx_kl = kl_estimate(batch.log_probs, batch.old_log_probs, "k3")
            metrics = dict(surrogate.metrics)
            metrics["approx_kl"] = masked_mean(approx_kl, mask)
            if cfg.high_entropy_token_fraction is not None:
                metrics["selected_token_fraction"] = masked_mean(policy_mask.float(), mask)
            if kl is None and batch.ref_log_probs is not None:
                kl = kl_estimate(batch.log_probs, batch.ref_log_probs, cfg.kl_estimator)
            if kl is not None:
                metrics["kl"] = masked_mean(kl.detach(), mask)
        return PolicyLossOutput(loss=loss, metrics=metrics)

    def surrogate(self, batch: PolicyLossInput, policy_mask: torch.Tensor) -> Surrogate:
        """GRPO's per-token PPO-clip loss, zero outside ``policy_mask`` (``[B, T]`` bool: the
        response tokens, or the selected high-entropy ones)."""
        cfg = self.config
        ppo = ppo_clip_loss(
            batch.log_probs,
            batch.old_log_probs,
            batch.advantages,
            clip_eps_low=cfg.clip_eps_low,
            clip_eps_high=cfg.clip_eps_high,
            dual_clip=cfg.dual_clip,
        )
        loss = torch.where(policy_mask, ppo.loss, torch.zeros_like(ppo.loss))
        with torch.no_grad():
            metrics = {
                "clip_fraction": masked_mean(ppo.clipped.float(), policy_mask),
                "ratio_mean": masked_mean(ppo.ratio.detach(), policy_mask),
            }
            if cfg.dual_clip is not None:
                metrics["dual_clip_fraction"] = masked_mean(ppo.dual_clipped.float(), policy_mask)
        return Surrogate(loss, metrics)

    def _entropy(self, batch: PolicyLossInput, option: str) -> torch.Tensor:
        if batch.entropy is None:
            raise ValueError(
                f"{self.name} with {option} set needs the per-token entropy in "
                "PolicyLossInput.entropy (the loop asks the actor for it with "
                "return_entropy=True)"
            )
        return batch.entropy
