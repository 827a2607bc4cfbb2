"""Build the components a run's configuration selects."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from ..config import LightRFTConfig
from ..interfaces import Algorithm, InferenceEngine, RewardModel, StrategyBase
from ..plugins import PluginManager
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


def model_path(actor_options: Any) -> str | None:
    """The Hugging Face folder an actor loads (its ``path`` option), if it has one."""
    return getattr(actor_options, "path", None)


def load_tokenizer(path: str | None) -> Any:
    from transformers import AutoTokenizer

    if path is None:
        raise ValueError("model.path is not set: the run needs a Hugging Face model folder")
    return AutoTokenizer.from_pretrained(path)


def build_components(cfg: LightRFTConfig, manager: PluginManager) -> Components:
    """Construct every component (the strategy first, so that it seeds and sets devices)."""
    strategy = manager.get_strategy(cfg.strategy.name)(cfg.strategy.options)
    strategy.setup_distributed()
    seed_everything(cfg.run.seed)
    actor_cls = manager.get_actor(cfg.model.name)
    with model_init_context(strategy):  # fsdp meta_init: structure only on ranks > 0
        actor = actor_cls(cfg.model.options)
    algorithm = manager.get_algorithm(cfg.algorithm.name)(cfg.algorithm.options)
    reference = None
    if algorithm.needs_reference():
        with model_init_context(strategy):
            reference = actor_cls(cfg.model.options)
        reference.eval()
        reference.requires_grad_(False)
    tokenizer = load_tokenizer(model_path(cfg.model.options))
    engine = manager.get_engine(cfg.engine.name)(cfg.engine.options)
    engine.setup(
        model_path=model_path(cfg.model.options),
        model=actor.hf_model(),
        tokenizer=tokenizer,
    )
    reward = manager.get_reward_model(cfg.reward.name)(cfg.reward.options)
    return Components(strategy, actor, reference, engine, reward, algorithm, tokenizer)
