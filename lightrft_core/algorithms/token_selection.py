"""Entropy-based policy-loss terms: high-entropy token selection and the entropy bonus.

* **High-entropy token selection** (S. Wang et al., *Beyond the 80/20 Rule: High-Entropy
  Minority Tokens Drive Effective Reinforcement Learning for LLM Reasoning*, arXiv
  2506.01939): only the "forking" tokens -- the top fraction ``f`` of response tokens by the
  entropy of the policy's next-token distribution -- contribute to the policy-gradient
  loss. ``high_entropy_token_mask`` returns the mask of the selected tokens; the caller
  zeroes the policy loss of the other tokens and aggregates over the *full* response mask,
  so the normalisers (tokens, sequences) are those of the whole response, as in the paper's
  objective ``1/Σ_i|o_i| · Σ_i Σ_t 1[H_{i,t} ≥ τ] · L_{i,t}``.

  Departure: the paper takes the top ``f`` of all tokens of the *batch*; here the top ``f``
  of *each sequence* is kept, so the selection of a sample never depends on which other
  samples share its micro-batch or rank (the loss stays exact under gradient accumulation
  and data parallelism), and every non-empty response keeps at least one token.

* **Entropy bonus**: ``− coef · H``, aggregated with the same mode and the same
  ``LossScale`` as the policy loss, added to the loss (maximising entropy when
  ``coef > 0``).
"""

from __future__ import annotations

import torch

from ..interfaces.algorithm import LossScale
from .aggregation import AggregationMode, aggregate_loss

#: The paper's fraction of tokens kept (its "20%").
DEFAULT_HIGH_ENTROPY_FRACTION = 0.2

# Guards ``ceil(f·n)`` against float residue: 0.2 * 15 = 3.0000000000000004 must give 3.
_CEIL_SLACK = 1e-6


def tokens_to_keep(lengths: torch.Tensor, fraction: float) -> torch.Tensor:
    """``[B]`` int64: how many tokens each sequence keeps, ``k_i = min(n_i, max(1, ⌈f·n_i⌉))``
    for a sequence with ``n_i > 0`` valid tokens, and 0 for an empty one."""
    _check_fraction(fraction)
    n = lengths.to(torch.float64)
    k = torch.ceil(n * fraction - _CEIL_SLACK).clamp(min=1.0)
    k = torch.minimum(k, n)  # never more than the sequence has; 0 stays 0
    return k.to(torch.long)


def high_entropy_token_mask(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    fraction: float = DEFAULT_HIGH_ENTROPY_FRACTION,
) -> torch.Tensor:
    """``[B, T]`` bool: the ``k_i`` highest-entropy valid tokens of each row (see
    ``tokens_to_keep``); False everywhere outside ``mask``.

    ``entropy``: ``[B, T]`` per-token entropy (read without gradients). ``mask``: ``[B, T]``
    bool, True on response tokens. Exactly ``k_i`` tokens are selected per row: among tokens
    of equal entropy at the threshold, the earlier positions are taken. Non-finite entropy
    values rank lowest.
    """
    if entropy.shape != mask.shape or entropy.dim() != 2:
        raise ValueError(
            f"entropy and mask must both be [B, T]; got {tuple(entropy.shape)} and "
            f"{tuple(mask.shape)}"
        )
    mask = mask.bool()
    keep = tokens_to_keep(mask.sum(dim=1), fraction)  # [B]
    scores = entropy.detach().float()
    scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -1e30))
    scores = torch.where(mask, scores, torch.full_like(scores, float("-inf")))  # [B, T]
    # Stable descending sort: equal entropies keep their left-to-right order, so ties are
    # broken towards earlier positions and the selection is deterministic.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [B, T]
    rank = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank.scatter_(1, order, positions)  # rank[i, t] = place of token t in row i's order
    return (rank < keep.unsqueeze(1)) & mask


def entropy_bonus_loss(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    mode: AggregationMode,
    scale: LossScale,
    *,
    coef: float,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """``− coef · aggregate(H)``: this micro-batch's share of the entropy bonus (a scalar with
    gradients through ``entropy``). ``entropy``/``mask``: ``[B, T]``; ``mode``, ``scale`` and
    ``max_tokens`` as for ``aggregate_loss`` (use the policy loss's own)."""
    return -coef * aggregate_loss(entropy, mask, mode, scale, max_tokens=max_tokens)


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"the fraction of high-entropy tokens to keep must be in (0, 1], got {fraction!r}"
        )
