"""``RewardModel``: scores sampled responses.

Called by the training loop once per rollout batch, after generation and before
advantages are computed. Kinds: rule/verifiable functions, scalar reward models,
generative judges, remote reward services.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .component import Component
from .multimodal import MultiModalInputs
from .strategy import StrategyBase


@dataclass(init=False)
class RewardInput:
    """One batch to score; all lists have the same length ``B``.

    ``prompts``/``responses`` are decoded text; ``labels`` the dataset's reference answer
    (``None`` when the dataset has none); ``metadata`` any other per-sample fields;
    ``multimodal`` each prompt's media (``None`` for a text-only prompt; its ``images`` are
    what a reward that reads images sees, the prompt holding one placeholder per image).
    ``labels``, ``metadata`` and ``multimodal`` left out are filled with ``None``, ``{}``
    and ``None`` per sample.
    """

    prompts: Sequence[str]
    responses: Sequence[str]
    labels: Sequence[Any]
    metadata: Sequence[dict[str, Any]]
    multimodal: Sequence[MultiModalInputs | None]

    def __init__(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        labels: Sequence[Any] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        multimodal: Sequence[MultiModalInputs | None] | None = None,
    ) -> None:
        n = len(prompts)
        if len(responses) != n:
            raise ValueError(f"{len(responses)} responses for {n} prompts")
        self.prompts = prompts
        self.responses = responses
        self.labels = [None] * n if labels is None else labels
        self.metadata = [{} for _ in range(n)] if metadata is None else metadata
        self.multimodal = [None] * n if multimodal is None else multimodal
        if len(self.labels) != n or len(self.metadata) != n or len(self.multimodal) != n:
            raise ValueError("labels, metadata and multimodal must have one entry per prompt")

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class RewardOutput:
    """``rewards``: ``[B]`` float32, one scalar per sample (finite).

    ``sub_scores``: named ``[B]`` float32 tensors logged as ``reward/<name>`` (e.g. the parts
    of a weighted combination, or ``accuracy``).

    ``texts``: named per-sample text, one string per sample (e.g. a judge's verdict as it
    wrote it), saved with the rollouts as ``text/<name>`` columns; not logged as metrics.
    """

    rewards: torch.Tensor
    sub_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)


class RewardModel(Component):
    """Turns (prompt, response, label) triples into scalar rewards."""

    kind: ClassVar[str] = "reward"
    #: Rule rewards compare with a reference answer: the data loader then requires
    #: ``data.label_key`` in every row instead of silently scoring a missing label as wrong.
    requires_label: ClassVar[bool] = False
    #: ``False`` for a reward that reads the prompt with a text-only model and would score
    #: a prompt with images as if it had none: the data loader then refuses image prompts.
    accepts_image_prompts: ClassVar[bool] = True

    @abstractmethod
    def score(self, batch: RewardInput) -> RewardOutput:
        """Score every sample of ``batch``; must return ``len(batch)`` rewards."""

    def place(self, strategy: StrategyBase) -> None:
        """Called once by the RL loop, on every rank, after the strategy is set up and before
        the first ``score``: a reward that holds a model lets ``strategy`` place it (shard it
        as an inference model, or keep it on the CPU between scorings). The default does
        nothing. A sharded model makes ``score`` collective: every rank scores as many
        batches."""
