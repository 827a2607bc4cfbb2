"""The ``fsdp`` strategy and the training loop on 2 processes (torchrun, gloo, CPU).

Three launches run every check:

1. one plan (``distributed_utils.py``): SFT of the demo model under fsdp; one GRPO step on
   a fixed batch with fsdp (fp32; CPU offload + meta-device init; bf16) and with ``local``
   on the whole batch; the demo config for ``K + M`` steps, and for ``K`` steps; DAPO with
   dynamic sampling for 2 steps;
2. ``lightrft train`` under torchrun resuming the ``K``-step run to ``K + M`` steps;
3. a run whose rank 1 is killed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lightrft_core.demo.run import DemoPlan, prepare
from lightrft_core.demo.task import ArithmeticTask

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEMO_CONFIG = ROOT / "examples" / "demo_grpo.yaml"
K, M = 3, 3  # steps before and after the resume
SFT_EXAMPLES, SFT_BATCH = 320, 32

pytestmark = pytest.mark.slow


def _load_helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "distributed_utils", HERE / "distributed_utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


du = _load_helpers()


# ---------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoPlan:
    """The demo's tiny model and data (``prepare``) for a task its tiny model learns from
    ten SFT steps, so that a few RL steps visibly raise the reward: one operand, ``7=`` ->
    ``7`` (the demo's three operands need hundreds of steps)."""
    plan = DemoPlan(
        output_dir=tmp_path_factory.mktemp("demo"),
        task=ArithmeticTask(digits=1, operands=1),
        sft_examples=SFT_EXAMPLES,
        rl_prompts=512,
        held_out=2,
    )
    prepare(plan)
    return plan


def demo_overrides(plan: DemoPlan, out: Path, *extra: str) -> list[str]:
    """``examples/demo_grpo.yaml`` made short: fsdp, 16 prompts x 8 samples per step, two
    optimizer steps per RL step, evaluation every ``K`` steps."""
    p = plan.paths
    return [
        f"run.output_dir={out}",
        f"data.train_path={p['data'] / 'train.jsonl'}",
        f"data.eval_path={p['data'] / 'eval.jsonl'}",
        f"model.path={p['sft'] / 'final'}",
        "strategy.name=fsdp",
        "engine.n_samples_per_prompt=8",
        "trainer.prompts_per_step=16",
        "trainer.micro_batch_size=32",
        "trainer.optimizer_batch_size=64",
        "trainer.learning_rate=2e-4",
        f"trainer.eval_every={K}",
        "trainer.eval_max_prompts=16",
        "trainer.save_every=0",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


def step_overrides(model_dir: Path, prompts: Path, *extra: str) -> list[str]:
    """One GRPO step (KL on, so a reference model is prepared too), 2 micro-batches."""
    return [
        f"model.path={model_dir}",
        f"data.train_path={prompts}",
        "data.apply_chat_template=false",
        "engine.n_samples_per_prompt=4",
        "trainer.prompts_per_step=2",
        "trainer.learning_rate=1e-3",
        "trainer.max_grad_norm=1.0",
        "algorithm.kl_coef=0.05",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


def rm_overrides(model: Path, root: Path, *extra: str) -> list[str]:
    """Reward-model training on 64 preference pairs (chosen: mostly 'a'; rejected: none)."""
    pairs = root / "pairs.jsonl"
    if not pairs.exists():
        rows = [
            {"prompt": f"say a{i}:", "chosen": "a" * (1 + i % 5), "rejected": "bcd"[: 1 + i % 3]}
            for i in range(64)
        ]
        pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [
        f"model.path={model}",
        f"data.train_path={pairs}",
        f"data.eval_path={pairs}",
        "data.apply_chat_template=false",
        "sft.batch_size=16",
        "sft.micro_batch_size=4",
        "sft.learning_rate=1e-3",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def launched(demo: DemoPlan, tiny_model_dir: Path, tmp_path_factory) -> Path:
    """Launch 1 (see the module docstring); returns its folder."""
    root = tmp_path_factory.mktemp("fsdp")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"{i}=", "answer": "1"}) + "\n" for i in range(8))
    )
    step = step_overrides(tiny_model_dir, prompts)
    plan = [
        {
            "job": "rm",
            "out": str(root / "rm"),
            "overrides": rm_overrides(tiny_model_dir, root, "strategy.name=fsdp"),
        },
        {
            "job": "sft",
            "out": str(demo.paths["sft"]),
            "config": str(ROOT / "examples" / "demo_sft.yaml"),
            "overrides": [
                f"data.train_path={demo.paths['data'] / 'sft.jsonl'}",
                f"model.path={demo.paths['base']}",
                "strategy.name=fsdp",
                "sft.epochs=1",
                f"sft.batch_size={SFT_BATCH}",
                "sft.micro_batch_size=16",
                "sft.learning_rate=3e-3",
                "sft.warmup_steps=2",
                "logging.tensorboard=false",
                "logging.progress_bar=false",
            ],
        },
        {
            "job": "grpo_step",
            "out": str(root / "fsdp"),
            "overrides": [*step, "strategy.name=fsdp", "trainer.micro_batch_size=2"],
        },
        {
            "job": "grpo_step",
            "out": str(root / "fsdp_meta_offload"),
            "overrides": [
                *step,
                "strategy.name=fsdp",
                "trainer.micro_batch_size=2",
                "strategy.meta_init=true",
                "strategy.cpu_offload=true",
                "strategy.offload_reference=true",
            ],
        },
        {
            "job": "grpo_step",
            "out": str(root / "fsdp_bf16"),
            "overrides": [
                *step,
                "strategy.name=fsdp",
                "trainer.micro_batch_size=2",
                "strategy.precision=bf16",
            ],
        },
        {
            "job": "train",
            "out": str(root / "uninterrupted"),
            "config": str(DEMO_CONFIG),
            "overrides": demo_overrides(demo, root / "uninterrupted", f"trainer.max_steps={K + M}"),
        },
        {
            "job": "train",
            "out": str(root / "resumed"),
            "config": str(DEMO_CONFIG),
            "overrides": demo_overrides(demo, root / "resumed", f"trainer.max_steps={K}"),
        },
        {  # DAPO's dynamic sampling: the SFT model answers many prompts all right
            "job": "train",
            "out": str(root / "dapo"),
            "config": str(DEMO_CONFIG),
            "overrides": demo_overrides(
                demo,
                root / "dapo",
                "algorithm.name=dapo",
                "trainer.max_steps=2",
                "trainer.prompts_per_step=8",
                "engine.n_samples_per_prompt=4",
                "trainer.eval_every=0",
                "logging.save_rollouts_every=2",
            ),
        },
        {  # the reference: the whole batch in one process, 2 micro-batches of 4
            "job": "grpo_step",
            "out": str(root / "local"),
            "ranks": [0],
            "overrides": [*step, "strategy.name=local", "trainer.micro_batch_size=4"],
        },
    ]
    du.run_plan(plan, root / "plan.json")
    return root


