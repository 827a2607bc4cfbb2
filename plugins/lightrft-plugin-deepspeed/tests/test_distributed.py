"""The deepspeed strategy on 2 processes (torchrun, gloo): equivalence with ``local``,
Hugging Face export, ZeRO-3 generation and reference model, checkpoint round trip.

Two launches (``distributed_checks.py train`` then ``resume``) run every check; the JIT
ops DeepSpeed compiles are cached in the repository's ``build/torch_extensions``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model
from lightrft_core.strategies import LocalStrategy

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


def load_checks() -> Any:
    spec = importlib.util.spec_from_file_location(
        "distributed_checks", HERE / "distributed_checks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = load_checks()


# ---------------------------------------------------------------------- inputs
def make_batch(model_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    """8 left-padded sequences of 16 tokens, the last 10 positions are the response;
    behaviour log-probs = the initial model's plus noise (so the PPO clip is active)."""
    g = torch.Generator().manual_seed(seed)
    rows, length, prompt = 8, 16, 6
    sequences = torch.randint(0, 256, (rows, length), generator=g)
    attention = torch.ones(rows, length, dtype=torch.long)
    for row in range(rows):
        attention[row, : row % 3] = 0
    action = torch.zeros(rows, length - 1, dtype=torch.bool)
    action[:, prompt - 1 :] = True
    action &= attention[:, 1:].bool()
    advantages = torch.randn(rows, 1, generator=g).expand(rows, length - 1) * action
    with torch.no_grad():
        initial = checks.load_actor(model_dir)(sequences, attention).log_probs
    old = (initial + 0.3 * torch.randn(initial.shape, generator=g)) * action
    return {
        "sequences": sequences,
        "attention_mask": attention,
        "action_mask": action,
        "advantages": advantages.contiguous(),
        "old_log_probs": old,
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, torchrun) -> Path:
    root = tmp_path_factory.mktemp("deepspeed")
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(
        "5m", vocab_size=len(tokenizer), seed=0, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=64,
    )  # fmt: skip
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    torch.save([make_batch(root / "model", 1), make_batch(root / "model", 2)], root / "batches.pt")
    # the escape hatch: shard even the smallest tensors, reduce in many small buckets
    user = {
        "zero_optimization": {
            "stage3_param_persistence_threshold": 0,
            "reduce_bucket_size": 20_000,
            "allgather_bucket_size": 20_000,
        }
    }
    (root / "zero.json").write_text(json.dumps(user))
    (root / "results").mkdir()
    torchrun([str(HERE / "distributed_checks.py"), "train", str(root)], label="train")
    return root


@pytest.fixture(scope="module")
def trained(workdir: Path) -> dict[str, Any]:
    return torch.load(workdir / "results" / "train.pt", weights_only=False)


@pytest.fixture(scope="module")
def local_reference(workdir: Path) -> dict[str, Any]:
    """The same GRPO step with ``local``: the whole batch in one process."""
    strategy = LocalStrategy()
    strategy.setup_distributed()
    first, second = torch.load(workdir / "batches.pt")
    model, optimizer, scheduler = checks.build_training(strategy, workdir / "model")
    rows = torch.arange(first["sequences"].shape[0])
    norm = checks.grpo_step(strategy, model, optimizer, scheduler, first, rows)
    lr = scheduler.get_last_lr()
    weights = {k: v.clone() for k, v in model.model.state_dict().items()}
    with torch.no_grad():
        log_probs = model(first["sequences"], first["attention_mask"]).log_probs
    next_norm = checks.grpo_step(strategy, model, optimizer, scheduler, second, rows)
    return {
        "norm": norm,
        "weights": weights,
        "lr": lr,
        "log_probs": log_probs,
        "next_norm": next_norm,
        "next_weights": {k: v.clone() for k, v in model.model.state_dict().items()},
    }


def assert_same_weights(actual: dict, expected: dict, *, atol: float = 2e-6) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=atol, msg=name)


