"""The built-in components, registered through the same hooks as any plugin."""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl


@hookimpl
def lightrft_register_strategies(register: Any) -> None:
    from .testing.fakes import FakeStrategy

    register(FakeStrategy)


@hookimpl
def lightrft_register_engines(register: Any) -> None:
    from .testing.fakes import FakeEngine

    register(FakeEngine)


@hookimpl
def lightrft_register_reward_models(register: Any) -> None:
    from .testing.fakes import ConstantReward

    register(ConstantReward)


@hookimpl
def lightrft_register_actors(register: Any) -> None:
    from .testing.fakes import FakeActor

    register(FakeActor)
