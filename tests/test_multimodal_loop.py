"""The RL loop with image prompts on a tiny Qwen2-VL (``qwen_vl`` actor, ``hf`` engine):
a GRPO step through ``lightrft train`` with a text-only row mixed in, gradients that do not
depend on the micro-batch size, the engine's log-probs against the actor's, and
``lightrft generate --image``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lightrft_core import hookimpl
from lightrft_core.config import load_config
from lightrft_core.plugins import PluginManager
from lightrft_core.rewards.base import RuleReward
from lightrft_core.trainer.rl import RLTrainer

pytest.importorskip("lightrft_plugin_qwen_vl")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def write_image_prompts(folder: Path, count: int = 3) -> Path:
    """``count`` rows asking for the colour of a square (28x28 or 56x56), and one text row."""
    rows: list[dict[str, Any]] = []
    for i in range(count):
        name = list(COLOURS)[i % len(COLOURS)]
        size = 28 if i % 2 else 56
        Image.new("RGB", (size, size), COLOURS[name]).save(folder / f"{i}.png")
        rows.append({"prompt": "colour?", "images": [f"{i}.png"], "answer": name})
    rows.append({"prompt": "say a colour", "answer": "red"})
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class CodeSumReward(RuleReward):
    """A rule reward that varies with any response: its characters' code points summed,
    modulo 5, over 4 (so GRPO's groups have a spread and the gradients are not zero)."""

    name = "code_sum"

    def score_one(self, prompt: str, response: str, label: Any, metadata: dict[str, Any]) -> float:
        return sum(ord(c) for c in response) % 5 / 4


class _RewardPlugin:
    @hookimpl
    def lightrft_register_reward_models(self, register: Any) -> None:
        register(CodeSumReward)


@pytest.fixture
def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_qwen_vl.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_qwen_vl.plugin, name="qwen_vl")
    pm.register(_RewardPlugin(), name="code_sum")
    return pm


def overrides(model_dir: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"run.output_dir={out}",
        "run.seed=1",
        f"data.train_path={prompts}",
        "model.name=qwen_vl",
        f"model.path={model_dir}",
        "engine.n_samples_per_prompt=2",
        "engine.max_new_tokens=4",
        "reward.name=code_sum",
        "trainer.prompts_per_step=4",
        "trainer.max_steps=1",
        "trainer.learning_rate=1e-3",
        "logging.tensorboard=false",
        *extra,
    ]


def test_grpo_step_through_lightrft_train_then_generate_about_a_picture(
    tiny_qwen_vl_dir: Path, tmp_path: Path
) -> None:
    from lightrft_cli.main import app

    prompts = write_image_prompts(tmp_path)
    out = tmp_path / "run"
    runner = CliRunner()
    args = overrides(
        tiny_qwen_vl_dir, prompts, out, "trainer.micro_batch_size=3", "reward.name=exact_match"
    )
    plugins = ["--plugin", "grpo", "--plugin", "qwen-vl"]
    result = runner.invoke(app, ["train", *plugins, *args])
    assert result.exit_code == 0, result.output
    final = out / "final"
    assert (final / "processor_config.json").is_file()  # the processor is exported
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 1

    answer = runner.invoke(
        app, ["generate", str(out), "-p", "colour?", "--image", str(tmp_path / "0.png")]
    )
    assert answer.exit_code == 0, answer.output
    assert answer.output.startswith("colour?")
    missing = runner.invoke(
        app, ["generate", str(out), "-p", "colour?", "--image", str(tmp_path / "none.png")]
    )
    assert missing.exit_code != 0 and "no such file" in missing.output


def test_image_flag_on_a_text_only_model_is_a_clear_error(tiny_model_dir: Path) -> None:
    from lightrft_cli.main import app

    result = CliRunner().invoke(
        app, ["generate", str(tiny_model_dir), "-p", "hi", "--image", "x.png"]
    )
    assert result.exit_code != 0
    assert "--image needs a vision-language model" in result.output


def first_step_gradients(
    manager: PluginManager, model_dir: Path, prompts: Path, out: Path, micro_batch: int
) -> tuple[dict[str, torch.Tensor], Any]:
    """The actor's gradients at the first optimizer step of one GRPO step."""
    cfg = load_config(
        None,
        overrides(model_dir, prompts, out, f"trainer.micro_batch_size={micro_batch}"),
        manager=manager,
    )
    trainer = RLTrainer(cfg, manager)
    grads: dict[str, torch.Tensor] = {}
    strategy = trainer.c.strategy
    step = strategy.optimizer_step

    def record(model: Any, *args: Any, **kwargs: Any) -> float:
        if not grads:
            for name, param in model.named_parameters():
                if param.grad is not None:
                    grads[name] = param.grad.detach().clone()
        return step(model, *args, **kwargs)

    strategy.optimizer_step = record  # type: ignore[method-assign]
    metrics = trainer.step(1)
    return grads, metrics


def test_gradients_with_1_or_4_micro_batches_of_image_rows_are_equal(
    manager: PluginManager, tiny_qwen_vl_dir: Path, tmp_path: Path
) -> None:
    prompts = write_image_prompts(tmp_path)
    one, _ = first_step_gradients(manager, tiny_qwen_vl_dir, prompts, tmp_path / "a", 8)
    four, _ = first_step_gradients(manager, tiny_qwen_vl_dir, prompts, tmp_path / "b", 2)
    assert one.keys() == four.keys()
    assert any("visual" in name for name in one)  # the vision tower is trained too
    assert max(float(g.abs().max()) for g in one.values()) > 0
    for name, grad in one.items():
        assert torch.allclose(grad, four[name], atol=1e-6, rtol=1e-4), name


def test_engine_log_probs_equal_the_actors_before_and_after_an_update(
    manager: PluginManager, tiny_qwen_vl_dir: Path, tmp_path: Path
) -> None:
    prompts = write_image_prompts(tmp_path)
    cfg = load_config(
        None,
        overrides(tiny_qwen_vl_dir, prompts, tmp_path / "run", "trainer.micro_batch_size=3"),
        manager=manager,
    )
    trainer = RLTrainer(cfg, manager)
    for step in (1, 2):  # step 2 generates with the weights step 1 trained
        collected = trainer._collect(step, _NoTimer())
        rollout = trainer._build_rollout(collected)
        assert rollout.multimodal is not None and None in rollout.multimodal  # a text row
        actor = trainer._log_probs(trainer.actor, rollout)
        engine = rollout.engine_log_probs * rollout.action_mask
        assert torch.allclose(actor, engine, atol=1e-4), (actor - engine).abs().max()
        trainer._score_rollout(rollout, "pass")
        trainer._advantages(rollout)
        trainer._train(rollout, step)


class _NoTimer:
    """A ``PhaseTimer`` stand-in that times nothing."""

    def __call__(self, name: str) -> Any:
        from contextlib import nullcontext

        return nullcontext()
