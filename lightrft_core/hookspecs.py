"""The LightRFT hook specifications -- the whole plugin surface.

A plugin is a module (or object) with functions decorated ``@lightrft_core.hookimpl`` and
named after one of the specs below; pluggy lets an implementation accept fewer arguments
than its spec. Every spec is documented in ``docs/hooks.md`` with its exact signature.
Registration hooks receive a :class:`~lightrft_core.registry.Register` and call it once per
component class; they run once, the first time a component is looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from .interfaces import (
        Actor,
        AdvantageEstimator,
        Algorithm,
        InferenceEngine,
        ModelPatch,
        PolicyLoss,
        RewardModel,
        StrategyBase,
        Tracker,
    )
    from .registry import Register

PROJECT_NAME = "lightrft"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def lightrft_register_strategies(register: Register[StrategyBase]) -> None:
    """Register training strategies: ``register(MyStrategy)`` for each ``StrategyBase``
    subclass. Users select one with ``strategy.name``."""


@hookspec
def lightrft_register_actors(register: Register[Actor]) -> None:
    """Register actor (policy model) classes, subclasses of ``Actor``. Users select one with
    ``model.name``."""


@hookspec
def lightrft_register_reward_models(register: Register[RewardModel]) -> None:
    """Register reward model classes, subclasses of ``RewardModel``. Users select one with
    ``reward.name``."""


@hookspec
def lightrft_register_engines(register: Register[InferenceEngine]) -> None:
    """Register inference engines, subclasses of ``InferenceEngine``. Users select one with
    ``engine.name``."""


@hookspec
def lightrft_register_algorithms(register: Register[Algorithm]) -> None:
    """Register RL algorithms, subclasses of ``Algorithm``. Users select one with
    ``algorithm.name``."""


@hookspec
def lightrft_register_advantage_estimators(register: Register[AdvantageEstimator]) -> None:
    """Register advantage estimators, subclasses of ``AdvantageEstimator``: the first part of
    an algorithm built from parts. Users select one with ``algorithm.advantage``."""


@hookspec
def lightrft_register_policy_losses(register: Register[PolicyLoss]) -> None:
    """Register policy losses, subclasses of ``PolicyLoss``: the second part of an algorithm
    built from parts. Users select one with ``algorithm.loss``."""


@hookspec
def lightrft_register_patches(register: Register[ModelPatch]) -> None:
    """Register model patches, subclasses of ``ModelPatch``; actors apply them by name."""


@hookspec
def lightrft_register_trackers(register: Register[Tracker]) -> None:
    """Register experiment trackers, subclasses of ``Tracker``. Users list them by name in
    ``logging.trackers``."""


@hookspec
def lightrft_add_cli_commands(app: typer.Typer) -> None:
    """Add commands to the ``lightrft`` command line (``@app.command()`` or
    ``app.add_typer(...)``). Called once when the CLI starts, after plugins are loaded."""
