"""``Algorithm``: an advantage estimator plus a policy loss. It never owns the loop.

Shapes: ``B`` samples of ``T`` per-token positions aligned as in ``actor.py`` (``T`` is the
sequence length minus one). Samples of one prompt are contiguous: rows
``[g * G, (g + 1) * G)`` form group ``g`` with ``G = group_size``.

The training loop calls ``compute_advantages`` once per rollout batch (no gradients) and
``policy_loss`` once per micro-batch (with gradients through ``log_probs``).

Dynamic sampling (DAPO, arXiv 2503.14476) -- the contract between an algorithm and the loop:

1. After scoring a rollout round, the loop calls ``filter_groups(rewards, group_size)`` with
   that round's outcome rewards ``[B]`` (as the reward model returned them, before any
   shaping ``compute_advantages`` applies) and keeps the groups marked ``True``.
2. While fewer groups are kept than the step needs (``trainer.prompts_per_step``) and fewer
   than ``max_resample_rounds`` extra rounds have run in this step, the loop takes as many
   new prompts as groups are missing, generates, scores and filters them the same way.
   Kept groups beyond the step's size are left out (the first ones kept are trained).
3. If the batch is still short after ``max_resample_rounds`` extra rounds, the loop fills it
   with groups it dropped (in the order they were dropped), so that every trained batch has
   the same size; such groups get zero advantage from group-relative estimators.
4. The loop reports per step how many groups were filtered, how many extra rounds ran,
   how many extra prompts were sampled and how many dropped groups filled the batch (e.g.
   ``dynamic_sampling/filtered_groups``, ``.../extra_rounds``, ``.../extra_prompts``,
   ``.../filled_groups``).

The base class keeps every group and allows no extra round, so an algorithm that does not
override them never changes the loop's behaviour.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .component import Component


@dataclass
class AdvantageInput:
    """Everything an estimator may use; optional tensors are ``None`` when not computed.

    ``rewards``: ``[B]`` float32 outcome reward per sample. ``action_mask``: ``[B, T]`` bool,
    True on response tokens. ``old_log_probs``/``ref_log_probs``/``values``: ``[B, T]``
    float32 (behaviour policy, reference policy, critic). ``max_new_tokens``: the engine's
    maximum response length in tokens (``engine.max_new_tokens``), for estimators that
    shape rewards by length (DAPO's overlong shaping); ``None`` when the caller does not
    know it.
    """

    rewards: torch.Tensor
    action_mask: torch.Tensor
    group_size: int
    old_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    max_new_tokens: int | None = None


@dataclass
class AdvantageOutput:
    """``advantages``: ``[B, T]`` float32, zero outside ``action_mask``. ``returns``:
    ``[B, T]`` critic targets (only estimators with a critic). ``metrics``: scalars to log."""

    advantages: torch.Tensor
    returns: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LossScale:
    """Sizes of the whole optimizer batch, summed over micro-batches and ranks.

    Losses divide by these (never by micro-batch sizes) so that the gradient is identical
    with 1 micro-batch, with N micro-batches of accumulation, and on N ranks. Strategies
    average gradients over ranks, so a loss is also multiplied by ``world_size``.
    """

    num_tokens: int
    num_sequences: int
    world_size: int = 1


@dataclass
class PolicyLossInput:
    """One micro-batch. ``log_probs``: ``[B, T]`` float32 with gradients (current policy).
    ``old_log_probs``: behaviour log-probs. ``advantages``: from ``compute_advantages``.
    ``action_mask``: ``[B, T]`` bool. ``entropy``: ``[B, T]`` when the actor computed it
    (with gradients, for an entropy bonus). ``max_new_tokens``: the engine's maximum
    response length in tokens, for losses normalised by it (Dr.GRPO); ``None`` when
    unknown."""

    log_probs: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    action_mask: torch.Tensor
    scale: LossScale
    ref_log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    max_new_tokens: int | None = None


@dataclass
class PolicyLossOutput:
    """``loss``: scalar with gradients, this micro-batch's share of the batch loss (see
    ``LossScale``). ``metrics``: detached scalars (``clip_fraction``, ``approx_kl`` ...),
    each already a per-micro-batch mean."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Algorithm(Component):
    """RL algorithm: turns rewards into advantages and log-probs into a loss."""

    kind: ClassVar[str] = "algorithm"
    #: Group estimators (GRPO, RLOO ...) need ``n_samples_per_prompt >= 2``; the
    #: configuration loader refuses smaller values.
    requires_groups: ClassVar[bool] = False

    def needs_reference(self) -> bool:
        """Whether the loop must compute reference-policy log-probs (KL on)."""
        return False

    def needs_critic(self) -> bool:
        """Whether the loop must compute critic values (PPO with GAE)."""
        return False

    def filter_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[B // G]`` bool: True for each group of one rollout round to train on.

        ``rewards``: ``[B]`` outcome rewards of the round, groups of ``group_size``
        contiguous samples. The base class keeps every group; see the module docstring for
        what the loop does with dropped groups.
        """
        if rewards.dim() != 1 or group_size < 1 or rewards.shape[0] % group_size != 0:
            raise ValueError(
                f"filter_groups needs rewards [B] with B a multiple of group_size; got shape "
                f"{tuple(rewards.shape)} and group_size {group_size!r}"
            )
        return torch.ones(rewards.shape[0] // group_size, dtype=torch.bool, device=rewards.device)

    @property
    def max_resample_rounds(self) -> int:
        """How many extra rollout rounds per step the loop may run to replace groups that
        ``filter_groups`` dropped (0: never resample)."""
        return 0

    @abstractmethod
    def compute_advantages(self, batch: AdvantageInput) -> AdvantageOutput:
        """Advantages for a whole rollout batch (no gradients)."""

    @abstractmethod
    def policy_loss(self, batch: PolicyLossInput) -> PolicyLossOutput:
        """The policy loss of one micro-batch."""
