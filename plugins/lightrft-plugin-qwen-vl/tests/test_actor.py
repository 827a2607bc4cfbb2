"""The ``qwen_vl`` actor: log-probs against a naive forward, micro-batch gradients, LoRA,
the frozen vision tower, gradient checkpointing, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightrft_core.interfaces import Actor
from lightrft_core.plugins import PluginManager
from lightrft_core.testing import ActorConformance
from lightrft_core.testing.media import MediaBatch
from lightrft_plugin_qwen_vl.actor import QwenVLActor
from lightrft_plugin_qwen_vl.testing import VLRow, make_vl_batch


def make_actor(path: Path, **options: object) -> QwenVLActor:
    return QwenVLActor(QwenVLActor.Config(path=str(path), attn_implementation="eager", **options))


def naive_log_probs(actor: QwenVLActor, batch: MediaBatch) -> torch.Tensor:
    """``log_softmax`` of the full logits of the HF model's own forward, gathered."""
    model = actor.base_model
    ids = batch.sequences
    token_types = (ids == model.config.image_token_id).int()
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=batch.attention_mask,
            mm_token_type_ids=token_types,
            **batch.modal_inputs(),
        ).logits  # [B, T, V]
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    gathered = log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    valid = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).bool()
    return gathered * valid


BATCHES = {
    "right_padding": [VLRow(1, 3), VLRow(1, 9), VLRow(1, 1)],
    "several_images_in_a_row": [VLRow(3, 4), VLRow(2, 2)],
    "mixed_text_and_image_rows": [VLRow(0, 5), VLRow(2, 3), VLRow(0, 2), VLRow(1, 6)],
    "text_only": [VLRow(0, 4), VLRow(0, 7)],
}


@pytest.mark.parametrize("rows", list(BATCHES.values()), ids=list(BATCHES))
def test_log_probs_equal_a_naive_forward(family_dir: Path, rows: list[VLRow]) -> None:
    actor = make_actor(family_dir, logprob_chunk_size=7).eval()
    batch = make_vl_batch(family_dir, rows)
    with torch.no_grad():
        out = actor(
            batch.sequences, batch.attention_mask, return_entropy=True, **batch.modal_inputs()
        )
    expected = naive_log_probs(actor, batch)
    assert out.log_probs.shape == expected.shape == (len(rows), batch.sequences.shape[1] - 1)
    assert torch.allclose(out.log_probs, expected, atol=1e-5, rtol=0)
    assert out.entropy is not None and (out.entropy >= -1e-5).all()


def test_a_row_scores_the_same_alone_and_in_a_mixed_batch(tiny_qwen_vl_dir: Path) -> None:
    actor = make_actor(tiny_qwen_vl_dir).eval()
    batch = make_vl_batch(tiny_qwen_vl_dir, BATCHES["mixed_text_and_image_rows"])
    with torch.no_grad():
        together = actor(batch.sequences, batch.attention_mask, **batch.modal_inputs()).log_probs
        for r in range(len(batch.modal)):
            rows = slice(r, r + 1)
            length = int(batch.attention_mask[r].sum())
            alone = actor(
                batch.sequences[rows, :length],
                batch.attention_mask[rows, :length],
                **batch.modal_inputs(rows),
            ).log_probs
            assert torch.allclose(together[r, : length - 1], alone[0], atol=1e-5)


def _loss_gradients(
    actor: QwenVLActor, batch: MediaBatch, micro_batches: int
) -> dict[str, torch.Tensor]:
    """Gradients of ``-sum(log_probs * mask) / tokens`` accumulated over micro-batches,
    each scaled by the whole batch's token count."""
    actor.zero_grad()
    valid = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).float()
    tokens = valid.sum()
    rows = len(batch.modal)
    size = rows // micro_batches
    for start in range(0, rows, size):
        part = slice(start, start + size)
        out = actor(batch.sequences[part], batch.attention_mask[part], **batch.modal_inputs(part))
        (-(out.log_probs * valid[part]).sum() / tokens).backward()
    return {n: p.grad.clone() for n, p in actor.named_parameters() if p.grad is not None}