# ---------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_one_grpo_step_equals_local_on_the_whole_batch(stage, trained, local_reference) -> None:
    result = trained[f"stage{stage}"]
    # the norm scales with the gradient: a loss divided again by the 2 accumulation steps
    # (or not averaged over the 2 ranks) would show here even where Adam's update would not
    assert local_reference["norm"] > checks.MAX_GRAD_NORM, "clipping must be active"
    assert result["norm"] == pytest.approx(local_reference["norm"], rel=1e-5)
    assert_same_weights(result["weights"], local_reference["weights"])
    assert result["lr"] == pytest.approx(local_reference["lr"])


def test_optimizer_offload_gives_the_same_step(trained, local_reference) -> None:
    result = trained["stage2_offload_optimizer"]
    assert result["norm"] == pytest.approx(local_reference["norm"], rel=1e-5)
    assert_same_weights(result["weights"], local_reference["weights"])


def test_bf16_with_full_offload_takes_nearly_the_same_step(trained, local_reference, workdir):
    """bf16 weights hold the fp32 master weights rounded; compared with local's step rounded
    to bf16, the error stays small next to the update, which points the same way."""
    from safetensors.torch import load_file

    result = trained["stage3_offload_all_bf16"]
    assert all(t.dtype == torch.bfloat16 for t in result["weights"].values())
    assert result["norm"] == pytest.approx(local_reference["norm"], rel=0.05)
    initial = load_file(workdir / "model" / "model.safetensors")
    names = sorted(initial)
    expected = torch.cat([local_reference["weights"][n].flatten() for n in names])
    actual = torch.cat([result["weights"][n].float().flatten() for n in names])
    start = torch.cat([initial[n].flatten() for n in names])
    update = expected - start
    error = actual - expected.bfloat16().float()
    assert error.norm() < 0.25 * update.norm()
    moved = actual - start.bfloat16().float()
    assert torch.nn.functional.cosine_similarity(moved, update, dim=0) > 0.95


def test_lora_step_and_merged_export_equal_local(trained, workdir, tmp_path) -> None:
    from safetensors.torch import load_file

    strategy = LocalStrategy()
    strategy.setup_distributed()
    first = torch.load(workdir / "batches.pt")[0]
    model, optimizer, scheduler = checks.build_training(
        strategy, workdir / "model", checks.LORA_RANK
    )
    rows = torch.arange(first["sequences"].shape[0])
    norm = checks.grpo_step(strategy, model, optimizer, scheduler, first, rows)
    strategy.export_hf(model.model, tmp_path / "local_lora")
    assert trained["stage2_lora"]["norm"] == pytest.approx(norm, rel=1e-5)
    expected = load_file(tmp_path / "local_lora" / "model.safetensors")
    exported = load_file(workdir / "results" / "export_lora" / "model.safetensors")
    assert expected.keys() == exported.keys()
    assert not any("lora" in name for name in exported), "adapters are merged"
    assert_same_weights(exported, expected)


def test_the_step_moved_every_weight(trained, workdir) -> None:
    from safetensors.torch import load_file

    initial = load_file(workdir / "model" / "model.safetensors")
    moved = [n for n, t in initial.items() if not torch.equal(t, trained["stage3"]["weights"][n])]
    assert len(moved) == len(initial)


def test_zero3_shards_parameters_and_stages_1_2_do_not(trained) -> None:
    assert trained["stage3"]["shard_fraction"] == pytest.approx(0.5, abs=0.01)
    assert trained["stage1"]["shard_fraction"] == 1.0
    assert trained["stage2"]["shard_fraction"] == 1.0


