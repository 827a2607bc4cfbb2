"""The ``qwen_omni`` actor (Qwen2.5-Omni thinker): the tiny thinker's processor, log-probs
against transformers' own forward on image+audio prompts, packed rows against padded ones,
stray media-start tokens in a response, the encoders' options, the ``hf`` engine with
images and clips, and (slow) a few GRPO steps whose reward rises."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lightrft_core import hookimpl
from lightrft_core.actors.packing import pack_padded_rows
from lightrft_core.config import load_config
from lightrft_core.engines.hf import HFEngine
from lightrft_core.interfaces import ActorModality, MultiModalInputs, SamplingParams
from lightrft_core.interfaces.multimodal import collate_modal_inputs
from lightrft_core.plugins import PluginManager
from lightrft_core.rewards.base import RuleReward
from lightrft_core.testing.packing import assert_packed_equals_padded
from lightrft_plugin_qwen_audio.omni import QwenOmniActor
from lightrft_plugin_qwen_audio.testing import tone

#: A prompt's parts: "image" (bright grey), "dark" (a dark image), "audio" (a 1 s tone),
#: "short" (a 0.5 s tone), or text.
Parts = list[str]


def encode(processor: Any, parts: Parts) -> tuple[list[int], MultiModalInputs | None]:
    """A chat prompt's ids (placeholders expanded) and its media (``None`` without any)."""
    content: list[dict[str, Any]] = []
    images, clips = [], []
    for part in parts:
        if part in ("image", "dark"):
            grey = 220 if part == "image" else 20
            images.append(Image.new("RGB", (56, 28), (grey, grey, grey)))
            content.append({"type": "image"})
        elif part in ("audio", "short"):
            clips.append(tone(1.0 if part == "audio" else 0.5, 440.0))
            content.append({"type": "audio"})
        else:
            content.append({"type": "text", "text": part})
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    out = processor(
        text=[text],
        images=images or None,
        audio=clips or None,
        sampling_rate=16_000,
        return_tensors="pt",
    )
    tensors = {
        k: out[k]
        for k in ("pixel_values", "image_grid_thw", "input_features", "feature_attention_mask")
        if k in out
    }
    media = MultiModalInputs(images, tensors, clips) if tensors else None
    return out["input_ids"][0].tolist(), media


