"""The two parts of an algorithm: an ``AdvantageEstimator`` and a ``PolicyLoss``.

Each is a registrable component (kinds ``advantage`` and ``loss``) with a ``name`` and a
typed ``Config``, given the run's ``AlgorithmContext`` once through ``setup`` and called
with the same inputs as ``Algorithm.compute_advantages`` and ``Algorithm.policy_loss``.
A preset (``lightrft_core.algorithms.parts.preset``) makes a named ``Algorithm`` of one
estimator, one loss and default options; users may swap either part of a preset with
``algorithm.advantage`` and ``algorithm.loss``.

A part whose ``Config`` has the core's KL options (``kl_coef``, ``kl_estimator``,
``kl_mode``: ``lightrft_core.algorithms.clipped_loss.KLOptions``) shares them with the other
part of its algorithm: the estimator applies the KL with ``kl_mode: reward``, the loss with
``kl_mode: loss``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch

from .algorithm import (
    AdvantageInput,
    AdvantageOutput,
    AlgorithmContext,
    PolicyLossInput,
    PolicyLossOutput,
    keep_every_group,
)
from .component import Component


class AlgorithmPart(Component):
    """What estimators and losses share: the run's context and the KL questions."""

    def __init__(self, config: Any = None, *, label: str | None = None) -> None:
        super().__init__(config)
        #: The name errors use: the algorithm's when a preset built the part, else its own.
        self.label = label or self.name
        self.context = AlgorithmContext()

    def setup(self, context: AlgorithmContext) -> None:
        """Called once before the first step (by the algorithm the part belongs to)."""
        self.context = context

    def initial_kl_coef(self) -> float | None:
        """The configured KL coefficient β when the part has a KL option, else ``None``."""
        return None

    def needs_reference(self) -> bool:
        """Whether this part needs reference-policy log-probs (its KL term is on)."""
        return False


class AdvantageEstimator(AlgorithmPart):
    """Turns a rollout batch's rewards into per-token advantages (no gradients)."""

    kind: ClassVar[str] = "advantage"
    #: Group estimators need ``n_samples_per_prompt >= 2`` (see ``Algorithm``).
    requires_groups: ClassVar[bool] = False

    def filter_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[B // G]`` bool, the groups to train on (``Algorithm.filter_groups``); every
        group by default."""
        return keep_every_group(rewards, group_size)

    @property
    def max_resample_rounds(self) -> int:
        """Extra rollout rounds per step to replace dropped groups (0: never resample)."""
        return 0

    def uses_old_log_probs(self) -> bool:
        """Whether the estimator reads ``AdvantageInput.old_log_probs``
        (``Algorithm.advantages_use_old_log_probs``); by default when it needs the reference
        (its KL in the reward)."""
        return self.needs_reference()

    @abstractmethod
    def __call__(self, batch: AdvantageInput) -> AdvantageOutput:
        """Advantages for a whole rollout batch."""


class PolicyLoss(AlgorithmPart):
    """Turns one micro-batch's log-probs and advantages into its share of the batch loss."""

    kind: ClassVar[str] = "loss"

    @abstractmethod
    def __call__(self, batch: PolicyLossInput) -> PolicyLossOutput:
        """The policy loss of one micro-batch (see ``LossScale`` for its normalisation)."""
