"""Turning a per-token loss into the scalar a micro-batch contributes to the batch loss.

Every mode divides by sizes of the *whole optimizer batch* (``LossScale``: tokens and
sequences summed over micro-batches and ranks), never by the micro-batch's own sizes, and
multiplies by ``world_size`` because strategies average gradients over ranks. Hence

    sum over micro-batches and ranks of aggregate_loss(...)  (gradients averaged over ranks)

is exactly the loss of the whole batch computed at once, and so is its gradient.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from ..interfaces.algorithm import LossScale

#: A loss-aggregation mode, as users write it in ``algorithm.loss_aggregation`` (use it as
#: the type of a config field: the configuration loader then checks the value).
AggregationMode = Literal[
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
AGGREGATION_MODES: tuple[str, ...] = get_args(AggregationMode)


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: AggregationMode,
    scale: LossScale,
    *,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the batch loss (a scalar with gradients).

    ``per_token``: ``[B, T]`` loss per token. ``mask``: ``[B, T]`` bool, True on tokens that
    count. ``mode``: one of ``AGGREGATION_MODES``:

    * ``token-mean``: ``Σ_{i,t} m·L / N_tokens``;
    * ``seq-mean-token-mean``: ``Σ_i (Σ_t m·L / Σ_t m) / N_seq`` (a sequence without valid
      tokens contributes 0);
    * ``seq-mean-token-sum``: ``Σ_i Σ_t m·L / N_seq``;
    * ``seq-mean-token-sum-norm``: ``Σ_i (Σ_t m·L / max_tokens) / N_seq`` with a constant
      ``max_tokens`` (e.g. the maximum generation length), as Dr.GRPO asks.

    ``N_tokens``/``N_seq`` are ``scale.num_tokens``/``scale.num_sequences``; the result is
    multiplied by ``scale.world_size``. Masked positions get exactly zero gradient, even
    where ``per_token`` is not finite.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(
            f"unknown loss aggregation mode {mode!r}; valid modes: {', '.join(AGGREGATION_MODES)}"
        )
    if per_token.shape != mask.shape or per_token.dim() != 2:
        raise ValueError(
            f"per_token and mask must both be [B, T]; got {tuple(per_token.shape)} and "
            f"{tuple(mask.shape)}"
        )
    if scale.world_size < 1:
        raise ValueError(f"LossScale.world_size must be >= 1, got {scale.world_size}")
    mask = mask.bool()
    # [B, T]; torch.where (not a product) so that NaN/inf outside the mask cannot leak.
    masked = torch.where(mask, per_token, torch.zeros_like(per_token))

    if mode == "token-mean":
        _require_positive("num_tokens", scale.num_tokens, mode)
        return masked.sum() * (scale.world_size / scale.num_tokens)

    _require_positive("num_sequences", scale.num_sequences, mode)
    seq_sum = masked.sum(dim=-1)  # [B]
    if mode == "seq-mean-token-mean":
        seq_len = mask.sum(dim=-1).clamp(min=1).to(per_token.dtype)  # [B]
        per_seq = seq_sum / seq_len  # [B]; 0 for a sequence without valid tokens
    elif mode == "seq-mean-token-sum":
        per_seq = seq_sum
    else:  # seq-mean-token-sum-norm
        if max_tokens is None or max_tokens < 1:
            raise ValueError(
                "loss aggregation 'seq-mean-token-sum-norm' needs max_tokens, a positive "
                f"constant such as the maximum generation length; got {max_tokens!r}"
            )
        per_seq = seq_sum / max_tokens
    return per_seq.sum() * (scale.world_size / scale.num_sequences)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the True entries of ``mask`` (same shape); 0 if there are none.

    For metrics of one micro-batch; not for losses (use ``aggregate_loss``).
    """
    mask = mask.bool()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1)


def _require_positive(field_name: str, value: int, mode: str) -> None:
    if value < 1:
        raise ValueError(
            f"LossScale.{field_name} must be >= 1 for loss aggregation {mode!r} (it is the "
            f"count over the whole optimizer batch, all micro-batches and ranks); got {value}"
        )
