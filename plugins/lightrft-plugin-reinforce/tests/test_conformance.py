"""The core's conformance checks, run on the main configurations of each algorithm: among
them, the gradient of the policy loss is the same in one micro-batch, in four, and on two
data-parallel ranks, for every configuration in ``loss_variants``."""

from __future__ import annotations

from typing import Any, ClassVar

from lightrft_core.algorithms import AGGREGATION_MODES
from lightrft_core.testing import AlgorithmConformance
from lightrft_plugin_reinforce.reinforce_pp import ReinforcePP, ReinforcePPBaseline
from lightrft_plugin_reinforce.rloo import RLOO

# The shared clipped loss in every aggregation, alone and with a KL loss term and dual clip.
LOSS_VARIANTS = tuple(
    {"loss_aggregation": mode, **extra}
    for mode in AGGREGATION_MODES
    for extra in ({}, {"kl_coef": 0.1, "kl_mode": "loss", "kl_estimator": "k3", "dual_clip": 2.0})
)


class TestReinforcePP(AlgorithmConformance):
    algorithm_cls = ReinforcePP
    loss_variants = LOSS_VARIANTS


class TestReinforcePPWithKLAndDiscount(AlgorithmConformance):
    algorithm_cls = ReinforcePP
    config_options: ClassVar[dict[str, Any]] = {
        "kl_coef": 0.05,
        "gamma": 0.9,
        "advantage_clip": 3.0,
    }


class TestReinforcePPBaseline(AlgorithmConformance):
    algorithm_cls = ReinforcePPBaseline
    loss_variants = LOSS_VARIANTS


class TestReinforcePPBaselineWithKLLoss(AlgorithmConformance):
    algorithm_cls = ReinforcePPBaseline
    config_options: ClassVar[dict[str, Any]] = {
        "kl_coef": 0.1,
        "kl_mode": "loss",
        "kl_estimator": "k3",
        "whiten_center": True,
    }


class TestRLOO(AlgorithmConformance):
    algorithm_cls = RLOO
    loss_variants = LOSS_VARIANTS


class TestRLOOWithKLInReward(AlgorithmConformance):
    algorithm_cls = RLOO
    config_options: ClassVar[dict[str, Any]] = {
        "kl_coef": 0.1,
        "loss_aggregation": "seq-mean-token-mean",
    }
