"""The core's conformance checks for algorithms, run on each algorithm of the plugin."""

from __future__ import annotations

from lightrft_core.interfaces import Algorithm
from lightrft_core.testing import AlgorithmConformance
from lightrft_plugin_grpo.dapo import DAPO
from lightrft_plugin_grpo.dr_grpo import DrGRPO
from lightrft_plugin_grpo.gmpo import GMPO
from lightrft_plugin_grpo.grpo import GRPO
from lightrft_plugin_grpo.gspo import GSPO, GSPOToken


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


# ---------------------------------------------------------------------- the other algorithms
class TestDrGRPOAlgorithm(AlgorithmConformance):
    # The kit passes no engine max_new_tokens: give the sum-norm constant explicitly.
    algorithm_cls = DrGRPO

    def make_algorithm(self) -> Algorithm:
        return DrGRPO(DrGRPO.Config(max_tokens_norm=6))


class TestDAPO(AlgorithmConformance):
    # The kit passes no engine max_new_tokens: give L_max explicitly (L_buf = 6 // 5 = 1).
    algorithm_cls = DAPO

    def make_algorithm(self) -> Algorithm:
        return DAPO(DAPO.Config(max_response_length=6))


class TestDAPOWithKLAndNoShaping(AlgorithmConformance):
    algorithm_cls = DAPO

    def make_algorithm(self) -> Algorithm:
        return DAPO(DAPO.Config(overlong_penalty_factor=0.0, kl_coef=0.05))


class TestGSPO(AlgorithmConformance):
    # The paper's range (3e-4) clips every sequence of the kit's random ratios, leaving no
    # gradient to check; a wider range exercises both sides.
    algorithm_cls = GSPO

    def make_algorithm(self) -> Algorithm:
        return GSPO(GSPO.Config(clip_eps_low=0.05, clip_eps_high=0.05))


class TestGSPOToken(AlgorithmConformance):
    algorithm_cls = GSPOToken

    def make_algorithm(self) -> Algorithm:
        return GSPOToken(GSPOToken.Config(clip_eps_low=0.05, clip_eps_high=0.05, kl_coef=0.1))


class TestGMPO(AlgorithmConformance):
    algorithm_cls = GMPO


class TestGMPOWithKLReward(AlgorithmConformance):
    algorithm_cls = GMPO

    def make_algorithm(self) -> Algorithm:
        return GMPO(GMPO.Config(kl_coef=0.1, kl_mode="reward", clip_eps_low=0.1))
