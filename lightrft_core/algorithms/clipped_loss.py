"""The clipped policy loss that PPO, REINFORCE++, RLOO (and GRPO's options) share: its
config options and the loss of one micro-batch.

Loss per token: the PPO clip (``ppo_clip.ppo_clip_loss``)::

    L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)     (+ optional dual clip)

aggregated over the optimizer batch with ``aggregate_loss`` (exact under gradient
accumulation and data parallel), plus ``β·aggregate(kl(lp, lp_ref))`` when the KL is a loss
term (``kl_mode: loss``). With ``kl_mode: reward`` the algorithm puts the KL in its
advantages instead (``rollout_kl``).

``seq-mean-token-sum-norm`` divides token sums by a constant: ``max_tokens_norm`` when set,
else the engine's ``max_new_tokens`` that the loop gives in ``AlgorithmContext``
(``resolve_max_tokens``). β is the step's (``PolicyLossInput.kl_coef``) when the loop passes
one, else ``kl_coef``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from ..interfaces import AdvantageInput, AlgorithmContext, PolicyLossInput, PolicyLossOutput
from .aggregation import AGGREGATION_MODES, AggregationMode, aggregate_loss, masked_mean
from .kl import KL_ESTIMATORS, KLEstimator, kl_estimate, step_kl_coef
from .options import check_aggregation, check_kl, check_one_of
from .ppo_clip import check_clip_parameters, ppo_clip_loss

KLMode = Literal["reward", "loss"]
KL_MODES: tuple[str, ...] = get_args(KLMode)


@dataclass
class ClippedLossOptions:
    """Options of the clipped policy loss; an algorithm's ``Config`` extends it (and may
    redeclare a field to change its default)."""

    # ------------------------------------------------------------ clipping
    clip_eps_low: float = field(
        default=0.2,
        metadata={"help": "PPO clip: the ratio is clipped below at 1 - clip_eps_low."},
    )
    clip_eps_high: float = field(
        default=0.2,
        metadata={
            "help": "PPO clip: the ratio is clipped above at 1 + clip_eps_high (DAPO's "
            "clip-higher uses 0.28)."
        },
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
            "help": "The constant token sums are divided by in seq-mean-token-sum-norm "
            "(Dr.GRPO: the maximum generation length). None: engine.max_new_tokens, as the "
            "training loop gives it."
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
            "help": "'reward': the KL penalises the rewards (how depends on the algorithm). "
            "'loss': kl_coef * KL is added to the policy loss."
        },
    )

    def __post_init__(self) -> None:
        self._check_clipping()
        check_aggregation(self.loss_aggregation, self.max_tokens_norm, norm_required=False)
        check_kl(self.kl_coef, self.kl_estimator)
        check_one_of("kl_mode", self.kl_mode, KL_MODES)

    def _check_clipping(self) -> None:
        """The clip parameters (an algorithm with other clipping rules overrides this)."""
        check_clip_parameters(self.clip_eps_low, self.clip_eps_high, self.dual_clip)

    @property
    def kl_in_reward(self) -> bool:
        return self.kl_mode == "reward" and self.kl_coef > 0.0

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_mode == "loss" and self.kl_coef > 0.0


def resolve_max_tokens(
    loss_aggregation: str,
    max_tokens_norm: int | None,
    context: AlgorithmContext,
    algorithm: str,
) -> int | None:
    """The constant of ``seq-mean-token-sum-norm``: ``max_tokens_norm`` if set, else the
    engine's ``max_new_tokens`` (``context.max_new_tokens``); ``max_tokens_norm`` for the
    other modes (unused there)."""
    if loss_aggregation != "seq-mean-token-sum-norm":
        return max_tokens_norm
    value = max_tokens_norm if max_tokens_norm is not None else context.max_new_tokens
    if value is None or value < 1:
        raise ValueError(
            f"{algorithm}: loss_aggregation 'seq-mean-token-sum-norm' divides by the maximum "
            "generation length: set algorithm.max_tokens_norm, or let the training loop pass "
            f"engine.max_new_tokens (Algorithm.setup's AlgorithmContext); got {value!r}"
        )
    return value


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
    options: ClippedLossOptions,
    batch: PolicyLossInput,
    context: AlgorithmContext,
    algorithm: str,
) -> PolicyLossOutput:
    """This micro-batch's share of the loss (module docstring) and its metrics:
    ``clip_fraction``, ``approx_kl`` (k3 to the old policy), ``ratio_mean``, and
    ``dual_clip_fraction`` / ``kl`` when they apply."""
    mask = batch.action_mask.bool()  # [B, T]
    ppo = ppo_clip_loss(
        batch.log_probs,
        batch.old_log_probs,
        batch.advantages,
        clip_eps_low=options.clip_eps_low,
        clip_eps_high=options.clip_eps_high,
        dual_clip=options.dual_clip,
    )
    aggregation = options.loss_aggregation
    max_tokens = resolve_max_tokens(aggregation, options.max_tokens_norm, context, algorithm)
    loss = aggregate_loss(ppo.loss, mask, aggregation, batch.scale, max_tokens=max_tokens)
    kl = None
    if options.kl_in_loss:
        if batch.ref_log_probs is None:
            raise ValueError(
                f"{algorithm} with kl_mode 'loss' and kl_coef > 0 needs ref_log_probs in "
                "PolicyLossInput (the loop computes them when needs_reference() is True)"
            )
        kl = kl_estimate(batch.log_probs, batch.ref_log_probs, options.kl_estimator)  # [B, T]
        loss = loss + step_kl_coef(batch.kl_coef, options.kl_coef) * aggregate_loss(
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
