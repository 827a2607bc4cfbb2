"""GMPO: Geometric-Mean Policy Optimization (Y. Zhao et al., arXiv 2507.20673).

Advantages are GRPO's (group-normalised outcome rewards). The loss maximises the geometric
mean of the token terms instead of their arithmetic mean, clipping each token's log-ratio
in log space on the side that would raise the objective (formulas in ``sequence_losses``)::

    L_i = −A_i · exp(mean_t δ'_t),   δ'_t = min/max(δ_t, clip(δ_t, −ε_low, ε_high))

with ``min`` for ``A_i ≥ 0`` and ``max`` for ``A_i < 0``. With the default
``seq-mean-token-mean`` the batch loss is ``Σ_i L_i / N_seq`` (the paper's ``1/G Σ_i``).

Defaults as the paper: ``ε_low = ε_high = 0.4`` in log space (ratios in ``[e^−0.4,
e^0.4]``), no KL. **``clip_eps_low``/``clip_eps_high`` are log-space bounds here**, not the
``1 ± ε`` of PPO.

Departures: other aggregation modes are available (a sequence's loss is then counted once
per token). With high-entropy token selection the geometric mean runs over the selected
tokens only; the paper has no token selection. The dual clip does not apply (refused).

Parts: the loss ``gmpo`` (``GMPOLoss``, the core's ``ppo_clip`` with GMPO's surrogate, its
log-space clipping and the paper's defaults); ``GMPO`` is its preset with GRPO's estimator.
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
from .sequence_losses import gmpo_loss


class GMPOLoss(ClippedPolicyLoss):
    """``gmpo``: geometric mean of the token ratios, clipped per token in log space."""

    name: ClassVar[str] = "gmpo"

    @dataclass
    class Config(PolicyLossOptions):
        """Options of the ``gmpo`` loss (``ppo_clip``'s, with GMPO's defaults and log-space
        clipping)."""

        clip_eps_low: float = field(
            default=0.4,
            metadata={
                "help": "Log-space clip: a token's log-ratio is held at >= -clip_eps_low "
                "where that is pessimistic (the paper: 0.4, i.e. ratio e^-0.4)."
            },
        )
        clip_eps_high: float = field(
            default=0.4,
            metadata={
                "help": "Log-space clip: a token's log-ratio is held at <= clip_eps_high "
                "where that is pessimistic (the paper: 0.4, i.e. ratio e^0.4)."
            },
        )
        dual_clip: float | None = field(
            default=None,
            metadata={"help": "Not used by GMPO; must stay null."},
        )
        loss_aggregation: AggregationMode = field(
            default="seq-mean-token-mean",
            metadata={
                "help": "How losses are averaged: one of "
                + ", ".join(AGGREGATION_MODES)
                + ". The paper: seq-mean-token-mean (the mean of the sequence losses)."
            },
        )

        def _check_clipping(self) -> None:
            if self.clip_eps_low < 0.0 or self.clip_eps_high < 0.0:
                raise ValueError(
                    "gmpo's log-space clip bounds clip_eps_low and clip_eps_high must be >= 0, "
                    f"got {self.clip_eps_low} and {self.clip_eps_high}"
                )
            if self.dual_clip is not None:
                raise ValueError(
                    f"gmpo has no dual clip (its clipping is per token in log space); leave "
                    f"dual_clip null, got {self.dual_clip}"
                )

    config: Config

    def surrogate(self, batch: PolicyLossInput, policy_mask: torch.Tensor) -> Surrogate:
        """``L_i`` on every response token of sequence ``i``; the geometric mean over
        ``policy_mask``."""
        cfg = self.config
        mask = batch.action_mask.bool()  # [B, T]
        seq = gmpo_loss(
            batch.log_probs,
            batch.old_log_probs,
            batch.advantages,
            policy_mask,
            log_clip_low=cfg.clip_eps_low,
            log_clip_high=cfg.clip_eps_high,
        )  # loss, ratio [B, 1]; clipped [B, T]
        loss = torch.where(mask, seq.loss.expand_as(batch.log_probs), 0.0)  # [B, T]
        with torch.no_grad():
            metrics = {
                "clip_fraction": masked_mean(seq.clipped.float(), policy_mask),
                "ratio_mean": masked_mean(seq.ratio.detach().expand_as(batch.log_probs), mask),
            }
        return Surrogate(loss, metrics)


GMPO = preset(
    "gmpo",
    advantage=GroupNormalizedEstimator,
    loss=GMPOLoss,
    defaults=GRPO_KL_DEFAULTS,
    doc="GRPO's advantages, the geometric mean of the token ratios clipped in log space.",
    module=__name__,
    class_name="GMPO",
)
