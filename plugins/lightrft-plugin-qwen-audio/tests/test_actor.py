"""The ``qwen_audio`` actor: log-probs against transformers' own forward, micro-batch
gradients, LoRA and the frozen audio encoder, the trunk inputs a critic reads, its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightrft_core.interfaces import Actor
from lightrft_core.models.critic import CriticModel
from lightrft_core.plugins import PluginManager
from lightrft_core.testing import ActorConformance
from lightrft_core.testing.media import MediaBatch
from lightrft_plugin_qwen_audio.actor import QwenAudioActor
from lightrft_plugin_qwen_audio.position_embedding import AudioPositionEmbeddingPatch
from lightrft_plugin_qwen_audio.testing import AudioRow, make_audio_batch


def make_actor(path: Path, **options: object) -> QwenAudioActor:
    return QwenAudioActor(
        QwenAudioActor.Config(path=str(path), attn_implementation="eager", **options)
    )


def naive_log_probs(actor: QwenAudioActor, batch: MediaBatch) -> torch.Tensor:
    """``log_softmax`` of the full logits of transformers' own forward (its encoder
    unpatched), gathered."""
    model = actor.base_model
    patch = AudioPositionEmbeddingPatch(AudioPositionEmbeddingPatch.Config())
    patch.revert()
    try:
        with torch.no_grad():
            logits = model(
                input_ids=batch.sequences,
                attention_mask=batch.attention_mask,
                **batch.modal_inputs(),
            ).logits  # [B, T, V]
    finally:
        patch.apply()
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    ids = batch.sequences
    gathered = log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    valid = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).bool()
    return gathered * valid


#: Right-padded rows of 0 to 3 clips, text rows among them; and text rows only (the encoder's
#: idle pass).
BATCHES = {
    "mixed_rows": [AudioRow(0, 5), AudioRow(3, 3), AudioRow(0, 2), AudioRow(1, 9), AudioRow(2, 1)],
    "text_only": [AudioRow(0, 4), AudioRow(0, 7)],
}


@pytest.fixture(scope="module")
def actor(tiny_qwen_audio_dir: Path) -> QwenAudioActor:
    return make_actor(tiny_qwen_audio_dir, logprob_chunk_size=7).eval()


@pytest.mark.parametrize("rows", list(BATCHES.values()), ids=list(BATCHES))
def test_log_probs_equal_a_naive_forward(
    actor: QwenAudioActor, tiny_qwen_audio_dir: Path, rows: list[AudioRow]
) -> None:
    batch = make_audio_batch(tiny_qwen_audio_dir, rows)
    with torch.no_grad():
        out = actor(
            batch.sequences, batch.attention_mask, return_entropy=True, **batch.modal_inputs()
        )
    expected = naive_log_probs(actor, batch)
    assert out.log_probs.shape == expected.shape == (len(rows), batch.sequences.shape[1] - 1)
    assert torch.allclose(out.log_probs, expected, atol=1e-5, rtol=0)
    assert out.entropy is not None and (out.entropy >= -1e-5).all()


def test_the_clips_change_the_log_probs(actor: QwenAudioActor, tiny_qwen_audio_dir: Path) -> None:
    batch = make_audio_batch(tiny_qwen_audio_dir, [AudioRow(1, 4)])
    audio = batch.modal_inputs()
    silent = {**audio, "input_features": torch.zeros_like(audio["input_features"])}
    with torch.no_grad():
        heard = actor(batch.sequences, batch.attention_mask, **audio).log_probs
        unheard = actor(batch.sequences, batch.attention_mask, **silent).log_probs
    assert not torch.allclose(heard, unheard, atol=1e-4)


def _loss_gradients(
    actor: QwenAudioActor, batch: MediaBatch, micro_batches: int
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


def test_gradients_with_1_and_4_micro_batches_are_equal(tiny_qwen_audio_dir: Path) -> None:
    actor = make_actor(tiny_qwen_audio_dir)
    rows = [AudioRow(1, 4), AudioRow(2, 7), AudioRow(0, 2), AudioRow(1, 5)]
    batch = make_audio_batch(tiny_qwen_audio_dir, rows)
    one = _loss_gradients(actor, batch, micro_batches=1)
    four = _loss_gradients(actor, batch, micro_batches=4)
    assert one.keys() == four.keys()
    assert one["model.model.audio_tower.conv1.weight"].abs().sum() > 0  # clips reached the loss
    for name in one:
        assert torch.allclose(one[name], four[name], atol=1e-6, rtol=1e-4), name


# ---------------------------------------------------------------- audio encoder
def _audio_names(names: object) -> set[str]:
    prefixes = ("model.audio_tower.", "model.multi_modal_projector.")
    return {n for n in names if n.startswith(prefixes)}  # type: ignore[attr-defined]


def test_freeze_audio_encoder_freezes_exactly_the_encoder(tiny_qwen_audio_dir: Path) -> None:
    names = dict(
        make_actor(tiny_qwen_audio_dir, freeze_audio_encoder=True).base_model.named_parameters()
    )
    assert {n for n, p in names.items() if not p.requires_grad} == _audio_names(names)
    plain = dict(make_actor(tiny_qwen_audio_dir).base_model.named_parameters())
    # the encoder's position table stays frozen, as transformers builds it
    assert {n for n, p in plain.items() if not p.requires_grad} == {
        "model.audio_tower.embed_positions.weight"
    }


def _adapted(actor: QwenAudioActor) -> set[str]:
    return {n.rsplit(".lora_A", 1)[0] for n, _ in actor.model.named_parameters() if ".lora_A" in n}


def test_lora_leaves_the_audio_encoder_out(tiny_qwen_audio_dir: Path) -> None:
    actor = make_actor(tiny_qwen_audio_dir, lora_rank=4)
    adapted = _adapted(actor)
    assert adapted and not any(
        ".audio_tower." in n or ".multi_modal_projector" in n for n in adapted
    )
    assert any(".language_model.layers.0.self_attn.q_proj" in n for n in adapted)
    trainable = {n for n, p in actor.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_lora_on_the_audio_encoder_when_asked(tiny_qwen_audio_dir: Path) -> None:
    actor = make_actor(tiny_qwen_audio_dir, lora_rank=4, lora_audio_encoder=True)
    adapted = _adapted(actor)
    assert any(".audio_tower.layers.0.self_attn.q_proj" in n for n in adapted)
    assert any(".multi_modal_projector.linear" in n for n in adapted)


def test_synced_weights_merge_lora(tiny_qwen_audio_dir: Path) -> None:
    actor = make_actor(tiny_qwen_audio_dir, lora_rank=4)
    for module in actor.model.modules():  # non-zero adapters: B starts at 0
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    batch = make_audio_batch(tiny_qwen_audio_dir, [AudioRow(1, 4)])
    from transformers import Qwen2AudioForConditionalGeneration

    plain = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_qwen_audio_dir)
    weights = dict(actor.named_weights_for_sync())
    assert weights.keys() == plain.state_dict().keys()
    plain.load_state_dict(weights)
    merged = QwenAudioActor.from_model(plain.eval())
    with torch.no_grad():
        expected = actor.eval()(batch.sequences, batch.attention_mask, **batch.modal_inputs())
        got = merged(batch.sequences, batch.attention_mask, **batch.modal_inputs())
    assert torch.allclose(got.log_probs, expected.log_probs, atol=1e-5)


# ---------------------------------------------------------------- critic / reward trunk
def test_a_critic_trunk_reads_the_clips(tiny_qwen_audio_dir: Path) -> None:
    critic = CriticModel.from_pretrained(
        tiny_qwen_audio_dir, init_std=0.1, actor_class=QwenAudioActor
    ).eval()
    batch = make_audio_batch(tiny_qwen_audio_dir, [AudioRow(1, 3), AudioRow(0, 5)])
    audio = batch.modal_inputs()
    silent = {**audio, "input_features": torch.zeros_like(audio["input_features"])}

    def values(media: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return critic(
                batch.sequences,
                batch.attention_mask,
                trunk_inputs=lambda trunk: QwenAudioActor.trunk_inputs(
                    trunk, batch.sequences, batch.attention_mask, **media
                ),
            )

    heard, unheard = values(audio), values(silent)
    assert heard.shape == (2, batch.sequences.shape[1] - 1)
    assert not torch.allclose(heard[0], unheard[0])  # the row with a clip hears it
    assert torch.allclose(heard[1], unheard[1])  # the text row does not


# ---------------------------------------------------------------- errors
def test_one_sequence_read_as_a_packed_row_scores_the_same(
    actor: QwenAudioActor, tiny_qwen_audio_dir: Path
) -> None:
    """Packed rows (``position_ids``); several per row: tests/test_packing_multimodal.py."""
    batch = make_audio_batch(tiny_qwen_audio_dir, [AudioRow(1, 2)])
    positions = torch.arange(batch.sequences.shape[1]).unsqueeze(0)
    with torch.no_grad():
        padded = actor(batch.sequences, batch.attention_mask, **batch.modal_inputs()).log_probs
        packed = actor(
            batch.sequences, batch.attention_mask, position_ids=positions, **batch.modal_inputs()
        ).log_probs
    assert padded.abs().sum() > 0
    assert torch.allclose(packed, padded, atol=1e-5)


def test_clips_must_match_the_placeholders(
    actor: QwenAudioActor, tiny_qwen_audio_dir: Path
) -> None:
    batch = make_audio_batch(tiny_qwen_audio_dir, [AudioRow(2, 2)])
    one_clip = {k: v[:1] for k, v in batch.modal_inputs().items()}
    with pytest.raises(ValueError, match=r"placeholder tokens but the 1 clip\(s\) make"):
        actor(batch.sequences, batch.attention_mask, **one_clip)
    features_only = {"input_features": batch.modal_inputs()["input_features"]}
    with pytest.raises(ValueError, match="together"):
        actor(batch.sequences, batch.attention_mask, **features_only)
    with pytest.raises(ValueError, match="extra inputs"):
        actor(batch.sequences, batch.attention_mask, pixel_values=torch.zeros(1, 3))


def test_config_refuses_bad_values() -> None:
    for bad in ({"dtype": "float64"}, {"lora_rank": -1}, {"lora_target_modules": []}):
        with pytest.raises(ValueError):
            QwenAudioActor.Config(**bad)
    with pytest.raises(ValueError, match=r"set model\.path"):
        QwenAudioActor(QwenAudioActor.Config())


def test_the_plugin_registers_the_actor_and_the_patch() -> None:
    import lightrft_plugin_qwen_audio.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_qwen_audio.plugin, name="qwen-audio")
    assert pm.get_actor("qwen_audio") is QwenAudioActor
    assert pm.get_patch("qwen2_audio_position_embedding") is AudioPositionEmbeddingPatch
    assert QwenAudioActor.hf_path(QwenAudioActor.Config(path="/m")) == "/m"


def test_the_actor_loads_the_processor(tiny_qwen_audio_dir: Path) -> None:
    processor = QwenAudioActor.load_processor(str(tiny_qwen_audio_dir))
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    assert processor.feature_extractor.sampling_rate == 16_000


class TestQwenAudioActorConformance(ActorConformance):
    actor_cls = QwenAudioActor
    vocab_size = 256

    @pytest.fixture(autouse=True)
    def _folder(self, tiny_qwen_audio_dir: Path) -> None:
        self.path = tiny_qwen_audio_dir

    def make_actor(self) -> Actor:
        return make_actor(self.path)
