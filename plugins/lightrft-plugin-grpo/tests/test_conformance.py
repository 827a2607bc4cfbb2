"""The core's conformance checks for algorithms, run on each algorithm of the plugin: among
them, the gradient of the policy loss is the same in one micro-batch, in four, and on two
data-parallel ranks, for every configuration in ``loss_variants``."""

from __future__ import annotations

from typing import Any, ClassVar

from lightrft_core.algorithms import AGGREGATION_MODES
from lightrft_core.testing import AlgorithmConformance
from lightrft_plugin_grpo.dapo import DAPO
from lightrft_plugin_grpo.dr_grpo import DrGRPO
from lightrft_plugin_grpo.gmpo import GMPO
from lightrft_plugin_grpo.grpo import GRPO
from lightrft_plugin_grpo.gspo import GSPO, GSPOToken

ENTROPY = {"high_entropy_token_fraction": 0.4, "entropy_coef": 0.01}
KL_K2_DUAL_CLIP = {"kl_coef": 0.1, "kl_estimator": "k2", "dual_clip": 2.0}
# GSPO's default range (3e-4) clips every sequence of the kit's random ratios, leaving no
# gradient to check; 0.05 clips some sequences and not others.
GSPO_RANGE = {"clip_eps_low": 0.05, "clip_eps_high": 0.05}


class TestGRPO(AlgorithmConformance):
    algorithm_cls = GRPO
    loss_variants = (
        *(
            {"loss_aggregation": mode, **extra}
            for mode in AGGREGATION_MODES
            for extra in ({}, {"kl_coef": 0.1}, KL_K2_DUAL_CLIP)
        ),
        ENTROPY,
    )


class TestGRPOWithKLLoss(AlgorithmConformance):
    algorithm_cls = GRPO
    config_options: ClassVar[dict[str, Any]] = {
        "kl_coef": 0.1,
        "loss_aggregation": "seq-mean-token-mean",
    }


class TestGRPOWithKLReward(AlgorithmConformance):
    algorithm_cls = GRPO
    config_options: ClassVar[dict[str, Any]] = {
        "kl_coef": 0.1,
        "kl_mode": "reward",
        "dual_clip": 3.0,
    }


class TestGRPOAsDrGRPO(AlgorithmConformance):
    algorithm_cls = GRPO
    config_options: ClassVar[dict[str, Any]] = {
        "scale_rewards_by_std": False,
        "loss_aggregation": "seq-mean-token-sum-norm",
        "max_tokens_norm": 6,
    }


# ---------------------------------------------------------------------- the other algorithms
class TestDrGRPO(AlgorithmConformance):
    # The sum-norm constant is the kit's max_new_tokens (AlgorithmContext).
    algorithm_cls = DrGRPO
    loss_variants = ({}, ENTROPY)


class TestDAPO(AlgorithmConformance):
    # L_max is the kit's max_new_tokens, 6 (L_buf = 6 // 5 = 1).
    algorithm_cls = DAPO
    loss_variants = ({}, {**ENTROPY, "kl_coef": 0.1})


class TestDAPOWithKLAndNoShaping(AlgorithmConformance):
    algorithm_cls = DAPO
    config_options: ClassVar[dict[str, Any]] = {"overlong_penalty_factor": 0.0, "kl_coef": 0.05}


class TestGSPO(AlgorithmConformance):
    algorithm_cls = GSPO
    config_options = GSPO_RANGE
    loss_variants = (
        {},
        {**ENTROPY, "loss_aggregation": "token-mean"},
        {"dual_clip": 1.5, "kl_coef": 0.1},
    )


class TestGSPOToken(AlgorithmConformance):
    algorithm_cls = GSPOToken
    config_options: ClassVar[dict[str, Any]] = {**GSPO_RANGE, "kl_coef": 0.1}
    loss_variants = ({}, {**ENTROPY, "loss_aggregation": "seq-mean-token-sum"})


class TestGMPO(AlgorithmConformance):
    algorithm_cls = GMPO
    loss_variants = (
        {},
        {"clip_eps_low": 0.1, "clip_eps_high": 0.1, **ENTROPY},
        {"loss_aggregation": "seq-mean-token-sum-norm", "kl_coef": 0.1},
    )


class TestGMPOWithKLReward(AlgorithmConformance):
    algorithm_cls = GMPO
    config_options: ClassVar[dict[str, Any]] = {
        "kl_coef": 0.1,
        "kl_mode": "reward",
        "clip_eps_low": 0.1,
    }
