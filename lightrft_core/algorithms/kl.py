"""Per-token estimators of KL(π ‖ π_ref) from samples of π (Schulman, "Approximating KL
divergence", 2020).

With ``Δ = lp − lp_ref``: ``k1 = Δ`` (unbiased, high variance, can be negative),
``k2 = Δ²/2`` (biased, low variance), ``k3 = exp(−Δ) − 1 + Δ`` (unbiased, never negative).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

#: A KL estimator, as users write it in ``algorithm.kl_estimator`` (a config field type).
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)

#: ``k3`` clamps ``Δ`` to ``[-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP]`` before ``exp`` so
#: that one wild token cannot give ``inf`` (exp(20) ≈ 4.9e8 still fits float32 and bf16).
KL_LOG_RATIO_CLAMP = 20.0


def kl_estimate(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    estimator: KLEstimator = "k3",
) -> torch.Tensor:
    """Per-token KL estimate, same shape as the inputs (``[B, T]``); callers apply the mask.

    ``k3`` uses the clamped ``Δ`` in both of its terms (so the value stays >= 0 and the
    gradient is zero beyond the clamp); ``k1`` and ``k2`` do not clamp.
    """
    delta = log_probs - ref_log_probs  # [B, T]
    if estimator == "k1":
        return delta
    if estimator == "k2":
        return 0.5 * delta.square()
    if estimator == "k3":
        delta = delta.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
        return torch.exp(-delta) - 1.0 + delta
    raise ValueError(
        f"unknown KL estimator {estimator!r}; valid estimators: {', '.join(KL_ESTIMATORS)}"
    )


def step_kl_coef(passed: float | None, configured: float) -> float:
    """This step's β: the loop's (``AdvantageInput.kl_coef``, ``PolicyLossInput.kl_coef``,
    from its KL controller) when it passes one, else the configured ``kl_coef``. Whether the
    KL term is on at all is decided by the configured value (a controller starts from it)."""
    return configured if passed is None else passed
