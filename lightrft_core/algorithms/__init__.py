"""Shared, algorithm-independent helpers: loss aggregation and KL estimators.

Pure tensor functions that every algorithm plugin may use (plugins never inherit from each
other; they share these free functions instead). Each function's docstring gives its math.
"""

from __future__ import annotations

from .aggregation import AGGREGATION_MODES, AggregationMode, aggregate_loss, masked_mean
from .kl import KL_ESTIMATORS, KL_LOG_RATIO_CLAMP, KLEstimator, kl_estimate

__all__ = [
    "AGGREGATION_MODES",
    "KL_ESTIMATORS",
    "KL_LOG_RATIO_CLAMP",
    "AggregationMode",
    "KLEstimator",
    "aggregate_loss",
    "kl_estimate",
    "masked_mean",
]
