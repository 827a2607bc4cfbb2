"""PPO's critic under ``torchrun`` (2 ranks, gloo, CPU) with the sharded strategies: the
core prepares (shards) a separate critic like the actor, trains it through the warm-up and
after, checkpoints it with each step, resumes it exactly and exports it.

Per strategy, two launches of ``lightrft train``: 2 steps with a checkpoint after each, then
a run that starts from the first run's step-1 checkpoint and ends at step 2; the second
step's metrics, the exported actor and the exported critic must be the same bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

pytestmark = pytest.mark.slow

STRATEGIES = {
    "fsdp": ["strategy.name=fsdp"],
    "deepspeed": ["strategy.name=deepspeed", "strategy.zero_stage=3"],
}


def _load_helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "distributed_utils", HERE / "distributed_utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


du = _load_helpers()


def _train(out: Path, model: Path, prompts: Path, strategy: str, *extra: str) -> list[dict]:
    """``torchrun -m lightrft_cli train`` with the installed plugins; the run's records."""
    overrides = [
        f"run.output_dir={out}",
        f"model.path={model}",
        f"data.train_path={prompts}",
        "data.apply_chat_template=false",
        *STRATEGIES[strategy],
        "algorithm.name=ppo",
        "algorithm.critic_warmup_steps=1",
        "algorithm.value_head_init_std=0.1",
        "reward.name=format",
        "reward.pattern=[a-z]",
        "reward.full_match=false",
        "engine.n_samples_per_prompt=2",
        "engine.max_new_tokens=4",
        "trainer.prompts_per_step=4",
        "trainer.micro_batch_size=2",
        "trainer.learning_rate=1e-3",
        "trainer.critic_learning_rate=1e-2",
        "trainer.max_steps=2",
        "trainer.save_every=1",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]
    env = du.worker_env()
    env.pop("LIGHTRFT_DISABLE_PLUGIN_AUTOLOAD", None)  # the job uses the installed plugins
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / "build" / "torch_extensions"))
    command = du.torchrun_command("-m", "lightrft_cli", "train", *overrides)
    proc = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {
        f"{path.name}:{key}": value
        for path in sorted(folder.glob("*.safetensors"))
        for key, value in load_file(path).items()
    }


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_sharded_critic_trains_checkpoints_resumes_exactly_and_exports(
    strategy: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip(f"lightrft_plugin_{strategy}")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say a{i}:"}) + "\n" for i in range(16)))
    whole = _train(tmp_path / "whole", tiny_model_dir, prompts, strategy)
    step_1 = tmp_path / "whole" / "checkpoints" / "step_000001"
    assert (step_1 / "critic").is_dir()
    shutil.copytree(step_1, tmp_path / "resumed" / "checkpoints" / "step_000001")
    resumed = _train(
        tmp_path / "resumed", tiny_model_dir, prompts, strategy, "trainer.resume_from=latest"
    )

    # warm-up (step 1): only the critic trains; step 2 trains both
    assert "loss" not in whole[0] and {"critic/value_loss", "critic/grad_norm"} <= set(whole[0])
    assert {"loss", "grad_norm", "critic/value_loss", "critic/explained_variance"} <= set(whole[1])
    # resume == uninterrupted, bit for bit
    assert [r["step"] for r in resumed] == [2]
    for key in ("reward/mean", "loss", "grad_norm", "critic/value_loss", "critic/grad_norm"):
        assert resumed[0][key] == whole[1][key], key
    for folder in ("final", "final_critic"):
        expected = _tensors(tmp_path / "whole" / folder)
        actual = _tensors(tmp_path / "resumed" / folder)
        assert expected and expected.keys() == actual.keys(), folder
        for name, tensor in expected.items():
            assert torch.equal(actual[name], tensor), (folder, name)

    # the exported critic is whole (gathered from the shards) and reloads
    from lightrft_core.models.critic import CriticModel

    critic = CriticModel.from_pretrained(tmp_path / "whole" / "final_critic")
    assert critic.value_head.linear.weight.abs().sum() > 0
