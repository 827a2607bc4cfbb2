"""Build the components a run's configuration selects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..algorithms.parts import resolve_algorithm
from ..config import LightRFTConfig
from ..interfaces import Algorithm, InferenceEngine, RewardModel, StrategyBase
from ..plugins import PluginManager
from .bootstrap import RunStart
from .distributed import model_init_context


@dataclass
class Components:
    """The run's components. ``actor`` and ``reference`` are the models as built; the RL
    trainer replaces each with what ``strategy.prepare`` returns, so that one name always
    holds the one object the loop uses."""

    strategy: StrategyBase
    actor: torch.nn.Module
    reference: torch.nn.Module | None
    engine: InferenceEngine
    reward: RewardModel
    algorithm: Algorithm
    tokenizer: Any


def build_components(cfg: LightRFTConfig, manager: PluginManager, start: RunStart) -> Components:
    """Construct the RL run's components on the strategy ``start`` set up."""
    strategy = start.strategy
    actor_cls = manager.get_actor(cfg.model.name)
    with model_init_context(strategy):  # fsdp meta_init: structure only on ranks > 0
        actor = actor_cls(cfg.model.options)
    section = cfg.algorithm
    algorithm_cls = resolve_algorithm(manager, section.name, section.advantage, section.loss)
    algorithm = algorithm_cls(section.options)
    reference = None
    if algorithm.needs_reference():
        with model_init_context(strategy):
            reference = actor_cls(cfg.model.options)
        reference.eval()
        reference.requires_grad_(False)
    engine = manager.get_engine(cfg.engine.name)(cfg.engine.options)
    engine.setup(
        model_path=actor_cls.hf_path(cfg.model.options),
        model=actor.hf_model(),
        tokenizer=start.tokenizer,
    )
    reward = manager.get_reward_model(cfg.reward.name)(cfg.reward.options)
    return Components(strategy, actor, reference, engine, reward, algorithm, start.tokenizer)
