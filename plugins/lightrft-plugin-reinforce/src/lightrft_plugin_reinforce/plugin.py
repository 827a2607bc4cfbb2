"""The ``lightrft`` entry point of this package. Importing it must stay cheap: no torch."""

from __future__ import annotations

from typing import Any

from lightrft_core import hookimpl


@hookimpl
def lightrft_register_algorithms(register: Any) -> None:
    from .reinforce_pp import ReinforcePP, ReinforcePPBaseline
    from .rloo import RLOO

    register(ReinforcePP)
    register(ReinforcePPBaseline)
    register(RLOO)


@hookimpl
def lightrft_register_advantage_estimators(register: Any) -> None:
    from .reinforce_pp import ReinforcePPBaselineEstimator, ReinforcePPEstimator
    from .rloo import RLOOEstimator

    register(ReinforcePPEstimator)
    register(ReinforcePPBaselineEstimator)
    register(RLOOEstimator)
