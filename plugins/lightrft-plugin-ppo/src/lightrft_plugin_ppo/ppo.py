"""PPO with GAE and a learned critic (Schulman et al. 2017, "Proximal Policy Optimization
Algorithms", arXiv 1707.06347; GAE: Schulman et al. 2016, arXiv 1506.02438), as used for
RLHF (Ouyang et al. 2022, arXiv 2203.02155: a KL penalty in the token rewards).

Advantages, once per rollout batch (``gae.py``)::

    R_t = −β·kl(lp_old_t, lp_ref_t) + r·[t is last]       (kl_mode: reward)
    A_t = Σ_{k≥t} (γλ)^{k−t} (R_k + γV_{k+1} − V_k),  V after the last token = 0
    G_t = A_t + V_t                                       (the critic's target)
    A_t ← (A_t − μ) / (σ + ε)   over the global batch     (whiten_advantages)

Policy loss per token: the core's PPO clip, ``−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A)``,
aggregated over the optimizer batch (``loss_aggregation``). Value loss per token
(``value_loss.py``): ``0.5·max((V − G)², (V_old + clip(V − V_old, ±ε_v) − G)²)``, aggregated
the same way. The critic itself -- its model, optimizer, checkpoints and export -- is the
core's (``lightrft_core/trainer/critic.py``); PPO chooses it (``critic_spec``) and gives its
loss (``value_loss``).

Where this implementation departs from the papers, or lets configuration depart from them:

* Value clipping is from OpenAI's ``baselines`` implementation, not the paper (which uses
  the plain squared error); ``value_clip: null`` gives the paper's loss.
* Advantage whitening over the batch is an implementation practice, not in the paper
  (on by default; ``whiten_advantages: false`` turns it off). The returns are computed from
  the advantages *before* whitening.
* ``kl_coef`` defaults to 0 (no reference model), like the other plugins; classic RLHF PPO
  sets it > 0 with the k1 estimator in the reward.
* The critic is a separate model by default (its own trunk, initialised from the actor's
  checkpoint or ``critic_path``); ``critic: shared`` puts the value head on the actor's trunk
  (one network, loss ``L_policy + vf_coef·L_value`` as in the paper's eq. 9).
* Critic warm-up (``critic_warmup_steps``): the first steps train only the critic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, get_args

import torch

from lightrft_core.algorithms import aggregate_loss, clip_advantages, masked_mean, masked_whiten
from lightrft_core.algorithms.clipped_loss import (
    ClippedLossOptions,
    ClippedPolicyLoss,
    rollout_kl,
)
from lightrft_core.algorithms.kl import step_kl_coef
from lightrft_core.algorithms.options import check_aggregation, check_one_of
from lightrft_core.algorithms.parts import part_config
from lightrft_core.algorithms.token_rewards import token_level_rewards
from lightrft_core.interfaces import (
    AdvantageInput,
    AdvantageOutput,
    Algorithm,
    AlgorithmContext,
    CriticLayout,
    CriticSpec,
    PolicyLossInput,
    PolicyLossOutput,
    ValueLossInput,
    ValueLossOutput,
)

from .gae import gae_advantages
from .value_loss import clipped_value_loss


class PPO(Algorithm):
    """PPO-clip with GAE advantages from a learned critic."""

    name: ClassVar[str] = "ppo"

    @dataclass
    class Config(ClippedLossOptions):
        """Options of ``algorithm.name: ppo``: the clipped loss's (``clip_eps_low``,
        ``clip_eps_high``, ``dual_clip``, ``loss_aggregation``, ``max_tokens_norm``,
        ``kl_coef``, ``kl_estimator``, ``kl_mode``; ``kl_mode: reward`` puts
        ``-kl_coef * kl_t`` in the token rewards, classic RLHF PPO), then these."""

        # ------------------------------------------------------------ GAE
        gamma: float = field(
            default=1.0,
            metadata={"help": "Discount γ of the token rewards in GAE; in [0, 1]."},
        )
        lam: float = field(
            default=0.95,
            metadata={"help": "GAE λ: 0 gives one-step TD advantages, 1 Monte-Carlo; in [0, 1]."},
        )
        whiten_advantages: bool = field(
            default=True,
            metadata={
                "help": "Whiten the advantages over the (global) batch: (A - mean) / (std + eps)."
            },
        )
        advantage_eps: float = field(
            default=1e-8, metadata={"help": "Added to the std when whitening the advantages."}
        )
        advantage_clip: float | None = field(
            default=None,
            metadata={"help": "Clamp the advantages to [-c, c] after whitening. None: off."},
        )
        # ------------------------------------------------------------ critic
        critic: CriticLayout = field(
            default="separate",
            metadata={
                "help": "'separate': the critic is its own model (trunk + value head). "
                "'shared': a value head on the actor's trunk (local strategy only)."
            },
        )
        critic_path: str | None = field(
            default=None,
            metadata={
                "help": "Folder the separate critic is initialised from (a causal LM, or a "
                "critic exported by this plugin). None: the actor's model.path."
            },
        )
        critic_warmup_steps: int = field(
            default=0,
            metadata={
                "help": "The first N RL steps train only the critic; the policy is not updated."
            },
        )
        value_clip: float | None = field(
            default=0.2,
            metadata={
                "help": "ε_v: the new value is kept within old value ± ε_v in the clipped "
                "branch of the value loss. None: the plain squared error."
            },
        )
        vf_coef: float = field(
            default=0.1,
            metadata={
                "help": "Weight of the value loss in the shared trunk's gradient (critic: "
                "shared only)."
            },
        )
        value_head_init_std: float = field(
            default=0.0,
            metadata={"help": "Std of the value head's initial weights; 0: zero-initialised."},
        )

        def __post_init__(self) -> None:
            for name in ("gamma", "lam"):
                value = getattr(self, name)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name} must be in [0, 1], got {value}")
            if self.advantage_eps < 0.0:
                raise ValueError(f"advantage_eps must be >= 0, got {self.advantage_eps}")
            if self.advantage_clip is not None and self.advantage_clip <= 0.0:
                raise ValueError(
                    f"advantage_clip must be > 0 (or null to disable it), got {self.advantage_clip}"
                )
            super().__post_init__()
            # the value loss is aggregated like the policy loss but never sees the engine's
            # max_new_tokens: seq-mean-token-sum-norm needs the constant here
            check_aggregation(self.loss_aggregation, self.max_tokens_norm, norm_required=True)
            self._check_critic()

        def _check_critic(self) -> None:
            check_one_of("critic", self.critic, get_args(CriticLayout))
            if self.critic == "shared" and self.critic_path is not None:
                raise ValueError(
                    "critic_path is for critic: separate; a shared critic is a value head on "
                    "the actor's own trunk"
                )
            if self.critic_warmup_steps < 0:
                raise ValueError(
                    f"critic_warmup_steps must be >= 0, got {self.critic_warmup_steps}"
                )
            if self.value_clip is not None and self.value_clip <= 0.0:
                raise ValueError(
                    f"value_clip must be > 0 (or null to disable it), got {self.value_clip}"
                )
            if self.vf_coef <= 0.0:
                raise ValueError(f"vf_coef must be > 0, got {self.vf_coef}")
            if self.value_head_init_std < 0.0:
                raise ValueError(
                    f"value_head_init_std must be >= 0, got {self.value_head_init_std}"
                )

    config: Config

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: The core's clipped policy loss (``ppo_clip``) with this config's clip, aggregation
        #: and KL options.
        self.clipped_loss = ClippedPolicyLoss(
            part_config(ClippedPolicyLoss.Config, self.config), label=self.name
        )

    def setup(self, context: AlgorithmContext) -> None:
        super().setup(context)
        self.clipped_loss.setup(context)

    # ------------------------------------------------------------------ the loop's questions
    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0.0

    def initial_kl_coef(self) -> float:
        return self.config.kl_coef

    def needs_critic(self) -> bool:
        return True

    def updates_policy(self, step: int) -> bool:
        """False for steps ``1 … critic_warmup_steps``: only the critic trains then."""
        return step > self.config.critic_warmup_steps

    def critic_spec(self) -> CriticSpec:
        """``critic``, ``critic_path`` and ``value_head_init_std``."""
        cfg = self.config
        return CriticSpec(
            layout=cfg.critic, path=cfg.critic_path, head_init_std=cfg.value_head_init_std
        )

    # ------------------------------------------------------------------ advantages
    @torch.no_grad()
    def compute_advantages(self, batch: AdvantageInput) -> AdvantageOutput:
        cfg = self.config
        if batch.values is None:
            raise ValueError(
                "ppo needs the critic's values in AdvantageInput.values (the loop computes "
                "them with its critic when needs_critic() is True)"
            )
        mask = batch.action_mask.bool()  # [B, T]
        rewards = batch.rewards.float()  # [B]
        if not torch.isfinite(rewards).all():
            raise ValueError("ppo: the rewards must be finite (NaN or inf seen)")
        metrics: dict[str, float] = {"reward_mean": rewards.mean().item()}
        kl = rollout_kl(cfg, batch, self.name) if cfg.kl_in_reward else None  # [B, T]
        beta = step_kl_coef(batch.kl_coef, cfg.kl_coef)
        token_rewards = token_level_rewards(rewards, mask, kl=kl, kl_coef=beta)
        gae = gae_advantages(token_rewards, batch.values, mask, gamma=cfg.gamma, lam=cfg.lam)
        advantages = gae.advantages  # [B, T]
        if cfg.whiten_advantages:
            advantages = masked_whiten(
                advantages,
                mask,
                center=True,
                eps=cfg.advantage_eps,
                all_reduce=self.context.all_reduce,
            ).values
        advantages = clip_advantages(advantages, cfg.advantage_clip)

        if kl is not None:
            sequence_kl = kl.sum(dim=-1)  # [B]
            metrics["kl_sequence_mean"] = sequence_kl.mean().item()
            metrics["kl_penalty_mean"] = (beta * sequence_kl).mean().item()
        metrics["raw_advantage_mean"] = float(masked_mean(gae.advantages, mask))
        metrics["return_mean"] = float(masked_mean(gae.returns, mask))
        metrics["value_mean"] = float(masked_mean(batch.values.float(), mask))
        metrics["advantage_abs_max"] = float(advantages.abs().max()) if advantages.numel() else 0.0
        return AdvantageOutput(advantages=advantages, returns=gae.returns, metrics=metrics)

    # ------------------------------------------------------------------ losses
    def policy_loss(self, batch: PolicyLossInput) -> PolicyLossOutput:
        return self.clipped_loss(batch)

    def value_loss(self, batch: ValueLossInput) -> ValueLossOutput:
        """This micro-batch's share of the clipped value loss (``value_loss.py``),
        aggregated like the policy loss; times ``vf_coef`` with a shared critic (the
        weight of the value loss in the trunk's gradient)."""
        cfg = self.config
        mask = batch.action_mask.bool()
        per_token = clipped_value_loss(
            batch.values, batch.old_values, batch.returns, clip=cfg.value_clip
        )
        loss = aggregate_loss(
            per_token.loss, mask, cfg.loss_aggregation, batch.scale, max_tokens=cfg.max_tokens_norm
        )
        if cfg.critic == "shared":
            loss = loss * cfg.vf_coef
        with torch.no_grad():
            metrics = {
                "value_loss": masked_mean(per_token.loss.detach(), mask),
                "value_clip_fraction": masked_mean(per_token.clipped.float(), mask),
                "value_mean": masked_mean(batch.values.detach().float(), mask),
            }
        return ValueLossOutput(loss=loss, metrics=metrics)
