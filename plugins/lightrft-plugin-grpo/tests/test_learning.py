"""Each algorithm of the plugin, run briefly in the core's RL loop on an easy task, raises
the mean reward (a short seeded run on the tiny model, as ``tests/test_trainer.py``)."""

from __future__ import annotations

import pytest

import lightrft_plugin_grpo.plugin
from lightrft_core.config import load_config
from lightrft_core.plugins import PluginManager
from lightrft_core.testing.training import LetterPlugin
from lightrft_core.trainer.rl import RLTrainer


@pytest.fixture
def manager() -> PluginManager:
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(LetterPlugin(), name="letter")
    return pm


STEPS = 12

# Options per algorithm. The length constants (Dr.GRPO's norm, DAPO's L_max) come from
# engine.max_new_tokens through the loop; DAPO runs with dynamic sampling (the loop drops
# all-equal groups and draws more prompts; reward/mean covers every generated sample).
ALGORITHMS = {
    "dr_grpo": [],
    "dapo": ["algorithm.overlong_buffer=2"],
    "gspo": [],
    "gspo_token": [],
    "gmpo": [],
}

# A metric each algorithm logs, showing that the algorithm asked for is the one that ran.
SIGNATURE_METRICS = {
    "dr_grpo": "clip_fraction",
    "dapo": "dynamic_sampling/filtered_groups",
    "gspo": "clip_fraction",
    "gspo_token": "clip_fraction",
    "gmpo": "clip_fraction",
}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_reward_rises_on_an_easy_task(
    algorithm, manager, tiny_model_dir, letter_prompts, tmp_path
) -> None:
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path / 'run'}",
            "run.seed=3",
            f"data.train_path={letter_prompts}",
            "data.apply_chat_template=false",
            f"model.path={tiny_model_dir}",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=6",
            "reward.name=letter",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=8",
            "trainer.learning_rate=3e-3",
            "trainer.max_grad_norm=1.0",
            f"trainer.max_steps={STEPS}",
            "logging.tensorboard=false",
            f"algorithm.name={algorithm}",
            *ALGORITHMS[algorithm],
        ],
        manager=manager,
    )
    trainer = RLTrainer(cfg, manager)
    assert trainer.c.algorithm.name == algorithm
    history = trainer.train().history
    assert SIGNATURE_METRICS[algorithm] in history[0]
    rewards = [r["reward/mean"] for r in history]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.2, rewards
