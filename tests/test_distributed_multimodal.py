"""The vision-language actor (tiny Qwen2-VL, ``qwen_vl``) under ``torchrun`` on 2 ranks (gloo,
CPU): one GRPO step on image rows with a text row mixed in, with ``fsdp`` (also with
meta-device init) and ``deepspeed`` ZeRO-2, equals the same step with ``local`` on the whole
batch; generation with images on the gathered model gives the actor's log-probs; the export
reloads with the trained model's log-probs; ``RLTrainer.train`` runs 2 steps with a
checkpoint under both strategies.

The audio-language actor (tiny Qwen2-Audio, ``qwen_audio``) the same way with ``fsdp``: one
rank's rows carry clips and the other's none (its encoder's idle pass keeps the collectives
in step); and the patch ``qwen2_audio_position_embedding`` on an encoder sharded over both
ranks with its position table a unit of its own.

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
pytest.importorskip("lightrft_plugin_qwen_audio")
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


def write_audio_prompts(folder: Path) -> Path:
    """Two rows with clips (1 s; 0.5 s and 1.5 s: 25, 12 + 37 audio tokens) then two text
    rows: the fixed rollout's first half (rank 0's share) has clips, the second none."""
    import soundfile

    from lightrft_plugin_qwen_audio.testing import tone

    for name, seconds, hz in (("a", 1.0, 440.0), ("b", 0.5, 220.0), ("c", 1.5, 880.0)):
        soundfile.write(folder / f"{name}.wav", tone(seconds, hz), 16_000)
    rows = [
        {"prompt": "pitch?", "audios": ["a.wav"], "answer": "high"},
        {"prompt": "which is higher?", "audios": ["b.wav", "c.wav"], "answer": "second"},
        {"prompt": "say high", "answer": "high"},
        {"prompt": "say low", "answer": "low"},
    ]
    path = folder / "audio_prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def step_overrides(
    model_dir: Path, prompts: Path, *extra: str, model: str = "qwen_vl"
) -> list[str]:
    """One GRPO step with KL (a reference model is prepared too)."""
    return [
        "run.seed=1",
        f"model.name={model}",
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
def launched(
    tiny_qwen_vl_dir: Path, tiny_qwen_audio_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
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
    audio = step_overrides(tiny_qwen_audio_dir, write_audio_prompts(root), model="qwen_audio")
    plan += [
        {
            "job": "step",
            "out": str(root / "audio_fsdp"),
            "overrides": [*audio, *SHARDED["fsdp"], "trainer.micro_batch_size=2"],
        },
        {
            "job": "step",
            "out": str(root / "audio_local"),
            "ranks": [0],
            "overrides": [*audio, "strategy.name=local", "trainer.micro_batch_size=4"],
        },
        {"job": "audio_patch", "out": str(root / "audio_patch"), "model": str(tiny_qwen_audio_dir)},
    ]
    (root / "plan.json").write_text(json.dumps(plan, indent=1))
    du.torchrun(str(WORKER), str(root / "plan.json"), timeout=900)
    return root


def _result(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "result.json").read_text())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "export" / "model.safetensors")


def assert_step_equals_local(
    local_dir: Path, sharded_dir: Path, initial_path: Path, encoder: list[str]
) -> None:
    """The sharded step's weights and metrics equal the local step's; the encoder's weights
    named ``encoder`` moved (so the comparison covers them)."""
    local, sharded = _weights(local_dir), _weights(sharded_dir)
    initial = load_file(initial_path)
    assert local.keys() == sharded.keys() == initial.keys()
    assert encoder and all(not torch.equal(local[k], initial[k]) for k in encoder), (
        "the encoder must train for the comparison to cover it"
    )
    # AdamW's first step moves every weight by about lr; float noise of near-zero gradients
    # becomes up to ~1e-5 (as in test_distributed_fsdp.py)
    for name, tensor in local.items():
        diff = (sharded[name] - tensor).abs()
        assert float(diff.max()) < 5e-5, name
        assert float((diff > 1e-6).float().mean()) < 0.01, name
    a, b = _result(local_dir), _result(sharded_dir)
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for key in ("loss", "grad_norm", "entropy", "approx_kl", "kl", "clip_fraction"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("variant", sorted(SHARDED))
def test_one_grpo_step_with_images_on_two_ranks_equals_local(
    launched: Path, tiny_qwen_vl_dir: Path, variant: str
) -> None:
    initial = tiny_qwen_vl_dir / "model.safetensors"
    vision = [k for k in load_file(initial) if "visual" in k]
    assert_step_equals_local(launched / "local", launched / variant, initial, vision)


def test_one_grpo_step_with_audio_on_two_fsdp_ranks_equals_local(
    launched: Path, tiny_qwen_audio_dir: Path
) -> None:
    initial = tiny_qwen_audio_dir / "model.safetensors"
    # the position table is frozen (as transformers builds it); the rest of the tower trains
    audio = [k for k in load_file(initial) if "audio_tower" in k and "embed_positions" not in k]
    assert_step_equals_local(launched / "audio_local", launched / "audio_fsdp", initial, audio)
    # rank 0's share: the two rows with clips, 4 samples each; rank 1's: text rows only
    assert _result(launched / "audio_fsdp")["rows_with_media_per_rank"] == [8, 0]


@pytest.mark.parametrize("variant", [*sorted(SHARDED), "local", "audio_fsdp", "audio_local"])
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
    units = _result(launched / "audio_fsdp")["fsdp_units"]
    assert {"FSDPQwen2AudioEncoderLayer", "FSDPQwen2DecoderLayer"} <= set(units), units


def test_the_audio_position_patch_works_on_a_table_sharded_over_two_ranks(
    launched: Path,
) -> None:
    result = _result(launched / "audio_patch")
    assert result["world_size"] == 2
    assert "mixed torch.Tensor and DTensor" in result["unpatched_error"]  # transformers' read
    assert result["output_diff"] < 1e-5  # each rank's output vs the unsharded encoder
    assert result["grad_norm"] > 0.1  # conv1's gradient, the mean of the ranks' own
    assert result["grad_diff"] < 1e-5 * result["grad_norm"]


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