# ---------------------------------------------------------------------- export
@pytest.mark.parametrize("stage", [2, 3])
def test_exported_folder_loads_and_gives_the_same_log_probs(stage, trained, workdir) -> None:
    from transformers import AutoModelForCausalLM

    folder = workdir / "results" / f"export_stage{stage}"
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    weights = trained[f"stage{stage}"]["weights"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    actor = checks.ActorLanguage.from_model(model)
    first = torch.load(workdir / "batches.pt")[0]
    with torch.no_grad():
        log_probs = actor(first["sequences"], first["attention_mask"]).log_probs
    torch.testing.assert_close(log_probs, trained[f"stage{stage}"]["log_probs"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- ZeRO-3 extras
def test_zero3_generation_matches_the_whole_model(trained, workdir) -> None:
    from transformers import AutoModelForCausalLM

    result = trained["stage3"]
    exported = AutoModelForCausalLM.from_pretrained(
        workdir / "results" / "export_stage3", attn_implementation="eager"
    )
    for rank in (0, 1):  # ranks generated different amounts: no collective ran inside
        prompts, tokens = checks.generation_share(rank)
        assert result[f"tokens_rank{rank}"] == checks.generate(exported, prompts, tokens)
    assert result["held_on_every_rank"], "generation_context must keep parameters whole"
    assert result["released_after_context"], "parameters must be sharded again afterwards"


def test_zero3_reference_model_is_partitioned_and_frozen(trained, workdir) -> None:
    result = trained["stage3"]
    assert result["reference_optimizer_is_none"]
    assert result["reference_shard_fraction"] == pytest.approx(0.5, abs=0.01)
    first = torch.load(workdir / "batches.pt")[0]
    with torch.no_grad():
        expected = checks.load_actor(workdir / "model")(first["sequences"], first["attention_mask"])
    torch.testing.assert_close(result["reference_log_probs"], expected.log_probs, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- checkpoints
def test_a_failed_save_leaves_the_last_checkpoint_intact(trained) -> None:
    """Rank 1 fails to write its part of a second save; rank 0, whose part was fine, must
    raise too and not swap the incomplete folder in (the resume test then finds step 1)."""
    result = trained["stage3"]
    assert result["failed_save_raised"] == "RuntimeError"  # rank 0's answer to the vote
    assert "lightrft_deepspeed.json" in result["checkpoint_files"]
    assert result["siblings"] == ["checkpoint"], "no temporary folder may be left behind"


@pytest.fixture(scope="module")
def resumed(workdir: Path, trained, torchrun) -> dict[str, Any]:
    torchrun([str(HERE / "distributed_checks.py"), "resume", str(workdir)], label="resume")
    return torch.load(workdir / "results" / "resume.pt", weights_only=False)


def test_checkpoint_round_trip_in_a_new_process_group(resumed, trained, workdir) -> None:
    saved = trained["stage3"]
    assert resumed["client_state"] == {"step": 1, "sampler": {"epoch": 0, "position": 4}}
    assert_same_weights(resumed["loaded_weights"], saved["saved_weights"], atol=0)
    assert resumed["loaded_lr"] == saved["lr"]
    for rank in (0, 1):
        before = torch.load(workdir / "results" / f"saved_rank{rank}.pt")
        after = torch.load(workdir / "results" / f"loaded_rank{rank}.pt")
        assert torch.equal(before["rng"], after["rng"]), f"rank {rank} RNG states"
        assert before["optimizer"].keys() == after["optimizer"].keys()
        for key, tensor in before["optimizer"].items():
            assert torch.equal(tensor, after["optimizer"][key]), f"rank {rank} {key}"


def test_resumed_next_step_equals_the_uninterrupted_one(resumed, trained, local_reference) -> None:
    saved = trained["stage3"]
    assert resumed["next_norm"] == saved["next_norm"]
    assert_same_weights(resumed["next_weights"], saved["next_weights"], atol=0)
    assert resumed["next_lr"] == saved["next_lr"]
    # and both still equal local's two steps
    assert resumed["next_norm"] == pytest.approx(local_reference["next_norm"], rel=1e-5)
    assert_same_weights(resumed["next_weights"], local_reference["next_weights"])
