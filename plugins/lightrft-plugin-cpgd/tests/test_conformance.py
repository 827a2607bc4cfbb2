"""The core's conformance checks, run on CPGD's main configurations: among them, the
gradient of the policy loss is the same in one micro-batch, in four, and on two
data-parallel ranks, for every configuration in ``loss_variants``."""

from __future__ import annotations

from typing import Any, ClassVar

from lightrft_core.algorithms import AGGREGATION_MODES
from lightrft_core.testing import AlgorithmConformance
from lightrft_plugin_cpgd.cpgd import CPGD


class TestCPGD(AlgorithmConformance):
    algorithm_cls = CPGD
    loss_variants = (
        *(
            {"loss_aggregation": mode, **extra}
            for mode in AGGREGATION_MODES
            for extra in ({}, {"policy_drift_coef": 0.5, "kl_coef": 0.1, "clip_eps_high": 0.28})
        ),
        {"policy_drift_coef": 0.5, "policy_drift_clip": 0.05},
    )


class TestCPGDClipFilterLikeWithReferenceKL(AlgorithmConformance):
    algorithm_cls = CPGD
    config_options: ClassVar[dict[str, Any]] = {
        "advantage_weighting": "clip-filter-like",
        "policy_drift_coef": 0.5,
        "kl_coef": 0.1,
        "loss_aggregation": "seq-mean-token-mean",
    }


class TestCPGDWithoutWeighting(AlgorithmConformance):
    algorithm_cls = CPGD
    config_options: ClassVar[dict[str, Any]] = {
        "advantage_weighting": "none",
        "clip_eps_high": 0.28,
    }
