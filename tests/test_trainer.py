"""The RL loop end to end on a tiny model: learning, resume, outputs, evaluation."""

from __future__ import annotations

import gc
import json

import pytest
import torch
from safetensors.torch import load_file

from lightrft_core import hookimpl
from lightrft_core.config import ConfigError, load_config
from lightrft_core.engines import HFEngine
from lightrft_core.plugins import PluginManager
from lightrft_core.strategies import LocalStrategy
from lightrft_core.testing.training import LetterReward, write_letter_prompts
from lightrft_core.trainer.checkpoints import latest_checkpoint
from lightrft_core.trainer.rl import RLTrainer


class OwnCopyEngine(HFEngine):
    """The ``hf`` engine holding its own copy of the weights (as vLLM or SGLang do)."""

    name = "hf_own_copy"

    def setup(self, *, model_path, model=None, tokenizer=None):
        super().setup(model_path=model_path, model=None, tokenizer=tokenizer)


class _Plugin:
    @hookimpl
    def lightrft_register_reward_models(self, register):
        register(LetterReward)

    @hookimpl
    def lightrft_register_engines(self, register):
        register(OwnCopyEngine)


@pytest.fixture
def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(_Plugin(), name="letter")
    return pm


@pytest.fixture
def prompts(tmp_path):
    return write_letter_prompts(tmp_path / "prompts.jsonl")


def config(manager, tiny_model_dir, prompts, out, *extra):
    return load_config(
        None,
        [
            f"run.output_dir={out}",
            "run.seed=3",
            f"data.train_path={prompts}",
            f"data.eval_path={prompts}",
            "data.apply_chat_template=false",
            f"model.path={tiny_model_dir}",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=6",
            "reward.name=letter",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=8",
            "trainer.learning_rate=3e-3",
            "trainer.max_grad_norm=1.0",
            "logging.tensorboard=false",
            *extra,
        ],
        manager=manager,
    )


def test_reward_rises_on_an_easy_task(manager, tiny_model_dir, prompts, tmp_path) -> None:
    cfg = config(manager, tiny_model_dir, prompts, tmp_path / "run", "trainer.max_steps=25")
    history = RLTrainer(cfg, manager).train().history
    rewards = [r["reward/mean"] for r in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, rewards


def test_resume_continues_exactly_like_an_uninterrupted_run(
    manager, tiny_model_dir, prompts, tmp_path
) -> None:
    run_a = RLTrainer(
        config(manager, tiny_model_dir, prompts, tmp_path / "a", "trainer.max_steps=4"), manager
    ).train()
    RLTrainer(
        config(manager, tiny_model_dir, prompts, tmp_path / "b", "trainer.max_steps=2"), manager
    ).train()
    resumed = RLTrainer(
        config(
            manager,
            tiny_model_dir,
            prompts,
            tmp_path / "b",
            "trainer.max_steps=4",
            "trainer.resume_from=latest",
        ),
        manager,
    )
    assert resumed.start_step == 2
    run_b = resumed.train()
    weights_a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    weights_b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name
    keys = ("reward/mean", "loss", "grad_norm", "response_length")
    for a, b in zip(run_a.history[-2:], run_b.history[-2:], strict=True):
        assert a["step"] == b["step"]
        for key in keys:
            assert a[key] == b[key], (a["step"], key)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]


def test_an_engine_with_its_own_weights_is_synced_on_resume_and_after_each_step(
    manager, tiny_model_dir, prompts, tmp_path
) -> None:
    def engine_matches_actor(trainer) -> bool:
        own = trainer.c.engine.model.state_dict()
        return all(torch.equal(own[k], v) for k, v in trainer.actor.named_weights_for_sync())

    extra = ("engine.name=hf_own_copy", "trainer.save_every=2")
    first = RLTrainer(
        config(manager, tiny_model_dir, prompts, tmp_path / "r", "trainer.max_steps=2", *extra),
        manager,
    )
    first.train()
    assert engine_matches_actor(first)
    resumed = RLTrainer(
        config(
            manager,
            tiny_model_dir,
            prompts,
            tmp_path / "r",
            "trainer.max_steps=3",
            "trainer.resume_from=latest",
            *extra,
        ),
        manager,
    )
    assert resumed.start_step == 2
    assert engine_matches_actor(resumed)  # not the weights of model.path


