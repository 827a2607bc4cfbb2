"""``RuleReward``: a reward computed by a plain Python function, one sample at a time."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from ..interfaces import RewardInput, RewardModel, RewardOutput


class RuleReward(RewardModel):
    """Base of rule rewards: implement ``score_one``; ``score`` loops over the batch and
    logs the rewards as the sub-score named after the reward."""

    @abstractmethod
    def score_one(self, prompt: str, response: str, label: Any, metadata: dict[str, Any]) -> float:
        """The reward of one sample."""

    def score(self, batch: RewardInput) -> RewardOutput:
        values = [
            float(self.score_one(prompt, response, label, metadata))
            for prompt, response, label, metadata in zip(
                batch.prompts, batch.responses, batch.labels, batch.metadata, strict=True
            )
        ]
        rewards = torch.tensor(values, dtype=torch.float32)
        return RewardOutput(rewards=rewards, sub_scores={self.name: rewards.clone()})


def labels_of(label: Any) -> list[Any]:
    """The accepted answers: a list/tuple label means any of its items is right."""
    if label is None:
        return []
    return list(label) if isinstance(label, (list, tuple)) else [label]
