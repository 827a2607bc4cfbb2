"""GSPO and GSPO-token: Group Sequence Policy Optimization (C. Zheng et al., arXiv
2507.18071).

Advantages are GRPO's (group-normalised outcome rewards). The importance ratio is a
sequence's length-normalised likelihood ratio ``s_i = exp(mean_t(lp_t − lp_old_t))`` over
its response tokens, clipped per sequence (formulas in ``sequence_losses``):

* ``gspo``: ``L_i = −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i)``, one loss per
  sequence; with the default ``seq-mean-token-mean`` the batch loss is ``Σ_i L_i / N_seq``
  (the paper's ``1/G Σ_i``).
* ``gspo_token``: ``s_{i,t} = sg[s_i] · π(y_t)/sg[π(y_t)]`` per token, aggregated per token;
  with per-sequence advantages it equals ``gspo`` in value and gradient, and it accepts
  per-token advantages.

Defaults as the paper: ``ε_low = 3e-4``, ``ε_high = 4e-4``, no KL.

Departures: other aggregation modes are available (a sequence's loss is then counted once
per token: ``token-mean`` gives ``Σ_i n_i L_i / N_tok``). With high-entropy token selection,
``s_i`` is the mean over the selected tokens only (gradients reach those tokens alone); the
paper has no token selection. The dual clip, off by default, acts on ``s_i``.
``clip_fraction`` counts tokens (a clipped sequence counts with all its tokens), as the
paper reports it.

Parts: the losses ``gspo`` (``GSPOLoss``) and ``gspo_token`` (``GSPOTokenLoss``) override
the surrogate of the core's ``ppo_clip`` loss and carry the paper's defaults; ``GSPO`` and
``GSPOToken`` are their presets with GRPO's estimator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from lightrft_core.algorithms import AGGREGATION_MODES, AggregationMode, masked_mean
from lightrft_core.algorithms.clipped_loss import ClippedPolicyLoss, PolicyLossOptions, Surrogate
from lightrft_core.algorithms.parts import preset
from lightrft_core.interfaces import PolicyLossInput

from .grpo import GRPO_KL_DEFAULTS, GroupNormalizedEstimator
from .sequence_losses import gspo_loss, gspo_token_loss


@dataclass
class GSPOOptions(PolicyLossOptions):
    """Options of the ``gspo`` and ``gspo_token`` losses (``ppo_clip``'s, with GSPO's
    defaults)."""

    clip_eps_low: float = field(
        default=3e-4,
        metadata={
            "help": "The sequence ratio s_i is clipped below at 1 - clip_eps_low (the paper: 3e-4)."
        },
    )
    clip_eps_high: float = field(
        default=4e-4,
        metadata={
            "help": "The sequence ratio s_i is clipped above at 1 + clip_eps_high (the "
            "paper: 4e-4)."
        },
    )
    loss_aggregation: AggregationMode = field(
        default="seq-mean-token-mean",
        metadata={
            "help": "How losses are averaged: one of "
            + ", ".join(AGGREGATION_MODES)
            + ". The paper: seq-mean-token-mean (the mean of the sequence losses)."
        },
    )


class GSPOLoss(ClippedPolicyLoss):
    """``gspo``: sequence-level clipped ratio, one loss per sequence."""

    name: ClassVar[str] = "gspo"
    Config: ClassVar[type] = GSPOOptions
    config: GSPOOptions

    def surrogate(self, batch: PolicyLossInput, policy_mask: torch.Tensor) -> Surrogate:
        """``L_i`` on every response token of sequence ``i``; ``s_i`` over ``policy_mask``."""
        cfg = self.config
        mask = batch.action_mask.bool()  # [B, T]
        seq = gspo_loss(
            batch.log_probs,
            batch.old_log_probs,
            batch.advantages,
            policy_mask,
            clip_eps_low=cfg.clip_eps_low,
            clip_eps_high=cfg.clip_eps_high,
            dual_clip=cfg.dual_clip,
        )  # fields [B, 1]
        loss = torch.where(mask, seq.loss.expand_as(batch.log_probs), 0.0)  # [B, T]
        with torch.no_grad():
            metrics = {
                "clip_fraction": masked_mean(seq.clipped.expand_as(mask).float(), mask),
                "ratio_mean": masked_mean(seq.ratio.detach().expand_as(batch.log_probs), mask),
            }
            if cfg.dual_clip is not None:
                metrics["dual_clip_fraction"] = masked_mean(
                    seq.dual_clipped.expand_as(mask).float(), mask
                )
        return Surrogate(loss, metrics)


class GSPOTokenLoss(ClippedPolicyLoss):
    """``gspo_token``: GSPO's sequence ratio in value, per-token gradients and advantages."""

    name: ClassVar[str] = "gspo_token"
    Config: ClassVar[type] = GSPOOptions
    config: GSPOOptions

    def surrogate(self, batch: PolicyLossInput, policy_mask: torch.Tensor) -> Surrogate:
        """``L_{i,t}`` with ``s_{i,t}``, zero outside ``policy_mask``."""
        cfg = self.config
        tok = gspo_token_loss(
            batch.log_probs,
            batch.old_log_probs,
            batch.advantages,
            policy_mask,
            clip_eps_low=cfg.clip_eps_low,
            clip_eps_high=cfg.clip_eps_high,
            dual_clip=cfg.dual_clip,
        )  # fields [B, T]
        loss = torch.where(policy_mask, tok.loss, torch.zeros_like(tok.loss))
        with torch.no_grad():
            metrics = {
                "clip_fraction": masked_mean(tok.clipped.float(), policy_mask),
                "ratio_mean": masked_mean(tok.ratio.detach(), policy_mask),
            }
            if cfg.dual_clip is not None:
                metrics["dual_clip_fraction"] = masked_mean(tok.dual_clipped.float(), policy_mask)
        return Surrogate(loss, metrics)


GSPO = preset(
    "gspo",
    advantage=GroupNormalizedEstimator,
    loss=GSPOLoss,
    defaults=GRPO_KL_DEFAULTS,
    doc="GRPO's advantages, sequence-level clipped ratio, one loss per sequence.",
    module=__name__,
    class_name="GSPO",
)

GSPOToken = preset(
    "gspo_token",
    advantage=GroupNormalizedEstimator,
    loss=GSPOTokenLoss,
    defaults=GRPO_KL_DEFAULTS,
    doc="GRPO's advantages, GSPO's sequence ratio in value with per-token gradients.",
    module=__name__,
    class_name="GSPOToken",
)