def test_gradients_with_1_and_4_micro_batches_are_equal(family_dir: Path) -> None:
    actor = make_actor(family_dir)
    batch = make_vl_batch(family_dir, [VLRow(1, 4), VLRow(2, 7), VLRow(1, 2), VLRow(3, 5)])
    one = _loss_gradients(actor, batch, micro_batches=1)
    four = _loss_gradients(actor, batch, micro_batches=4)
    assert one.keys() == four.keys()
    assert any(n.startswith("model.model.visual.") for n in one)  # images reached the loss
    for name in one:
        assert torch.allclose(one[name], four[name], atol=1e-6, rtol=1e-4), name


def test_gradient_checkpointing_gives_the_same_gradients(tiny_qwen_vl_dir: Path) -> None:
    batch = make_vl_batch(tiny_qwen_vl_dir, [VLRow(1, 4), VLRow(2, 3)])
    plain = _loss_gradients(make_actor(tiny_qwen_vl_dir), batch, micro_batches=1)
    actor = make_actor(tiny_qwen_vl_dir, gradient_checkpointing=True)
    assert actor.base_model.model.language_model.gradient_checkpointing
    assert actor.base_model.model.visual.gradient_checkpointing
    checkpointed = _loss_gradients(actor, batch, micro_batches=1)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)


# ---------------------------------------------------------------- vision tower
def test_freeze_vision_tower_freezes_exactly_the_vision_parameters(family_dir: Path) -> None:
    actor = make_actor(family_dir, freeze_vision_tower=True)
    names = dict(actor.base_model.named_parameters())
    frozen = {n for n, p in names.items() if not p.requires_grad}
    assert frozen == {n for n in names if n.startswith("model.visual.")}
    assert any("merger" in n for n in frozen)
    batch = make_vl_batch(family_dir, [VLRow(2, 3)])
    actor(batch.sequences, batch.attention_mask, **batch.modal_inputs()).log_probs.sum().backward()
    assert all(names[n].grad is None for n in frozen)
    assert all(p.grad is not None for n, p in names.items() if n not in frozen)


def _lora_modules(actor: QwenVLActor) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {n for n, m in actor.base_model.named_modules() if isinstance(m, LoraLayer)}


