"""The algorithm suite through the RL loop, on a tiny model: every registered algorithm runs
through ``lightrft train``; PPO's critic (separate and shared) with warm-up, checkpoints,
resume and export; reward normalisation and the adaptive KL controller with resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.config import ConfigError, load_config
from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model
from lightrft_core.plugins import PluginManager
from lightrft_core.trainer.resume import ResumeError
from lightrft_core.trainer.rl import RLTrainer

ALGORITHM_PLUGINS = ("grpo", "reinforce", "cpgd", "ppo")

REWARD_PLUGIN = '''
"""Test reward ``lower``: the fraction of lower-case ASCII letters of a response."""
import torch
from lightrft_core import hookimpl
from lightrft_core.interfaces import RewardModel, RewardOutput


class Lower(RewardModel):
    name = "lower"
    requires_label = False

    def score(self, batch):
        values = [sum(c.islower() for c in r) / max(1, len(r)) for r in batch.responses]
        rewards = torch.tensor(values, dtype=torch.float32)
        return RewardOutput(rewards=rewards, sub_scores={"accuracy": (rewards > 0.5).float()})


@hookimpl
def lightrft_register_reward_models(register):
    register(Lower)
'''


def _algorithm_names() -> list[str]:
    """Every algorithm the first-party algorithm plugins register."""
    import importlib

    pm = PluginManager(autoload=False)
    for name in ALGORITHM_PLUGINS:
        pm.register(importlib.import_module(f"lightrft_plugin_{name}.plugin"), name=name)
    return sorted(pm.registry.names("algorithm"))


ALGORITHMS = _algorithm_names()


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 64-wide tiny Qwen2 and the byte tokenizer: a step costs a fifth of one on
    the shared ``small_model_dir``, and these tests check the loop, not learning."""
    path = tmp_path_factory.mktemp("small-model")
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(
        "5m", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1
    )
    model.generation_config.update(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reward plugin file and 16 prompts."""
    root = tmp_path_factory.mktemp("loop-task")
    (root / "lower_reward.py").write_text(REWARD_PLUGIN)
    rows = [{"prompt": f"say a{i}:", "answer": "a"} for i in range(16)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"plugin": root / "lower_reward.py", "prompts": root / "prompts.jsonl"}


def _overrides(task: dict[str, Path], model: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"run.output_dir={out}",
        "run.seed=11",
        f"data.train_path={task['prompts']}",
        "data.apply_chat_template=false",
        f"model.path={model}",
        "engine.n_samples_per_prompt=2",
        "engine.max_new_tokens=4",
        "reward.name=lower",
        "trainer.prompts_per_step=2",
        "trainer.micro_batch_size=2",
        "trainer.learning_rate=1e-3",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


def lightrft_train(task: dict[str, Path], model: Path, out: Path, *extra: str) -> list[dict]:
    """``lightrft train`` in this process; returns the run's metric records."""
    plugins = [arg for name in ALGORITHM_PLUGINS for arg in ("--plugin", name)]
    args = ["train", *plugins, "--plugin", str(task["plugin"])]
    result = CliRunner().invoke(app, [*args, *_overrides(task, model, out, *extra)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def _weights(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in load_file(path).items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Equal tensors under every name both have (a tied weight may be stored under either of
    its names) -- and they share all but at most one name."""
    common = a.keys() & b.keys()
    assert len(common) >= max(len(a), len(b)) - 1, (sorted(a), sorted(b))
    return all(torch.equal(a[k], b[k]) for k in common)


# ---------------------------------------------------------------------- every algorithm
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_runs_two_steps_through_lightrft_train(
    algorithm: str, task, small_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / algorithm
    records = lightrft_train(
        task, small_model_dir, out, f"algorithm.name={algorithm}", "trainer.max_steps=2"
    )
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["samples"] == 4 for r in records)
    assert f"name: {algorithm}" in (out / "config.yaml").read_text()
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "final_critic").is_dir() == (algorithm == "ppo")


def test_the_suite_is_complete() -> None:
    assert {
        "grpo", "dr_grpo", "dapo", "gspo", "gspo_token", "gmpo",
        "cpgd", "reinforce_pp", "reinforce_pp_baseline", "rloo", "ppo",
    } <= set(ALGORITHMS)  # fmt: skip


# ---------------------------------------------------------------------- algorithms from parts
ESTIMATOR_PLUGIN = '''
"""A third-party advantage estimator: each reward minus the batch mean, times a scale."""
from dataclasses import dataclass, field

from lightrft_core import hookimpl
from lightrft_core.algorithms.groups import broadcast_to_tokens
from lightrft_core.interfaces import AdvantageEstimator, AdvantageOutput


class BatchMeanBaseline(AdvantageEstimator):
    name = "batch_mean"

    @dataclass
    class Config:
        scale: float = field(default=1.0, metadata={"help": "Multiplies the advantages."})

    def __call__(self, batch):
        rewards = batch.rewards.float()
        advantages = self.config.scale * (rewards - rewards.mean())
        mask = batch.action_mask.bool()
        metrics = {"scale": self.config.scale}
        return AdvantageOutput(broadcast_to_tokens(advantages, mask), metrics=metrics)


@hookimpl
def lightrft_register_advantage_estimators(register):
    register(BatchMeanBaseline)
'''


def test_parts_mix_through_lightrft_train(task, small_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mix"
    parts = ["algorithm.advantage=rloo", "algorithm.loss=gspo", "algorithm.clip_eps_low=0.1"]
    records = lightrft_train(task, small_model_dir, out, *parts, "trainer.max_steps=1")
    assert [r["step"] for r in records] == [1]
    written = (out / "config.yaml").read_text()
    assert "advantage: rloo" in written and "loss: gspo" in written
    assert "clip_eps_high: 0.0004" in written  # gspo's own default


def test_a_third_party_estimator_in_one_file_trains(
    task, small_model_dir: Path, tmp_path: Path
) -> None:
    plugin = tmp_path / "batch_mean.py"
    plugin.write_text(ESTIMATOR_PLUGIN)
    out = tmp_path / "third-party"
    extra = ["algorithm.advantage=batch_mean", "algorithm.scale=2.0", "trainer.max_steps=1"]
    args = ["train", "--plugin", "grpo", "--plugin", str(task["plugin"]), "--plugin", str(plugin)]
    result = CliRunner().invoke(app, [*args, *_overrides(task, small_model_dir, out, *extra)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert records[0]["advantage/scale"] == 2.0
    assert "advantage: batch_mean" in (out / "config.yaml").read_text()


# ---------------------------------------------------------------------- PPO's critic
@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_critic_warm_up_checkpoints_resume_and_export(
    critic: str, task, small_model_dir: Path, tmp_path: Path
) -> None:
    ppo = [
        "algorithm.name=ppo",
        f"algorithm.critic={critic}",
        "algorithm.critic_warmup_steps=1",
        "trainer.critic_learning_rate=1e-2",
        "trainer.save_every=1",
    ]
    a = lightrft_train(task, small_model_dir, tmp_path / "a", *ppo, "trainer.max_steps=3")
    lightrft_train(task, small_model_dir, tmp_path / "b", *ppo, "trainer.max_steps=2")
    b = lightrft_train(
        task, small_model_dir, tmp_path / "b", *ppo, "trainer.max_steps=3",
        "trainer.resume_from=latest",
    )  # fmt: skip

    # warm-up (step 1): only the critic trains; the policy's weights do not move
    initial = _weights(small_model_dir / "model.safetensors", prefix="model.")
    steps = tmp_path / "a" / "checkpoints"
    assert _same(_weights(steps / "step_000001" / "model.safetensors"), initial)
    assert not _same(_weights(steps / "step_000002" / "model.safetensors"), initial)
    assert "grad_norm" not in a[0] and "loss" not in a[0]
    assert {"critic/grad_norm", "critic/value_loss", "critic/explained_variance"} <= set(a[0])
    assert {"grad_norm", "loss", "critic/grad_norm"} <= set(a[1])
    assert (steps / "step_000001" / "critic").is_dir()
    head = _weights(steps / "step_000001" / "critic" / "model.safetensors")
    assert any(float(t.abs().sum()) > 0 for k, t in head.items() if "linear" in k)

    # resume == uninterrupted: policy, critic and metrics
    assert [r["step"] for r in b] == [1, 2, 3]
    for key in ("reward/mean", "loss", "critic/value_loss", "critic/grad_norm", "grad_norm"):
        assert a[2][key] == b[2][key], key
    for name in ("final/model.safetensors", "final_critic/value_head.safetensors"):
        assert _same(_weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)), name

    # the exported critic reloads; a separate one with its own trunk
    from lightrft_core.models.critic import CriticModel, ValueHead, is_critic_folder

    final_critic = tmp_path / "a" / "final_critic"
    assert is_critic_folder(final_critic)
    if critic == "separate":
        model = CriticModel.from_pretrained(final_critic)
        assert _same(
            model.value_head.state_dict(), ValueHead.from_pretrained(final_critic).state_dict()
        )
    else:
        assert not (final_critic / "config.json").exists()  # the trunk is the exported actor


# ---------------------------------------------------------------------- loop controls
@pytest.fixture
def manager(task) -> PluginManager:
    import lightrft_plugin_grpo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.load_plugin(str(task["plugin"]))
    return pm


def _controls_run(manager, task, model, out, *extra) -> Any:  # type: ignore[no-untyped-def]
    overrides = _overrides(
        task,
        model,
        out,
        "algorithm.name=grpo",
        "algorithm.kl_coef=0.05",
        "trainer.kl_controller=adaptive",
        "trainer.kl_target=0.001",
        "trainer.kl_horizon=10",
        "trainer.reward_normalize=true",
        "trainer.reward_clip=3.0",  # |z| <= sqrt(4 - 1) in a batch of 4: never active here
        *extra,
    )
    return RLTrainer(load_config(None, overrides, manager=manager), manager)


def test_reward_normalisation_and_adaptive_kl_through_the_loop_and_resume(
    manager, task, small_model_dir: Path, tmp_path: Path
) -> None:
    a = _controls_run(manager, task, small_model_dir, tmp_path / "a", "trainer.max_steps=3")
    history = a.train().history
    first = history[0]
    # step 1: β = the configured kl_coef; the policy is the reference, so the rollout KL is
    # 0 and the adaptive step is the clipped one: β·(1 − 0.2·4/10) = 0.05·0.92 = 0.046
    assert first["kl_coef"] == pytest.approx(0.05)
    assert first["rollout_kl"] == pytest.approx(0.0, abs=1e-6)
    assert history[1]["kl_coef"] == pytest.approx(0.046)
    assert history[2]["kl_coef"] != history[1]["kl_coef"]
    assert a.c.algorithm.config.kl_coef == 0.05  # β is passed per step, never written back
    # reward/mean stays raw; the algorithm sees rewards normalised by the running stats
    # (the first batch by its own: mean 0)
    assert first["reward/mean"] > 0
    assert first["reward/running_mean"] == pytest.approx(first["reward/mean"], rel=1e-5)
    assert first["advantage/reward_mean"] == pytest.approx(0.0, abs=1e-5)

    _controls_run(manager, task, small_model_dir, tmp_path / "b", "trainer.max_steps=1").train()
    resumed = _controls_run(
        manager, task, small_model_dir, tmp_path / "b", "trainer.max_steps=3",
        "trainer.resume_from=latest",
    )  # fmt: skip
    assert resumed.controls.kl_coef == pytest.approx(0.046)  # restored before step 2
    again = resumed.train().history
    for x, y in zip(history[1:], again[1:], strict=True):
        for key in ("kl_coef", "rollout_kl", "reward/running_mean", "reward/running_std", "loss"):
            assert x[key] == y[key], (x["step"], key)
    assert _same(
        _weights(tmp_path / "a" / "final" / "model.safetensors"),
        _weights(tmp_path / "b" / "final" / "model.safetensors"),
    )

    # resuming with another controller kind is refused (the checkpoint's options are checked)
    with pytest.raises(ResumeError, match="trainer.kl_controller 'adaptive' -> 'fixed'"):
        _controls_run(
            manager, task, small_model_dir, tmp_path / "b", "trainer.max_steps=4",
            "trainer.resume_from=latest", "trainer.kl_controller=fixed",
        )  # fmt: skip


def test_an_adaptive_controller_needs_a_start_value_and_a_long_enough_horizon(
    manager, task, small_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as error:
        _controls_run(
            manager, task, small_model_dir, tmp_path / "run", "algorithm.kl_coef=0",
            "trainer.kl_horizon=0.5",
        )  # fmt: skip
    assert [issue.key for issue in error.value.issues] == [
        "trainer.kl_controller",
        "trainer.kl_horizon",
    ]
    assert "algorithm.kl_coef" in str(error.value)
