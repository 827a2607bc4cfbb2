"""Shared, algorithm-independent helpers: loss aggregation, KL estimators and controllers,
the PPO clipped surrogate, whitening, reward normalisation -- exported here -- and the
modules ``clipped_loss`` (the clipped policy loss and its config options), ``groups``
(per-group reward statistics), ``token_rewards`` (outcome rewards per token),
``token_selection`` (high-entropy tokens, entropy bonus) and ``options`` (checks of shared
config options).

Mostly pure tensor functions that every algorithm plugin may use (plugins never inherit from
each other; they share these functions, and ``ClippedLossOptions`` for their configs). Each
function's docstring gives its math.
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

# ---- PPO clip, whitening, KL controllers, reward shaping (kl_control.py, ppo_clip.py,
# reward_shaping.py, whitening.py)
from .kl_control import (
    KL_CONTROLLER_KINDS,
    AdaptiveKLController,
    FixedKLController,
    KLController,
    KLControllerKind,
    build_kl_controller,
)
from .ppo_clip import (
    LOG_RATIO_CLAMP,
    PPOClipLoss,
    check_clip_parameters,
    clipped_surrogate,
    ppo_clip_loss,
)
from .reward_shaping import (
    RewardNormalizer,
    RunningMeanStd,
    clip_rewards,
    normalize_rewards,
)
from .whitening import AllReduce, WhitenedValues, clip_advantages, masked_whiten

__all__ += [
    "KL_CONTROLLER_KINDS",
    "LOG_RATIO_CLAMP",
    "AdaptiveKLController",
    "AllReduce",
    "FixedKLController",
    "KLController",
    "KLControllerKind",
    "PPOClipLoss",
    "RewardNormalizer",
    "RunningMeanStd",
    "WhitenedValues",
    "build_kl_controller",
    "check_clip_parameters",
    "clip_advantages",
    "clip_rewards",
    "clipped_surrogate",
    "masked_whiten",
    "normalize_rewards",
    "ppo_clip_loss",
]
