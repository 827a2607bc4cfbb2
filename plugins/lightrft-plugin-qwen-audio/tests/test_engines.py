"""The ``hf`` engine generates from Qwen2-Audio prompts with clips (``generate(...,
multimodal=)``): its log-probs equal the ``qwen_audio`` actor's on the same rows, and the clip
changes what it generates from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core.engines.hf import HFEngine
from lightrft_core.interfaces import MultiModalInputs, SamplingParams
from lightrft_plugin_qwen_audio.actor import QwenAudioActor
from lightrft_plugin_qwen_audio.testing import tone


def encode(processor: Any, text: str, clips: list[Any]) -> tuple[list[int], Any]:
    """A chat prompt's ids (placeholders expanded) and its media (``None`` without clips)."""
    content = [{"type": "audio"}] * len(clips) + [{"type": "text", "text": text}]
    chat = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    out = processor(text=[chat], audio=clips or None, sampling_rate=16_000, return_tensors="pt")
    if not clips:
        return out["input_ids"][0].tolist(), None
    tensors = {k: out[k] for k in ("input_features", "feature_attention_mask")}
    return out["input_ids"][0].tolist(), MultiModalInputs(tensors=tensors, audios=clips)


@pytest.fixture(scope="module")
def setting(tiny_qwen_audio_dir: Path) -> tuple[QwenAudioActor, list[list[int]], list[Any]]:
    actor = QwenAudioActor(
        QwenAudioActor.Config(path=str(tiny_qwen_audio_dir), attn_implementation="eager")
    ).eval()
    processor = QwenAudioActor.load_processor(str(tiny_qwen_audio_dir))
    prompts = [
        encode(processor, "pitch?", [tone(1.0, 440.0)]),
        encode(processor, "no clip here", []),
        encode(processor, "two", [tone(0.5, 220.0), tone(1.5, 880.0)]),
    ]
    return actor, [ids for ids, _ in prompts], [media for _, media in prompts]


def actor_log_probs(actor: QwenAudioActor, prompt: list[int], media: Any, response: list[int]):
    sequence = torch.tensor([prompt + response])
    audio = media.tensors if media is not None else {}
    with torch.no_grad():
        out = actor(sequence, torch.ones_like(sequence), **audio).log_probs[0]
    return out[len(prompt) - 1 :]


def test_hf_engine_generates_with_audio(
    setting: tuple[QwenAudioActor, list[list[int]], list[Any]],
) -> None:
    """On the actor's own module: every prompt's log-probs equal the actor's, and the clip is
    heard (a silent clip gives other log-probs)."""
    actor, prompts, media = setting
    engine = HFEngine(HFEngine.Config())
    engine.setup(model=actor.hf_model())
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)
    outputs = engine.generate(prompts, params, multimodal=media)
    assert [o.prompt_index for o in outputs] == [0, 1, 2]
    for out in outputs:
        i = out.prompt_index
        expected = actor_log_probs(actor, prompts[i], media[i], out.token_ids)
        assert torch.allclose(torch.tensor(out.log_probs), expected, atol=1e-4), i
    silent_tensors = {**media[0].tensors}
    silent_tensors["input_features"] = torch.zeros_like(silent_tensors["input_features"])
    silent = MultiModalInputs(tensors=silent_tensors, audios=media[0].audios)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=4)
    heard = engine.generate(prompts[:1], greedy, multimodal=media[:1])[0]
    unheard = engine.generate(prompts[:1], greedy, multimodal=[silent])[0]
    assert heard.log_probs != unheard.log_probs


def test_hf_engine_loads_a_qwen2_audio_folder(
    setting: tuple[QwenAudioActor, list[list[int]], list[Any]], tiny_qwen_audio_dir: Path
) -> None:
    """Its own copy from the folder: the prompt with two clips gives the actor's log-probs."""
    actor, prompts, media = setting
    engine = HFEngine(HFEngine.Config())
    engine.setup(model_path=str(tiny_qwen_audio_dir))
    params = SamplingParams(temperature=1.0, max_new_tokens=4, seed=3)
    out = engine.generate(prompts[2:], params, multimodal=media[2:])[0]
    expected = actor_log_probs(actor, prompts[2], media[2], out.token_ids)
    assert torch.allclose(torch.tensor(out.log_probs), expected, atol=1e-4)
