"""The core's conformance checks for algorithms, run on GRPO's main configurations."""

from __future__ import annotations

from lightrft_core.interfaces import Algorithm
from lightrft_core.testing import AlgorithmConformance
from lightrft_plugin_grpo.grpo import GRPO


class TestGRPO(AlgorithmConformance):
    algorithm_cls = GRPO


class TestGRPOWithKLLoss(AlgorithmConformance):
    algorithm_cls = GRPO

    def make_algorithm(self) -> Algorithm:
        return GRPO(GRPO.Config(kl_coef=0.1, loss_aggregation="seq-mean-token-mean"))


class TestGRPOWithKLReward(AlgorithmConformance):
    algorithm_cls = GRPO

    def make_algorithm(self) -> Algorithm:
        return GRPO(GRPO.Config(kl_coef=0.1, kl_mode="reward", dual_clip=3.0))


class TestDrGRPO(AlgorithmConformance):
    algorithm_cls = GRPO

    def make_algorithm(self) -> Algorithm:
        return GRPO(
            GRPO.Config(
                scale_rewards_by_std=False,
                loss_aggregation="seq-mean-token-sum-norm",
                max_tokens_norm=6,
            )
        )
