"""The core's conformance checks, run on the main configurations of ``ppo``."""

from __future__ import annotations

from lightrft_core.interfaces import Algorithm
from lightrft_core.testing import AlgorithmConformance
from lightrft_plugin_ppo.ppo import PPO


class TestPPO(AlgorithmConformance):
    algorithm_cls = PPO


class TestPPOWithKLInRewardAndDiscount(AlgorithmConformance):
    algorithm_cls = PPO

    def make_algorithm(self) -> Algorithm:
        return PPO(PPO.Config(kl_coef=0.05, gamma=0.9, lam=0.8, advantage_clip=3.0))


class TestPPOWithKLLossDualClipAndSequenceMean(AlgorithmConformance):
    algorithm_cls = PPO

    def make_algorithm(self) -> Algorithm:
        return PPO(
            PPO.Config(
                kl_coef=0.1,
                kl_mode="loss",
                kl_estimator="k3",
                dual_clip=3.0,
                whiten_advantages=False,
                loss_aggregation="seq-mean-token-mean",
            )
        )
