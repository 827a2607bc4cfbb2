"""The critic sees what the policy sees: with image prompts its trunk gets the actor's trunk
inputs (the images and the model's 3-D positions), for old values and for training, in the
separate and the shared layout; and PPO trains on image rows through the loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightrft_core.config import load_config
from lightrft_core.config.schema import TrainerConfig
from lightrft_core.interfaces import (
    AdvantageOutput,
    Algorithm,
    CriticSpec,
    LossScale,
    PolicyLossOutput,
    ValueLossInput,
    ValueLossOutput,
)
from lightrft_core.interfaces.multimodal import MultiModalInputs
from lightrft_core.plugins import PluginManager
from lightrft_core.strategies.local import LocalStrategy
from lightrft_core.trainer.critic import build_critic
from lightrft_core.trainer.experience import RolloutBatch
from lightrft_core.trainer.rl import RLTrainer

pytest.importorskip("lightrft_plugin_qwen_vl")

from lightrft_plugin_qwen_vl.actor import QwenVLActor
from lightrft_plugin_qwen_vl.testing import VLRow, make_vl_batch


class _Regression(Algorithm):
    """Needs a critic of ``spec``; value loss ``Σ 0.5·(V − G)² / num_tokens``."""

    name = "regression"

    def __init__(self, spec: CriticSpec) -> None:
        super().__init__()
        self.spec = spec

    def needs_critic(self) -> bool:
        return True

    def critic_spec(self) -> CriticSpec:
        return self.spec

    def compute_advantages(self, batch):  # type: ignore[no-untyped-def]
        return AdvantageOutput(advantages=torch.zeros_like(batch.action_mask, dtype=torch.float))

    def policy_loss(self, batch):  # type: ignore[no-untyped-def]
        return PolicyLossOutput(loss=batch.log_probs.sum())

    def value_loss(self, batch: ValueLossInput) -> ValueLossOutput:
        per_token = 0.5 * (batch.values - batch.returns).square()
        loss = torch.where(batch.action_mask.bool(), per_token, 0.0).sum() / batch.scale.num_tokens
        return ValueLossOutput(loss=loss)


def _rollout(model_dir: Path) -> RolloutBatch:
    """Two rows with the same tokens and different pictures, and a text-only row."""
    batch = make_vl_batch(model_dir, [VLRow(1, 4), VLRow(1, 4), VLRow(0, 4)])
    sequences = batch.sequences.clone()
    sequences[1] = sequences[0]  # same tokens (the processor expands one image the same way)
    other = batch.modal[0]
    assert other is not None
    flipped = MultiModalInputs(images=other.images, tensors=dict(other.tensors))
    flipped.tensors["pixel_values"] = -other.tensors["pixel_values"]  # another picture
    attention_mask = batch.attention_mask.clone()
    attention_mask[1] = attention_mask[0]
    action_mask = attention_mask[:, 1:].bool()
    return RolloutBatch(
        sequences=sequences,
        attention_mask=attention_mask,
        action_mask=action_mask,
        rewards=torch.zeros(3),
        engine_log_probs=torch.zeros(action_mask.shape),
        group_size=1,
        multimodal=[batch.modal[0], flipped, None],
    )


@pytest.mark.parametrize("layout", ["separate", "shared"])
def test_the_critic_sees_the_pictures(tiny_qwen_vl_dir: Path, layout: str) -> None:
    strategy = LocalStrategy(LocalStrategy.Config(device="cpu"))
    strategy.setup_distributed()
    actor = QwenVLActor(QwenVLActor.Config(path=str(tiny_qwen_vl_dir)))
    spec = CriticSpec(layout=layout, head_init_std=0.05)  # type: ignore[arg-type]
    critic = build_critic(
        _Regression(spec),
        strategy,
        actor,
        trainer=TrainerConfig(critic_learning_rate=1e-3),
        total_steps=10,
        actor_path=str(tiny_qwen_vl_dir),
    )
    assert critic is not None
    rollout = _rollout(tiny_qwen_vl_dir)
    values = critic.values(rollout, micro_batch_size=2)  # [3, T-1]
    mask = rollout.action_mask
    assert values[mask].abs().sum() > 0
    # the same tokens with another picture: other values (the trunk read the images)
    assert not torch.allclose(values[0][mask[0]], values[1][mask[1]])
    # values of a row do not depend on its micro-batch neighbours
    alone = critic.values(rollout.select([1]), micro_batch_size=1)
    width = alone.shape[1]
    assert torch.allclose(alone[0], values[1, :width], atol=1e-5)
    # training reads the pictures too: one step moves the values towards the returns
    rollout.values, rollout.returns = values, torch.ones_like(values) * mask
    scale = LossScale(int(mask.sum()), len(rollout))
    critic.train_micro_batch(rollout, scale, step=1, sync_gradients=True)
    critic.optimizer_step()
    after = critic.values(rollout, micro_batch_size=3)
    error = lambda v: ((v - 1.0).square() * mask).sum()  # noqa: E731
    assert error(after) < error(values)


def test_ppo_trains_on_image_rows(tiny_qwen_vl_dir: Path, tmp_path: Path) -> None:
    import lightrft_plugin_ppo.plugin
    import lightrft_plugin_qwen_vl.plugin

    from .test_multimodal_loop import _RewardPlugin, overrides, write_image_prompts

    manager = PluginManager(autoload=False)
    manager.register(lightrft_plugin_ppo.plugin, name="ppo")
    manager.register(lightrft_plugin_qwen_vl.plugin, name="qwen_vl")
    manager.register(_RewardPlugin(), name="code_sum")
    prompts = write_image_prompts(tmp_path)
    cfg = load_config(
        None,
        overrides(tiny_qwen_vl_dir, prompts, tmp_path / "run", "algorithm.name=ppo"),
        manager=manager,
    )
    result = RLTrainer(cfg, manager).train()
    last = result.history[-1]
    assert "critic/explained_variance" in last and "critic/grad_norm" in last
    assert result.final_critic is not None and result.final_critic.is_dir()
