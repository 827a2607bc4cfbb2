"""The core's critic as the loop drives it (``lightrft_core/trainer/critic.py``), with the
real local strategy and a tiny model: separate and shared layouts, warm-up,
micro-batching, the schedule, checkpoints and export. The algorithm here is a plain value
regression, ``0.5·(V − G)²`` per token over the optimizer batch's tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightrft_core.actors.language import ActorLanguage
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
from lightrft_core.models.critic import CriticModel, ValueHead, is_critic_folder
from lightrft_core.strategies.local import LocalStrategy
from lightrft_core.trainer.critic import CRITIC_DIR, LoopCritic, build_critic
from lightrft_core.trainer.experience import RolloutBatch


class _ValueRegression(Algorithm):
    """Needs a critic of ``spec``; warm-up of ``warmup`` steps; value loss
    ``Σ 0.5·(V − G)² / num_tokens``."""

    name = "value_regression"

    def __init__(self, spec: CriticSpec | None = None, warmup: int = 0) -> None:
        super().__init__()
        self.spec = spec or CriticSpec()
        self.warmup = warmup

    def needs_critic(self) -> bool:
        return True

    def critic_spec(self) -> CriticSpec:
        return self.spec

    def updates_policy(self, step: int) -> bool:
        return step > self.warmup

    def compute_advantages(self, batch):  # type: ignore[no-untyped-def]
        return AdvantageOutput(advantages=torch.zeros_like(batch.action_mask, dtype=torch.float))

    def policy_loss(self, batch):  # type: ignore[no-untyped-def]
        return PolicyLossOutput(loss=batch.log_probs.sum())

    def value_loss(self, batch: ValueLossInput) -> ValueLossOutput:
        mask = batch.action_mask.bool()
        per_token = 0.5 * (batch.values - batch.returns).square()
        loss = torch.where(mask, per_token, 0.0).sum() / batch.scale.num_tokens
        mean = per_token.detach()[mask].mean()
        return ValueLossOutput(loss=loss, metrics={"value_loss": mean})


@pytest.fixture
def strategy() -> LocalStrategy:
    s = LocalStrategy(LocalStrategy.Config(device="cpu"))
    s.setup_distributed()
    return s


def _rollout(seed: int = 0) -> RolloutBatch:
    """8 right-padded rows of 10 tokens: prompt of 3, responses of 4 to 7 tokens; returns in
    [0, 1) on the response tokens; old values 0."""
    g = torch.Generator().manual_seed(seed)
    sequences = torch.randint(0, 256, (8, 10), generator=g)
    attention_mask = torch.ones_like(sequences)
    action_mask = torch.zeros(8, 9, dtype=torch.bool)
    for row in range(8):
        length = 3 + 4 + row % 4
        attention_mask[row, length:] = 0
        action_mask[row, 2 : length - 1] = True
    return RolloutBatch(
        sequences=sequences,
        attention_mask=attention_mask,
        action_mask=action_mask,
        rewards=torch.zeros(8),
        engine_log_probs=torch.zeros(8, 9),
        group_size=1,
        values=torch.zeros(8, 9),
        returns=torch.where(action_mask, torch.rand(8, 9, generator=g), 0.0),
    )


def _scale(rollout: RolloutBatch) -> LossScale:
    return LossScale(int(rollout.action_mask.sum()), len(rollout))


def _critic(
    model_dir: Path,
    strategy: LocalStrategy,
    spec: CriticSpec | None = None,
    *,
    warmup: int = 0,
    actor: ActorLanguage | None = None,
    **trainer: object,
) -> LoopCritic:
    actor = actor or ActorLanguage(ActorLanguage.Config(path=str(model_dir)))
    critic = build_critic(
        _ValueRegression(spec, warmup),
        strategy,
        actor,
        trainer=TrainerConfig(**{"critic_learning_rate": 1e-2, **trainer}),  # type: ignore[arg-type]
        total_steps=100,
        actor_path=str(model_dir),
    )
    assert critic is not None
    return critic


def test_no_critic_unless_the_algorithm_needs_one(
    fast_tiny_model_dir: Path, strategy: LocalStrategy
) -> None:
    class NoValueLoss(_ValueRegression):
        value_loss = Algorithm.value_loss  # type: ignore[assignment]

    actor = ActorLanguage(ActorLanguage.Config(path=str(fast_tiny_model_dir)))
    options = {"trainer": TrainerConfig(), "total_steps": 1, "actor_path": None}
    no_critic = _ValueRegression()
    no_critic.needs_critic = lambda: False  # type: ignore[method-assign]
    assert build_critic(no_critic, strategy, actor, **options) is None  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="does not define value_loss"):
        build_critic(NoValueLoss(), strategy, actor, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no model to start it from"):
        build_critic(_ValueRegression(), strategy, actor, **options)  # type: ignore[arg-type]


def test_separate_critic_learns_the_returns(
    fast_tiny_model_dir: Path, strategy: LocalStrategy
) -> None:
    critic = _critic(fast_tiny_model_dir, strategy)
    assert isinstance(critic.trained, CriticModel) and not critic.shared
    x = _rollout()
    assert (critic.values(x, micro_batch_size=3) == 0).all()  # zero-initialised head
    losses = []
    for step in range(1, 21):
        x.values = critic.values(x, micro_batch_size=8)
        metrics = critic.train_micro_batch(x, _scale(x), step=step, sync_gradients=True)
        losses.append(metrics["critic/value_loss"])
        assert critic.optimizer_step() >= 0.0
    assert set(metrics) == {"critic/value_loss"}
    assert losses[-1] < 0.3 * losses[0], losses
    x.values = critic.values(x, micro_batch_size=8)
    ev = critic.rollout_metrics(x)
    assert ev["critic/explained_variance"] > 0.2
    assert set(ev) == {"critic/explained_variance", "critic/value_mean", "critic/return_mean"}


def test_values_do_not_depend_on_the_micro_batch_size(
    fast_tiny_model_dir: Path, strategy: LocalStrategy
) -> None:
    critic = _critic(fast_tiny_model_dir, strategy, CriticSpec(head_init_std=0.5))
    x = _rollout()
    whole = critic.values(x, micro_batch_size=8)
    split = critic.values(x, micro_batch_size=3)
    torch.testing.assert_close(whole, split, atol=1e-5, rtol=1e-5)
    assert whole.shape == (8, 9)
    assert whole[x.action_mask].abs().min() > 0
    assert (whole[~x.action_mask] == 0).all()
    assert critic.value_model.training  # the train flag is restored


def test_critic_gradient_is_the_same_with_1_and_4_micro_batches(
    fast_tiny_model_dir: Path, strategy: LocalStrategy
) -> None:
    critic = _critic(fast_tiny_model_dir, strategy, CriticSpec(head_init_std=0.5))
    x = _rollout()
    grads = []
    for parts in (1, 4):
        chunks = torch.arange(8).chunk(parts)
        for index, rows in enumerate(chunks):
            critic.train_micro_batch(
                x.select(rows), _scale(x), step=1, sync_gradients=index == len(chunks) - 1
            )
        grads.append([p.grad.clone() for p in critic.trained.parameters() if p.grad is not None])
        critic.optimizer.zero_grad(set_to_none=True)
    assert len(grads[0]) == len(grads[1]) > 2
    for whole, split in zip(*grads, strict=True):
        torch.testing.assert_close(whole, split, atol=1e-6, rtol=1e-4)


def test_shared_critic_uses_the_actor_trunk_and_respects_the_warmup(
    fast_tiny_model_dir: Path, strategy: LocalStrategy
) -> None:
    actor = ActorLanguage(ActorLanguage.Config(path=str(fast_tiny_model_dir)))
    critic = _critic(fast_tiny_model_dir, strategy, CriticSpec("shared"), warmup=1, actor=actor)
    trunk = actor.hf_model().get_decoder()
    assert isinstance(critic.trained, ValueHead)
    assert critic.value_model.trunk is trunk
    optimized = {id(p) for group in critic.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in critic.trained.parameters()}  # the head only
    x = _rollout()
    actor.train()
    critic.values(x, micro_batch_size=4)
    assert actor.training and trunk.training  # the actor's mode is kept

    # step 1 is warm-up: the value loss must not reach the actor's trunk
    critic.train_micro_batch(x, _scale(x), step=1, sync_gradients=True)
    assert critic.trained.linear.weight.grad is not None
    assert all(p.grad is None for p in actor.parameters())
    critic.optimizer_step()

    # step 2: the trunk gets the value loss's gradient (the actor's optimizer applies it)
    critic.train_micro_batch(x, _scale(x), step=2, sync_gradients=True)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())


def test_the_schedule_is_the_trainers_with_the_critic_peak_rate(
    fast_tiny_model_dir: Path, strategy: LocalStrategy
) -> None:
    critic = _critic(
        fast_tiny_model_dir,
        strategy,
        critic_learning_rate=3e-3,
        lr_scheduler="cosine",
        weight_decay=0.1,
    )
    assert critic.scheduler.get_last_lr()[0] == pytest.approx(3e-3)
    assert critic.optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.1)
    for _ in range(100):  # total_steps
        critic.optimizer.step()
        critic.scheduler.step()
    assert critic.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_save_load_and_export(
    fast_tiny_model_dir: Path, strategy: LocalStrategy, tmp_path: Path
) -> None:
    spec = CriticSpec(head_init_std=0.1)
    critic = _critic(fast_tiny_model_dir, strategy, spec)
    x = _rollout()
    critic.train_micro_batch(x, _scale(x), step=1, sync_gradients=True)
    critic.optimizer_step()
    critic.save(tmp_path / "step")
    assert (tmp_path / "step" / CRITIC_DIR).is_dir()
    trained = critic.values(x, micro_batch_size=8)

    fresh = _critic(fast_tiny_model_dir, strategy, spec)
    fresh.load(tmp_path / "step")
    torch.testing.assert_close(fresh.values(x, micro_batch_size=8), trained, rtol=0, atol=0)
    assert fresh.optimizer.state_dict()["state"], "the optimizer state must be restored"
    assert fresh.scheduler.state_dict() == critic.scheduler.state_dict()
    with pytest.raises(FileNotFoundError, match="holds no critic"):
        fresh.load(tmp_path / "elsewhere")

    exported = critic.export(tmp_path / "run")
    assert exported == tmp_path / "run" / "final_critic" and is_critic_folder(exported)
    model = CriticModel.from_pretrained(exported).eval()
    with torch.no_grad():
        values = model(x.sequences, x.attention_mask) * x.action_mask
    torch.testing.assert_close(values, trained, atol=1e-5, rtol=1e-5)

    # a separate critic can start from the exported folder (the spec's path)
    again = _critic(fast_tiny_model_dir, strategy, CriticSpec(path=str(exported)))
    torch.testing.assert_close(again.values(x, 8), trained, atol=1e-5, rtol=1e-5)

    shared = _critic(fast_tiny_model_dir, strategy, CriticSpec("shared"))
    with pytest.raises(ValueError, match="'shared'"):
        shared.load(tmp_path / "step")
    head = shared.export(tmp_path / "shared-run")
    assert ValueHead.from_pretrained(head).hidden_size == 64
    assert not (head / "config.json").exists()  # the trunk is the exported actor