def test_lora_leaves_the_vision_tower_and_merger_out(family_dir: Path) -> None:
    actor = make_actor(family_dir, lora_rank=4)
    adapted = _lora_modules(actor)
    assert adapted and not any(n.startswith("model.visual.") for n in adapted)
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    assert "lm_head" not in adapted
    trainable = {n for n, p in actor.base_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


def test_lora_on_the_vision_tower_when_asked(tiny_qwen_vl_dir: Path) -> None:
    actor = make_actor(tiny_qwen_vl_dir, lora_rank=4, lora_vision_tower=True)
    adapted = _lora_modules(actor)
    assert any(n.startswith("model.visual.merger.") for n in adapted)
    assert any(n.startswith("model.visual.blocks.") for n in adapted)
    only_q = _lora_modules(
        make_actor(tiny_qwen_vl_dir, lora_rank=4, lora_target_modules=["q_proj"])
    )
    assert {n.rsplit(".", 1)[-1] for n in only_q} == {"q_proj"}


def test_synced_weights_merge_lora_and_reproduce_the_log_probs(family_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText

    actor = make_actor(family_dir, lora_rank=4, lora_alpha=8).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero adapters (lora_B starts at zero)
        for name, parameter in actor.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.1)
    synced = dict(actor.named_weights_for_sync())
    plain = AutoModelForImageTextToText.from_pretrained(family_dir, attn_implementation="eager")
    assert synced.keys() == plain.state_dict().keys()

    # one merged weight by hand: W + (alpha / r) * B @ A
    layer = actor.base_model.model.language_model.layers[0].self_attn.q_proj
    by_hand = (
        layer.base_layer.weight
        + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    assert torch.allclose(synced["model.language_model.layers.0.self_attn.q_proj.weight"], by_hand)

    config = QwenVLActor.Config(attn_implementation="eager")
    batch = make_vl_batch(family_dir, BATCHES["mixed_text_and_image_rows"])
    with torch.no_grad():
        expected = actor(batch.sequences, batch.attention_mask, **batch.modal_inputs()).log_probs
        base = QwenVLActor.from_model(plain, config).eval()
        without_adapters = base(
            batch.sequences, batch.attention_mask, **batch.modal_inputs()
        ).log_probs
        plain.load_state_dict(synced)
        got = base(batch.sequences, batch.attention_mask, **batch.modal_inputs()).log_probs
    assert not torch.allclose(without_adapters, expected, atol=1e-3)  # the adapters matter
    assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------- errors and registration
def test_one_sequence_read_as_a_packed_row_scores_the_same(tiny_qwen_vl_dir: Path) -> None:
    """Packed rows (``position_ids``); several per row: tests/test_packing_multimodal.py."""
    actor = make_actor(tiny_qwen_vl_dir).eval()
    batch = make_vl_batch(tiny_qwen_vl_dir, [VLRow(1, 2)])
    positions = torch.arange(batch.sequences.shape[1]).unsqueeze(0)
    with torch.no_grad():
        padded = actor(batch.sequences, batch.attention_mask, **batch.modal_inputs()).log_probs
        packed = actor(
            batch.sequences, batch.attention_mask, position_ids=positions, **batch.modal_inputs()
        ).log_probs
    assert padded.abs().sum() > 0
    assert torch.allclose(packed, padded, atol=1e-5)


def test_image_inputs_must_match_the_placeholders(tiny_qwen_vl_dir: Path) -> None:
    actor = make_actor(tiny_qwen_vl_dir)
    batch = make_vl_batch(tiny_qwen_vl_dir, [VLRow(2, 2)])
    images = batch.modal_inputs()
    one_image = {
        "pixel_values": images["pixel_values"][: int(images["image_grid_thw"][0].prod())],
        "image_grid_thw": images["image_grid_thw"][:1],
    }
    with pytest.raises(ValueError, match="image placeholder tokens"):
        actor(batch.sequences, batch.attention_mask, **one_image)
    with pytest.raises(ValueError, match="together"):
        actor(batch.sequences, batch.attention_mask, pixel_values=images["pixel_values"])
    with pytest.raises(ValueError, match="extra inputs"):
        actor(batch.sequences, batch.attention_mask, input_features=torch.zeros(1, 2))


def test_config_refuses_bad_values() -> None:
    for bad in ({"dtype": "float64"}, {"lora_rank": -1}, {"lora_target_modules": []}):
        with pytest.raises(ValueError):
            QwenVLActor.Config(**bad)
    with pytest.raises(ValueError, match=r"set model\.path"):
        QwenVLActor(QwenVLActor.Config())


def test_the_plugin_registers_the_actor() -> None:
    import lightrft_plugin_qwen_vl.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_qwen_vl.plugin, name="qwen-vl")
    assert pm.get_actor("qwen_vl") is QwenVLActor
    assert QwenVLActor.hf_path(QwenVLActor.Config(path="/m")) == "/m"


class TestQwenVLActorConformance(ActorConformance):
    actor_cls = QwenVLActor
    vocab_size = 256

    @pytest.fixture(autouse=True)
    def _folder(self, tiny_qwen_vl_dir: Path) -> None:
        self.path = tiny_qwen_vl_dir

    def make_actor(self) -> Actor:
        return make_actor(self.path)


class TestQwenVLActorWithLoRAConformance(TestQwenVLActorConformance):
    def make_actor(self) -> Actor:
        return make_actor(self.path, lora_rank=4)


def test_the_actor_loads_the_processor_without_torchvision(tiny_qwen_vl_dir: Path) -> None:
    processor = QwenVLActor.load_processor(str(tiny_qwen_vl_dir))
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
