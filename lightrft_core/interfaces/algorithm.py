"""``Algorithm``: an advantage estimator plus a policy loss. It never owns the loop.

Shapes: ``B`` samples of ``T`` per-token positions aligned as in ``actor.py`` (``T`` is the
sequence length minus one). Samples of one prompt are contiguous: rows
``[g * G, (g + 1) * G)`` form group ``g`` with ``G = group_size``.

The training loop calls ``compute_advantages`` once per rollout batch (no gradients) and
``policy_loss`` once per micro-batch (with gradients through ``log_probs``).
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
    float32 (behaviour policy, reference policy, critic).
    """

    rewards: torch.Tensor
    action_mask: torch.Tensor
    group_size: int
    old_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None
    values: torch.Tensor | None = None


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
    ``action_mask``: ``[B, T]`` bool. ``entropy``: ``[B, T]`` when the actor computed it."""

    log_probs: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    action_mask: torch.Tensor
    scale: LossScale
    ref_log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


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

    @abstractmethod
    def compute_advantages(self, batch: AdvantageInput) -> AdvantageOutput:
        """Advantages for a whole rollout batch (no gradients)."""

    @abstractmethod
    def policy_loss(self, batch: PolicyLossInput) -> PolicyLossOutput:
        """The policy loss of one micro-batch."""
