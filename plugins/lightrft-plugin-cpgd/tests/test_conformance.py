"""The core's conformance checks, run on CPGD's main configurations."""

from __future__ import annotations

from lightrft_core.interfaces import Algorithm
from lightrft_core.testing import AlgorithmConformance
from lightrft_plugin_cpgd.cpgd import CPGD


class TestCPGD(AlgorithmConformance):
    algorithm_cls = CPGD


class TestCPGDClipFilterLikeWithReferenceKL(AlgorithmConformance):
    algorithm_cls = CPGD

    def make_algorithm(self) -> Algorithm:
        return CPGD(
            CPGD.Config(
                advantage_weighting="clip-filter-like",
                policy_drift_coef=0.5,
                kl_coef=0.1,
                loss_aggregation="seq-mean-token-mean",
            )
        )


class TestCPGDWithoutWeighting(AlgorithmConformance):
    algorithm_cls = CPGD

    def make_algorithm(self) -> Algorithm:
        return CPGD(CPGD.Config(advantage_weighting="none", clip_eps_high=0.28))
