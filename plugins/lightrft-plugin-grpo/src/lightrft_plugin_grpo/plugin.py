"""The ``lightrft`` entry point of this package. Importing it must stay cheap: no torch."""

from __future__ import annotations

from typing import Any

from lightrft_core import hookimpl


@hookimpl
def lightrft_register_algorithms(register: Any) -> None:
    from .dapo import DAPO
    from .dr_grpo import DrGRPO
    from .gmpo import GMPO
    from .grpo import GRPO
    from .gspo import GSPO, GSPOToken

    for algorithm in (GRPO, DrGRPO, DAPO, GSPO, GSPOToken, GMPO):
        register(algorithm)


@hookimpl
def lightrft_register_advantage_estimators(register: Any) -> None:
    from .dapo import DAPOEstimator
    from .grpo import GroupNormalizedEstimator

    register(GroupNormalizedEstimator)
    register(DAPOEstimator)


@hookimpl
def lightrft_register_policy_losses(register: Any) -> None:
    from .gmpo import GMPOLoss
    from .gspo import GSPOLoss, GSPOTokenLoss

    for loss in (GSPOLoss, GSPOTokenLoss, GMPOLoss):
        register(loss)
