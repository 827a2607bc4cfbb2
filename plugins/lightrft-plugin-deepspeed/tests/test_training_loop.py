"""The demo's GRPO configuration through ``torchrun --nproc-per-node 2 -m lightrft_cli train``
with ``strategy.name=deepspeed`` (ZeRO-3, with a reference model): the reward rises, and a
run resumed from a checkpoint ends exactly like the uninterrupted one.

Data and base model are built as ``lightrft demo`` builds them (``demo.run.prepare``).
The demo's ``math`` reward needs the SFT warm-up (minutes) before it moves, so these runs
score a learnable format instead -- "the response contains a digit" -- which the untrained
model meets now and then and GRPO makes it meet every time within a few steps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightrft_core.demo.run import DemoPlan, prepare

ROOT = Path(__file__).resolve().parents[3]
DEMO_CONFIG = ROOT / "examples" / "demo_grpo.yaml"
STEPS, SAVE_EVERY = 6, 3

pytestmark = pytest.mark.slow


def overrides(demo: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        f"run.output_dir={output_dir}",
        f"data.train_path={demo / 'data' / 'train.jsonl'}",
        "data.eval_path=null",
        f"model.path={demo / 'base'}",
        "strategy.name=deepspeed",
        "strategy.zero_stage=3",
        "algorithm.kl_coef=0.01",  # a reference model, prepared (partitioned) by ZeRO-3
        "reward.name=format",
        "reward.pattern=[0-9]",
        "reward.full_match=false",
        "engine.n_samples_per_prompt=8",
        "engine.max_new_tokens=4",
        f"trainer.max_steps={STEPS}",
        "trainer.prompts_per_step=8",
        "trainer.micro_batch_size=16",
        "trainer.optimizer_batch_size=64",
        "trainer.learning_rate=3e-3",
        "trainer.eval_every=0",
        f"trainer.save_every={SAVE_EVERY}",
        "logging.tensorboard=false",
        *extra,
    ]


def train(torchrun, demo: Path, output_dir: Path, *extra: str) -> list[dict]:
    arguments = ["-m", "lightrft_cli", "train", "--config", str(DEMO_CONFIG)]
    torchrun([*arguments, *overrides(demo, output_dir, *extra)], label="lightrft train")
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    prepare(DemoPlan(output_dir=root, sft_examples=16, rl_prompts=512, held_out=16))
    return root


@pytest.fixture(scope="module")
def uninterrupted(torchrun, demo: Path) -> tuple[Path, list[dict]]:
    output_dir = demo / "run"
    return output_dir, train(torchrun, demo, output_dir)


def test_reward_rises_under_torchrun_with_zero3(uninterrupted) -> None:
    output_dir, history = uninterrupted
    rewards = [record["reward/mean"] for record in history]
    assert [record["step"] for record in history] == list(range(1, STEPS + 1))
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.3, rewards
    assert all(record["samples"] == 64 for record in history), "8 prompts x 8, both ranks"
    assert (output_dir / "final" / "model.safetensors").is_file()
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == [
        "step_000003",
        "step_000006",
    ]


def test_resumed_run_ends_like_the_uninterrupted_one(torchrun, demo: Path, uninterrupted) -> None:
    output_dir, history = uninterrupted
    resumed_dir = demo / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    checkpoint = f"step_{SAVE_EVERY:06d}"
    shutil.copytree(
        output_dir / "checkpoints" / checkpoint, resumed_dir / "checkpoints" / checkpoint
    )
    resumed = train(torchrun, demo, resumed_dir, "trainer.resume_from=latest")
    assert [record["step"] for record in resumed] == list(range(SAVE_EVERY + 1, STEPS + 1))
    for before, after in zip(history[SAVE_EVERY:], resumed, strict=True):
        for key in ("reward/mean", "loss", "grad_norm", "kl", "response_length"):
            assert after[key] == before[key], (after["step"], key)
    expected = load_file(output_dir / "final" / "model.safetensors")
    actual = load_file(resumed_dir / "final" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
