"""The core's critic contract (``lightrft_core/interfaces/algorithm.py``, "A critic"): the
base ``Algorithm`` asks for no critic and always updates the policy; ``Critic`` is abstract."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightrft_core.interfaces import AdvantageOutput, Algorithm, LossScale, PolicyLossOutput
from lightrft_core.interfaces.algorithm import Critic, CriticBatch
from lightrft_core.testing import FakeStrategy


class _NoCritic(Algorithm):
    name = "no_critic"

    def compute_advantages(self, batch):  # type: ignore[no-untyped-def]
        return AdvantageOutput(advantages=torch.zeros_like(batch.action_mask, dtype=torch.float))

    def policy_loss(self, batch):  # type: ignore[no-untyped-def]
        return PolicyLossOutput(loss=batch.log_probs.sum())


def test_the_base_algorithm_builds_no_critic_and_always_updates_the_policy() -> None:
    algo = _NoCritic()
    assert not algo.needs_critic()
    assert algo.build_critic(None, FakeStrategy(), torch.nn.Linear(1, 1)) is None
    assert all(algo.updates_policy(step) for step in (1, 2, 100))


def test_critic_is_an_abstract_interface() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Critic()  # type: ignore[abstract]
    assert set(Critic.__abstractmethods__) == {
        "compute_values",
        "rollout_metrics",
        "train_micro_batch",
        "optimizer_step",
        "save",
        "load",
        "export_hf",
    }


def test_critic_batch_carries_the_micro_batch_and_the_loss_scale() -> None:
    names = [f.name for f in dataclasses.fields(CriticBatch)]
    assert names == [
        "sequences",
        "attention_mask",
        "old_values",
        "returns",
        "action_mask",
        "scale",
    ]
    batch = CriticBatch(*(torch.zeros(1, 2) for _ in range(5)), scale=LossScale(1, 1))
    assert batch.scale.num_tokens == 1
