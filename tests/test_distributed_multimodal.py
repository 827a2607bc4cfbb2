"""The vision-language actor (tiny Qwen2-VL, ``qwen_vl``) under ``torchrun`` on 2 ranks (gloo,
CPU): one GRPO step on image rows with a text row mixed in, with ``fsdp`` (also with
meta-device init) and ``deepspeed`` ZeRO-2, equals the same step with ``local`` on the whole
batch; generation with images on the gathered model gives the actor's log-probs; the export
reloads with the trained model's log-probs; ``RLTrainer.train`` runs 2 steps with a
checkpoint under both strategies.

One launch runs every job (``multimodal_distributed_worker.py``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

pytest.importorskip("lightrft_plugin_qwen_vl")
pytest.importorskip("lightrft_plugin_deepspeed")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "multimodal_distributed_worker.py"

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
SHARDED = {
    "fsdp": ["strategy.name=fsdp"],
    "fsdp_meta": ["strategy.name=fsdp", "strategy.meta_init=true"],
    "zero2": [
        "strategy.name=deepspeed",
        "strategy.zero_stage=2",
        f"strategy.torch_extensions_dir={ROOT / 'build' / 'torch_extensions'}",
    ],
}


def _load_helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "distributed_utils", HERE / "distributed_utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


du = _load_helpers()


def write_prompts(folder: Path) -> Path:
    """Three image rows (one colour square each, 56x56 or 28x28: 4 or 1 image tokens) and a
    text-only row, so that one rank's share of the fixed rollout holds the text row."""
    rows: list[dict[str, Any]] = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (56 if i % 2 == 0 else 28,) * 2, rgb).save(folder / f"{name}.png")
        rows.append({"prompt": "colour?", "images": [f"{name}.png"], "answer": name})
    rows.append({"prompt": "say a colour", "answer": "red"})
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def step_overrides(model_dir: Path, prompts: Path, *extra: str) -> list[str]:
    """One GRPO step with KL (a reference model is prepared too)."""
    return [
        "run.seed=1",
        "model.name=qwen_vl",
        f"model.path={model_dir}",
        f"data.train_path={prompts}",
        "engine.n_samples_per_prompt=4",
        "engine.max_new_tokens=4",
        "reward.name=exact_match",
        "trainer.prompts_per_step=4",
        "trainer.learning_rate=1e-3",
        "trainer.max_grad_norm=1.0",
        "algorithm.kl_coef=0.05",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def launched(tiny_qwen_vl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vl_distributed")
    step = step_overrides(tiny_qwen_vl_dir, write_prompts(root))
    plan: list[dict[str, Any]] = [
        {
            "job": "step",
            "out": str(root / name),
            "overrides": [*step, *options, "trainer.micro_batch_size=2"],
        }
        for name, options in SHARDED.items()
    ]
    plan.append(  # the whole batch in one process, 4 micro-batches of 4
        {
            "job": "step",
            "out": str(root / "local"),
            "ranks": [0],
            "overrides": [*step, "strategy.name=local", "trainer.micro_batch_size=4"],
        }
    )
    plan += [  # lightrft train's loop: 2 steps, a checkpoint after the first, the export
        {
            "job": "train",
            "out": str(root / f"train_{name}"),
            "overrides": [
                *step,
                *SHARDED[name],
                "trainer.micro_batch_size=2",
                "trainer.max_steps=2",
                "trainer.save_every=1",
            ],
        }
        for name in ("fsdp", "zero2")
    ]
    (root / "plan.json").write_text(json.dumps(plan, indent=1))
    du.torchrun(str(WORKER), str(root / "plan.json"), timeout=900)
    return root


def _result(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "result.json").read_text())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "export" / "model.safetensors")


@pytest.mark.parametrize("variant", sorted(SHARDED))
def test_one_grpo_step_with_images_on_two_ranks_equals_local(
    launched: Path, tiny_qwen_vl_dir: Path, variant: str
) -> None:
    local, sharded = _weights(launched / "local"), _weights(launched / variant)
    initial = load_file(tiny_qwen_vl_dir / "model.safetensors")
    assert local.keys() == sharded.keys() == initial.keys()
    vision = [k for k in initial if "visual" in k]
    assert vision and all(not torch.equal(local[k], initial[k]) for k in vision), (
        "the vision tower must train for the comparison to cover it"
    )
    # AdamW's first step moves every weight by about lr; float noise of near-zero gradients
    # becomes up to ~1e-5 (as in test_distributed_fsdp.py)
    for name, tensor in local.items():
        diff = (sharded[name] - tensor).abs()
        assert float(diff.max()) < 5e-5, name
        assert float((diff > 1e-6).float().mean()) < 0.01, name
    a, b = _result(launched / "local"), _result(launched / variant)
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for key in ("loss", "grad_norm", "entropy", "approx_kl", "kl", "clip_fraction"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("variant", [*sorted(SHARDED), "local"])
def test_generation_with_images_and_export_match_the_trained_model(
    launched: Path, variant: str
) -> None:
    result = _result(launched / variant)
    assert result["engine_logprob_diff"] < 1e-4  # hf engine on the gathered model vs actor
    assert result["export_logprob_diff"] < 1e-5  # exported folder reloaded vs sharded model
    assert (launched / variant / "export" / "processor_config.json").is_file()


def test_fsdp_shards_the_vision_blocks_and_the_decoder_layers(launched: Path) -> None:
    for variant in ("fsdp", "fsdp_meta"):
        units = _result(launched / variant)["fsdp_units"]
        assert {"FSDPQwen2VLVisionBlock", "FSDPQwen2VLDecoderLayer"} <= set(units), units
    assert _result(launched / "zero2")["fsdp_units"] == []


@pytest.mark.parametrize("variant", ["fsdp", "zero2"])
def test_the_training_loop_runs_checkpoints_and_exports(launched: Path, variant: str) -> None:
    out = launched / f"train_{variant}"
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["samples"] == 4 * 4 for r in records)  # both ranks' samples
    assert all(r["grad_norm"] > 0 for r in records)
    assert (out / "checkpoints" / "step_000001").is_dir()
    final = out / "final"
    assert (final / "model.safetensors").is_file()
    assert (final / "processor_config.json").is_file()
