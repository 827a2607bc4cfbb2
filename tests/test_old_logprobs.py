"""Old (behaviour) log-probs: no separate pass when the rollout is trained in one optimizer
step (``trainer.old_logprobs=auto``), the pass when it is needed, the engine's log-probs on
request, and the engine/trainer mismatch metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core.config import load_config
from lightrft_core.plugins import PluginManager
from lightrft_core.testing.training import LetterPlugin, write_letter_prompts
from lightrft_core.trainer.experience import RolloutBatch, old_log_probs_source
from lightrft_core.trainer.rl import RLTrainer


@pytest.mark.parametrize(
    ("mode", "updates", "updates_policy", "in_advantages", "expected"),
    [
        ("auto", 1, True, False, "train"),
        ("auto", 2, True, False, "pass"),  # two optimizer steps (or epochs) per rollout
        ("auto", 1, False, False, "pass"),  # critic warm-up: no training forward
        ("auto", 1, True, True, "pass"),  # a KL penalty in the reward reads them first
        ("recompute", 1, True, False, "pass"),
        ("engine", 2, True, True, "engine"),
    ],
)
def test_source_of_the_old_log_probs(mode, updates, updates_policy, in_advantages, expected):
    assert (
        old_log_probs_source(
            mode,
            updates_per_step=updates,
            updates_policy=updates_policy,
            advantages_use_them=in_advantages,
        )
        == expected
    )


def test_only_a_kl_in_the_reward_reads_old_log_probs_before_training() -> None:
    from lightrft_plugin_grpo.grpo import GRPO

    assert not GRPO().advantages_use_old_log_probs()
    in_loss = GRPO(GRPO.Config(kl_coef=0.1, kl_mode="loss"))
    assert in_loss.needs_reference() and not in_loss.advantages_use_old_log_probs()
    assert GRPO(GRPO.Config(kl_coef=0.1, kl_mode="reward")).advantages_use_old_log_probs()


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(LetterPlugin(), name="letter")
    return pm


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_letter_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl")


class OneStep:
    """One RL step of a fresh trainer: its metrics, rollout, updated weights and how many
    separate old-log-prob passes ran."""

    def __init__(self, manager, model_dir, prompts, out, *extra: str) -> None:
        cfg = load_config(
            None,
            [
                f"run.output_dir={out}",
                "run.seed=5",
                f"data.train_path={prompts}",
                "data.apply_chat_template=false",
                f"model.path={model_dir}",
                "engine.n_samples_per_prompt=4",
                "engine.max_new_tokens=5",
                "reward.name=letter",
                "trainer.max_steps=1",
                "trainer.prompts_per_step=4",
                "trainer.micro_batch_size=4",  # 16 samples: 4 micro-batches
                "trainer.learning_rate=1e-2",
                "logging.tensorboard=false",
                *extra,
            ],
            manager=manager,
        )
        trainer = RLTrainer(cfg, manager)
        self.passes = 0
        self.rollout: RolloutBatch | None = None
        count, keep = trainer._log_probs, trainer._rollout_metrics

        def counted(actor: Any, rollout: RolloutBatch) -> torch.Tensor:
            if actor is trainer.actor:
                self.passes += 1
            return count(actor, rollout)

        def kept(collected: Any, rollout: RolloutBatch, advantages: Any) -> dict[str, float]:
            self.rollout = rollout
            return keep(collected, rollout, advantages)

        trainer._log_probs = counted  # type: ignore[method-assign]
        trainer._rollout_metrics = kept  # type: ignore[method-assign]
        self.metrics = trainer.step(1)
        self.weights = {k: v.detach().clone() for k, v in trainer.actor.state_dict().items()}


def test_one_optimizer_step_skips_the_pass_and_trains_the_same(
    manager, fast_tiny_model_dir, prompts, tmp_path
) -> None:
    skip = OneStep(manager, fast_tiny_model_dir, prompts, tmp_path / "a")
    forced = OneStep(
        manager, fast_tiny_model_dir, prompts, tmp_path / "b", "trainer.old_logprobs=recompute"
    )
    assert (skip.passes, forced.passes) == (0, 1)
    assert skip.rollout is not None and forced.rollout is not None
    torch.testing.assert_close(skip.rollout.sequences, forced.rollout.sequences, rtol=0, atol=0)
    # the training forward's log-probs are the pass's, micro-batch by micro-batch
    torch.testing.assert_close(
        skip.rollout.old_log_probs, forced.rollout.old_log_probs, rtol=0, atol=1e-6
    )
    for key in ("loss", "grad_norm", "clip_fraction"):
        assert skip.metrics[key] == pytest.approx(forced.metrics[key], rel=1e-6, abs=1e-7)
    for name, value in skip.weights.items():
        torch.testing.assert_close(value, forced.weights[name], rtol=0, atol=1e-6)
    # the hf engine shares the actor: its log-probs are compared with the trainer's in both
    assert skip.metrics["logprob_mismatch"] == pytest.approx(forced.metrics["logprob_mismatch"])
    assert 0.0 < skip.metrics["logprob_mismatch"] < 1e-4


def test_two_optimizer_steps_keep_the_pass(manager, fast_tiny_model_dir, prompts, tmp_path):
    run = OneStep(
        manager, fast_tiny_model_dir, prompts, tmp_path / "c", "trainer.optimizer_batch_size=8"
    )
    assert run.passes == 1
    assert run.rollout is not None and run.rollout.trainer_log_probs is run.rollout.old_log_probs
    assert "logprob_mismatch" in run.metrics


def test_engine_log_probs_as_old_ones(manager, fast_tiny_model_dir, prompts, tmp_path):
    run = OneStep(
        manager, fast_tiny_model_dir, prompts, tmp_path / "d", "trainer.old_logprobs=engine"
    )
    rollout = run.rollout
    assert run.passes == 0 and rollout is not None
    assert rollout.old_log_probs is rollout.engine_log_probs
    # the mismatch compares the engine with the training forward, not with itself
    assert rollout.trainer_log_probs is not None
    mask = rollout.action_mask
    expected = (rollout.trainer_log_probs - rollout.engine_log_probs).abs()[mask].mean()
    assert run.metrics["logprob_mismatch"] == pytest.approx(float(expected))
    assert 0.0 < run.metrics["logprob_mismatch"] < 1e-4