def test_sampling_params_come_from_the_engine_section(
    manager, tiny_model_dir, prompts, tmp_path
) -> None:
    cfg = config(
        manager,
        tiny_model_dir,
        prompts,
        tmp_path / "run",
        "trainer.max_steps=1",
        "engine.first_token_temperature=2.5",
        "engine.top_k=5",
        "engine.stop_token_ids=[7]",
    )
    trainer = RLTrainer(cfg, manager)
    params = trainer._sampling(step=3)
    assert params.first_token_temperature == 2.5
    assert params.top_k == 5 and params.n == 4 and params.max_new_tokens == 6
    assert list(params.stop_token_ids) == [trainer.c.tokenizer.eos_token_id, 7]
    assert params.seed == 3 * 1_000_003 + 3


def test_outputs_of_a_run(manager, tiny_model_dir, prompts, tmp_path) -> None:
    out = tmp_path / "run"
    cfg = config(
        manager,
        tiny_model_dir,
        prompts,
        out,
        "trainer.max_steps=2",
        "trainer.eval_every=2",
        "trainer.eval_max_prompts=8",
        "trainer.eval_pass_k=2",
        "logging.tensorboard=true",
    )
    trainer = RLTrainer(cfg, manager)
    frozen = []  # objects out of the collector's reach during each step
    step = trainer.step
    trainer.step = lambda n: (frozen.append(gc.get_freeze_count()), step(n))[1]
    result = trainer.train()
    assert len(frozen) == 2 and min(frozen) > 10_000  # models and libraries frozen
    assert gc.get_freeze_count() == 0  # handed back after the run
    assert (out / "config.yaml").is_file()
    assert latest_checkpoint(out).name == "step_000002"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [0, 1, 2]  # step 0: evaluation before training
    assert {"eval/accuracy", "eval/pass@2"} <= set(records[0])
    for key in (
        "reward/mean",
        "entropy",
        "clip_fraction",
        "grad_norm",
        "lr",
        "tokens_per_s",
        "time/generate",
        "time/reward",
        "time/logprobs",
        "time/train",
        "time/sync",
        "logprob_mismatch",
        "response_length",
        "approx_kl",
    ):
        assert key in records[1], key
    assert records[1]["logprob_mismatch"] < 1e-4  # engine and trainer agree on log-probs
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(result.final_model) is not None


def test_resume_latest_without_checkpoints_and_reuse_of_a_folder_are_announced(
    manager, tiny_model_dir, prompts, tmp_path, caplog
) -> None:
    out = tmp_path / "run"
    RLTrainer(
        config(
            manager,
            tiny_model_dir,
            prompts,
            out,
            "trainer.max_steps=1",
            "trainer.resume_from=latest",
        ),
        manager,
    )
    assert "no checkpoint in" in caplog.text
    RLTrainer(config(manager, tiny_model_dir, prompts, out, "trainer.max_steps=1"), manager).train()
    caplog.clear()
    RLTrainer(config(manager, tiny_model_dir, prompts, out, "trainer.max_steps=1"), manager)
    assert "already holds checkpoints of an earlier run" in caplog.text


class _RankZeroOfTwo(LocalStrategy):
    """``local``, but claiming to be rank 0 of 2: enough to reach the checks of global sizes."""

    name = "rank_zero_of_two"

    @property
    def world_size(self) -> int:
        return 2


class _TwoRankPlugin:
    @hookimpl
    def lightrft_register_strategies(self, register):
        register(_RankZeroOfTwo)


def test_global_sizes_that_ranks_cannot_share_are_config_errors(
    manager, tiny_model_dir, prompts, tmp_path
) -> None:
    manager.register(_TwoRankPlugin(), name="two-ranks")
    cfg = config(
        manager,
        tiny_model_dir,
        prompts,
        tmp_path / "run",
        "strategy.name=rank_zero_of_two",
        "trainer.prompts_per_step=3",
        "trainer.optimizer_batch_size=6",
        "trainer.max_steps=1",
    )
    with pytest.raises(ConfigError) as error:
        RLTrainer(cfg, manager)
    assert [issue.key for issue in error.value.issues] == ["trainer.prompts_per_step"]
    assert "divisible by the 2 ranks" in str(error.value)
