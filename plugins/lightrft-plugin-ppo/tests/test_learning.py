"""PPO with a critic raises the mean reward of a real tiny model on an easy task.

The test drives the algorithm and the core's critic (``lightrft_core/trainer/critic.py``)
with a short hand-written loop that makes the calls the core's loop makes
(``lightrft_core/interfaces/algorithm.py``, "A critic"): rollout with the ``hf`` engine ->
old log-probs -> old values -> GAE advantages and returns -> micro-batches of policy loss and
value loss -> one optimizer step each. Task: the reward is the fraction of lower-case ASCII
letters in a 4-token response (about 0.1 for the random model, 1 at best).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lightrft_core.actors.language import ActorLanguage
from lightrft_core.config.schema import TrainerConfig
from lightrft_core.engines.hf import HFEngine
from lightrft_core.interfaces import AdvantageInput, LossScale, PolicyLossInput, SamplingParams
from lightrft_core.strategies.local import LocalStrategy
from lightrft_core.trainer.critic import build_critic
from lightrft_core.trainer.experience import build_rollout
from lightrft_plugin_ppo.ppo import PPO

STEPS = 10
PROMPTS_PER_STEP, SAMPLES, NEW_TOKENS, MICRO_BATCH = 4, 4, 4, 8
LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")


@pytest.mark.parametrize("critic_kind", ["separate", "shared"])
def test_ppo_with_a_critic_raises_the_mean_reward(
    fast_tiny_model_dir: Path, strategy: LocalStrategy, critic_kind: str
) -> None:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(fast_tiny_model_dir)
    actor = ActorLanguage(ActorLanguage.Config(path=str(fast_tiny_model_dir)))
    optimizer = strategy.create_optimizer(actor, lr=2e-2)
    actor, optimizer, _ = strategy.prepare(actor, optimizer)
    algo = PPO(
        PPO.Config(
            lam=0.95,
            critic=critic_kind,  # type: ignore[arg-type]
            critic_warmup_steps=1,
        )
    )
    critic = build_critic(
        algo,
        strategy,
        actor,
        trainer=TrainerConfig(critic_learning_rate=1e-2),
        total_steps=STEPS,
        actor_path=str(fast_tiny_model_dir),
    )
    assert critic is not None
    engine = HFEngine()
    engine.setup(model=actor.model, tokenizer=tokenizer)
    prompts = [tokenizer.encode(f"say a{i}:") for i in range(16)]

    rewards_per_step = []
    for step in range(1, STEPS + 1):
        batch = [prompts[(step * PROMPTS_PER_STEP + j) % 16] for j in range(PROMPTS_PER_STEP)]
        params = SamplingParams(n=SAMPLES, max_new_tokens=NEW_TOKENS, seed=step)
        outputs = engine.generate(batch, params)
        texts = [tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outputs]
        rewards = torch.tensor([sum(c in LOWER for c in t) / max(1, len(t)) for t in texts])
        rewards_per_step.append(rewards.mean().item())
        rollout = build_rollout(
            batch, outputs, rewards, group_size=SAMPLES, pad_id=tokenizer.pad_token_id
        )
        sequences, attention_mask = rollout.sequences, rollout.attention_mask
        action_mask = rollout.action_mask

        with torch.no_grad():
            old_log_probs = actor(sequences, attention_mask).log_probs * action_mask
        values = critic.values(rollout, micro_batch_size=MICRO_BATCH)
        out = algo.compute_advantages(
            AdvantageInput(
                rewards=rewards,
                action_mask=action_mask,
                group_size=SAMPLES,
                old_log_probs=old_log_probs,
                values=values,
            )
        )
        assert out.returns is not None
        rollout.values, rollout.returns = values, out.returns
        scale = LossScale(int(action_mask.sum()), len(rewards))
        train_policy = algo.updates_policy(step)
        chunks = torch.randperm(len(rewards)).split(MICRO_BATCH)
        for index, rows in enumerate(chunks):
            if train_policy:
                log_probs = actor(sequences[rows], attention_mask[rows]).log_probs
                loss = algo.policy_loss(
                    PolicyLossInput(
                        log_probs=log_probs,
                        old_log_probs=old_log_probs[rows],
                        advantages=out.advantages[rows],
                        action_mask=action_mask[rows],
                        scale=scale,
                    )
                ).loss
                strategy.backward(loss, actor)
            critic.train_micro_batch(
                rollout.select(rows), scale, step=step, sync_gradients=index == len(chunks) - 1
            )
        if train_policy:
            strategy.optimizer_step(actor, optimizer, max_grad_norm=1.0)
        else:  # warm-up: the policy must not have moved or collected gradient
            assert all(p.grad is None for p in actor.parameters())
        critic.optimizer_step()

    first, last = sum(rewards_per_step[:4]) / 4, sum(rewards_per_step[-4:]) / 4
    assert last > first + 0.3, rewards_per_step
    # the critic, zero at the start, has learned the level of the returns
    assert out.metrics["value_mean"] > 0.5 * out.metrics["return_mean"] > 0.1, out.metrics
