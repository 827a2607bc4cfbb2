"""The core's conformance checks, run on the main configurations of ``ppo``: among them, the
gradient of the policy loss is the same in one micro-batch, in four, and on two
data-parallel ranks, for every configuration in ``loss_variants``."""

from __future__ import annotations

from typing import Any, ClassVar

from lightrft_core.algorithms import AGGREGATION_MODES
from lightrft_core.testing import AlgorithmConformance
from lightrft_plugin_ppo.ppo import PPO


class TestPPO(AlgorithmConformance):
    algorithm_cls = PPO
    loss_variants = tuple(
        {"loss_aggregation": mode, "max_tokens_norm": 6} for mode in AGGREGATION_MODES
    )


class TestPPOWithKLInRewardAndDiscount(AlgorithmConformance):
    algorithm_cls = PPO
    config_options: ClassVar[dict[str, Any]] = {
        "kl_coef": 0.05,
        "gamma": 0.9,
        "lam": 0.8,
        "advantage_clip": 3.0,
    }


class TestPPOWithKLLossDualClipAndSequenceMean(AlgorithmConformance):
    algorithm_cls = PPO
    config_options: ClassVar[dict[str, Any]] = {
        "kl_coef": 0.1,
        "kl_mode": "loss",
        "kl_estimator": "k3",
        "dual_clip": 3.0,
        "whiten_advantages": False,
        "loss_aggregation": "seq-mean-token-mean",
    }
