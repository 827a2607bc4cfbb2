"""The core's conformance checks, run on the main configurations of each algorithm."""

from __future__ import annotations

from lightrft_core.interfaces import Algorithm
from lightrft_core.testing import AlgorithmConformance
from lightrft_plugin_reinforce.reinforce_pp import ReinforcePP, ReinforcePPBaseline
from lightrft_plugin_reinforce.rloo import RLOO


class TestReinforcePP(AlgorithmConformance):
    algorithm_cls = ReinforcePP


class TestReinforcePPWithKLAndDiscount(AlgorithmConformance):
    algorithm_cls = ReinforcePP

    def make_algorithm(self) -> Algorithm:
        return ReinforcePP(ReinforcePP.Config(kl_coef=0.05, gamma=0.9, advantage_clip=3.0))


class TestReinforcePPBaseline(AlgorithmConformance):
    algorithm_cls = ReinforcePPBaseline


class TestReinforcePPBaselineWithKLLoss(AlgorithmConformance):
    algorithm_cls = ReinforcePPBaseline

    def make_algorithm(self) -> Algorithm:
        return ReinforcePPBaseline(
            ReinforcePPBaseline.Config(
                kl_coef=0.1, kl_mode="loss", kl_estimator="k3", whiten_center=True
            )
        )


class TestRLOO(AlgorithmConformance):
    algorithm_cls = RLOO


class TestRLOOWithKLInReward(AlgorithmConformance):
    algorithm_cls = RLOO

    def make_algorithm(self) -> Algorithm:
        return RLOO(RLOO.Config(kl_coef=0.1, loss_aggregation="seq-mean-token-mean"))
