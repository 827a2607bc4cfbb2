"""CPGD: Clipped Policy Gradient Optimization with Policy Drift (Z. Liu et al., "CPGD:
Toward Stable Rule-based Reinforcement Learning for Language Models", arXiv 2505.12504).

The paper's objective, maximised::

    E_x E_{y∼π_old} [ Σ_t min(δ_t·A, clip(δ_t, ln(1 − ε), ln(1 + ε))·A) ] − α·D_KL(π_old ‖ π_θ)

with ``δ_t = ln π_θ(y_t) − ln π_old(y_t)``: a policy gradient on the log-ratio (no importance
ratio multiplies the gradient, so a token whose ratio explodes cannot blow up the update),
clipped in log space in the direction the advantage pushes, plus a "policy drift" penalty
that pulls the policy back towards the one that sampled the data. Implemented as the loss
``aggregate(L^pg_t + α·D_t)`` with the per-token terms of ``losses.py`` and the group
advantages of ``advantages.py`` (computed once per rollout batch, copied to every token).

Where this implementation departs from the paper, or lets configuration depart from it:

* The drift ``D_KL(π_old ‖ π_θ)`` is estimated per token with ``k3`` on the rollout tokens
  (``ρ − 1 − ln ρ``) and aggregated with the same mode as the policy-gradient term (the paper
  writes a KL between the two policies). As in the authors' code, the drift's gradient
  weight ``ρ − 1`` is bounded above by ``policy_drift_clip`` (default 2.0; null: no bound);
  the reported value stays the unclipped estimate.
* ``clip_eps_low``/``clip_eps_high`` may differ (the paper uses a single ε; 0.2 here).
* ``advantage_weighting`` offers the weightings of published CPGD code: ``std`` (default,
  GRPO's normalised group advantage), ``clip-filter-like`` and ``none``; the counts of
  ``clip-filter-like`` are global over ranks when the loop gives ``all_reduce``
  (``AlgorithmContext``).
* ``policy_drift_coef`` α defaults to 0.01, the default of ``--policy_drift_coef`` in the
  MM-EUREKA code.
* An optional ``β·KL(π ‖ π_ref)`` loss term (``kl_coef``, default 0) against a reference
  model; the paper's objective has none.
* Loss aggregation: ``token-mean`` by default; every mode is available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from lightrft_core.algorithms import (
    AGGREGATION_MODES,
    KL_ESTIMATORS,
    AggregationMode,
    KLEstimator,
    aggregate_loss,
    kl_estimate,
    masked_mean,
)
from lightrft_core.algorithms.clipped_loss import resolve_max_tokens
from lightrft_core.algorithms.groups import broadcast_to_tokens, zero_std_groups
from lightrft_core.algorithms.kl import step_kl_coef
from lightrft_core.algorithms.options import check_aggregation, check_kl, check_one_of
from lightrft_core.interfaces import (
    AdvantageInput,
    AdvantageOutput,
    Algorithm,
    PolicyLossInput,
    PolicyLossOutput,
)

from .advantages import ADVANTAGE_WEIGHTINGS, AdvantageWeighting, cpgd_advantages
from .losses import DEFAULT_DRIFT_CLIP, check_drift_clip, cpgd_token_loss, log_ratio_bounds


class CPGD(Algorithm):
    """Clipped log-ratio policy gradient plus the policy-drift KL to the behaviour policy."""

    name: ClassVar[str] = "cpgd"
    requires_groups: ClassVar[bool] = True

    @dataclass
    class Config:
        """Options of ``algorithm.name: cpgd``."""

        # ------------------------------------------------------------ clipping
        clip_eps_low: float = field(
            default=0.2,
            metadata={"help": "For A < 0 the log-ratio is clipped below at ln(1 - clip_eps_low)."},
        )
        clip_eps_high: float = field(
            default=0.2,
            metadata={"help": "For A > 0 the log-ratio is clipped above at ln(1 + clip_eps_high)."},
        )
        # ------------------------------------------------------------ policy drift
        policy_drift_coef: float = field(
            default=0.01,
            metadata={
                "help": "α, the weight of the policy drift KL(π_old || π) in the loss; 0 "
                "turns it off."
            },
        )
        policy_drift_clip: float | None = field(
            default=DEFAULT_DRIFT_CLIP,
            metadata={
                "help": "Upper bound c of the drift's gradient weight: the gradient is "
                "min(ratio - 1, c)·∇log π (the authors' policy_drift_clip); > 0, or null "
                "for the plain k3 gradient."
            },
        )
        # ------------------------------------------------------------ advantages
        advantage_weighting: AdvantageWeighting = field(
            default="std",
            metadata={
                "help": "Weight of the group-centred reward: 'std' (divide by the group std, "
                "as GRPO), 'clip-filter-like' (scale up when groups lack signal), 'none'."
            },
        )
        advantage_eps: float = field(
            default=1e-6,
            metadata={"help": "Added to the group std before dividing by it ('std')."},
        )
        clip_filter_max_weight: float = field(
            default=3.0,
            metadata={"help": "Upper bound of the 'clip-filter-like' weight; >= 1."},
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
                "help": "The constant token sums are divided by in seq-mean-token-sum-norm "
                "(the maximum generation length). None: engine.max_new_tokens, as the "
                "training loop passes it."
            },
        )
        # ------------------------------------------------------------ KL to the reference
        kl_coef: float = field(
            default=0.0,
            metadata={
                "help": "β of an optional KL(π || π_ref) loss term against the reference "
                "model. 0 disables the reference model."
            },
        )
        kl_estimator: KLEstimator = field(
            default="k3",
            metadata={
                "help": "Estimator of the reference KL: one of " + ", ".join(KL_ESTIMATORS) + "."
            },
        )

        def __post_init__(self) -> None:
            log_ratio_bounds(self.clip_eps_low, self.clip_eps_high)  # raises on bad values
            if self.policy_drift_coef < 0.0:
                raise ValueError(f"policy_drift_coef must be >= 0, got {self.policy_drift_coef}")
            check_drift_clip(self.policy_drift_clip)
            check_one_of("advantage_weighting", self.advantage_weighting, ADVANTAGE_WEIGHTINGS)
            if self.advantage_eps < 0.0:
                raise ValueError(f"advantage_eps must be >= 0, got {self.advantage_eps}")
            if self.clip_filter_max_weight < 1.0:
                raise ValueError(
                    f"clip_filter_max_weight must be >= 1, got {self.clip_filter_max_weight}"
                )
            check_aggregation(self.loss_aggregation, self.max_tokens_norm, norm_required=False)
            check_kl(self.kl_coef, self.kl_estimator)

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
        advantages, weight = cpgd_advantages(
            batch.rewards,
            batch.group_size,
            weighting=cfg.advantage_weighting,
            eps=cfg.advantage_eps,
            max_weight=cfg.clip_filter_max_weight,
            all_reduce=self.context.all_reduce,
        )  # [B]
        metrics = {
            "reward_mean": batch.rewards.float().mean().item(),
            "advantage_mean": advantages.mean().item(),
            "advantage_std": advantages.std(correction=0).item(),
            "advantage_weight": weight,
            "zero_std_group_fraction": (
                zero_std_groups(batch.rewards, batch.group_size).float().mean().item()
            ),
        }
        return AdvantageOutput(advantages=broadcast_to_tokens(advantages, mask), metrics=metrics)

    # ------------------------------------------------------------------ loss
    def policy_loss(self, batch: PolicyLossInput) -> PolicyLossOutput:
        cfg = self.config
        mask = batch.action_mask.bool()  # [B, T]
        terms = cpgd_token_loss(
            batch.log_probs,
            batch.old_log_probs,
            batch.advantages,
            clip_eps_low=cfg.clip_eps_low,
            clip_eps_high=cfg.clip_eps_high,
            drift_clip=cfg.policy_drift_clip,
        )
        per_token = terms.policy_gradient + cfg.policy_drift_coef * terms.drift  # [B, T]
        kl = None
        if cfg.kl_coef > 0.0:
            if batch.ref_log_probs is None:
                raise ValueError(
                    "CPGD with kl_coef > 0 needs ref_log_probs in PolicyLossInput (the loop "
                    "computes them when needs_reference() is True)"
                )
            kl = kl_estimate(batch.log_probs, batch.ref_log_probs, cfg.kl_estimator)  # [B, T]
            per_token = per_token + step_kl_coef(batch.kl_coef, cfg.kl_coef) * kl
        max_tokens = resolve_max_tokens(
            cfg.loss_aggregation, cfg.max_tokens_norm, self.context, "cpgd"
        )
        loss = aggregate_loss(
            per_token, mask, cfg.loss_aggregation, batch.scale, max_tokens=max_tokens
        )

        with torch.no_grad():
            metrics = {
                "clip_fraction": masked_mean(terms.clipped.float(), mask),
                "policy_drift": masked_mean(terms.drift.detach(), mask),
                "approx_kl": masked_mean(
                    kl_estimate(batch.log_probs.detach(), batch.old_log_probs, "k3"), mask
                ),
                "ratio_mean": masked_mean(torch.exp(terms.log_ratio.detach().clamp(max=20)), mask),
            }
            if kl is None and batch.ref_log_probs is not None:
                kl = kl_estimate(batch.log_probs, batch.ref_log_probs, cfg.kl_estimator)
            if kl is not None:
                metrics["kl"] = masked_mean(kl.detach(), mask)
        return PolicyLossOutput(loss=loss, metrics=metrics)
