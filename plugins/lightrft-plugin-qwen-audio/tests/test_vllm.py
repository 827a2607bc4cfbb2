"""The real vLLM engine with audio prompts on a tiny Qwen2-Audio (skipped where ``vllm`` or
the vllm plugin is not importable): the ids vLLM generates from equal the processor's, and
log-probs agree with the ``qwen_audio`` actor within 1e-4 before and after training +
``update_weights`` (the audio tower's weights included).

vLLM's Qwen2-Audio takes Whisper's 30-second window only (``input_features [.., 3000]``), so
the tiny model here is built with ``window_seconds=30`` (the suite's other audio tests use
a 2-second window). The folder is written by transformers 5 and the actor streams
transformers 5 names: both go through the engine's weight-name mapper. One engine start
(about 20 s on a CPU) serves the module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core.interfaces import GenerationOutput, MultiModalInputs, SamplingParams
from lightrft_plugin_qwen_audio.testing import tone

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None
    or importlib.util.find_spec("lightrft_plugin_vllm") is None,
    reason="vllm or lightrft-plugin-vllm is not importable here",
)

Prompt = tuple[list[int], MultiModalInputs | None]


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-Audio with Whisper's 30-second window (module docstring)."""
    from lightrft_plugin_qwen_audio.tiny import build_tiny_qwen2_audio

    return build_tiny_qwen2_audio(tmp_path_factory.mktemp("qwen2-audio-30s"), window_seconds=30)


@pytest.fixture(scope="module")
def prompts(audio_dir: Path) -> list[Prompt]:
    """Prompts with 1 clip (1 s), none, and 2 clips (0.5 s, 1.5 s), encoded as a run does."""
    from lightrft_core.data.encoding import PromptEncoder
    from lightrft_plugin_qwen_audio.actor import QwenAudioActor

    processor = QwenAudioActor.load_processor(str(audio_dir))
    encoder = PromptEncoder(processor.tokenizer, processor=processor)
    rows = [
        {"prompt": "pitch?", "audios": [tone(1.0, 440.0)]},
        {"prompt": "say hi"},
        {"prompt": "two", "audios": [tone(0.5, 220.0), tone(1.5, 880.0)]},
    ]
    encoded = [encoder.encode(row) for row in rows]
    return [(p.ids, p.multimodal) for p in encoded]


@pytest.fixture(scope="module")
def engine(audio_dir: Path) -> Any:
    from lightrft_plugin_qwen_audio.actor import QwenAudioActor
    from lightrft_plugin_vllm.engine import VLLMEngine

    engine = VLLMEngine(VLLMEngine.Config(dtype="float32", max_model_len=256, enforce_eager=True))
    tokenizer = QwenAudioActor.load_processor(str(audio_dir)).tokenizer
    engine.setup(model_path=str(audio_dir), tokenizer=tokenizer)
    yield engine
    engine.shutdown()


def actor_for(model_dir: Path) -> Any:
    from lightrft_plugin_qwen_audio.actor import QwenAudioActor

    config = QwenAudioActor.Config(path=str(model_dir), attn_implementation="eager")
    return QwenAudioActor(config).eval()


def generate(engine: Any, prompts: list[Prompt], **params: Any) -> list[GenerationOutput]:
    sampling = SamplingParams(**{"n": 2, "max_new_tokens": 6, "seed": 5, **params})
    return engine.generate(
        [ids for ids, _ in prompts], sampling, multimodal=[m for _, m in prompts]
    )


def worst_mismatch(actor: Any, prompts: list[Prompt], outputs: list[GenerationOutput]) -> float:
    """The largest gap between the engine's log-probs and the actor's on the same rows."""
    worst = 0.0
    for out in outputs:
        ids, media = prompts[out.prompt_index]
        sequence = torch.tensor([ids + out.token_ids])
        with torch.no_grad():
            got = actor(sequence, torch.ones_like(sequence), **(media.tensors if media else {}))
        expected = got.log_probs[0, len(ids) - 1 :]
        assert expected.shape == (len(out.log_probs),), out
        worst = max(worst, float((torch.tensor(out.log_probs) - expected).abs().max()))
    return worst


def train_steps(actor: Any, prompts: list[Prompt], seed: int) -> None:
    """Two optimizer steps on every weight, the audio tower's included (each prompt with a
    clip + a random response, pushed up)."""
    torch.manual_seed(seed)
    actor.train()
    optimizer = torch.optim.AdamW(actor.parameters(), lr=1e-2)
    for _ in range(2):
        loss = torch.zeros(())
        for ids, media in prompts:
            if media is None:
                continue
            sequence = torch.tensor([ids + torch.randint(0, 256, (4,)).tolist()])
            loss = (
                loss - actor(sequence, torch.ones_like(sequence), **media.tensors).log_probs.mean()
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    actor.eval()


def test_vllm_generates_from_the_processors_ids(engine: Any, prompts: list[Prompt]) -> None:
    """vLLM expands each clip's one ``<|AUDIO|>`` to the processor's count: F frames of
    10 ms make ((F - 1) // 2 + 1 - 2) // 2 + 1 tokens (``tiny.audio_token_count``)."""
    audio_id = engine.audio_token_id
    # 1 s: 100 frames -> 25; 0.5 s: 50 -> 12, 1.5 s: 150 -> 37
    assert [ids.count(audio_id) for ids, _ in prompts] == [25, 0, 12 + 37]
    outputs = generate(engine, prompts, n=1, temperature=0)
    assert [o.prompt_index for o in outputs] == [0, 1, 2]
    for out in outputs:
        ids, media = prompts[out.prompt_index]
        assert out.prompt_token_ids == (ids if media is not None else None)
        assert 1 <= len(out.token_ids) <= 6 and len(out.log_probs) == len(out.token_ids)
        assert audio_id not in out.token_ids  # placeholders are never sampled


def test_clips_without_a_run_each_are_refused(engine: Any, prompts: list[Prompt]) -> None:
    ids, media = prompts[2]  # two clips
    assert media is not None
    one_clip = MultiModalInputs(audios=media.audios[:1])
    with pytest.raises(ValueError, match="prompt 0: the prompt holds 2 run.* with 1 audio"):
        engine.generate([ids], SamplingParams(max_new_tokens=2), multimodal=[one_clip])


def test_log_probs_agree_with_the_actor_before_and_after_a_weight_sync(
    engine: Any, prompts: list[Prompt], audio_dir: Path
) -> None:
    actor = actor_for(audio_dir)
    assert worst_mismatch(actor, prompts, generate(engine, prompts)) < 1e-4  # the folder's
    train_steps(actor, prompts, seed=0)
    assert worst_mismatch(actor, prompts, generate(engine, prompts)) > 1e-3  # stale
    # a sync without the audio tower: text prompts agree, prompts with clips do not
    weights = list(actor.named_weights_for_sync())
    engine.update_weights((n, t) for n, t in weights if ".audio_tower." not in n)
    text_only = [p for p in prompts if p[1] is None]
    assert worst_mismatch(actor, text_only, generate(engine, text_only)) < 1e-4
    assert worst_mismatch(actor, prompts, generate(engine, prompts)) > 1e-3
    engine.update_weights(weights)
    assert worst_mismatch(actor, prompts, generate(engine, prompts)) < 1e-4
