"""The built-in components, registered through the same hooks as any plugin.

Imports happen inside the hooks, so that listing plugins stays cheap.
"""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl


@hookimpl
def lightrft_register_strategies(register: Any) -> None:
    from .strategies.local import LocalStrategy
    from .testing.fakes import FakeStrategy

    register(LocalStrategy)
    register(FakeStrategy)


@hookimpl
def lightrft_register_actors(register: Any) -> None:
    from .actors.language import ActorLanguage
    from .testing.fakes import FakeActor

    register(ActorLanguage)
    register(FakeActor)


@hookimpl
def lightrft_register_engines(register: Any) -> None:
    from .engines.hf import HFEngine
    from .testing.fakes import FakeEngine

    register(HFEngine)
    register(FakeEngine)


@hookimpl
def lightrft_register_reward_models(register: Any) -> None:
    from .rewards.combined import CombinedReward
    from .rewards.judge import JudgeReward
    from .rewards.math import MathReward
    from .rewards.model import ScalarRewardModel
    from .rewards.remote import RemoteReward
    from .rewards.rules import ExactMatchReward, FormatReward
    from .testing.fakes import ConstantReward

    for cls in (
        MathReward,
        ExactMatchReward,
        FormatReward,
        CombinedReward,
        ScalarRewardModel,
        JudgeReward,
        RemoteReward,
        ConstantReward,
    ):
        register(cls)


@hookimpl
def lightrft_register_policy_losses(register: Any) -> None:
    from .algorithms.clipped_loss import ClippedPolicyLoss

    register(ClippedPolicyLoss)


@hookimpl
def lightrft_register_trackers(register: Any) -> None:
    from .trackers import ConsoleTracker, JsonlTracker, TensorBoardTracker

    register(ConsoleTracker)
    register(JsonlTracker)
    register(TensorBoardTracker)
