"""The loop's side of a critic (PPO with GAE): the contract is in
``lightrft_core/interfaces/algorithm.py`` ("A critic"). Critic-free algorithms get ``None``
from ``build_critic`` and none of this runs.

Files: the critic's checkpoint is ``<step dir>/critic`` (written after the actor's), its
export ``<output_dir>/final_critic``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..interfaces import Algorithm, Critic, CriticBatch, LossScale, StrategyBase
from .distributed import model_init_context
from .experience import RolloutBatch

#: The critic's folder inside a step's checkpoint folder.
CRITIC_DIR = "critic"
#: The exported critic, beside ``final``.
FINAL_CRITIC_DIR = "final_critic"


def build_loop_critic(
    cfg: Any, algorithm: Algorithm, strategy: StrategyBase, actor: torch.nn.Module
) -> Critic | None:
    """``algorithm.build_critic`` inside the strategy's model-init context, checked against
    ``needs_critic()``. ``actor``: the prepared actor."""
    with model_init_context(strategy):
        critic = algorithm.build_critic(cfg, strategy, actor)
    if algorithm.needs_critic() and critic is None:
        raise TypeError(
            f"algorithm {algorithm.name!r} says needs_critic() but its build_critic returned "
            "None; it must return a lightrft_core.interfaces.Critic"
        )
    if critic is not None and not isinstance(critic, Critic):
        raise TypeError(
            f"{type(algorithm).__name__}.build_critic returned {type(critic).__name__}, "
            "not a lightrft_core.interfaces.Critic"
        )
    return critic


def critic_values(critic: Critic, rollout: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
    """The old values ``[B, T-1]`` of the rollout, 0 outside the response tokens."""
    values = critic.compute_values(
        rollout.sequences, rollout.attention_mask, micro_batch_size=micro_batch_size
    )
    return values.float().cpu() * rollout.action_mask


def critic_batch(mb: RolloutBatch, scale: LossScale) -> CriticBatch:
    """The critic's view of a policy micro-batch (same rows, same ``LossScale``)."""
    if mb.values is None or mb.returns is None:
        raise ValueError(
            "the critic trains on the rollout's old values and returns: the algorithm's "
            "compute_advantages must return AdvantageOutput.returns when it needs a critic"
        )
    return CriticBatch(
        sequences=mb.sequences,
        attention_mask=mb.attention_mask,
        old_values=mb.values,
        returns=mb.returns,
        action_mask=mb.action_mask,
        scale=scale,
    )


def load_critic(critic: Critic, checkpoint: Path) -> None:
    """Restore the critic saved with the actor's checkpoint ``checkpoint``."""
    folder = Path(checkpoint) / CRITIC_DIR
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{checkpoint} holds no critic ({CRITIC_DIR}/ is missing): it was written by a "
            "run without a critic, or the run stopped while saving it; resume from an "
            "earlier checkpoint (trainer.resume_from=PATH)"
        )
    critic.load(folder)