def batch(processor: Any, rows: list[Parts], response: int = 5) -> tuple[Any, Any, list[Any]]:
    """Right-padded rows ``<prompt><response of random byte tokens>`` and each row's media."""
    g = torch.Generator().manual_seed(0)
    ids, media = [], []
    for parts in rows:
        prompt, item = encode(processor, parts)
        ids.append(prompt + torch.randint(0, 256, (response,), generator=g).tolist())
        media.append(item)
    length = max(len(x) for x in ids)
    sequences = torch.full((len(ids), length), processor.tokenizer.pad_token_id)
    mask = torch.zeros_like(sequences)
    for r, x in enumerate(ids):
        sequences[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    return sequences, mask, media


def gathered(log_probs: torch.Tensor, sequences: torch.Tensor, mask: torch.Tensor) -> Any:
    picked = log_probs.gather(-1, sequences[:, 1:, None]).squeeze(-1)
    return picked * (mask[:, 1:] * mask[:, :-1])


@pytest.fixture(scope="module")
def actor(tiny_qwen_omni_dir: Path) -> QwenOmniActor:
    config = QwenOmniActor.Config(
        path=str(tiny_qwen_omni_dir), attn_implementation="eager", logprob_chunk_size=7
    )
    return QwenOmniActor(config).eval()


@pytest.fixture(scope="module")
def processor(tiny_qwen_omni_dir: Path) -> Any:
    return QwenOmniActor.load_processor(str(tiny_qwen_omni_dir))


# ---------------------------------------------------------------- tiny thinker
def test_the_processor_expands_images_and_clips(processor: Any) -> None:
    assert type(processor).__name__ == "Qwen2_5OmniProcessor"
    ids, media = encode(processor, ["image", "audio", "what?"])
    assert media is not None
    # a 56x28 image: 4x2 patches of 14 -> 2 merged tokens; a 1 s clip: 100 frames -> 25
    assert media.tensors["image_grid_thw"].tolist() == [[1, 2, 4]]
    assert ids.count(processor.tokenizer.convert_tokens_to_ids("<|IMAGE|>")) == 2
    assert ids.count(processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")) == 25
    assert tuple(media.tensors["input_features"].shape) == (1, 32, 200)
    with pytest.raises(ValueError, match="no video processor"):
        processor(text=["x"], videos=[np.zeros((2, 28, 28, 3), np.uint8)])


# ---------------------------------------------------------------- log-probs
#: Mixed rows: text, image+audio (two clips), image only, audio only, dark image+clip.
BATCHES = {
    "mixed_rows": [
        ["x"],
        ["audio", "a", "image", "short"],
        ["image", "y"],
        ["short", "z"],
        ["dark", "short", "and?"],
    ],
    "text_only": [["hello"], ["hi"]],
}


@pytest.mark.parametrize("rows", list(BATCHES.values()), ids=list(BATCHES))
def test_log_probs_equal_a_naive_forward(
    actor: QwenOmniActor, processor: Any, rows: list[Parts]
) -> None:
    sequences, mask, media = batch(processor, rows)
    inputs = collate_modal_inputs(media)
    with torch.no_grad():
        out = actor(sequences, mask, return_entropy=True, **inputs)
        logits = actor.base_model(input_ids=sequences, attention_mask=mask, **inputs).logits
    expected = gathered(torch.log_softmax(logits[:, :-1].float(), -1), sequences, mask)
    assert out.log_probs.shape == expected.shape == (len(rows), sequences.shape[1] - 1)
    assert torch.allclose(out.log_probs, expected, atol=1e-5, rtol=0)
    assert out.entropy is not None and (out.entropy >= -1e-5).all()


#: Rows that pack with images and clips of several sequences in one row.
PACKED_ROWS = [
    ["x"],
    ["image", "short", "two"],
    ["audio", "a", "image", "short"],
    ["short", "z"],
    ["image", "y"],
]


def test_packed_rows_equal_the_padded_run(tiny_qwen_omni_dir: Path, processor: Any) -> None:
    """Packed rows: each sequence gets the 3-D positions it has alone (the media in row
    order), and the padded run's log-probs, entropies and gradients (fp32) come out, in rows
    as wide as the longest sequence (the trainer's way) and all in one row. (Rotary
    attention sees only position differences, so the log-probs alone would not notice a
    sequence's positions shifted by a constant: hence the positions' own check.)"""
    config = QwenOmniActor.Config(path=str(tiny_qwen_omni_dir), attn_implementation="sdpa")
    actor = QwenOmniActor(config)
    sequences, mask, media = batch(processor, PACKED_ROWS)
    inputs = collate_modal_inputs(media)
    # in input order, next fit into rows of the longest (70 tokens): (text 25, image+clip
    # 45) | clip+image+clip 70 | (clip 39, image 29)
    assert mask.sum(-1).tolist() == [25, 45, 70, 39, 29]
    packed = pack_padded_rows(sequences, mask, keep_order=True)
    assert [s.row for s in packed.spans] == [0, 0, 1, 2, 2]
    # each sequence's positions: 0, 1, ... then the 3-D ones it has alone, as padded
    thinker = actor.base_model
    with torch.no_grad():
        alone = actor.trunk_inputs(thinker, sequences, mask, **inputs)["position_ids"]
        positions = actor.packed_trunk_inputs(
            thinker, packed.sequences, packed.attention_mask, packed.position_ids, **inputs
        )["position_ids"]  # [4, R, L]
    for index, span in enumerate(packed.spans):
        own = positions[:, span.row, span.start : span.start + span.length]
        assert own[0].tolist() == list(range(span.length))
        assert torch.equal(own[1:], alone[:, index, : span.length])
    assert_packed_equals_padded(actor, sequences, mask, inputs)


def test_the_image_and_the_clip_change_the_log_probs(actor: QwenOmniActor, processor: Any) -> None:
    sequences, mask, media = batch(processor, [["image", "audio", "?"]])
    inputs = collate_modal_inputs(media)
    blank = {**inputs, "pixel_values": torch.zeros_like(inputs["pixel_values"])}
    silent = {**inputs, "input_features": torch.zeros_like(inputs["input_features"])}
    with torch.no_grad():
        seen = actor(sequences, mask, **inputs).log_probs
        for other in (blank, silent):
            assert not torch.allclose(seen, actor(sequences, mask, **other).log_probs, atol=1e-4)


def test_stray_media_start_tokens_in_a_response_are_text(
    actor: QwenOmniActor, processor: Any
) -> None:
    """A response holding ``<|audio_bos|>`` and, last, ``<|vision_bos|>`` (the engine may
    sample them): positions continue by one per token after the prompt, as the engine
    decodes them (transformers' own position code would fail on these rows)."""
    prompt, media = encode(processor, ["image", "audio", "?"])
    assert media is not None
    thinker = actor.base_model
    config = thinker.config
    response = [65, config.audio_start_token_id, 66, config.vision_start_token_id]
    sequences = torch.tensor([prompt + response])
    mask = torch.ones_like(sequences)
    prompt_positions, _ = thinker.get_rope_index(
        torch.tensor([prompt]),
        image_grid_thw=media.tensors["image_grid_thw"],
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        audio_seqlens=media.tensors["feature_attention_mask"].sum(-1),
    )  # [3, 1, P]
    after = prompt_positions[..., -1:] + torch.arange(1, len(response) + 1)  # [3, 1, R]
    positions = torch.cat([prompt_positions, after], dim=-1)
    with torch.no_grad():
        out = actor(sequences, mask, **media.tensors).log_probs
        logits = thinker(
            input_ids=sequences, attention_mask=mask, position_ids=positions, **media.tensors
        ).logits
    expected = gathered(torch.log_softmax(logits[:, :-1].float(), -1), sequences, mask)
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


def test_media_must_match_the_placeholders(actor: QwenOmniActor, processor: Any) -> None:
    sequences, mask, media = batch(processor, [["image", "audio", "?"]])
    inputs = collate_modal_inputs(media)
    two_clips = {
        **inputs,
        "input_features": inputs["input_features"].repeat(2, 1, 1),
        "feature_attention_mask": inputs["feature_attention_mask"].repeat(2, 1),
    }
    with pytest.raises(
        ValueError, match="25 audio placeholder tokens but the audio inputs make 50"
    ):
        actor(sequences, mask, **two_clips)
    with pytest.raises(ValueError, match="together"):
        actor(sequences, mask, pixel_values=inputs["pixel_values"])


# ---------------------------------------------------------------- options
def test_freezing_and_lora_leave_the_encoders_out(tiny_qwen_omni_dir: Path) -> None:
    frozen = QwenOmniActor(
        QwenOmniActor.Config(
            path=str(tiny_qwen_omni_dir), freeze_vision_encoder=True, freeze_audio_encoder=True
        )
    )
    trainable = {n for n, p in frozen.base_model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.", "lm_head.")) for n in trainable)
    lora = QwenOmniActor(QwenOmniActor.Config(path=str(tiny_qwen_omni_dir), lora_rank=2))
    adapted = {n for n, _ in lora.model.named_parameters() if "lora_A" in n}
    assert adapted and not any(("visual." in n or "audio_tower." in n) for n in adapted)
    assert not any("lm_head" in n for n in adapted)


def test_the_plugin_registers_the_actor() -> None:
    import lightrft_plugin_qwen_audio.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_qwen_audio.plugin, name="qwen-audio")
    assert pm.get_actor("qwen_omni") is QwenOmniActor
    assert QwenOmniActor.modality is ActorModality.OMNI
    assert QwenOmniActor.hf_path(QwenOmniActor.Config(path="/m")) == "/m"


# ---------------------------------------------------------------- hf engine
@pytest.mark.parametrize("shared", [True, False], ids=["shared_module", "own_copy"])
def test_hf_engine_generates_with_images_and_clips(
    actor: QwenOmniActor, processor: Any, tiny_qwen_omni_dir: Path, shared: bool
) -> None:
    """On the actor's module: a prompt with media, a text prompt and one with two images and
    a clip; an engine loading the folder itself: the last prompt."""
    prompts = [
        encode(processor, ["image", "audio", "bright?"]),
        encode(processor, ["no media"]),
        encode(processor, ["short", "two", "dark", "image"]),
    ]
    if not shared:
        prompts = prompts[2:]
    ids = [p for p, _ in prompts]
    media = [m for _, m in prompts]
    engine = HFEngine(HFEngine.Config())
    if shared:
        engine.setup(model=actor.hf_model())
    else:
        engine.setup(model_path=str(tiny_qwen_omni_dir))
    outputs = engine.generate(
        ids, SamplingParams(temperature=1.0, max_new_tokens=5, seed=3), multimodal=media
    )
    assert [o.prompt_index for o in outputs] == list(range(len(prompts)))
    for out in outputs:
        i = out.prompt_index
        sequence = torch.tensor([ids[i] + out.token_ids])
        tensors = media[i].tensors if media[i] is not None else {}
        with torch.no_grad():
            expected = actor(sequence, torch.ones_like(sequence), **tensors).log_probs[0]
        got = torch.tensor(out.log_probs)
        assert torch.allclose(got, expected[len(ids[i]) - 1 :], atol=1e-4), i


# ---------------------------------------------------------------- GRPO
class AsciiShare(RuleReward):
    """The share of the response's characters that are ASCII (random tokens: about half;
    byte tokens above 127 decode to replacement characters)."""

    name = "ascii_share"

    def score_one(self, prompt: str, response: str, label: Any, metadata: dict[str, Any]) -> float:
        return sum(ord(c) < 128 for c in response) / len(response) if response else 0.0


class _RewardPlugin:
    @hookimpl
    def lightrft_register_reward_models(self, register: Any) -> None:
        register(AsciiShare)


def write_omni_prompts(folder: Path, count: int) -> Path:
    """Rows with an image file and a wav clip each: bright/loud or dark/quiet."""
    rows = []
    for i in range(count):
        grey, amplitude = (230, 0.8) if i % 2 == 0 else (20, 0.05)
        Image.new("RGB", (28, 28), (grey, grey, grey)).save(folder / f"{i}.png")
        clip = amplitude * tone(0.5, 440.0) / 0.5
        with wave.open(str(folder / f"{i}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16_000)
            out.writeframes((clip * 32767).astype("<i2").tobytes())
        rows.append({"prompt": "bright?", "images": [f"{i}.png"], "audios": [f"{i}.wav"]})
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.slow
def test_a_few_grpo_steps_on_image_and_audio_prompts_raise_the_reward(
    tiny_qwen_omni_dir: Path, tmp_path: Path
) -> None:
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_qwen_audio.plugin
    from lightrft_core.trainer.rl import RLTrainer

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_qwen_audio.plugin, name="qwen-audio")
    pm.register(_RewardPlugin(), name="ascii_share")
    prompts = write_omni_prompts(tmp_path, 2)
    config = load_config(
        None,
        [
            f"run.output_dir={tmp_path / 'run'}",
            "run.seed=0",
            f"data.train_path={prompts}",
            "model.name=qwen_omni",
            f"model.path={tiny_qwen_omni_dir}",
            "model.attn_implementation=eager",
            "engine.n_samples_per_prompt=8",
            "engine.max_new_tokens=4",
            "reward.name=ascii_share",
            "trainer.prompts_per_step=2",
            "trainer.max_steps=5",
            "trainer.learning_rate=5e-2",
            "trainer.micro_batch_size=32",
            "logging.tensorboard=false",
        ],
        manager=pm,
    )
    trainer = RLTrainer(config, pm)
    rewards = [trainer.step(step)["reward/mean"] for step in range(1, 6)]
    # here: 0.48, 0.41, 0.54, 0.73, 0.91 (random tokens: about half ASCII)
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.2, rewards