def _result(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "result.json").read_text())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "export" / "model.safetensors")


# ---------------------------------------------------------------------- launch 1
@pytest.mark.parametrize("variant", ["fsdp", "fsdp_meta_offload"])
def test_one_grpo_step_on_two_ranks_equals_local_on_the_whole_batch(
    launched: Path, tiny_model_dir: Path, variant: str
) -> None:
    local, sharded = _weights(launched / "local"), _weights(launched / variant)
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert local.keys() == sharded.keys()
    moved = max(float((local[k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-4, "the step must change the weights for the comparison to mean anything"
    # AdamW's first step moves every weight by about lr * sign(grad) = 1e-3, and turns the
    # float noise of near-zero gradients into up to ~1e-5; the gradient's scale is checked
    # by grad_norm below (AdamW's first step cannot see it)
    for name, tensor in local.items():
        diff = (sharded[name] - tensor).abs()
        assert float(diff.max()) < 5e-5, name
        assert float((diff > 1e-6).float().mean()) < 0.01, name
    a, b = _result(launched / "local"), _result(launched / variant)
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for key in ("loss", "grad_norm", "entropy", "approx_kl", "kl", "clip_fraction"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("variant", ["fsdp", "fsdp_meta_offload", "fsdp_bf16"])
def test_export_loads_and_gives_the_sharded_models_log_probs(launched: Path, variant) -> None:
    from transformers import AutoModelForCausalLM

    folder = launched / variant / "export"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert (folder / "tokenizer.json").is_file()
    assert model.config.tie_word_embeddings
    tolerance = 1e-5 if variant != "fsdp_bf16" else 0.1  # bf16 forward vs fp32 export
    assert _result(launched / variant)["export_logprob_diff"] < tolerance


def test_bf16_mixed_precision_trains_with_fp32_weights(launched: Path, tiny_model_dir) -> None:
    weights, initial = (
        _weights(launched / "fsdp_bf16"),
        load_file(tiny_model_dir / "model.safetensors"),
    )
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert max(float((weights[k] - initial[k]).abs().max()) for k in initial) > 1e-4
    metrics = _result(launched / "fsdp_bf16")["metrics"]
    assert all(v == v and abs(v) < 1e6 for v in metrics.values())  # finite


def test_sft_runs_under_torchrun(launched: Path, demo: DemoPlan) -> None:
    records = [json.loads(x) for x in (demo.paths["sft"] / "metrics.jsonl").open()]
    assert len(records) == SFT_EXAMPLES // SFT_BATCH
    assert records[-1]["sft/loss"] < records[0]["sft/loss"] * 0.5
    assert (demo.paths["sft"] / "final" / "model.safetensors").is_file()


def test_reward_model_training_on_two_ranks_equals_local(
    launched: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from lightrft_core.config import load_config
    from lightrft_core.trainer.reward_model import run_reward_model_training

    pm = du.plugin_manager()
    local = load_config(
        None,
        [f"run.output_dir={tmp_path / 'rm'}", *rm_overrides(tiny_model_dir, launched)],
        manager=pm,
    )
    expected = [r for r in run_reward_model_training(local, pm).history if "rm/loss" in r]
    records = [json.loads(x) for x in (launched / "rm" / "metrics.jsonl").open()]
    steps = [r for r in records if "rm/loss" in r]
    assert len(steps) == len(expected) == 4
    for key in ("rm/loss", "rm/accuracy", "grad_norm"):  # one step: the same batch, 2 shards
        assert steps[0][key] == pytest.approx(expected[0][key], rel=1e-5), key
    evals = [r["eval/accuracy"] for r in records if "eval/accuracy" in r]
    assert evals[-1] > evals[0] and evals[-1] > 0.9


def test_demo_config_learns_under_fsdp(launched: Path) -> None:
    records = [json.loads(x) for x in (launched / "uninterrupted" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == list(range(K + M + 1))  # step 0: evaluation
    rewards = [r["reward/mean"] for r in records[1:]]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.1, rewards
    assert all(r["samples"] == 16 * 8 for r in records[1:])  # global: both ranks' samples


def test_dynamic_sampling_under_torchrun_keeps_every_batch_full(launched: Path) -> None:
    records = [json.loads(x) for x in (launched / "dapo" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["samples"] == 8 * 4  # both ranks' shares, always full
        assert 1 <= r["dynamic_sampling/rounds"] <= 1 + 3
        assert r["dynamic_sampling/extra_prompts"] % 2 == 0  # every rank draws the same
        assert r["dynamic_sampling/kept_groups"] + r["dynamic_sampling/filled_groups"] == 8
    assert sum(r["dynamic_sampling/filtered_groups"] for r in records) > 0


def test_saved_rollouts_under_torchrun_hold_every_ranks_samples(launched: Path) -> None:
    import pandas as pd

    assert sorted(p.name for p in (launched / "dapo" / "rollouts").iterdir()) == [
        "step_000002.parquet"
    ]
    frame = pd.read_parquet(launched / "dapo" / "rollouts" / "step_000002.parquet")
    assert list(frame["rank"]) == [0] * 16 + [1] * 16  # gathered to rank 0, rank order
    assert list(frame["group"]) == [g for _ in range(2) for g in range(4) for _ in range(4)]
    assert list(frame["sample"]) == [s for _ in range(8) for s in range(4)]
    assert (frame["step"] == 2).all() and frame["prompt"].str.len().gt(0).all()
    assert (frame["response_length"] > 0).all() and frame["reward"].notna().all()


# ---------------------------------------------------------------------- launch 2
def test_resume_under_torchrun_continues_exactly(launched: Path, demo: DemoPlan) -> None:
    out = launched / "resumed"
    du.torchrun(
        "-m",
        "lightrft_cli",
        "train",
        "--plugin",
        "fsdp",
        "--plugin",
        "grpo",
        "--config",
        str(DEMO_CONFIG),
        *demo_overrides(demo, out, f"trainer.max_steps={K + M}", "trainer.resume_from=latest"),
    )
    a = _weights_of(launched / "uninterrupted" / "final")
    b = _weights_of(out / "final")
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name
    runs = [
        [json.loads(x) for x in (folder / "metrics.jsonl").open()]
        for folder in (launched / "uninterrupted", out)
    ]
    assert [r["step"] for r in runs[1]] == list(range(K + M + 1))
    for x, y in zip(runs[0][K + 1 :], runs[1][K + 1 :], strict=True):
        for key in ("reward/mean", "loss", "grad_norm", "entropy", "response_length"):
            assert x[key] == y[key], (x["step"], key)
    assert runs[0][-1]["eval/accuracy"] == runs[1][-1]["eval/accuracy"]


def _weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


# ---------------------------------------------------------------------- launch 3
def test_a_killed_rank_ends_the_job_with_an_error(demo: DemoPlan, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    command = du.torchrun_command(
        "-m", "lightrft_cli", "train", "--plugin", "fsdp", "--plugin", "grpo",
        "--config", str(DEMO_CONFIG),
        *demo_overrides(demo, out, "trainer.max_steps=1000", "trainer.eval_every=0",
                        f"model.path={demo.paths['base']}", "strategy.timeout_s=30"),
    )  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=ROOT, env=du.worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        killed = du.kill_rank_when(proc, 1, out / "metrics.jsonl")
        assert killed is not None, "the job ended before rank 1 could be killed"
        time.sleep(0.1)
        returncode = proc.wait(timeout=120)  # a hang fails the test here
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert returncode != 0
