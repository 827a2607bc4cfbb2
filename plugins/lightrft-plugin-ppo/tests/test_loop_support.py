"""``PPOCritic``: the critic as the loop drives it (core ``Critic`` contract), with the real
local strategy and the tiny model -- separate and shared layouts, warm-up, micro-batching,
checkpoints and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightrft_core.actors.language import ActorLanguage
from lightrft_core.config import load_config
from lightrft_core.interfaces import LossScale
from lightrft_core.interfaces.algorithm import Critic, CriticBatch
from lightrft_core.plugins import PluginManager
from lightrft_core.strategies.local import LocalStrategy
from lightrft_plugin_ppo.critic import CriticModel, ValueHead
from lightrft_plugin_ppo.loop_support import CriticSettings, PPOCritic, build_ppo_critic
from lightrft_plugin_ppo.ppo import PPO


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """8 right-padded rows of 10 tokens: prompt of 3, responses of 4 to 7 tokens."""
    g = torch.Generator().manual_seed(seed)
    sequences = torch.randint(0, 256, (8, 10), generator=g)
    attention_mask = torch.ones_like(sequences)
    action_mask = torch.zeros(8, 9, dtype=torch.bool)
    for row in range(8):
        length = 3 + 4 + row % 4
        attention_mask[row, length:] = 0
        action_mask[row, 2 : length - 1] = True
    returns = torch.where(action_mask, torch.rand(8, 9, generator=g), 0.0)
    return {
        "sequences": sequences,
        "attention_mask": attention_mask,
        "action_mask": action_mask,
        "returns": returns,
    }


def _critic_batch(x: dict[str, torch.Tensor], old_values: torch.Tensor, rows=None) -> CriticBatch:  # type: ignore[no-untyped-def]
    rows = slice(None) if rows is None else rows
    scale = LossScale(int(x["action_mask"].sum()), x["action_mask"].shape[0])
    return CriticBatch(
        sequences=x["sequences"][rows],
        attention_mask=x["attention_mask"][rows],
        old_values=old_values[rows],
        returns=x["returns"][rows],
        action_mask=x["action_mask"][rows],
        scale=scale,
    )


def _separate(tiny_model_dir: Path, strategy: LocalStrategy, **options: object) -> PPOCritic:
    algo = PPO(PPO.Config(critic_learning_rate=1e-2, **options))  # type: ignore[arg-type]
    actor = ActorLanguage(ActorLanguage.Config(path=str(tiny_model_dir)))
    settings = CriticSettings(model_path=str(tiny_model_dir), total_steps=100)
    return build_ppo_critic(algo, settings, strategy, actor)


def test_separate_critic_learns_the_returns(tiny_model_dir: Path, strategy: LocalStrategy) -> None:
    critic = _separate(tiny_model_dir, strategy)
    assert isinstance(critic, Critic)
    x = _batch()
    values = critic.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=3)
    assert values.shape == (8, 9)
    assert (values == 0).all()  # zero-initialised head
    losses = []
    for step in range(1, 21):
        old = critic.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=8)
        old = old * x["action_mask"]
        metrics = critic.train_micro_batch(_critic_batch(x, old), step=step)
        losses.append(metrics["critic/value_loss"])
        assert critic.optimizer_step() >= 0.0
    assert set(metrics) == {"critic/value_loss", "critic/value_clip_fraction", "critic/value_mean"}
    assert losses[-1] < 0.3 * losses[0], losses
    final = critic.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=8)
    ev = critic.rollout_metrics(final * x["action_mask"], x["returns"], x["action_mask"])
    assert ev["critic/explained_variance"] > 0.2
    assert set(ev) == {"critic/explained_variance", "critic/value_mean", "critic/return_mean"}


def test_compute_values_does_not_depend_on_the_micro_batch_size(
    tiny_model_dir: Path, strategy: LocalStrategy
) -> None:
    critic = _separate(tiny_model_dir, strategy, value_head_init_std=0.5)
    x = _batch()
    whole = critic.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=8)
    split = critic.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=3)
    torch.testing.assert_close(whole, split, atol=1e-5, rtol=1e-5)
    assert whole[x["action_mask"]].abs().min() > 0
    assert critic.value_model.training  # the train flag is restored


def test_critic_gradient_is_the_same_with_1_and_4_micro_batches(
    tiny_model_dir: Path, strategy: LocalStrategy
) -> None:
    critic = _separate(tiny_model_dir, strategy, value_head_init_std=0.5)
    x = _batch()
    old = critic.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=8)
    old = (old + 0.05) * x["action_mask"]  # the clip band matters on some tokens
    grads = []
    for parts in (1, 4):
        chunks = torch.arange(8).chunk(parts)
        for index, rows in enumerate(chunks):
            critic.train_micro_batch(
                _critic_batch(x, old, rows), step=1, sync_gradients=index == len(chunks) - 1
            )
        grads.append([p.grad.clone() for p in critic.trained.parameters() if p.grad is not None])
        critic.optimizer.zero_grad(set_to_none=True)
    assert len(grads[0]) == len(grads[1]) > 2
    for whole, split in zip(*grads, strict=True):
        torch.testing.assert_close(whole, split, atol=1e-6, rtol=1e-4)


def test_shared_critic_uses_the_actor_trunk_and_respects_the_warmup(
    tiny_model_dir: Path, strategy: LocalStrategy
) -> None:
    algo = PPO(PPO.Config(critic="shared", critic_warmup_steps=1, vf_coef=0.5))
    actor = ActorLanguage(ActorLanguage.Config(path=str(tiny_model_dir)))
    critic = build_ppo_critic(algo, CriticSettings(total_steps=10), strategy, actor)
    assert isinstance(critic.trained, ValueHead)
    assert critic.value_model.trunk is actor.base_model.get_decoder()
    optimized = {id(p) for group in critic.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in critic.trained.parameters()}  # the head only
    x = _batch()
    old = torch.zeros(8, 9)
    actor.train()
    critic.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=4)
    assert actor.training and actor.base_model.get_decoder().training  # actor's mode kept

    # step 1 is warm-up: the value loss must not reach the actor's trunk
    critic.train_micro_batch(_critic_batch(x, old), step=1)
    assert critic.trained.linear.weight.grad is not None
    assert all(p.grad is None for p in actor.parameters())
    critic.optimizer_step()

    # step 2: the trunk gets vf_coef times the value loss's gradient
    critic.train_micro_batch(_critic_batch(x, old), step=2)
    trunk_grads = [p.grad for p in actor.base_model.get_decoder().parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in trunk_grads)
    head_grad = critic.trained.linear.weight.grad.clone()
    critic.optimizer.zero_grad(set_to_none=True)
    # the unscaled loss gives exactly 1/vf_coef times the head's gradient
    values = critic.value_model(x["sequences"], x["attention_mask"])
    algo.value_loss(values, old, x["returns"], x["action_mask"], _critic_batch(x, old).scale)[
        0
    ].backward()
    torch.testing.assert_close(head_grad, 0.5 * critic.trained.linear.weight.grad)


def test_save_load_and_export(
    tiny_model_dir: Path, strategy: LocalStrategy, tmp_path: Path
) -> None:
    critic = _separate(tiny_model_dir, strategy, value_head_init_std=0.1)
    x = _batch()
    old = torch.zeros(8, 9)
    critic.train_micro_batch(_critic_batch(x, old), step=1)
    critic.optimizer_step()
    critic.save(tmp_path / "ckpt")
    trained = critic.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=8)

    fresh = _separate(tiny_model_dir, strategy, value_head_init_std=0.1)
    fresh.load(tmp_path / "ckpt")
    again = fresh.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=8)
    torch.testing.assert_close(again, trained)
    assert fresh.optimizer.state_dict()["state"], "the optimizer state must be restored"

    critic.export_hf(tmp_path / "export")
    exported = CriticModel.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        values = exported(x["sequences"], x["attention_mask"])
    torch.testing.assert_close(values, trained, atol=1e-5, rtol=1e-5)

    # a separate critic can start from the exported folder (algorithm.critic_path)
    resumed = _separate(tiny_model_dir, strategy, critic_path=str(tmp_path / "export"))
    from_path = resumed.compute_values(x["sequences"], x["attention_mask"], micro_batch_size=8)
    torch.testing.assert_close(from_path, trained, atol=1e-5, rtol=1e-5)

    shared = build_ppo_critic(
        PPO(PPO.Config(critic="shared")),
        CriticSettings(),
        strategy,
        ActorLanguage(ActorLanguage.Config(path=str(tiny_model_dir))),
    )
    with pytest.raises(ValueError, match="'shared' critic"):
        shared.load(tmp_path / "ckpt")
    shared.export_hf(tmp_path / "head")
    assert ValueHead.from_pretrained(tmp_path / "head").hidden_size == 64


def test_build_critic_from_a_run_config(tiny_model_dir: Path, strategy: LocalStrategy) -> None:
    import lightrft_plugin_ppo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_ppo.plugin, name="ppo")
    cfg = load_config(
        None,
        [
            "algorithm.name=ppo",
            f"model.path={tiny_model_dir}",
            "engine.n_samples_per_prompt=4",
            "trainer.prompts_per_step=8",
            "trainer.optimizer_batch_size=16",
            "trainer.epochs=2",
            "trainer.max_steps=5",
            "trainer.lr_scheduler=cosine",
        ],
        manager=pm,
    )
    settings = CriticSettings.from_run_config(cfg)
    # 32 samples per step in optimizer batches of 16, 2 epochs: 4 optimizer steps per RL step
    assert settings.total_steps == 5 * 4
    assert settings.model_path == str(tiny_model_dir)
    algo = PPO(cfg.algorithm.options)
    actor = ActorLanguage(cfg.model.options)
    critic = algo.build_critic(cfg, strategy, actor)
    assert isinstance(critic, PPOCritic) and not critic.shared
    # the critic's own peak rate, on the run's cosine schedule over its 20 optimizer steps
    assert critic.scheduler.get_last_lr()[0] == pytest.approx(1e-5)
    for _ in range(20):
        critic.optimizer.step()
        critic.scheduler.step()
    assert critic.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_a_separate_critic_needs_a_model_path(strategy: LocalStrategy) -> None:
    with pytest.raises(ValueError, match="critic_path"):
        build_ppo_critic(PPO(PPO.Config()), CriticSettings(), strategy, torch.nn.Linear(1, 1))
